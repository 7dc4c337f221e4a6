"""Combine the repeats of each cell into one results row; repeats.parquet keeps every run's own row.

Throughput is the median of the runs' throughputs, with their CV across runs; step and inference
statistics come from the pooled raw samples of the runs that finished ok.
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
MEAN_OF = (*(f"step_{part}_s" for part in ("data", "forward", "backward", "optimizer", "other")), "step_profiled_s")
MEDIAN_OF = (
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
    row["repeat_samples_per_second"] = sps
    row["repeats_cv"] = _cv(sps)
    row["repeats_latency_cv"] = _cv([r["inference_latency_p50_ms"] for r in ok])
    row["repeats_b1_latency_cv"] = _cv([r["inference_b1_latency_p50_ms"] for r in ok])
    steps = [x for r in ok for x in (r["step_times_s"] or [])]
    bs = row["batch_size"]
    # the pooled steady throughput of every run's timed steps, with the interval of that same figure
    row["samples_per_second"] = bs * len(steps) / sum(steps) if steps and sum(steps) > 0 else None
    row.update(rows.step_statistics(steps, bs), step_times_s=steps, steps_timed=len(steps))
    row["noisy"] = bool((row["step_time_cv"] or 0) > stats.NOISE_CV or (row["repeats_cv"] or 0) > stats.NOISE_CV)
    for prefix in ("inference", "inference_b1"):  # pooled latency samples, at the cell's batch size and at 1
        pooled = [x for r in ok for x in (r[f"{prefix}_times_ms"] or [])]
        if pooled:
            p = stats.percentiles_ms([x / 1e3 for x in pooled])
            row[f"{prefix}_times_ms"], row[f"{prefix}_runs"] = pooled, len(pooled)
            row.update({f"{prefix}_latency_{q}": p[q] for q in ("mean_ms", "p50_ms", "p95_ms", "p99_ms")})
    for key in MAX_OF:
        values = [r[key] for r in ok if r[key] is not None]
        row[key] = max(values) if values else None
    for key in MEDIAN_OF:
        row[key] = _median([r[key] for r in ok])
    for key in MEAN_OF:
        present = [r[key] for r in ok if r[key] is not None]
        row[key] = statistics.fmean(present) if present else None
    return row


def combine(table: pa.Table) -> pa.Table:
    """Per-repeat rows -> one row per cell, in the order the cells first appear."""
    by_cell: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in table.to_pylist():
        by_cell[r["cell_id"]].append(r)
    return pa.Table.from_pylist([combine_one(runs) for runs in by_cell.values()], schema=schema.SCHEMA)
