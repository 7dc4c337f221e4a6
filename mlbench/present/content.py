"""What report.html and RESULTS.md both show, derived once from the rows: the status counts, the
warnings, each criterion's verdict, what an axis buys, the bottlenecks, the maxbatch frontier and the
charts. The two writers only word and lay it out."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from mlbench.analysis import bottleneck, evidence, recommend, scaling
from mlbench.analysis.recommend import Effect, Recommendation
from mlbench.present import charts

Row = dict[str, Any]
STATUS_ORDER = {"failed": 0, "crashed": 1, "oom": 2, "timeout": 3, "skipped": 4, "ok": 5}
# minor page faults a step above which the outputs say so: the allocator gives memory back to the
# kernel and maps it in again every step (see `malloc` in docs/measurement.md)
FAULTS_PER_STEP = 5000
PEAK_MOVED = 0.25  # a calibrated peak that moved more than this against the last one on the host is said
Leader = tuple[str, str, recommend.Criterion, Recommendation | None]


@dataclass(frozen=True)
class Content:
    rows: list[Row]
    suite: dict[str, Any]
    env: dict[str, Any]
    grid_size: int | None
    stale: int  # stored cells of another spec, not shown
    counts: dict[str, int]
    warnings: list[str]
    leaders: list[Leader]  # every criterion, GPU utilisation too, per (model, device): None where unmeasured
    effects: dict[str, list[Effect]]  # precision, batch, device: each pair of cells equal but in that axis
    scaling: list[scaling.Verdict]
    bottlenecks: dict[str, list[Row]]
    searches: list[Row] = field(default_factory=list)  # `mlbench maxbatch`'s frontier, where one ran
    probes: list[Row] = field(default_factory=list)
    figures: list[charts.Chart] = field(default_factory=list)
    tradeoffs: list[charts.Chart] = field(default_factory=list)

    @property
    def data_path(self) -> list[Row]:
        """The cells of a run that read files (and their memory twins), for the data-path section; [] where
        every cell was fed from memory."""
        if not any(r.get("data_format") not in (None, "memory") for r in self.rows):
            return []
        mine = [r for r in self.rows if r.get("data_format")]
        return sorted(
            mine,
            key=lambda r: (
                r["model_name"],
                r["framework"],
                r["data_format"] != "memory",
                r["data_format"],
                r.get("loader_workers") or 0,
            ),
        )

    @property
    def recommendations(self) -> list[Recommendation]:
        """The headline criteria's verdicts (GPU utilisation is analysis only), in a stable order."""
        return [rec for _, _, c, rec in self.leaders if rec is not None and c in recommend.CRITERIA]

    @property
    def frontier_chart(self) -> charts.Chart | None:
        return charts.maxbatch_memory(self.probes, self.searches) if self.searches else None

    @property
    def every_chart(self) -> list[charts.Chart]:
        """Every chart either writer shows, in the order RESULTS.md renders them as images."""
        frontier = self.frontier_chart
        return [*self.figures, *self.tradeoffs, *([frontier] if frontier else [])]

    @property
    def hosts(self) -> list[str]:
        return sorted({r["hostname"] for r in self.rows if r.get("hostname")}) or [str(self.env.get("hostname"))]


def gather(
    rows: list[Row],
    suite: dict[str, Any],
    env: dict[str, Any],
    *,
    grid_size: int | None = None,
    stale: int = 0,
    frontier: tuple[list[Row], list[Row]] = ([], []),
    charts_too: bool = True,
) -> Content:
    """Everything both writers show, each derived once. `frontier`: maxbatch's searches and probes;
    `charts_too`: False leaves the figures out (a test of the words alone)."""
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    timed = recommend.first_seed(rows)  # further seeds serve accuracy parity
    leaders = recommend.leaders(timed)
    recs = [rec for _, _, c, rec in leaders if rec is not None and c in recommend.CRITERIA]
    return Content(
        rows=rows,
        suite=suite,
        env=env,
        grid_size=grid_size,
        stale=stale,
        counts=counts,
        warnings=warnings(rows, recs, stale),
        leaders=leaders,
        effects={
            "precision": recommend.effects(timed, "precision", lambda p: p == "fp32"),
            "batch": recommend.batch_effects(timed),
            "device": recommend.device_effects(timed),
            "determinism": recommend.effects(timed, "deterministic", lambda d: not d),
        },
        scaling=scaling.verdicts(timed),
        bottlenecks=bottleneck.by_verdict(timed),
        searches=frontier[0],
        probes=frontier[1],
        figures=charts.figures(timed) if charts_too else [],
        tradeoffs=charts.pareto(timed) if charts_too else [],
    )


