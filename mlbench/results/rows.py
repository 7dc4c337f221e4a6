"""One stored row per cell, built from the worker's events, the outcome and the environment."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from mlbench.cells import Cell
from mlbench.process import environment
from mlbench.process.monitor import GPU_FIGURES
from mlbench.process.runner import Outcome
from mlbench.results import schema
from workers.common import stats

MIB = 2**20
FP32_BYTES = 4  # every framework keeps fp32 master weights and fp32 gradients, mixed precision included


def _mb(value: float | None) -> float | None:
    return None if value is None else value / MIB


def _last(events: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    return next((e for e in reversed(events) if e["event"] == kind), {})


def _memory_figures(on_gpu: bool, memory: dict[str, Any], mon: dict[str, Any]) -> tuple[Any, Any, str]:
    """A cell's peak and average memory, both from one source, and what that source is.

    On a GPU: NVML's memory of the worker's own processes (their CUDA contexts included) where NVML
    lists them, else NVML's whole-device memory in use; the framework allocator's peak has a column
    of its own (`device_peak_allocated_mb`), as allocators differ in what they count. On a CPU: the
    RSS of the worker's process tree (its peak also from the worker's own getrusage)."""
    if on_gpu:
        if mon.get("gpu_process_memory_peak_bytes") is not None:
            return (
                mon["gpu_process_memory_peak_bytes"],
                mon.get("gpu_process_memory_avg_bytes"),
                "peak and avg: NVML device memory of the worker's processes (CUDA context included)",
            )
        return (
            mon.get("gpu_memory_used_peak_bytes"),
            mon.get("gpu_memory_used_avg_bytes"),
            "peak and avg: NVML device memory in use on the cell's GPUs (whole device; per-process unavailable)",
        )
    candidates = [v for v in (mon.get("host_rss_peak_bytes"), memory.get("host_peak_rss_bytes")) if v is not None]
    return (
        max(candidates) if candidates else None,
        mon.get("host_rss_avg_bytes"),
        "peak and avg: host RSS of the worker's process tree",
    )


PROFILE_COLUMNS = (
    "step_forward_s",
    "step_backward_s",
    "step_optimizer_s",
    "step_data_s",
    "step_other_s",
    "step_profiled_s",
    "profile_steps",
)


def _in_run_folder(path: str | None) -> str | None:
    """A file under runs/<name>/profiles/, relative to the run folder (the folder can move)."""
    if not path:
        return None
    parts = Path(path).parts
    if "profiles" not in parts:
        return path
    return str(Path(*parts[len(parts) - 1 - parts[::-1].index("profiles") :]))


def optimizer_states(optimizer: dict[str, Any]) -> int:
    """Tensors of the parameters' size an optimizer keeps: AdamW two moments; SGD one momentum buffer
    (none without momentum)."""
    if optimizer.get("name") == "adamw":
        return 2
    if optimizer.get("name") == "sgd":
        return 1 if optimizer.get("momentum") else 0
    raise ValueError(f"optimizer {optimizer.get('name')!r}: its state size is not known")


def memory_parts(
    num_parameters: int | None,
    optimizer: dict[str, Any] | None,
    peak_bytes: float | None,
    base_bytes: float | None,
) -> dict[str, float | None]:
    """Memory by part, MiB: parameters, gradients and optimizer state computed from the parameter count
    and the optimizer; activations (and workspace) what the peak holds beyond those and `base_bytes`
    (on a CPU the process before the model was built plus the training data's copy; on a GPU none,
    as `peak_bytes` is then the allocator's peak, which holds only tensors)."""
    if not num_parameters or optimizer is None:
        return dict.fromkeys(("memory_params_mb", "memory_grads_mb", "memory_optimizer_mb", "memory_activations_mb"))
    params = FP32_BYTES * num_parameters
    state = optimizer_states(optimizer) * params
    activations = None
    if peak_bytes is not None and base_bytes is not None:
        activations = max(0.0, peak_bytes - base_bytes - params - params - state)
    return {
        "memory_params_mb": params / MIB,
        "memory_grads_mb": params / MIB,
        "memory_optimizer_mb": state / MIB,
        "memory_activations_mb": None if activations is None else activations / MIB,
    }


def _breakdown(on_gpu: bool, model: dict[str, Any], memory: dict[str, Any], prof: dict[str, Any]) -> dict[str, Any]:
    """Where the step's time goes (the worker's `profile` event) and the memory by part
    (memory_parts): on a GPU the allocator's peak holds only tensors; on a CPU the peak RSS
    holds the process as it was before the model was built and the training data's copy besides."""
    if on_gpu:
        peak, base = memory.get("device_peak_bytes"), 0.0
    else:
        before, feed = memory.get("host_rss_before_build_bytes"), memory.get("data_feed_bytes")
        peak = memory.get("host_peak_rss_bytes")
        base = before + feed if before is not None and feed is not None else None
    optimizer = (model.get("spec") or {}).get("optimizer")
    out = {k: prof.get(k) for k in PROFILE_COLUMNS}
    out["profile_trace"] = _in_run_folder(prof.get("trace"))
    out["profile_skipped"] = prof.get("skipped")
    out.update(memory_parts(model.get("num_parameters"), optimizer, peak, base))
    return out


def _outside_allocator(memory: dict[str, Any], mon: dict[str, Any]) -> float | None:
    """Device memory the worker's processes held beyond their framework allocator's pool at its peak:
    the CUDA context, library workspaces (cuBLAS, cuDNN) and loaded kernels. The pool is the
    allocator's reserved peak where the framework reports one (PyTorch, JAX), else its allocated peak
    (TensorFlow: then the allocator's own slack is counted here too)."""
    own = mon.get("gpu_process_memory_peak_bytes")
    pool = memory.get("device_reserved_peak_bytes") or memory.get("device_peak_bytes")
    if own is None or pool is None:
        return None
    return max(0.0, own - pool)


def step_statistics(step_s: list[float], batch_size: int, ok: bool = True) -> dict[str, Any]:
    """The timed steps' statistics and the throughput's interval: the same figures for one run's steps
    (build) and for the pooled steps of a cell's repeats (mlbench/results/repeats.py)."""
    st = stats.summarize(step_s)
    ci = stats.throughput_ci(step_s, batch_size) if ok else (None, None)
    return {
        "samples_per_second_ci_low": ci[0],
        "samples_per_second_ci_high": ci[1],
        "ci_kind": "within_run" if ci[0] is not None else None,
        "step_time_median_s": st["median"],
        "step_time_mean_s": st["mean"],
        "step_time_min_s": st["min"],
        "step_time_max_s": st["max"],
        "step_time_cv": st["cv"],
        "step_time_robust_cv": st["robust_cv"],
        "step_time_outliers": st["outliers"] if step_s else None,
        "noisy": st["noisy"],
    }


def gc_figures(step_s: list[float], gc_s: list[float]) -> dict[str, Any]:
    """Garbage collection inside the timed steps (a worker that does not count it sends none): its time,
    the steps it paused, and how many of the outlier steps it explains."""
    if not gc_s or len(gc_s) != len(step_s):
        return {"gc_pause_s": None, "gc_steps": None, "step_outliers_with_gc": None}
    flags = stats.outliers(step_s)
    return {
        "gc_pause_s": sum(gc_s),
        "gc_steps": sum(g > 0 for g in gc_s),
        "step_outliers_with_gc": sum(1 for f, g in zip(flags, gc_s) if f and g > 0),
    }


def _identity(cell: Cell, run_name: str, outcome: Outcome, model: dict[str, Any], repeat: int) -> dict[str, Any]:
    """What the cell is and how it ended."""
    spec = cell.spec
    return {
        "cell_id": cell.cell_id,
        "run_name": run_name,
        "framework": cell.framework,
        "model_name": cell.model,
        "device": cell.device,
        "precision": cell.precision,
        "batch_size": cell.batch_size,
        "num_devices": spec.parsed_device.count,
        "per_device_batch_size": spec.per_device_batch_size,
        "epochs": spec.epochs,
        "seed": spec.seed,
        "dataset": spec.dataset["name"],
        "train_samples": model.get("train_samples"),
        "val_samples": model.get("val_samples"),
        "compile": spec.compile,
        "deterministic": bool(spec.deterministic),
        "worker_module": spec.worker,
        "spec_json": cell.spec_json,
        "repeat": repeat,
        "repeats": 1,
        "repeat_samples_per_second": [],
        "repeats_cv": None,
        "repeats_latency_cv": None,
        "repeats_b1_latency_cv": None,
        "status": outcome.status,
        "reason": outcome.reason,
        "exit_code": outcome.exit_code,
        "duration_s": outcome.duration_s,
        "started_at": datetime.fromtimestamp(outcome.started_at, timezone.utc).isoformat(timespec="seconds"),
        "stderr_tail": outcome.stderr_tail,
        "log_lines": json.dumps(outcome.logs) if outcome.logs else None,
        "num_parameters": model.get("num_parameters"),
        "parameter_bytes": model.get("parameter_bytes"),
        "model_size_mb": _mb(model.get("size_on_disk_bytes")),
        "model_save_s": model.get("save_s"),
        "model_load_s": model.get("load_s"),
    }


def _training(cell: Cell, ev: list[dict[str, Any]], ok: bool) -> dict[str, Any]:
    """Throughput, the step statistics, warm-up and compile time, losses and accuracies, FLOPs."""
    steps, result, model = _last(ev, "steps"), _last(ev, "result"), _last(ev, "model")
    parallel = _last(ev, "hello").get("data_parallel") or {}
    epochs = [e for e in ev if e["event"] == "epoch"]
    last = epochs[-1] if epochs else {}
    # the worker splits off the configured warm-up; the steady state is then found from the samples
    steady = stats.steady_throughput(steps.get("warmup_s", []), steps.get("step_s", []), cell.batch_size)
    start, warm, step_s = steady["start"], steady["warmup"], steady["timed"]
    sps = steady["samples_per_second"] if ok else None
    figures = step_statistics(step_s, cell.batch_size, ok)
    # minor page faults per steady-state step: the same steps the throughput is made of (a worker
    # that does not count them sends none)
    faults = [*steps.get("warmup_faults", []), *steps.get("step_faults", [])]
    timed_faults = faults[start:] if len(faults) == len(warm) + len(step_s) else []
    gcs = [*steps.get("warmup_gc_s", []), *steps.get("step_gc_s", [])]
    timed_gc = gcs[start:] if len(gcs) == len(warm) + len(step_s) else []
    first = (warm or step_s or [None])[0]
    flops = model.get("train_flops_per_sample")
    return {
        "train_time_per_epoch": (sum(e["train_s"] for e in epochs) / len(epochs)) if epochs else None,
        "total_train_time": sum(e["train_s"] for e in epochs) if epochs else None,
        "samples_per_second": sps,
        **figures,
        "samples_per_second_per_device": sps / cell.spec.parsed_device.count if sps else None,
        "collective": parallel.get("collective"),
        "batchnorm": parallel.get("batchnorm"),
        "steps_timed": len(step_s) if steps else None,
        "warmup_steps_detected": start if steps else None,
        "steady_dropped_steps": steady["dropped"] if steps else None,
        "steady_capped": steady["capped"] if steps else None,
        "page_faults_per_step": sum(timed_faults) / len(timed_faults) if timed_faults else None,
        **gc_figures(step_s, timed_gc),
        "first_step_s": first,
        # a first step no slower than the median has no overhead to show: 0, never negative
        "compile_time_s": max(0.0, first - figures["step_time_median_s"])
        if first is not None and figures["step_time_median_s"] is not None
        else None,
        "warmup_time_s": sum(warm) if warm else None,
        "data_wait_s": sum(e.get("data_wait_s") or 0.0 for e in epochs) if epochs else None,
        "final_train_loss": last.get("train_loss"),
        "final_train_accuracy": result.get("final_train_accuracy", last.get("train_accuracy")),
        "final_val_loss": last.get("val_loss"),
        "final_val_accuracy": result.get("final_val_accuracy", last.get("val_accuracy")),
        "val_correct_bits": result.get("val_correct_bits"),
        "time_to_target_s": result.get("time_to_target_s"),
        "epochs_to_target": result.get("epochs_to_target"),
        "train_flops_per_sample": flops,
        "inference_flops_per_sample": model.get("inference_flops_per_sample"),
        "achieved_tflops": sps * flops / 1e12 if sps and flops else None,
        # nested: every raw sample
        "epochs_detail": [{k: e.get(k) for k in schema.EPOCH.names} for e in epochs],
        "step_times_s": step_s,
        "warmup_times_s": warm,
    }


INPUT_READY_S = 50e-6  # tf.data's guide: input is not the bottleneck when the next batch is ready within 50 us


def _data_path(cell: Cell, ev: list[dict[str, Any]], ok: bool) -> dict[str, Any]:
    """The data path: the format and loader, the first batches' digests, the loader alone, and the
    steady timed steps' waits for their batches (the same steps the throughput is made of)."""
    data, steps = _last(ev, "data"), _last(ev, "steps")
    dataset, loader = cell.spec.dataset or {}, cell.spec.loader
    steady = stats.steady_throughput(steps.get("warmup_s", []), steps.get("step_s", []), cell.batch_size)
    waits = [*steps.get("warmup_wait_s", []), *steps.get("step_wait_s", [])]
    walls = [*steps.get("warmup_s", []), *steps.get("step_s", [])]
    timed = steady["start"]
    ok_waits = ok and len(waits) == len(walls) and len(walls) > timed
    wait, wall = (waits[timed:], walls[timed:]) if ok_waits else ([], [])
    # where waits overlap the device's work (a backend that queues steps) they are not its idle time: AU
    # comes from the memory twin's step at rebuild (mlbench/analysis/datapath.py), except for a memory
    # cell, whose batch is a view (its waits are microseconds either way)
    overlap = bool(data.get("waits_overlap_steps")) and dataset.get("format", "memory") != "memory"
    au = 1.0 - sum(wait) / sum(wall) if wall and sum(wall) > 0 and not overlap else None
    p50 = float(np.percentile(wait, 50)) if wait else None
    return {
        "data_format": dataset.get("format", "memory") if cell.spec.task == "train" else None,
        "loader": (data.get("loader") or loader["kind"])
        if loader
        else ("memory" if cell.spec.task == "train" else None),
        "loader_workers": (loader or {}).get("workers"),
        "loader_device_prefetch": (loader or {}).get("device_prefetch", 0) if loader else None,
        "data_shards": dataset.get("shards"),
        "data_order": dataset.get("order", "global") if cell.spec.task == "train" else None,
        "data_augment": dataset.get("augment", "none") if cell.spec.task == "train" else None,
        "batch_digests": list(data.get("digests") or []),
        "loader_samples_per_second": data.get("loader_samples_per_second"),
        "loader_mb_per_second": data.get("loader_mb_per_second"),
        "data_record_bytes": data.get("record_bytes") if loader else None,
        "data_record_bytes_stdev": data.get("record_bytes_stdev") if loader else None,
        "time_to_first_batch_s": data.get("time_to_first_batch_s"),
        "data_wait_p50_s": p50,
        "data_wait_p99_s": float(np.percentile(wait, 99)) if wait else None,
        "data_wait_share": 1.0 - au if au is not None else None,
        "accelerator_utilisation": au,
        "au_pass": None,  # against the suite's loader.au_threshold, at rebuild
        "input_ready": p50 <= INPUT_READY_S if p50 is not None else None,
        "page_cache": data.get("page_cache"),
        "waits_overlap_steps": data.get("waits_overlap_steps"),
        "au_source": ("waits" if au is not None else None),
        "emulated_compute_s": _last(ev, "result").get("emulated_compute_s"),
        "image_codec": dataset.get("image_codec"),
        "image_size": dataset.get("image_size"),
        "image_decoder": data.get("image_decoder"),
        "decode_max_abs_diff": data.get("decode_max_abs_diff"),
        # where the shards came from: local, or object storage streamed or cached (storage.py)
        "data_storage": data.get("data_storage") if loader else None,
        "data_uri": data.get("data_uri"),
        "storage_read_mb": data.get("storage_read_mb"),
        "storage_requests": data.get("storage_requests"),
        "storage_read_mb_per_second": data.get("storage_read_mb_per_second"),
        "storage_fetch_s": data.get("storage_fetch_s"),
        "storage_cache_hit": data.get("storage_cache_hit"),
    }


def _latency(cell: Cell, ev: list[dict[str, Any]]) -> dict[str, Any]:
    """Inference latency at batch 1 and at the cell's batch (a data-parallel cell's: one replica's, at
    the batch each replica trained on)."""
    by_batch = {e["batch_size"]: e for e in ev if e["event"] == "inference"}
    inference, b1 = by_batch.get(cell.spec.per_device_batch_size, {}), by_batch.get(1, {})
    out: dict[str, Any] = {"inference_b1_runs": b1.get("runs"), "inference_runs": inference.get("runs")}
    for prefix, e in (("inference_b1", b1), ("inference", inference)):
        out.update({f"{prefix}_latency_{q}": e.get(q) for q in ("mean_ms", "p50_ms", "p95_ms", "p99_ms")})
        out[f"{prefix}_times_ms"] = [float(x) for x in e.get("times_ms", [])]
    out["inference_batch_size"] = inference.get("batch_size")
    out.update(b1_latency_statistics(out["inference_b1_times_ms"]))
    p50 = out["inference_b1_latency_p50_ms"]
    out["repeat_b1_latency_p50_ms"] = [p50] if p50 is not None else []
    return out


def b1_latency_statistics(times_ms: list[float]) -> dict[str, Any]:
    """One run's batch-1 passes: the interval of their median (order statistics: within the run), their
    own spread and outliers, which the latency verdict reads (not the training steps')."""
    lo, hi = stats.median_ci(times_ms) if times_ms else (None, None)
    return {
        "inference_b1_latency_p50_ci_low_ms": lo,
        "inference_b1_latency_p50_ci_high_ms": hi,
        "inference_b1_latency_robust_cv": stats.robust_cv(times_ms),
        "inference_b1_outliers": sum(stats.outliers(times_ms)) if times_ms else None,
    }


def _memory(cell: Cell, ev: list[dict[str, Any]], mon: dict[str, Any]) -> dict[str, Any]:
    """Memory: the headline peak and average from one source, every source's own figure, by part."""
    on_gpu = cell.spec.parsed_device.kind == "cuda"
    memory = _last(ev, "memory")
    peak, avg, source = _memory_figures(on_gpu, memory, mon)
    return {
        "peak_memory_mb": _mb(peak),
        "avg_memory_mb": _mb(avg),
        "memory_source": source if (peak or avg) else None,
        "host_rss_peak_mb": _mb(mon.get("host_rss_peak_bytes")),
        "host_rss_avg_mb": _mb(mon.get("host_rss_avg_bytes")),
        "worker_max_rss_mb": _mb(memory.get("host_peak_rss_bytes")),
        **_breakdown(on_gpu, _last(ev, "model"), memory, _last(ev, "profile")),
        "device_peak_allocated_mb": _mb(memory.get("device_peak_bytes")),
        "device_reserved_peak_mb": _mb(memory.get("device_reserved_peak_bytes")),
        "gpu_memory_outside_allocator_mb": _mb(_outside_allocator(memory, mon)),
    }


# the outside monitor's figures, stored as it gives them, and those it gives in bytes stored in MiB
MONITOR_FIGURES = (
    "cpu_util_avg_pct",
    "child_cpu_avg_pct",
    "cpu_other_pct",
    "cpu_other_train_pct",
    "cpu_orchestrator_train_pct",
    "cpu_other_inference_pct",
    "monitor_samples",
    *(k for k in GPU_FIGURES if not k.endswith("_bytes")),
)
MONITOR_BYTES = (
    *(k.removesuffix("_bytes") for k in GPU_FIGURES if k.endswith("_bytes")),
    "gpu_memory_before",
    "gpu_memory_after",
    "tree_pss_peak",
    "dev_shm_peak",
    "read_chars",
    "read_disk",
)


def _monitor(mon: dict[str, Any]) -> dict[str, Any]:
    return {
        **{k: mon.get(k) for k in MONITOR_FIGURES},
        **{f"{k}_mb": _mb(mon.get(f"{k}_bytes")) for k in MONITOR_BYTES},
        "gpu_foreign_processes": json.dumps(mon["gpu_foreign_processes"]) if mon.get("gpu_foreign_processes") else None,
    }


def _environment(
    cell: Cell, hello: dict[str, Any], outcome: Outcome, env: dict[str, Any], head_env: dict[str, Any]
) -> dict[str, Any]:
    """The framework as the worker reported it, and the machine that ran the cell."""
    limit = getattr(outcome, "memory_limit", None) or {}
    return {
        "framework_version": hello.get("framework_version"),
        "cuda_version": hello.get("cuda_version"),
        "cudnn_version": None if hello.get("cudnn_version") is None else str(hello.get("cudnn_version")),
        "devices_seen": json.dumps(hello["devices"]) if "devices" in hello else None,
        "threads_json": json.dumps(hello["threads"]) if "threads" in hello else None,
        "precision_mode": hello.get("precision_mode"),
        "matmul_precision": hello.get("matmul_precision"),
        "compiler": hello.get("compiler"),
        "determinism": hello.get("determinism"),
        **{k: env[k] for k in ("python_version", "os", "cpu_model", "cpu_count_logical", "cpu_count_physical")},
        "memory_total_gb": env["memory_total_gb"],
        "gpu_model": environment.gpu_model(env, outcome.physical_device or cell.device),
        "gpu_driver": env.get("gpu_driver"),
        "hostname": env["hostname"],
        "ray_node_id": getattr(outcome, "ray_node", None),
        "memory_limit_mb": limit.get("mb"),
        "memory_limit_how": limit.get("how"),
        "executor": outcome.executor,
        "env_flags": json.dumps(outcome.env_flags),
        "mlbench_version": head_env["mlbench_version"],
    }


def build(cell: Cell, run_name: str, outcome: Outcome, head_env: dict[str, Any], repeat: int = 0) -> dict[str, Any]:
    """The cell's row: every schema column present, null where nothing was measured. The machine's
    columns come from the host that ran the cell (a Ray node), else the head's record."""
    ev, mon = outcome.events, outcome.monitor
    row: dict[str, Any] = {
        **_identity(cell, run_name, outcome, _last(ev, "model"), repeat),
        **_training(cell, ev, outcome.status == "ok"),
        **_data_path(cell, ev, outcome.status == "ok"),
        **_latency(cell, ev),
        **_memory(cell, ev, mon),
        **_monitor(mon),
        **_environment(cell, _last(ev, "hello"), outcome, outcome.host or head_env, head_env),
        **{name: None for name in schema.DERIVED},
    }
    if row["train_samples"] is None:  # an emulated-compute cell builds no model: its data event says
        row["train_samples"] = _last(ev, "data").get("train_samples")
    missing = set(schema.FLAT + schema.NESTED) ^ set(row)
    assert not missing, f"row and schema differ: {sorted(missing)}"
    return {name: row[name] for name in schema.SCHEMA.names}
