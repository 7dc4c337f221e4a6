"""What a run's results say: recommendations with their evidence, Pareto fronts and speed-ups.

Pure functions of result rows (dicts with the schema's columns), framework-free, so the report,
RESULTS.md and the tests draw the same conclusions from the same numbers. A recommendation ranks the
cells whose evidence can rank them and names the ones it leaves out (noisy single runs, cells under
other load); it names a winner only where the evidence tells the top two apart (mlbench/analysis/
evidence.py: a ratio whose between-run 95% interval lies beyond the gap worth reporting, or a gap
beyond what a single run's rerun moves). Accuracy: Wilson intervals of the validation samples. Peak memory, one
reading: a gap beyond what a rerun moves it (15% for a host RSS, 5% for an allocator's or NVML's
figure). Otherwise it says "cannot order" and why: not "alike".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from statistics import NormalDist, fmean
from typing import Any

from mlbench.analysis import evidence
from mlbench.analysis.evidence import Told, why_untrusted
from mlbench.results.labels import config_label, num
from workers.common import stats

MEMORY_TOLERANCE = 0.05  # an allocator's or NVML's peak: the relative gap that tells two cells apart
MEMORY_RSS_FLOOR = 0.15  # a host RSS peak moves up to 6.3% between runs of the same code (docs/compare.md)
Row = dict[str, Any]


@dataclass(frozen=True)
class Estimate:
    """A figure with its 95% interval (None where there is none), what the interval covers (`kind`:
    runs, within_run, validation), how many processes it comes from, and the cell it is of."""

    value: float
    low: float | None
    high: float | None
    row: Row = field(compare=False, repr=False)
    kind: str | None = None
    runs: int = 1
    untrusted: str = ""  # why it cannot be ranked ('' when it can)
    noise: float | None = None  # a single run's own spread, which widens the gap it needs (evidence.noise)
    name: str = ""  # its label where the cell's would mislead (batch-1 latency has no training batch)

    @property
    def label(self) -> str:
        return self.name or config_label(self.row)


@dataclass(frozen=True)
class Criterion:
    key: str  # stable id: train_throughput, inference_latency, memory, accuracy
    title: str
    unit: str
    higher_is_better: bool
    estimates: Callable[[list[Row]], list[Estimate]]  # of the ok cells of one model and device
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
    winner: Estimate | None  # the best ranked estimate
    runner_up: Estimate | None
    clear: bool
    verdict: str  # one line: who leads and by how much, or why the evidence cannot order them
    candidates: list[Estimate]  # the ranked ones, best first
    note: str = ""  # the configuration the comparison was made at, where it is fixed
    hardware: list[str] = field(default_factory=list)  # more than one: the compared cells ran on different machines
    left_out: list[Estimate] = field(default_factory=list)  # not ranked, each with why


def hardware(r: Row) -> str:
    """The machine a cell's figures belong to: CPU model and cores, and its GPUs."""
    cpu = f"{r.get('cpu_model') or '?'} ({r.get('cpu_count_physical') or '?'} cores)"
    return cpu + (f", {r['gpu_model']}" if r.get("gpu_model") else "")


def ok_rows(rows: Iterable[Row]) -> list[Row]:
    return [r for r in rows if r.get("status") == "ok"]


def first_seed(rows: Iterable[Row]) -> list[Row]:
    """The rows the performance verdicts read: each configuration at its first training seed. Further
    seeds (`seeds`) serve accuracy parity; ranking them beside the first would count one configuration
    several times under one label (their repeats are what times a configuration again)."""
    rows = list(rows)

    def key(r: Row) -> tuple[Any, ...]:
        keys = ("framework", "model_name", "device", "precision", "batch_size")
        return (*(r.get(k) for k in keys), bool(r.get("deterministic")))

    first: dict[tuple[Any, ...], int] = {}
    for r in rows:  # the first seed that finished ok, so a failed seed 0 does not hide the configuration
        if r.get("status") == "ok":
            first[key(r)] = min(first.get(key(r), r.get("seed") or 0), r.get("seed") or 0)
    # an emulated-compute cell (DLIO's sleep for a step) trained nothing: no performance verdict reads it
    return [
        r
        for r in rows
        if (r.get("seed") or 0) == first.get(key(r), r.get("seed") or 0) and r.get("emulated_compute_s") is None
    ]


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
    lo, hi = r.get("samples_per_second_ci_low"), r.get("samples_per_second_ci_high")
    return Estimate(v, lo, hi, r, r.get("ci_kind"), evidence.runs_of(r) or 1, why_untrusted(r), evidence.noise(r))


