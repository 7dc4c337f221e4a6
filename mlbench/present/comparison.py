"""`mlbench compare`'s output: the comparison as a plain-text table (the terminal, compare-A-vs-B.txt)
and as an HTML page."""

from __future__ import annotations

import html
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from mlbench.analysis.compare import Comparison
from mlbench.results.labels import num
from mlbench.results.store import atomic_write, run_name


def _p(p: float | None) -> str:
    return "—" if p is None else (f"{p:.1e}" if p < 1e-3 else f"{p:.3f}")


def table_rows(cmp: Comparison) -> list[list[str]]:
    order = {"regression": 0, "improvement": 1, "unconfirmed": 2, "unchanged": 3}
    out = []
    for c in sorted(cmp.changes, key=lambda c: (order[c.verdict], c.cell, c.metric.title)):
        out.append(
            [
                c.verdict,
                c.cell,
                c.metric.title,
                num(c.a),
                num(c.b),
                f"{c.b - c.a:+.1f} pts" if c.metric.kind == "fisher" else f"{c.rel:+.1%}",
                _p(c.p),
                f"{100 * c.threshold:g} pts, 95% CI"
                if c.metric.kind == "fisher"
                else f"{c.threshold:.0%}" + (f" and {c.floor_ms:g} ms" if c.floor_ms else ""),
            ]
        )
    return out


HEAD = ["verdict", "cell", "figure", "A", "B", "change", "p", "min change"]


def summary_line(cmp: Comparison) -> str:
    return (
        f"{cmp.matched} cell(s) in both runs: {len(cmp.regressions)} regression(s), {len(cmp.improvements)} improvement(s), "
        f"{len(cmp.unconfirmed)} unconfirmed change(s); {len(cmp.only_a)} only in A, {len(cmp.only_b)} only in B"
    )


def text(cmp: Comparison) -> str:
    """The comparison as a plain-text table (what `compare.txt` holds and the terminal shows)."""
    # markup off: paths, environment values and cell labels are printed as they are
    console = Console(record=True, width=160, file=io.StringIO(), markup=False, highlight=False)
    t = Table(title=Text(f"A = {cmp.run_a}   B = {cmp.run_b}"))
    for h in HEAD:
        t.add_column(h)
    for r in table_rows(cmp):
        t.add_row(*(Text(v) for v in r))
    console.print(t)
    console.print(summary_line(cmp))
    for k, (a, b) in cmp.env_diff.items():
        console.print(f"environment differs: {k}: {a!r} in A, {b!r} in B")
    for n in cmp.notes:
        console.print(f"note: {n}")
    for x in cmp.only_a:
        console.print(f"only in A: {x}")
    for x in cmp.only_b:
        console.print(f"only in B: {x}")
    return console.export_text()


def to_html(cmp: Comparison) -> str:
    e: Callable[[Any], str] = lambda v: html.escape(str(v))  # noqa: E731
    body = "".join(
        f"<tr class='{e(r[0])}'>" + "".join(f"<td>{e(v)}</td>" for v in r) + "</tr>" for r in table_rows(cmp)
    )
    env = "".join(
        f"<p class='warn'>⚠ environment differs: {e(k)}: {e(a)} in A, {e(b)} in B</p>"
        for k, (a, b) in cmp.env_diff.items()
    )
    lists = "".join(f"<p>{e(x)}</p>" for x in [*cmp.notes, *(f"only in A: {x}" for x in cmp.only_a)])
    lists += "".join(f"<p>only in B: {e(x)}</p>" for x in cmp.only_b)
    return f"""<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>mlbench compare</title>
<style>body{{font-family:system-ui,sans-serif;margin:24px;color:#222}}table{{border-collapse:collapse;font-size:13px}}
th,td{{border:1px solid #ddd;padding:4px 8px;text-align:left}}th{{background:#f5f5f5}}
tr.regression td:first-child{{color:#b00020;font-weight:600}}tr.improvement td:first-child{{color:#17803d;font-weight:600}}
.warn{{background:#fff4e5;border-left:4px solid #ff9800;padding:6px 10px}}</style></head><body>
<h1>mlbench compare</h1><p>A = {e(cmp.run_a)}<br>B = {e(cmp.run_b)}</p><p><b>{e(summary_line(cmp))}</b></p>{env}
<p>Significant: a two-sided Mann-Whitney rank test on the raw samples (Fisher's exact test for accuracy) below
the alpha, and a relative change at least the minimum shown (twice the run-to-run CV where repeats measured it).</p>
<table><thead><tr>{"".join(f"<th>{h}</th>" for h in HEAD)}</tr></thead><tbody>{body}</tbody></table>{lists}
</body></html>"""


def write(cmp: Comparison, out_dir: Path) -> tuple[Path, Path]:
    stem = f"compare-{run_name(cmp.run_a)}-vs-{run_name(cmp.run_b)}"
    txt, page = out_dir / f"{stem}.txt", out_dir / f"{stem}.html"
    atomic_write(txt, lambda p: p.write_text(text(cmp), encoding="utf-8"))
    atomic_write(page, lambda p: p.write_text(to_html(cmp), encoding="utf-8"))
    return txt, page