RULES = (
    "A clear winner only where the evidence tells the top two apart: a ratio whose 95% interval across runs "
    f"(independent processes) lies beyond a gap of {evidence.MIN_EFFECT:.0%}, or, where a cell ran once, "
    f"a gap beyond what a rerun of the same code moves ({evidence.SINGLE_RUN_FLOOR['throughput']:.0%} "
    f"throughput, {evidence.SINGLE_RUN_FLOOR['latency']:.0%} latency); peak memory, one reading, a gap over "
    f"{recommend.MEMORY_RSS_FLOOR:.0%} (host RSS) or {recommend.MEMORY_TOLERANCE:.0%}. A single run whose own "
    f"samples spread (robust CV over {evidence.NOISE_CV:.0%}) needs that gap widened by twice its robust CV; a cell "
    "under other load is named and left out of the ranking."
)


DATA_PATH_NOTE = (
    "Each file-fed cell against its memory twin (the same steps on batches gathered in host memory): the "
    "loader alone (steady samples/s and MB/s after its first batch, and the time to that batch), how long "
    "each steady step waited for its batch, AU (DLIO's accelerator utilisation: the steps' time not spent "
    "waiting, against the suite's loader.au_threshold), the data tax (the throughput lost to the loader, "
    "bounded by the two throughputs' intervals), the CPU of the worker's child processes (the loader's "
    "workers), the worker tree's peak PSS (pages shared with the loader's processes counted once), what it read, "
    "and whether the cell's first batches are byte for byte those of every other cell that reads the same batches. The page cache is warm: files just written or "
    "read are in memory, so storage speed is not in these figures."
)


def _au_text(r: Row) -> str:
    """AU, its interval where runs give one, and pass, fail or cannot tell (the reason is the row's)."""
    au, ok = r.get("accelerator_utilisation"), r.get("au_pass")
    if au is None:
        return ""
    low, high = r.get("accelerator_utilisation_ci_low"), r.get("accelerator_utilisation_ci_high")
    bounds = f" [{100 * low:.0f}-{100 * high:.0f}%]" if low is not None and high is not None else ""
    return f"{100 * au:.0f}%{bounds} " + ("pass" if ok is True else "fail" if ok is False else "cannot tell")


def _dataset(r: Row) -> dict[str, Any]:
    """The cell's dataset block, from its spec."""
    return (json.loads(r["spec_json"]).get("dataset") or {}) if r.get("spec_json") else {}