def latency_estimates(rows: list[Row]) -> list[Estimate]:
    """Batch-1 latency is one workload per framework and precision, whatever batch a cell trained at:
    every process that measured it (each cell's each run) is an independent sample of its median, so
    they pool into one figure (their mean) with a between-run interval where there are two or more,
    labelled without a training batch. One process alone: its passes' order-statistics interval."""
    groups: dict[tuple[str, str], list[Row]] = {}
    for r in rows:
        if r.get("inference_b1_latency_p50_ms") is not None:
            groups.setdefault((r["framework"], r["precision"], bool(r.get("deterministic"))), []).append(r)
    out = []
    for (framework, precision, deterministic), members in groups.items():
        p50s = [x for r in members for x in (r.get("repeat_b1_latency_p50_ms") or [r["inference_b1_latency_p50_ms"]])]
        untrusted = "; ".join(w for w in (why_untrusted(r, latency=True) for r in members) if w)
        name = f"{framework} {precision}" + (" deterministic" if deterministic else "")
        if len(p50s) > 1:
            lo, hi = stats.t_interval(p50s)
            out.append(Estimate(fmean(p50s), lo, hi, members[0], "runs", len(p50s), untrusted, name=name))
        else:
            r = members[0]
            lo, hi = r.get("inference_b1_latency_p50_ci_low_ms"), r.get("inference_b1_latency_p50_ci_high_ms")
            if lo is None and r.get("inference_b1_times_ms"):
                lo, hi = stats.median_ci(list(r["inference_b1_times_ms"]))
            out.append(
                Estimate(p50s[0], lo, hi, r, "within_run", 1, untrusted, evidence.noise(r, latency=True), name=name)
            )
    return out


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
    return Estimate(100 * acc, 100 * lo, 100 * hi, r, "validation")


def _each(estimate: Callable[[Row], Estimate | None]) -> Callable[[list[Row]], list[Estimate]]:
    return lambda rows: [e for e in map(estimate, rows) if e is not None]


CRITERIA = [
    Criterion("train_throughput", "Training throughput", "samples/s", True, _each(throughput_estimate)),
    Criterion("inference_latency", "Inference latency (batch 1, median)", "ms", False, latency_estimates),
    Criterion(
        "memory",
        "Peak memory",
        "MiB",
        False,
        _each(memory_estimate),
        per_framework_best=False,
        tolerance=MEMORY_TOLERANCE,
    ),
    Criterion("accuracy", "Validation accuracy", "%", True, _each(accuracy_estimate)),
]


# --- recommendations --------------------------------------------------------------------------


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


def _at_common_configuration(group: list[Row], c: Criterion) -> tuple[list[Row], str]:
    common = common_configuration(group)
    if common is None:
        return [], ""
    group = [r for r in group if (r["precision"], r["batch_size"]) == common]
    note = f"compared at {common[0]}, batch {common[1]}"
    if c.key == "memory":  # only figures measured the same way (allocator peak vs device memory in use)
        sources = [r.get("memory_source") for r in group]
        common_source = max(set(sources), key=sources.count)
        if len(set(sources)) > 1:
            note += f"; only cells whose memory is '{common_source}'"
        group = [r for r in group if r.get("memory_source") == common_source]
    return group, note


