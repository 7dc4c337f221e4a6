"""`mlbench compare RUN_A RUN_B`: the same cells in two runs, each figure's change and whether it is real.

Cells are matched by their spec less the worker module (so a patched worker can be compared with
the stock one). A change is significant when a two-sided Mann-Whitney rank test on the raw
samples (step times, inference latencies) gives p < alpha AND the relative change is at least
`min_change`, raised to twice the figure's coefficient of variation across repeats where the runs have them:
thousands of step samples make any shift "significant", so the practical threshold carries the
verdict. Accuracy is judged as parity judges two frameworks (`accuracy_change`): the difference's
95% interval, paired on the same validation samples where both rows carry per-sample correctness,
against a floor of ACCURACY_FLOOR_PTS, and only between cells whose learning curves have settled;
figures with a single reading (peak memory) are flagged on the relative change alone. A latency must
also move by at least `min_change_ms` milliseconds (0 by default): a sub-millisecond latency shifts by
tens of microseconds between runs of the same code, a large relative change no code made.
Where either run is a single run, the floors below decide (their evidence: docs/compare.md).
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scipy import stats as sps

from mlbench.analysis import parity
from mlbench.analysis.evidence import loaded
from mlbench.results import store
from mlbench.results.labels import label

Row = dict[str, Any]
ENV_KEYS = (
    "mlbench_version",  # how a figure is measured can change between versions (0.2.0: CPU step times)
    "hostname",
    "cpu_model",
    "cpu_count_physical",
    "memory_total_gb",
    "gpus",
    "gpu_driver",
    "os",
    "python_version",
)
MALLOC_FLAGS = ("GLIBC_TUNABLES", "LD_PRELOAD")  # of the rows' env_flags
ROW_ENV_KEYS = ("executor", "hostname", "cpu_model", "gpu_model")


@dataclass(frozen=True)
class Metric:
    column: str
    title: str
    unit: str
    higher_is_better: bool
    samples: str | None = None  # raw samples column for the rank test
    kind: str = "rank"  # rank | fisher | single
    run_cv: str | None = None  # the figure's coefficient of variation across repeats


METRICS = [
    Metric("samples_per_second", "training throughput", "samples/s", True, "step_times_s", run_cv="repeats_cv"),
    Metric(
        "inference_latency_p50_ms",
        "inference latency p50",
        "ms",
        False,
        "inference_times_ms",
        run_cv="repeats_latency_cv",
    ),
    Metric(
        "inference_b1_latency_p50_ms",
        "batch-1 latency p50",
        "ms",
        False,
        "inference_b1_times_ms",
        run_cv="repeats_b1_latency_cv",
    ),
    Metric("peak_memory_mb", "peak memory", "MiB", False, kind="single"),
    Metric("final_val_accuracy", "validation accuracy", "%", True, kind="fisher"),
]


@dataclass
class Change:
    cell: str  # the cell's label
    metric: Metric
    a: float
    b: float
    rel: float  # (b - a) / a
    p: float | None
    threshold: float
    verdict: (
        str  # regression | improvement | unconfirmed (a change a single run or other load cannot confirm) | unchanged
    )
    floor_ms: float = 0.0  # the smallest change in ms that counted as well (latencies)

    @property
    def significant(self) -> bool:
        return self.verdict != "unchanged"


@dataclass
class Comparison:
    run_a: Path
    run_b: Path
    changes: list[Change]
    only_a: list[str]
    only_b: list[str]
    env_diff: dict[str, tuple[Any, Any]]
    notes: list[str] = field(default_factory=list)
    matched: int = 0  # cells ok in both runs with the same spec

    @property
    def regressions(self) -> list[Change]:
        return [c for c in self.changes if c.verdict == "regression"]

    @property
    def improvements(self) -> list[Change]:
        return [c for c in self.changes if c.verdict == "improvement"]

    @property
    def unconfirmed(self) -> list[Change]:
        return [c for c in self.changes if c.verdict == "unconfirmed"]


def load_run(path: Path) -> tuple[list[Row], dict[str, Any]]:
    """The rows and environment of a run folder or a results file, checked for what compare needs."""
    found = store.load_results(path)
    missing = [c for c in ("spec_json", "status", "worker_module") if found.rows and c not in found.rows[0]]
    if missing:
        raise store.ResultsError(
            f"{found.source}: no {', '.join(missing)} column (written by an mlbench too old to compare)"
        )
    return found.rows, found.env


def match_key(row: Row) -> str:
    """The cell's spec without the worker module and the malloc setting: the same measurement, whoever
    ran it and under which allocator (a difference in either is listed beside the figures; a run from
    before the setting existed matches too)."""
    spec = json.loads(row["spec_json"])
    spec.pop("worker", None)
    spec.pop("malloc", None)
    return json.dumps(spec, sort_keys=True)


# How far a single run's figures move between runs of the same code (docs/compare.md, "Single runs"):
# without repeats on both sides, a smaller change is `unconfirmed`, never a regression
SINGLE_RUN_FLOOR = {"samples_per_second": 0.45, "ms": 0.75}
SINGLE_RUN_FLOOR_MS = 0.1  # and a latency must move by this much in absolute terms
SINGLE_RUN_FLOOR_RSS = 0.15  # a host RSS peak (CPU cells); an allocator's or NVML's figure keeps min_change


# an accuracy change counts only where its 95% interval lies beyond this many points (parity's default
# tolerance): a 5-point drop on 512 samples is a guess, and a curve still moving swings further
ACCURACY_FLOOR_PTS = 2.0


def accuracy_change(ra: Row, rb: Row) -> tuple[str, float | None]:
    """(verdict, p) of B's validation accuracy against A's: improvement or regression where the interval
    of B minus A lies beyond the floor, unchanged where it lies inside it or where the change seen is
    under it, else unconfirmed; unconfirmed too where either cell's learning curve still moved in its last
    epoch (parity.convergence). p: McNemar's exact test on the discordant samples where paired, else
    Fisher's on the counts."""
    diff = parity.compare_pair(rb, ra, ACCURACY_FLOOR_PTS)
    n = diff.n
    if diff.paired:
        va, vb = (parity.correct_vector(r.get("val_correct_bits"), n) for r in (ra, rb))
        only_b, only_a = int((vb & ~va).sum()), int((va & ~vb).sum())
        p = float(sps.binomtest(only_b, only_a + only_b).pvalue) if only_a + only_b else 1.0
    else:
        ca, cb = round(ra["final_val_accuracy"] * n), round(rb["final_val_accuracy"] * n)
        p = float(sps.fisher_exact([[ca, n - ca], [cb, n - cb]]).pvalue) if n else None
    if diff.verdict == "equivalent" or (diff.verdict == "unresolved" and abs(diff.diff_pts) < ACCURACY_FLOOR_PTS):
        return "unchanged", p
    if diff.verdict == "unresolved":
        return "unconfirmed", p
    if any(parity.convergence(r, ACCURACY_FLOOR_PTS)[0] is False for r in (ra, rb)):
        return "unconfirmed", p
    return ("improvement" if diff.diff_pts > 0 else "regression"), p


