"""What a figure's evidence can tell: one rule for every verdict that compares two timed figures (the
recommendations, what an axis buys, data parallel, compare's notes).

A figure carries an interval and says what it covers (`ci_kind`): `runs`, the t-interval of the mean
over independent worker processes, which is what a rerun would give; or `within_run`, one process's
samples, which says nothing of where the next process lands (reruns of one cell on a 2-core machine
moved 1.4-33% against within-run intervals of about 1%: docs/measurement.md). So two figures are told
apart only when
- both are between-run figures and the 95% interval of their ratio (Welch, from the two t-intervals)
  lies wholly beyond the gap worth reporting (MIN_EFFECT): the gap clears both the runs' uncertainty
  and the minimum effect, or
- either is a single run and the gap clears what a rerun of the same code moves (SINGLE_RUN_FLOOR,
  measured: docs/compare.md);
and never when either cell is untrusted (its own samples too noisy, or other load during it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from workers.common.stats import NOISE_CV, t_quantile

Row = dict[str, Any]
MIN_EFFECT = 0.05  # a gap under 5% is no verdict, whatever the intervals say (400,000 vs 399,000 samples/s)
# how much faster (ratio - 1) one single run must be than another to be told apart: a rerun of the same
# code moved throughput by up to 44% and a batch-1 latency by up to 66% (docs/compare.md)
SINGLE_RUN_FLOOR = {"throughput": 0.45, "latency": 0.75}
# how far (in AU, 0-1) one run's AU must lie from a threshold for a pass or a fail: five reruns each of
# 12 file-fed cells on 2 cores moved AU by up to 0.142 (PyTorch's MLP over TFRecord with 2 loader workers,
# 0.64-0.78: the workers compete with the step for the cores), 0.005-0.07 elsewhere (`make bench-au`,
# bench/README.md). So one run at 2 cores can fail a 0.90 threshold (below 0.75) but never pass it
AU_SINGLE_RUN_FLOOR = 0.15
# CPU other processes used during a cell (% of one core) above which it is suspect: a quarter of a core,
# or 5% of the machine where that is more (a 128-core node is never quiet to a quarter of one core)
OTHER_LOAD_PCT = 25.0
OTHER_LOAD_SHARE = 0.05


@dataclass(frozen=True)
class Told:
    """What two figures' evidence says: whether the first is ahead, by how much, and why (or why not)."""

    clear: bool
    ratio: float  # the better figure over the worse (>= 1)
    why: str  # the rule that decided: "beyond the between-run uncertainty: ...", "single runs: ... under the 45% ..."


def other_load_limit_pct(r: Row) -> float:
    """The other load (in % of one core) above which a cell's timings are suspect on its machine."""
    return max(OTHER_LOAD_PCT, OTHER_LOAD_SHARE * 100.0 * (r.get("cpu_count_logical") or 1))


def other_load(r: Row, phase: str = "train") -> float | None:
    """Other processes' CPU (% of one core) during the phase a figure comes from (the timed training
    steps, or the timed inference passes), else over the whole cell (a row from before the phases)."""
    during = r.get(f"cpu_other_{phase}_pct")
    return during if during is not None else r.get("cpu_other_pct")


def loaded(r: Row, phase: str = "train") -> bool:
    """Whether other processes used the CPU enough during the phase to skew its timings."""
    other = other_load(r, phase)
    return other is not None and other > other_load_limit_pct(r)


def noise(r: Row, latency: bool = False) -> float | None:
    """A single run's own spread above the noise line (the training steps' robust CV for throughput, the
    batch-1 passes' for latency), which widens the gap it needs; None where there is none to add (a
    between-run interval holds the spread already)."""
    if r.get("ci_kind") == "runs":
        return None
    cv = r.get("inference_b1_latency_robust_cv" if latency else "step_time_robust_cv")
    return cv if cv is not None and cv > NOISE_CV else None


def why_untrusted(r: Row, latency: bool = False) -> str:
    """Why a cell's timings cannot rank it at all ('' when they can): other processes used the CPU during
    the phase the figure comes from (its timed steps, or its timed inference passes)."""
    reasons = []
    phase = "inference" if latency else "train"
    if loaded(r, phase):
        reasons.append(f"other processes used {other_load(r, phase):.0f}% of a core")
    return ", ".join(reasons)


def ratio_interval(
    ratio: float,
    intervals: tuple[tuple[float, float], tuple[float, float]],
    values: tuple[float, float],
    runs: tuple[int, int],
    confidence: float = 0.95,
) -> tuple[float, float]:
    """The `confidence` interval of `ratio` (one between-run mean over another) from each mean's t-interval
    over `runs` processes: each interval gives its mean's standard error, relative on the log scale (the
    delta method), and Welch's degrees of freedom join the two. The ratio's own interval is the test of
    the gap (asking that two 95% intervals do not overlap is a test near the 99.5% level)."""
    ses = [(hi - lo) / 2 / t_quantile(confidence, n - 1) / v for (lo, hi), v, n in zip(intervals, values, runs)]
    se = math.hypot(*ses)
    if se == 0:
        return ratio, ratio
    df = se**4 / sum(s**4 / (n - 1) for s, n in zip(ses, runs))
    half = t_quantile(confidence, df) * se
    return ratio * math.exp(-half), ratio * math.exp(half)