def data_path_cells(r: Row) -> dict[str, Any]:
    """One row of the data-path table as words and figures, for both writers."""
    tax = r.get("data_tax")
    if tax is not None:
        bounds = (
            f" [{100 * r['data_tax_low']:.0f}%, {100 * r['data_tax_high']:.0f}%]"
            if r.get("data_tax_low") is not None and r.get("data_tax_high") is not None
            else ""
        )
        # told as every throughput comparison is (data_tax_clear): where it cannot be, said, not ranked
        tax_text = ("cannot tell: " if r.get("data_tax_clear") is False else "") + f"{100 * tax:.0f}%{bounds}"
    else:
        tax_text = "baseline" if r.get("data_format") == "memory" else (r.get("data_tax_reason") or "")
    agree = r.get("digests_agree")
    path = "memory"
    if r.get("data_format") != "memory":
        path = f"{r['data_format']}/{r.get('loader')} w{r.get('loader_workers')}"
        if r.get("image_decoder"):  # an image folder: its codec, what decoded it, and how far from Pillow
            diff = r.get("decode_max_abs_diff")
            path += f", {r.get('image_codec')} by {r['image_decoder']}" + (
                f" ({diff} levels from Pillow at most)" if diff else ""
            )
        if r.get("data_record_bytes") is not None and "record_bytes" in _dataset(r):
            # records padded to the workload's size (dataset.record_bytes): what the files held
            sd = r.get("data_record_bytes_stdev") or 0
            path += f", records {r['data_record_bytes']:,.0f}" + (f" ± {sd:,.0f}" if sd else "") + " B"
        if r.get("data_storage") in ("stream", "cache"):  # object storage: how, and what it fetched
            hit = " (hit)" if r.get("storage_cache_hit") else ""
            path += f", {r['data_storage']}{hit} from {r.get('data_uri')}"
    if r.get("emulated_compute_s") is not None:
        path += f", emulated step {1000 * r['emulated_compute_s']:.3g} ms"
    return {
        "loader": path,
        "samples_per_second": r.get("samples_per_second"),
        "loader_samples_per_second": r.get("loader_samples_per_second"),
        "loader_mb_per_second": r.get("loader_mb_per_second"),
        "time_to_first_batch_s": r.get("time_to_first_batch_s"),
        "wait_p50_ms": 1000 * r["data_wait_p50_s"] if r.get("data_wait_p50_s") is not None else None,
        "wait_p99_ms": 1000 * r["data_wait_p99_s"] if r.get("data_wait_p99_s") is not None else None,
        "au": _au_text(r),
        "tax": tax_text,
        "same_batches": "" if agree is None else ("yes" if agree else f"no: {r.get('digest_mismatch')}"),
        "child_cpu": r.get("child_cpu_avg_pct"),
        "pss": r.get("tree_pss_peak_mb"),
        "read": r.get("read_chars_mb"),
        "storage_mb": r.get("storage_read_mb"),
        "storage_mb_s": r.get("storage_read_mb_per_second"),
    }


DATA_PATH_HEAD = [
    ("loader", "data path"),
    ("samples_per_second", "train samples/s"),
    ("loader_samples_per_second", "loader alone samples/s"),
    ("loader_mb_per_second", "loader MB/s"),
    ("time_to_first_batch_s", "first batch s"),
    ("wait_p50_ms", "wait p50 ms"),
    ("wait_p99_ms", "wait p99 ms"),
    ("au", "AU"),
    ("tax", "data tax"),
    ("child_cpu", "loader processes CPU %"),
    ("pss", "tree PSS MiB"),
    ("read", "read MiB"),
    ("storage_mb", "object storage MB"),
    ("storage_mb_s", "object storage MB/s"),
    ("same_batches", "same batches"),
]


STORAGE_COLUMNS = ("storage_mb", "storage_mb_s")


def data_path_head(rows: list[Row]) -> list[tuple[str, str]]:
    """DATA_PATH_HEAD, with the object-storage columns only where a cell read object storage."""
    remote = any(r.get("data_storage") in ("stream", "cache") for r in rows)
    return [(k, t) for k, t in DATA_PATH_HEAD if remote or k not in STORAGE_COLUMNS]


def badge(rec: Recommendation) -> str:
    """The verdict in two words: a clear winner, or why there is none (not "alike": "cannot order")."""
    if rec.clear:
        return "clear winner"
    return "cannot order" if rec.runner_up is not None else ("one ranked" if rec.winner else "none ranked")


def stale_note(stale: int) -> str:
    return (
        f"{stale} stored cell(s) were measured under a different spec (another config or an older mlbench) "
        "and are not part of these results; `mlbench run CONFIG --resume` runs the cells missing."
    )


