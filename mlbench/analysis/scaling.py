"""What several devices buy over one: scaling efficiency of the data-parallel cells (rebuilt with the
results), and the verdict the report gives on whether the extra devices pay.

A data-parallel cell trains on a global batch split over its devices; its fair baseline is the
one-device cell of the same framework, model and precision, on the same host, at the batch each of its
replicas trains on (its per-device batch): that is the same work per device, so with perfect scaling
N devices reach N times that cell's throughput. Throughput is the global batch over the slowest
replica's step on both sides. The efficiency's bounds come from the two throughputs' 95% intervals
(lower: this cell's low over the baseline's high, and so on): conservative, not a joint interval.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mlbench.analysis import evidence
from workers.common.devices import Device

Row = dict[str, Any]
MATCH = ("framework", "model_name", "precision", "dataset", "epochs", "seed", "hostname", "compile", "deterministic")


def baseline(r: Row, rows: list[Row]) -> Row | None:
    """The ok one-device cell that `r` (an ok data-parallel cell) is measured against, if the run holds it."""
    if (r.get("num_devices") or 1) < 2:
        return None
    want = str(Device.parse(r["device"]).single())
    for b in rows:
        if (
            b["status"] == "ok"
            and b["device"] == want
            and (b.get("num_devices") or 1) == 1
            and b["batch_size"] == r["per_device_batch_size"]
            and all(b.get(k) == r.get(k) for k in MATCH)
            and b.get("samples_per_second")
        ):
            return b
    return None


def _ratio(a: float | None, b: float | None, n: int) -> float | None:
    return a / (n * b) if a is not None and b else None


def annotate(rows: list[Row]) -> None:
    """Fill scaling_efficiency and its bounds for every ok data-parallel row with a baseline (in place)."""
    for r in rows:
        b = baseline(r, rows) if r["status"] == "ok" and r.get("samples_per_second") else None
        n = r.get("num_devices") or 1
        r["scaling_efficiency"] = _ratio(r["samples_per_second"], b["samples_per_second"], n) if b else None
        low, high = evidence.throughput_ratio_bounds(r, b) if b else (None, None)  # the speedup's bounds
        r["scaling_efficiency_low"] = _ratio(low, 1.0, n)
        r["scaling_efficiency_high"] = _ratio(high, 1.0, n)


@dataclass
class Verdict:
    row: Row
    base: Row
    speedup: float  # this cell's throughput over the one-device cell's
    low: float | None  # the speed-up's bounds (num_devices x the efficiency's bounds)
    high: float | None
    verdict: str  # "pays" | "does not pay" | "cannot tell"
    why: str = ""  # the evidence's rule (mlbench/analysis/evidence.py), or why a cell is not ranked

    @property
    def text(self) -> str:
        r, b = self.row, self.base
        interval = f" (95% bounds {self.low:.2f}-{self.high:.2f}x)" if self.low is not None and self.high else ""
        what = (
            f"{r['framework']} {r['model_name']} {r['precision']}, {r['per_device_batch_size']} samples per device: "
            f"{r['device']} runs {self.speedup:.2f}x {b['device']}'s throughput{interval}, "
            f"scaling efficiency {r['scaling_efficiency']:.0%}"
        )
        if r["device"].startswith("cpu"):
            what += (
                " (CPU replicas share this machine's cores: the figure is data parallel's overhead, not more hardware)"
            )
            return (
                what
                + {
                    "pays": ": replicas on the same cores beat one process here.",
                    "does not pay": ": replicas on the same cores are slower than one process.",
                    "cannot tell": f": cannot tell whether the replicas beat one process ({self.why}).",
                }[self.verdict]
            )
        if self.verdict == "pays":
            return f"{what}: faster than one device ({self.why})."
        if self.verdict == "does not pay":
            return f"{what}: one device trains faster ({self.why})."
        return f"{what}: cannot tell whether the extra devices are faster ({self.why}; repeats: 5 tells more)."


def _faster(r: Row, b: Row) -> tuple[str, str]:
    """Whether the data-parallel cell is faster than its one-device cell beyond the evidence (the same
    rule as every comparison of two throughputs: evidence.tell), and the sentence why."""
    untrusted = "; ".join(
        f"{x['device']} not ranked: {evidence.why_untrusted(x)}" for x in (r, b) if evidence.why_untrusted(x)
    )
    if untrusted:
        return "cannot tell", untrusted
    fast = r if r["samples_per_second"] >= b["samples_per_second"] else b
    said = evidence.tell_throughput(r, b)
    if not said.clear:
        return "cannot tell", said.why
    return ("pays" if fast is r else "does not pay"), said.why


def verdicts(rows: list[Row]) -> list[Verdict]:
    """Per ok data-parallel cell with a baseline: whether its devices beat one, with the interval."""
    out = []
    for r in rows:
        if r.get("scaling_efficiency") is None:
            continue
        b = baseline(r, rows)
        if b is None:
            continue
        n = r["num_devices"]
        low = r["scaling_efficiency_low"] * n if r.get("scaling_efficiency_low") is not None else None
        high = r["scaling_efficiency_high"] * n if r.get("scaling_efficiency_high") is not None else None
        speedup = r["scaling_efficiency"] * n
        out.append(Verdict(r, b, speedup, low, high, *_faster(r, b)))
    return out