def _verdict(rel: float, significant: bool, higher_is_better: bool) -> str:
    if not significant:
        return "unchanged"
    better = rel > 0 if higher_is_better else rel < 0
    return "improvement" if better else "regression"


def single_run(ra: Row, rb: Row) -> bool:
    """Whether either side ran once: no run-to-run variation measured for the threshold."""
    return not ((ra.get("repeats") or 1) > 1 and (rb.get("repeats") or 1) > 1)


def confirmed(m: Metric, ra: Row, rb: Row, rel: float, verdict: str) -> str:
    """A rank-test change stands only beyond the single-run floor (where either run has no repeats)
    and where neither cell ran under other load, a host-RSS memory change only beyond its own floor
    between single runs; else it is `unconfirmed`."""
    if verdict == "unchanged":
        return verdict
    if m.column == "peak_memory_mb":
        rss = any("RSS" in str(r.get("memory_source") or "") for r in (ra, rb))
        return "unconfirmed" if rss and single_run(ra, rb) and abs(rel) < SINGLE_RUN_FLOOR_RSS else verdict
    if m.kind != "rank":
        return verdict
    if loaded(ra) or loaded(rb):
        return "unconfirmed"
    if single_run(ra, rb):
        floor = SINGLE_RUN_FLOOR["ms" if m.unit == "ms" else m.column]
        moved_ms = abs(rb[m.column] - ra[m.column]) if m.unit == "ms" else math.inf
        if abs(rel) < floor or moved_ms < SINGLE_RUN_FLOOR_MS:
            return "unconfirmed"
    return verdict


