"""How a cell and a figure are written, the same in every output: the report, RESULTS.md, compare and
the verdicts' sentences."""

from __future__ import annotations

from typing import Any

from mlbench.cells import describe

Row = dict[str, Any]
NA = "—"  # a figure nothing measured: never 0


def label(r: Row) -> str:
    """A stored cell in words: framework, model, device, precision and batch (and a file-fed cell's data path)."""
    fmt = r.get("data_format")
    data = f"{fmt}/{r.get('loader')} w{r.get('loader_workers')}" if fmt not in (None, "memory") else None
    if data and r.get("emulated_compute_s") is not None:
        data += f" emulated {r['emulated_compute_s'] * 1000:.3g} ms"
    return describe(
        r["framework"],
        r["model_name"],
        r["device"],
        r["precision"],
        r["batch_size"],
        bool(r.get("deterministic")),
        r.get("seed"),
        data,
    )


def config_label(r: Row) -> str:
    """A cell among those of one model and device: framework, precision and batch."""
    det = " deterministic" if r.get("deterministic") else ""
    return f"{r['framework']} {r['precision']}{det} bs{r['batch_size']}"


def num(value: Any, digits: int = 3, missing: str = NA) -> str:
    """A figure as text: whole numbers with thousands separators from 100 up, else `digits` significant
    digits; `missing` for None, and anything not a number as it is."""
    if value is None:
        return missing
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.{digits}g}"


def band_text(r: dict[str, Any]) -> str:
    """A search's edge as a band, with the batches that fit in one process and not in another."""
    low, high = r.get("frontier_low"), r.get("frontier_high")
    if low is None and high is None:
        return "-"
    flaky = f"; {r['flaky_batches']} both" if r.get("flaky_batches") else ""
    return f"{'-' if low is None else low} fits every time, {'-' if high is None else high} never{flaky}"