def recommend_one(rows: list[Row], c: Criterion, model: str, device: str) -> Recommendation | None:
    """The recommendation of criterion `c` among the ok cells of one model on one device."""
    group = [r for r in ok_rows(rows) if r["model_name"] == model and r["device"] == device]
    note = ""
    if not c.per_framework_best:
        group, note = _at_common_configuration(group, c)
    est = c.estimates(group)
    if not est:
        return None
    ranked = _candidates(sorted((e for e in est if not e.untrusted), key=lambda e: e.value, reverse=c.higher_is_better))
    left_out = _candidates([e for e in est if e.untrusted])
    machines = sorted({hardware(e.row) for e in [*ranked, *left_out]})
    if len(machines) > 1:
        note = (note + "; " if note else "") + f"the cells compared ran on {len(machines)} kinds of hardware"
    winner = ranked[0] if ranked else None
    runner = ranked[1] if len(ranked) > 1 else None
    clear, verdict = _verdict(c, ranked, left_out)
    return Recommendation(
        c.key, c.title, model, device, c.unit, winner, runner, clear, verdict, ranked, note, machines, left_out
    )


def _candidates(ordered: list[Estimate]) -> list[Estimate]:
    """Several frameworks: the question is which framework, so each one's best configuration;
    one framework: which configuration, so all of them."""
    if len({e.row["framework"] for e in ordered}) <= 1:
        return ordered
    best: dict[str, Estimate] = {}
    for e in ordered:
        best.setdefault(e.row["framework"], e)
    return list(best.values())


def not_ranked(left_out: list[Estimate]) -> str:
    return "; ".join(f"{e.label} not ranked: {e.untrusted}" for e in left_out)


def told(c: Criterion, winner: Estimate, runner: Estimate) -> Told:
    """Whether the evidence tells the winner ahead of the runner-up on criterion `c`."""
    if c.key in ("train_throughput", "inference_latency"):
        return evidence.tell(
            winner.value,
            runner.value,
            ((winner.low, winner.high), (runner.low, runner.high)),
            (winner.kind, runner.kind),
            "throughput" if c.key == "train_throughput" else "latency",
            c.higher_is_better,
            (winner.noise, runner.noise),
            (winner.runs, runner.runs),
        )
    ratio = winner.value / runner.value if runner.value else math.inf
    ratio = max(ratio, 1 / ratio) if ratio else math.inf
    if c.key == "memory":
        floor = memory_floor(winner.row, runner.row)
        if ratio - 1 > floor:
            return Told(True, ratio, f"more than the {floor:.0%} a rerun may move it")
        return Told(False, ratio, f"{ratio - 1:.1%} apart, under the {floor:.0%} a rerun may move it")
    if c.tolerance is not None:
        if ratio - 1 > c.tolerance:
            return Told(True, ratio, f"more than the {c.tolerance:.0%} tolerance")
        return Told(False, ratio, f"a gap under {c.tolerance:.0%}")
    if separated(winner, runner, c.higher_is_better):
        return Told(True, ratio, "the validation samples' 95% intervals do not overlap")
    return Told(False, ratio, "the validation samples' 95% intervals overlap")


def memory_floor(*rows: Row) -> float:
    """The relative gap that tells two peak-memory readings apart: a host RSS moves more between runs."""
    return MEMORY_RSS_FLOOR if any("RSS" in str(r.get("memory_source") or "") for r in rows) else MEMORY_TOLERANCE


def memory_dominance(r: Row) -> str:
    """What a cell's peak memory mostly is: the model's training state, or the runtime around it."""
    parts = [r.get(k) for k in ("memory_params_mb", "memory_grads_mb", "memory_optimizer_mb", "memory_activations_mb")]
    peak = r.get("peak_memory_mb")
    if peak is None or any(p is None for p in parts):
        return ""
    model = sum(parts)
    whose = "the model's training state" if model >= peak / 2 else "the runtime (libraries, allocator, data)"
    return f"{config_label(r)}'s {num(peak)} MiB is mostly {whose}: {num(model)} MiB is the model's"


