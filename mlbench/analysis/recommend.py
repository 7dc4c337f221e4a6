"""What a run's results say: recommendations with their evidence, Pareto fronts and speed-ups.

Pure functions of result rows (dicts with the schema's columns), framework-free, so the report,
`mlbench compare` and the tests all draw the same conclusions from the same numbers. A
recommendation names a winner only where the evidence separates it from the runner-up: 95%
confidence intervals that do not overlap (order statistics of the raw samples for throughput and
latency, Wilson intervals for accuracy), or, for memory, which has no interval, a gap larger than
MEMORY_TOLERANCE. Otherwise it says "no clear winner" and shows both.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

import numpy as np

from mlbench.results.labels import config_label, num
from workers.common import stats

MEMORY_TOLERANCE = 0.05  # relative gap in peak memory below which two cells are not told apart
# CPU other processes used during a cell (% of one core) above which it is suspect: a quarter of a core,
# or 5% of the machine where that is more (a 128-core node is never quiet to a quarter of one core)
OTHER_LOAD_PCT = 25.0
OTHER_LOAD_SHARE = 0.05
Row = dict[str, Any]


@dataclass(frozen=True)
class Estimate:
    """A figure with its 95% confidence interval (None where there is none) and the cell it is of."""

    value: float
    low: float | None
    high: float | None
    row: Row = field(compare=False, repr=False)

    @property
    def label(self) -> str:
        return config_label(self.row)


@dataclass(frozen=True)
class Criterion:
    key: str  # stable id: train_throughput, inference_latency, memory, accuracy
    title: str
    unit: str
    higher_is_better: bool
    estimate: Callable[[Row], Estimate | None]
    per_framework_best: bool = True  # False: compared at one configuration every framework ran
    tolerance: float | None = None  # figures with no interval: the relative gap that tells two apart


@dataclass
class Recommendation:
    """The answer for one criterion on one model and device, with the figures behind it."""

    criterion: str
    title: str
    model: str
    device: str
    unit: str
    winner: Estimate | None
    runner_up: Estimate | None
    clear: bool
    verdict: str  # one line: who wins and by how much, or why there is no clear winner
    candidates: list[Estimate]
    note: str = ""  # the configuration the comparison was made at, where it is fixed
    hardware: list[str] = field(default_factory=list)  # more than one: the compared cells ran on different machines


def hardware(r: Row) -> str:
    """The machine a cell's figures belong to: CPU model and cores, and its GPUs."""
    cpu = f"{r.get('cpu_model') or '?'} ({r.get('cpu_count_physical') or '?'} cores)"
    return cpu + (f", {r['gpu_model']}" if r.get("gpu_model") else "")


def ok_rows(rows: Iterable[Row]) -> list[Row]:
    return [r for r in rows if r.get("status") == "ok"]


def other_load_limit_pct(r: Row) -> float:
    """The other load (in % of one core) above which a cell's timings are suspect on its machine."""
    return max(OTHER_LOAD_PCT, OTHER_LOAD_SHARE * 100.0 * (r.get("cpu_count_logical") or 1))


def loaded(r: Row) -> bool:
    """Whether other processes used the CPU enough during the cell to skew its timings."""
    other = r.get("cpu_other_pct")
    return other is not None and other > other_load_limit_pct(r)


def why_untrusted(r: Row) -> str:
    """Why a cell's timings cannot rank it ('' when they can): its own spread, or other load."""
    reasons = []
    if r.get("noisy"):
        cv = r.get("step_time_cv")
        reasons.append(f"step-time CV {cv:.0%}" if cv is not None else "step times vary over 10%")
    if loaded(r):
        reasons.append(f"other processes used {r['cpu_other_pct']:.0f}% of a core")
    return ", ".join(reasons)