def tell(
    better: float,
    worse: float,
    intervals: tuple[tuple[float | None, float | None], tuple[float | None, float | None]],
    kinds: tuple[str | None, str | None],
    what: str,
    higher_is_better: bool = True,
    noises: tuple[float | None, float | None] = (None, None),
    runs: tuple[int | None, int | None] = (None, None),
) -> Told:
    """Whether `better` is ahead of `worse` beyond their evidence. `intervals`: each figure's (low, high);
    `kinds`: each one's ci_kind; `what`: throughput or latency (its single-run floor); `noises`: a noisy
    single run's own spread (`noise`), which widens the floor by twice itself; `runs`: how many processes
    each between-run figure is the mean of (its interval is their t-interval)."""
    if not (better and worse) or not (math.isfinite(better) and math.isfinite(worse)):
        return Told(False, math.nan, "no figure to compare")
    oriented = better / worse if higher_is_better else worse / better  # above 1 where `better` is ahead
    ratio = max(oriented, 1 / oriented)
    if all(k == "runs" for k in kinds):
        (bl, bh), (wl, wh) = intervals
        if None in (bl, bh, wl, wh) or any(n is None or n < 2 for n in runs):
            return Told(False, ratio, "no interval")
        pair = ((bl, bh), (wl, wh))
        low, high = ratio_interval(oriented, pair, (better, worse), runs)  # type: ignore[arg-type]
        span = f"{low:.2f}x to {high:.2f}x at 95%"
        if low <= 1:
            return Told(False, ratio, f"within the between-run uncertainty: {span}")
        if low - 1 < MIN_EFFECT:
            return Told(False, ratio, f"{span}, not clearly the {MIN_EFFECT:.0%} worth reporting")
        return Told(True, ratio, f"beyond the between-run uncertainty: {span}")
    spread = max((n for n in noises if n), default=0.0)
    floor = SINGLE_RUN_FLOOR[what] + 2 * spread
    runs_said = "single runs" if all(k != "runs" for k in kinds) else "a single run"
    moves = (
        f"a rerun of a run this noisy (robust CV {spread:.0%}) moves" if spread else "a rerun of the same code moves"
    )
    if ratio - 1 < floor:
        return Told(False, ratio, f"{runs_said}: {ratio - 1:.0%} apart, under the {floor:.0%} {moves}")
    return Told(True, ratio, f"{runs_said}, beyond the {floor:.0%} {moves}")


def runs_of(r: Row) -> int | None:
    """How many processes a between-run throughput is the mean of: the runs that gave a figure."""
    return len(r["repeat_samples_per_second"]) if r.get("repeat_samples_per_second") else r.get("repeats")


def throughput_ratio_bounds(a: Row, b: Row) -> tuple[float | None, float | None]:
    """The 95% bounds of a's throughput over b's: the ratio's own interval where both are between-run
    figures (the one `tell` decides by), else the ratio of the crossed intervals (a single run's own
    interval, which no verdict reads as covering a rerun)."""
    (al, ah), (bl, bh) = ((x.get("samples_per_second_ci_low"), x.get("samples_per_second_ci_high")) for x in (a, b))
    va, vb = a.get("samples_per_second"), b.get("samples_per_second")
    if None in (al, ah, bl, bh, va, vb) or not vb:
        return None, None
    runs = (runs_of(a), runs_of(b))
    if a.get("ci_kind") == b.get("ci_kind") == "runs" and all(n and n >= 2 for n in runs):
        return ratio_interval(va / vb, ((al, ah), (bl, bh)), (va, vb), runs)  # type: ignore[arg-type]
    return (al / bh if bh else None), (ah / bl if bl else None)


def tell_throughput(a: Row, b: Row) -> Told:
    """`tell` on two rows' throughputs, the faster first: their intervals, interval kinds and noise."""
    fast, slow = (a, b) if a["samples_per_second"] >= b["samples_per_second"] else (b, a)
    return tell(
        fast["samples_per_second"],
        slow["samples_per_second"],
        tuple((x.get("samples_per_second_ci_low"), x.get("samples_per_second_ci_high")) for x in (fast, slow)),
        (fast.get("ci_kind"), slow.get("ci_kind")),
        "throughput",
        noises=(noise(fast), noise(slow)),
        runs=(runs_of(fast), runs_of(slow)),
    )