def _verdict(c: Criterion, ranked: list[Estimate], left_out: list[Estimate]) -> tuple[bool, str]:
    """Whether the winner is clearly ahead of the runner-up, and the sentence that says so or why not,
    with the tiers below them."""
    winner = ranked[0] if ranked else None
    runner = ranked[1] if len(ranked) > 1 else None
    excluded = not_ranked(left_out)
    tail = f"; {excluded}" if excluded else ""
    if winner is None:
        return False, f"cannot rank: {excluded}"
    if runner is None:
        return False, f"only {_describe(winner, c.unit)} can be ranked{tail}"
    said = told(c, winner, runner)
    behind = _behind(c, ranked)
    if said.clear:
        dominance = f"; {memory_dominance(winner.row)}" if c.key == "memory" and memory_dominance(winner.row) else ""
        return True, f"{_lead(c, winner, runner, said.ratio)}: {said.why}{dominance}{behind}{tail}"
    return False, (
        f"cannot order {winner.label} {num(winner.value)} and {runner.label} {num(runner.value)} {c.unit}: "
        f"{said.why}{behind}{tail}"
    )


def tiers(c: Criterion, ranked: list[Estimate]) -> list[list[Estimate]]:
    """The ranked estimates in tiers, best first: each one joins the tier above unless the evidence tells
    it apart from that tier's last member (so the A/A twins share a tier, and a slower third falls below)."""
    out: list[list[Estimate]] = []
    for e in ranked:
        if out and not told(c, out[-1][-1], e).clear:
            out[-1].append(e)
        else:
            out.append([e])
    return out


def _behind(c: Criterion, ranked: list[Estimate]) -> str:
    """Past the top two: each lower tier, by how much and why it is behind the tier above it."""
    groups = tiers(c, ranked)
    top = 2 if len(groups[0]) == 1 and len(groups) > 1 else 1  # a lone winner's runner-up tier is said already
    out = []
    for above, tier in zip(groups[top - 1 :], groups[top:]):
        said = told(c, above[-1], tier[0])
        out.append(f"{' and '.join(e.label for e in tier)} behind {above[-1].label} by {said.ratio:.2f}x ({said.why})")
    return "".join(f"; {x}" for x in out)


def _lead(c: Criterion, winner: Estimate, runner: Estimate, ratio: float) -> str:
    """The winner's lead in words: a ratio of the figures (points for a percentage)."""
    w, r = f"{winner.label} ({num(winner.value)} {c.unit})", f"{runner.label} ({num(runner.value)} {c.unit})"
    if c.unit == "%":
        return f"{w} is {abs(winner.value - runner.value):.1f} points {'higher' if c.higher_is_better else 'lower'} than {r}"
    if c.higher_is_better:
        return f"{w} is {ratio:.2f}x {r}"
    return f"{w} is 1/{ratio:.2f} of {r}"


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

    # both axes turned to "higher is better", then one sweep from the best x down (n log n: a grid of
    # thousands of cells): a point is beaten by one of larger x and y at least its own (seen before its
    # x), or by one of the same x and larger y
    pts = [(x if maximise[0] else -x, y if maximise[1] else -y) for x, y in points]
    order = sorted(range(len(pts)), key=lambda i: (-pts[i][0], -pts[i][1]))
    flags = [True] * len(pts)
    best_y = float("-inf")  # the largest y among points of larger x
    i = 0
    while i < len(order):
        j = i
        while j < len(order) and pts[order[j]][0] == pts[order[i]][0]:
            j += 1
        group = order[i:j]
        top = max(pts[k][1] for k in group)
        for k in group:
            flags[k] = not (best_y >= pts[k][1] or top > pts[k][1])
        best_y = max(best_y, top)
        i = j
    return flags