def warnings(rows: list[Row], recommendations: list[Recommendation], stale: int = 0) -> list[str]:
    """What a reader must know before trusting the figures, most serious first."""
    out = [stale_note(stale)] if stale else []
    mixed = [r for r in recommendations if len(r.hardware) > 1]
    if mixed:
        where = ", ".join(sorted({f"{r.model} on {r.device}" for r in mixed}))
        out.append(
            f"{len(mixed)} recommendation(s) compare cells that ran on different hardware ({where}): they compare "
            "machines as well as frameworks. See Hosts; run each comparison on one kind of node to separate the two."
        )
    bad = [r for r in rows if r["status"] not in ("ok", "skipped")]
    if bad:
        out.append(f"{len(bad)} cell(s) did not finish: see the cells table (failures first).")
    if any(r.get("verify_passed") is False for r in rows):
        out.append(
            "mlbench verify found a model that differs between frameworks: its comparisons are not like for like."
        )
    different = sorted(
        {
            f"{r['model_name']} {r['precision']} bs{r['batch_size']}"
            for r in rows
            if r.get("accuracy_parity_verdict") == "different"
        }
    )
    if different:  # only a difference the sample resolves on converged models: the rest is said under Parity
        out.append(
            f"Validation accuracy differs across frameworks by more than the allowed points ({', '.join(different)}): "
            "the 95% interval of the difference lies outside the tolerance, on models whose learning curves have "
            "settled. See Parity."
        )
    noisy = [r for r in rows if r.get("noisy")]
    if noisy:
        outliers = sum(r.get("step_time_outliers") or 0 for r in noisy)
        with_gc = sum(r.get("step_outliers_with_gc") or 0 for r in noisy)
        loaded_ = sum(evidence.loaded(r) for r in noisy)
        out.append(
            f"{len(noisy)} cell(s) have step times whose robust spread is above 10%, with {outliers} outlier "
            f"step(s), {with_gc} of them paused by garbage collection, and {loaded_} cell(s) under other load "
            "during their timed steps: where such a cell ran once, a verdict needs a gap wider by twice its spread."
        )
    ok = recommend.ok_rows(rows)
    faulting = [r for r in ok if (r.get("page_faults_per_step") or 0) > FAULTS_PER_STEP]
    if faulting:
        worst = max(r["page_faults_per_step"] for r in faulting)
        out.append(
            f"{len(faulting)} cell(s) page-faulted more than {FAULTS_PER_STEP:,} pages a training step (up to "
            f"{worst:,.0f}): memory given back to the kernel and mapped in again every step, a cost inside their "
            "step times that the allocator's settings decide (see `malloc` in docs/measurement.md)."
        )
    moved = [r for r in ok if r.get("peak_tflops") and r.get("peak_tflops_earlier")]
    moved = [r for r in moved if abs(r["peak_tflops"] / r["peak_tflops_earlier"] - 1) > PEAK_MOVED]
    if moved:
        worst = max(moved, key=lambda r: abs(r["peak_tflops"] / r["peak_tflops_earlier"] - 1))
        out.append(
            f"The calibrated peak moved more than {PEAK_MOVED:.0%} against the last calibration on this host for "
            f"{len(moved)} cell(s) (up to {worst['peak_tflops']:.3g} against {worst['peak_tflops_earlier']:.3g} "
            "TFLOP/s): MFU does not compare across those runs, and a bottleneck verdict that reads MFU moves with it."
        )
    contended = [r for r in ok if (r.get("calibration_other_pct") or 0) > evidence.other_load_limit_pct(r)]
    if contended:
        out.append(
            f"The calibration behind {len(contended)} cell(s)' MFU ran while other processes used the CPU (up to "
            f"{max(r['calibration_other_pct'] for r in contended):.0f}% of a core): its peak is low and their MFU high."
        )
    over = [
        r
        for r in ok
        if r.get("peak_tflops") and (r.get("achieved_tflops") or 0) > r["peak_tflops"] and r.get("mfu") is None
    ]
    if over:
        out.append(
            f"{len(over)} cell(s) trained faster than the calibrated peak of their device and precision: their MFU "
            "would be above 1, so it is not stored; the calibration measured too low a peak (see calibration.json)."
        )
    busy = [r for r in ok if evidence.loaded(r)]
    if busy:
        worst = max(r["cpu_other_pct"] for r in busy)
        out.append(
            f"{len(busy)} cell(s) ran while other processes used more than "
            f"{min(evidence.other_load_limit_pct(r) for r in busy):.0f}% of a core (up to {worst:.0f}%): their "
            "timings measure that contention too. Rerun them on a quiet machine."
        )
    return out