def compare_metric(
    m: Metric, ra: Row, rb: Row, alpha: float, min_change: float, min_change_ms: float = 0.0
) -> Change | None:
    a, b = ra.get(m.column), rb.get(m.column)
    if a is None or b is None or not (math.isfinite(a) and math.isfinite(b)) or a == 0:
        return None
    if m.kind == "fisher" and not (0.0 <= a <= 1.0 and 0.0 <= b <= 1.0):
        return None
    scale = 100.0 if m.kind == "fisher" else 1.0
    rel = (b - a) / abs(a)
    p: float | None = None
    untested = False
    threshold = min_change
    floor_ms = 0.0
    if m.kind == "rank":
        noise = [r.get(m.run_cv) for r in (ra, rb) if m.run_cv and r.get(m.run_cv) is not None]
        threshold = max([min_change, *(2 * n for n in noise)])
        xa, xb = list(ra.get(m.samples) or []), list(rb.get(m.samples) or [])
        if len(xa) >= 3 and len(xb) >= 3:
            p = float(sps.mannwhitneyu(xa, xb, alternative="two-sided").pvalue)
            # the samples must move the way the figure did: step times up (slower) means throughput down
            moved = statistics.median(xb) - statistics.median(xa)
            agree = (moved < 0) == (rel > 0) if m.column == "samples_per_second" else (moved > 0) == (rel > 0)
            significant = p < alpha and abs(rel) >= threshold and agree
            # a change past the threshold that the few samples cannot confirm (6 timed steps of a make
            # quick MLP, one of them an outlier: a planted 2x slowdown at p = 0.04) is not "unchanged"
            untested = not significant and abs(rel) >= threshold and agree
        else:  # no raw samples to test (an older run): the change alone decides, and p says "—"
            significant = abs(rel) >= threshold
        if m.unit == "ms" and min_change_ms:
            floor_ms = min_change_ms
            significant = significant and abs(b - a) >= min_change_ms
            untested = untested and abs(b - a) >= min_change_ms
    elif m.kind == "fisher":
        if not (ra.get("val_samples") and rb.get("val_samples")):
            return None
        verdict, p = accuracy_change(ra, rb)
        return Change(label(rb), m, a * scale, b * scale, rel, p, ACCURACY_FLOOR_PTS / 100, verdict)
    else:
        significant = abs(rel) >= threshold
    verdict = "unconfirmed" if untested else confirmed(m, ra, rb, rel, _verdict(rel, significant, m.higher_is_better))
    return Change(label(rb), m, a * scale, b * scale, rel, p, threshold, verdict, floor_ms)