def ratios(rows: list[Row], axis: str, baseline: Callable[[Any], bool], key: str = "samples_per_second") -> list[Row]:
    """Each ok cell's `key` over that of the cell equal to it in every axis but `axis`, where that
    one's `axis` value satisfies `baseline` (precision fp32, device cpu, ...). Adds the accuracy
    difference in points."""
    axes = ["framework", "model_name", "device", "precision", "batch_size", "deterministic"]
    others = [a for a in axes if a != axis]

    def value(r: Row, a: str) -> Any:
        return bool(r.get(a)) if a == "deterministic" else r[a]  # a row from before the setting: off

    ok = ok_rows(rows)
    base = {tuple(value(r, a) for a in others): r for r in ok if baseline(value(r, axis))}
    out = []
    for r in ok:
        b = base.get(tuple(value(r, a) for a in others))
        if b is None or b is r or value(r, axis) == value(b, axis) or not b.get(key) or r.get(key) is None:
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
    _each(gpu_utilization_estimate),
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
    what the change of that axis buys, each verdict from its own evidence."""

    row: Row
    base: Row
    ratio: float  # throughput over the base's
    verdict: str  # faster | slower | cannot tell | not ranked
    why: str  # the evidence's sentence: the rule that decided, or why a cell is not ranked
    updates: tuple[int | None, int | None]  # optimizer updates the row's and the base's training made
    accuracy_delta_pts: float | None
    accuracy_verdict: str  # higher | lower | within the intervals | not measured | not comparable: ...
    memory_ratio: float | None  # peak memory over the base's, where both were measured the same way
    memory_verdict: str  # more | less | about the same (within the floor) | not measured


def updates(r: Row) -> int | None:
    """The optimizer updates a cell's training made: full batches an epoch (the last partial one is
    dropped) times the epochs."""
    n, bs, epochs = r.get("train_samples"), r.get("batch_size"), r.get("epochs")
    return (n // bs) * epochs if n and bs and epochs else None


def _throughput_verdict(r: Row, b: Row) -> tuple[str, str]:
    untrusted = [f"{config_label(x)} not ranked: {why_untrusted(x)}" for x in (r, b) if why_untrusted(x)]
    if untrusted:
        return "not ranked", "; ".join(untrusted)
    er, eb = throughput_estimate(r), throughput_estimate(b)
    if er is None or eb is None:
        return "cannot tell", "no figure"
    faster, slower = (er, eb) if er.value >= eb.value else (eb, er)
    said = evidence.tell(
        faster.value, slower.value, ((faster.low, faster.high), (slower.low, slower.high)),
        (faster.kind, slower.kind), "throughput", noises=(faster.noise, slower.noise),
        runs=(faster.runs, slower.runs),
    )  # fmt: skip
    if not said.clear:
        return "cannot tell", said.why
    return ("faster" if faster is er else "slower"), said.why


def _accuracy_verdict(r: Row, b: Row) -> str:
    """Accuracy of two cells compared only at equal updates and on settled learning curves: a batch twice
    the size makes half the updates in the same epochs, a difference of training length, not of the batch
    (time to a target compares them); a curve still moving compares two points of training, not two
    settings (`converged`, filled by the parity rebuild)."""
    er, eb = accuracy_estimate(r), accuracy_estimate(b)
    if er is None or eb is None:
        return "not measured"
    ur, ub = updates(r), updates(b)
    if ur != ub:
        return f"not comparable: {ur} against {ub} updates (compare time to target_accuracy instead)"
    moving = [config_label(x) for x in (r, b) if x.get("converged") is False]
    if moving:
        return f"not comparable: not converged ({', '.join(moving)}: the last epoch still moved it; more epochs)"
    if separated(er, eb, True):
        return "higher"
    return "lower" if separated(eb, er, True) else "within the intervals"


def _memory_change(r: Row, b: Row) -> tuple[float | None, str]:
    mr, mb = r.get("peak_memory_mb"), b.get("peak_memory_mb")
    if not mr or not mb or r.get("memory_source") != b.get("memory_source"):
        return None, "not measured"
    ratio = mr / mb
    if abs(ratio - 1) <= memory_floor(r, b):
        return ratio, "about the same"
    return ratio, "more" if ratio > 1 else "less"


def effects(rows: list[Row], axis: str, baseline: Callable[[Any], bool]) -> list[Effect]:
    """What changing `axis` away from its baseline value buys, per pair of cells `ratios` finds."""
    out = []
    for p in ratios(rows, axis, baseline):
        r, b = p["row"], p["base"]
        memory_ratio, memory_verdict = _memory_change(r, b)
        verdict, why = _throughput_verdict(r, b)
        out.append(
            Effect(
                r,
                b,
                p["ratio"],
                verdict,
                why,
                (updates(r), updates(b)),
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