def wilson_interval(p: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion p observed on n trials."""
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


# --- the figures each criterion ranks on ------------------------------------------------------


def throughput_estimate(r: Row) -> Estimate | None:
    v = r.get("samples_per_second")
    if v is None:
        return None
    return Estimate(v, r.get("samples_per_second_ci_low"), r.get("samples_per_second_ci_high"), r)


def latency_estimate(r: Row) -> Estimate | None:
    """Median latency of one sample's forward pass (batch 1), with the CI of the median."""
    samples = r.get("inference_b1_times_ms") or []
    if len(samples) == 0:
        v = r.get("inference_b1_latency_p50_ms")
        return None if v is None else Estimate(v, None, None, r)
    lo, hi = stats.median_ci(list(samples))
    return Estimate(float(np.median(samples)), lo, hi, r)


def memory_estimate(r: Row) -> Estimate | None:
    v = r.get("peak_memory_mb")
    if v is None:
        return None
    return Estimate(v, None, None, r)  # one reading per cell: no interval, a tolerance instead


def accuracy_estimate(r: Row) -> Estimate | None:
    acc, n = r.get("final_val_accuracy"), r.get("val_samples")
    if acc is None or not 0.0 <= acc <= 1.0:  # a fraction; anything else is not an accuracy we can rank
        return None
    if not n:
        return Estimate(100 * acc, None, None, r)
    lo, hi = wilson_interval(acc, int(n))
    return Estimate(100 * acc, 100 * lo, 100 * hi, r)


CRITERIA = [
    Criterion("train_throughput", "Training throughput", "samples/s", True, throughput_estimate),
    Criterion("inference_latency", "Inference latency (batch 1, median)", "ms", False, latency_estimate),
    Criterion(
        "memory", "Peak memory", "MiB", False, memory_estimate, per_framework_best=False, tolerance=MEMORY_TOLERANCE
    ),
    Criterion("accuracy", "Validation accuracy", "%", True, accuracy_estimate),
]


# --- recommendations --------------------------------------------------------------------------


def _better(a: Estimate, b: Estimate, higher: bool) -> bool:
    return a.value > b.value if higher else a.value < b.value


def separated(a: Estimate, b: Estimate, higher: bool) -> bool:
    """Whether a beats b beyond both intervals: a's worse bound is better than b's better bound."""
    if higher:
        return a.low is not None and b.high is not None and a.low > b.high
    return a.high is not None and b.low is not None and a.high < b.low


def common_configuration(rows: list[Row]) -> tuple[str, int] | None:
    """The (precision, batch size) that the most frameworks ran ok, the largest batch among ties."""
    seen: dict[tuple[str, int], set[str]] = {}
    for r in rows:
        seen.setdefault((r["precision"], r["batch_size"]), set()).add(r["framework"])
    if not seen:
        return None
    return max(seen, key=lambda k: (len(seen[k]), k[0] == "fp32", k[1]))


def _describe(e: Estimate, unit: str) -> str:
    ci = f" [{num(e.low)}–{num(e.high)}]" if (e.low is not None or e.high is not None) else ""
    return f"{e.label}: {num(e.value)} {unit}{ci}"


def recommend_one(rows: list[Row], c: Criterion, model: str, device: str) -> Recommendation | None:
    """The recommendation of criterion `c` among the ok cells of one model on one device."""
    group = [r for r in ok_rows(rows) if r["model_name"] == model and r["device"] == device]
    note = ""
    if not c.per_framework_best:
        common = common_configuration(group)
        if common is None:
            return None
        group = [r for r in group if (r["precision"], r["batch_size"]) == common]
        note = f"compared at {common[0]}, batch {common[1]}"
        if c.key == "memory":  # only figures measured the same way (allocator peak vs device memory in use)
            sources = [r.get("memory_source") for r in group]
            common_source = max(set(sources), key=sources.count)
            if len(set(sources)) > 1:
                note += f"; only cells whose memory is '{common_source}'"
            group = [r for r in group if r.get("memory_source") == common_source]
    est = [e for e in (c.estimate(r) for r in group) if e is not None]
    if not est:
        return None
    candidates = _candidates(sorted(est, key=lambda e: e.value, reverse=c.higher_is_better))
    machines = sorted({hardware(e.row) for e in candidates})
    if len(machines) > 1:
        note = (note + "; " if note else "") + f"the cells compared ran on {len(machines)} kinds of hardware"
    winner = candidates[0]
    runner = candidates[1] if len(candidates) > 1 else None
    if runner is None:
        clear, verdict = False, f"only {_describe(winner, c.unit)} measured"
    else:
        clear, verdict = _verdict(c, winner, runner)
    return Recommendation(
        c.key, c.title, model, device, c.unit, winner, runner, clear, verdict, candidates, note, machines
    )


def _candidates(ordered: list[Estimate]) -> list[Estimate]:
    """Several frameworks: the question is which framework, so each one's best configuration;
    one framework: which configuration, so all of them."""
    if len({e.row["framework"] for e in ordered}) == 1:
        return ordered
    best: dict[str, Estimate] = {}
    for e in ordered:
        best.setdefault(e.row["framework"], e)
    return list(best.values())


def _verdict(c: Criterion, winner: Estimate, runner: Estimate) -> tuple[bool, str]:
    """Whether the winner is clearly ahead of the runner-up, and the sentence that says so or why not."""
    timed = c.key in ("train_throughput", "inference_latency")
    noisy = [f"{e.label} ({why_untrusted(e.row)})" for e in (winner, runner) if timed and why_untrusted(e.row)]
    gap = abs(winner.value - runner.value) / abs(runner.value) if runner.value else math.inf
    gap_text = f"{abs(winner.value - runner.value):.1f} points" if c.unit == "%" else f"{gap:.0%}"
    if c.tolerance is not None:
        clear = math.isfinite(gap) and gap > c.tolerance
    else:
        clear = separated(winner, runner, c.higher_is_better) and not noisy
    word = ("higher" if c.higher_is_better else "lower") if c.key != "train_throughput" else "faster"
    if clear:
        return clear, (
            f"{winner.label} ({num(winner.value)} {c.unit}) is {gap_text} {word} than "
            f"{runner.label} ({num(runner.value)} {c.unit}); "
            + (f"more than the {c.tolerance:.0%} tolerance" if c.tolerance else "the 95% intervals do not overlap")
        )
    if noisy:
        return clear, f"no clear winner: too noisy to rank: {'; '.join(noisy)}"
    why = (
        f"gap under {MEMORY_TOLERANCE:.0%}"
        if c.key == "memory"
        else ("intervals overlap" if runner.low is not None or runner.high is not None else "no interval")
    )
    return clear, (
        f"no clear winner: {winner.label} {num(winner.value)} vs {runner.label} {num(runner.value)} {c.unit} ({why})"
    )


def recommendations(rows: list[Row]) -> list[Recommendation]:
    """Every criterion for every (model, device) with at least one ok cell, in a stable order."""
    keys = list(dict.fromkeys((r["model_name"], r["device"]) for r in ok_rows(rows)))
    out = []
    for model, device in keys:
        for c in CRITERIA:
            rec = recommend_one(rows, c, model, device)
            if rec is not None:
                out.append(rec)
    return out


# --- trade-offs and ratios -------------------------------------------------------------------


def pareto_front(points: list[tuple[float, float]], maximise: tuple[bool, bool]) -> list[bool]:
    """Which points no other point beats on both axes (at least as good on both, better on one)."""

    def as_good(a: float, b: float, up: bool) -> bool:
        return a >= b if up else a <= b

    flags = []
    for i, p in enumerate(points):
        dominated = any(
            j != i
            and as_good(q[0], p[0], maximise[0])
            and as_good(q[1], p[1], maximise[1])
            and (q[0] != p[0] or q[1] != p[1])
            for j, q in enumerate(points)
        )
        flags.append(not dominated)
    return flags


def ratios(rows: list[Row], axis: str, baseline: Callable[[Any], bool], key: str = "samples_per_second") -> list[Row]:
    """Each ok cell's `key` over that of the cell equal to it in every axis but `axis`, where that
    one's `axis` value satisfies `baseline` (precision fp32, device cpu, ...). Adds the accuracy
    difference in points."""
    axes = ["framework", "model_name", "device", "precision", "batch_size"]
    others = [a for a in axes if a != axis]
    ok = ok_rows(rows)
    base = {tuple(r[a] for a in others): r for r in ok if baseline(r[axis])}
    out = []
    for r in ok:
        b = base.get(tuple(r[a] for a in others))
        if b is None or b is r or r[axis] == b[axis] or not b.get(key) or r.get(key) is None:
            continue
        acc = (
            100 * (r["final_val_accuracy"] - b["final_val_accuracy"])
            if r.get("final_val_accuracy") is not None and b.get("final_val_accuracy") is not None
            else None
        )
        out.append({"row": r, "base": b, "ratio": r[key] / b[key], "accuracy_delta_pts": acc})
    return out


def gpu_count(device: str) -> int:
    return len(device.split(":", 1)[1].split(",")) if device.startswith("cuda:") else 0


# --- the analysis RESULTS.md states (publish.py words it): leaders, and what an axis buys ------------

UTILISATION_TOLERANCE = 0.10  # relative gap in GPU utilisation (one sampled average per cell) that tells two apart


def gpu_utilization_estimate(r: Row) -> Estimate | None:
    """GPU utilisation over the timed training steps (else over the whole cell); None where NVML measured none."""
    v = r.get("gpu_utilization_train_pct")
    if v is None:
        v = r.get("gpu_utilization_pct")
    return None if v is None else Estimate(v, None, None, r)


GPU_UTILIZATION = Criterion(
    "gpu_utilization",
    "GPU utilisation (training)",
    "%",
    True,
    gpu_utilization_estimate,
    per_framework_best=False,
    tolerance=UTILISATION_TOLERANCE,
)


def leaders(rows: list[Row]) -> list[tuple[str, str, Criterion, Recommendation | None]]:
    """Every criterion, GPU utilisation too, for every (model, device) with an ok cell: its recommendation,
    or None where no ok cell measured the figure."""
    keys = list(dict.fromkeys((r["model_name"], r["device"]) for r in ok_rows(rows)))
    return [(m, d, c, recommend_one(rows, c, m, d)) for m, d in keys for c in [*CRITERIA, GPU_UTILIZATION]]


@dataclass
class Effect:
    """One ok cell against the cell equal to it in every axis but one (fp32, the smallest batch, the CPU):
    what the change of that axis buys, each verdict from the figures' own intervals."""

    row: Row
    base: Row
    ratio: float  # throughput over the base's
    verdict: str  # faster | slower | within the intervals | too noisy: ... | no interval
    accuracy_delta_pts: float | None
    accuracy_verdict: str  # higher | lower | within the intervals | not measured
    memory_ratio: float | None  # peak memory over the base's, where both were measured the same way
    memory_verdict: str  # more | less | about the same (within MEMORY_TOLERANCE) | not measured


def _throughput_verdict(r: Row, b: Row) -> str:
    noisy = [f"{config_label(x)} ({why_untrusted(x)})" for x in (r, b) if why_untrusted(x)]
    if noisy:
        return "too noisy: " + "; ".join(noisy)
    er, eb = throughput_estimate(r), throughput_estimate(b)
    if er is None or eb is None or None in (er.low, er.high, eb.low, eb.high):
        return "no interval"
    if separated(er, eb, True):
        return "faster"
    return "slower" if separated(eb, er, True) else "within the intervals"


def _accuracy_verdict(r: Row, b: Row) -> str:
    er, eb = accuracy_estimate(r), accuracy_estimate(b)
    if er is None or eb is None:
        return "not measured"
    if separated(er, eb, True):
        return "higher"
    return "lower" if separated(eb, er, True) else "within the intervals"


def _memory_change(r: Row, b: Row) -> tuple[float | None, str]:
    mr, mb = r.get("peak_memory_mb"), b.get("peak_memory_mb")
    if not mr or not mb or r.get("memory_source") != b.get("memory_source"):
        return None, "not measured"
    ratio = mr / mb
    if abs(ratio - 1) <= MEMORY_TOLERANCE:
        return ratio, "about the same"
    return ratio, "more" if ratio > 1 else "less"


def effects(rows: list[Row], axis: str, baseline: Callable[[Any], bool]) -> list[Effect]:
    """What changing `axis` away from its baseline value buys, per pair of cells `ratios` finds."""
    out = []
    for p in ratios(rows, axis, baseline):
        r, b = p["row"], p["base"]
        memory_ratio, memory_verdict = _memory_change(r, b)
        out.append(
            Effect(
                r,
                b,
                p["ratio"],
                _throughput_verdict(r, b),
                p["accuracy_delta_pts"],
                _accuracy_verdict(r, b),
                memory_ratio,
                memory_verdict,
            )
        )
    return out


def batch_effects(rows: list[Row]) -> list[Effect]:
    """Each larger batch against the smallest batch of the same framework, model, device and precision."""
    groups: dict[tuple[str, ...], list[Row]] = {}
    for r in ok_rows(rows):
        groups.setdefault((r["framework"], r["model_name"], r["device"], r["precision"]), []).append(r)
    out = []
    for group in groups.values():
        smallest = min(r["batch_size"] for r in group)
        out += effects(group, "batch_size", lambda b, s=smallest: b == s)
    return out


def device_effects(rows: list[Row]) -> list[Effect]:
    """Each one-GPU cell against the same cell on the CPU."""
    return [e for e in effects(rows, "device", lambda d: d == "cpu") if gpu_count(e.row["device"]) == 1]
