"""Combine the repeats of each cell into one results row; repeats.parquet keeps every run's own row.

Each repeat is an independent worker process, interleaved across the grid. Throughput and the
latency medians are the mean over the runs that finished ok, and their interval is that mean's
95% t-interval across the runs (`ci_kind` runs): what a rerun would give, which one process's samples
cannot say. The step and pass statistics (median, CV, percentiles) come from the pooled raw samples.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from typing import Any

import pyarrow as pa

from mlbench.results import rows, schema
from workers.common import stats

MAX_OF = (
    "peak_memory_mb",
    "host_rss_peak_mb",
    "worker_max_rss_mb",
    "device_peak_allocated_mb",
    "gpu_memory_used_peak_mb",
    "gpu_utilization_peak_pct",
    "memory_activations_mb",
)
# a step's time by part: the mean over the runs, so the parts still add up to the profiled step
MEAN_OF = (
    *(f"step_{part}_s" for part in ("data", "forward", "backward", "optimizer", "other")),
    "step_profiled_s",
    # the data path's shares: the mean over the runs, so AU and the wait share still add up to 1
    "data_wait_share",
    "accelerator_utilisation",
)
MEDIAN_OF = (
    "storage_read_mb_per_second",
    "loader_samples_per_second",
    "loader_mb_per_second",
    "time_to_first_batch_s",
    "data_wait_p50_s",
    "data_wait_p99_s",
    "avg_memory_mb",
    "host_rss_avg_mb",
    "cpu_util_avg_pct",
    "gpu_utilization_pct",
    "gpu_memory_used_avg_mb",
    "gpu_power_avg_w",
    "gpu_energy_j",
    "total_train_time",
    "train_time_per_epoch",
    "first_step_s",
    "compile_time_s",
    "warmup_time_s",
    "model_save_s",
    "model_load_s",
    "duration_s",
    "achieved_tflops",
    "page_faults_per_step",
)


def _median(values: list[Any]) -> Any:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _cv(values: list[Any]) -> float | None:
    """Coefficient of variation across runs (None with fewer than two figures)."""
    present = [v for v in values if v is not None]
    return (
        statistics.stdev(present) / statistics.mean(present) if len(present) > 1 and statistics.mean(present) else None
    )


def combine_one(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One cell's runs (in repeat order) -> the combined row."""
    runs = sorted(runs, key=lambda r: r["repeat"])
    ok = [r for r in runs if r["status"] == "ok"]
    row = dict(ok[0] if ok else runs[0])
    row["repeat"], row["repeats"] = 0, len(runs)
    bad = next((r for r in runs if r["status"] != "ok"), None)
    if bad is not None:  # any run that did not finish makes the cell's status that run's
        row["status"] = bad["status"]
        row["reason"] = f"repeat {bad['repeat'] + 1} of {len(runs)}: {bad['reason']}"
    if not ok:
        return row
    sps = [r["samples_per_second"] for r in ok if r["samples_per_second"] is not None]
    b1 = [r["inference_b1_latency_p50_ms"] for r in ok if r["inference_b1_latency_p50_ms"] is not None]
    p50 = [r["inference_latency_p50_ms"] for r in ok if r["inference_latency_p50_ms"] is not None]
    row["repeat_samples_per_second"] = sps
    row["repeat_b1_latency_p50_ms"] = b1
    row["repeats_cv"] = _cv(sps)
    row["repeats_latency_cv"] = _cv(p50)
    row["repeats_b1_latency_cv"] = _cv(b1)
    steps = [x for r in ok for x in (r["step_times_s"] or [])]
    row.update(rows.step_statistics(steps, row["batch_size"]), step_times_s=steps, steps_timed=len(steps))
    for prefix in ("inference", "inference_b1"):  # pooled latency samples, at the cell's batch size and at 1
        pooled = [x for r in ok for x in (r[f"{prefix}_times_ms"] or [])]
        if pooled:
            p = stats.percentiles_ms([x / 1e3 for x in pooled])
            row[f"{prefix}_times_ms"], row[f"{prefix}_runs"] = pooled, len(pooled)
            row.update({f"{prefix}_latency_{q}": p[q] for q in ("mean_ms", "p95_ms", "p99_ms")})
    row.update(rows.b1_latency_statistics(row["inference_b1_times_ms"] or []))
    # the headline figures: the mean over the runs, with the interval a rerun would fall in
    row["samples_per_second"] = statistics.fmean(sps) if sps else None
    row["samples_per_second_ci_low"], row["samples_per_second_ci_high"] = stats.t_interval(sps)
    row["inference_latency_p50_ms"] = statistics.fmean(p50) if p50 else None
    row["inference_b1_latency_p50_ms"] = statistics.fmean(b1) if b1 else None
    row["inference_b1_latency_p50_ci_low_ms"], row["inference_b1_latency_p50_ci_high_ms"] = stats.t_interval(b1)
    row["ci_kind"] = "runs" if len(sps) > 1 else row["ci_kind"]
    # a run too noisy to rank on, or runs that disagree by more than the noise line
    row["noisy"] = bool((row["repeats_cv"] or 0) > stats.NOISE_CV or any(r["noisy"] for r in ok))
    for key in MAX_OF:
        values = [r[key] for r in ok if r[key] is not None]
        row[key] = max(values) if values else None
    for key in MEDIAN_OF:
        row[key] = _median([r[key] for r in ok])
    for key in MEAN_OF:
        present = [r[key] for r in ok if r[key] is not None]
        row[key] = statistics.fmean(present) if present else None
    # AU's interval across the runs, as throughput's: what a rerun would give (au_pass reads it)
    au = [r["accelerator_utilisation"] for r in ok if r["accelerator_utilisation"] is not None]
    row["accelerator_utilisation_ci_low"], row["accelerator_utilisation_ci_high"] = stats.t_interval(au)
    if row.get("data_wait_p50_s") is not None:
        row["input_ready"] = row["data_wait_p50_s"] <= rows.INPUT_READY_S
    return row


def next_repeat(runs: list[dict[str, Any]], target: float, max_repeats: int) -> int | None:
    """Adaptive repeats: the repeat a cell runs next, given its stored runs (rows with repeat, status and
    samples_per_second), or None when it has enough: every run ok, fewer than `max_repeats`, and its
    throughput's 95% interval across the runs still wider than +-`target` of their mean. Only the spread
    decides, never the figure or another cell's, so stopping does not pick the result."""
    done = {r["repeat"] for r in runs}
    if not runs or len(runs) >= max_repeats or any(r["status"] != "ok" for r in runs):
        return None
    sps = [r["samples_per_second"] for r in runs if r["samples_per_second"] is not None]
    low, high = stats.t_interval(sps)
    if low is None or high is None or (high - low) / 2 <= target * statistics.fmean(sps):
        return None
    return min(set(range(max_repeats)) - done)


def combine(table: pa.Table) -> pa.Table:
    """Per-repeat rows -> one row per cell, in the order the cells first appear."""
    by_cell: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in table.to_pylist():
        by_cell[r["cell_id"]].append(r)
    return pa.Table.from_pylist([combine_one(runs) for runs in by_cell.values()], schema=schema.SCHEMA)