def environment_differences(
    rows_a: list[Row], rows_b: list[Row], env_a: dict[str, Any], env_b: dict[str, Any]
) -> dict[str, tuple[Any, Any]]:
    """What differs between the two runs' machines and software, listed beside the figures."""
    diff = {k: (env_a.get(k), env_b.get(k)) for k in ENV_KEYS if env_a.get(k) != env_b.get(k)}
    for var in MALLOC_FLAGS:  # the workers' malloc moves step times (see the `malloc` setting)
        va, vb = (
            ", ".join(sorted({json.loads(r.get("env_flags") or "{}").get(var) or "unset" for r in rows}))
            for rows in (rows_a, rows_b)
        )
        if va != vb:
            diff[var] = (va, vb)
    for column in ROW_ENV_KEYS:  # where the cells ran (a Ray run's cells run on its nodes, not the head)
        va, vb = (", ".join(sorted({str(r.get(column) or "unknown") for r in rows})) for rows in (rows_a, rows_b))
        if va != vb:
            diff[f"cells' {column}"] = (va, vb)
    fa, fb = env_a.get("frameworks") or {}, env_b.get("frameworks") or {}
    for fw in sorted(set(fa) | set(fb)):
        if fa.get(fw) != fb.get(fw):
            diff[f"{fw} version"] = (fa.get(fw), fb.get(fw))
    return diff


def notes_on(runs: tuple[Path, Path], rows_a: list[Row], ok_a: dict[str, Row], ok_b: dict[str, Row]) -> list[str]:
    """What a reader should know before trusting the verdicts: missing raw samples, changed workers,
    single runs, cells under other load."""
    notes = [
        f"{path}: no raw step times (a results.json): its throughput and latency changes are judged on their "
        "size alone, without the rank test"
        for path, ok in zip(runs, (ok_a, ok_b))
        if ok and not any(len(r.get("step_times_s") or []) for r in ok.values())
    ]
    workers_a = {match_key(r): r["worker_module"] for r in rows_a}
    for key, rb in ok_b.items():
        if key in workers_a and workers_a[key] != rb["worker_module"]:
            notes.append(f"{label(rb)}: worker {workers_a[key]} in A, {rb['worker_module']} in B")
    single = [label(r) for k, r in ok_b.items() if k in ok_a and single_run(ok_a[k], r)]
    if single:
        notes.append(
            f"{len(single)} matched cell(s) ran once in A or B (no repeats): a throughput change under "
            f"{SINGLE_RUN_FLOOR['samples_per_second']:.0%} or a latency change under {SINGLE_RUN_FLOOR['ms']:.0%} "
            f"(or {SINGLE_RUN_FLOOR_MS:g} ms) is unconfirmed, as two runs of the same code differ that much on a "
            "small machine; use repeats: 3 on both for a verdict on smaller changes"
        )
    for key, rb in ok_b.items():
        for name, r in (("A", ok_a.get(key)), ("B", rb)):
            if r is not None and loaded(r):
                notes.append(
                    f"{label(r)} in {name}: other processes used {r['cpu_other_pct']:.0f}% of a core during the cell; "
                    "its timings are suspect"
                )
    return notes


def compare_runs(
    run_a: Path, run_b: Path, alpha: float = 0.01, min_change: float = 0.05, min_change_ms: float = 0.0
) -> Comparison:
    rows_a, env_a = load_run(run_a)
    rows_b, env_b = load_run(run_b)
    ok_a = {match_key(r): r for r in rows_a if r["status"] == "ok"}
    ok_b = {match_key(r): r for r in rows_b if r["status"] == "ok"}
    matched = [k for k in ok_b if k in ok_a]
    changes = [
        c
        for key in matched
        for m in METRICS
        if (c := compare_metric(m, ok_a[key], ok_b[key], alpha, min_change, min_change_ms)) is not None
    ]
    return Comparison(
        run_a,
        run_b,
        changes,
        only_a=[label(r) for k, r in ok_a.items() if k not in ok_b],
        only_b=[label(r) for k, r in ok_b.items() if k not in ok_a],
        env_diff=environment_differences(rows_a, rows_b, env_a, env_b),
        notes=notes_on((run_a, run_b), rows_a, ok_a, ok_b),
        matched=len(matched),
    )
