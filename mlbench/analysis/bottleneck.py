"""What holds a cell back: a bottleneck verdict with its evidence, from the step's time by part
(workers/common/profile.py), MFU and GPU utilisation (the memory by part is the row's: results/rows.py).

Every threshold sits in THRESHOLDS with its reason; `verdict` applies them in a fixed order (input,
host, compute, memory) and says "none" where no rule holds: no single part stands out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

Row = dict[str, Any]
MIB = 2**20


@dataclass(frozen=True)
class Threshold:
    value: float
    reason: str


THRESHOLDS: dict[str, Threshold] = {
    "input_share": Threshold(
        0.25,
        "a quarter of the step preparing and copying the batch: a faster input path (more loader "
        "threads, device prefetch) would buy more than a faster framework",
    ),
    "host_other_share": Threshold(
        0.25,
        "a quarter of the step outside forward, backward, update and data: Python, dispatch and launch "
        "gaps, the framework's own overhead, which a bigger batch or a compiler amortises",
    ),
    "host_gpu_util_pct": Threshold(
        60.0,
        "the GPU busy under 60% of the training window: it waits on the host between kernels",
    ),
    "compute_mfu": Threshold(
        0.5,
        "half the matmul peak measured on this device: the arithmetic itself is most of the step",
    ),
    "memory_mfu": Threshold(
        0.25,
        "under a quarter of the peak while not input- or host-bound: the device is busy but not with FLOPs",
    ),
    "memory_flops_per_byte": Threshold(
        100.0,
        "FLOPs per byte of activations below a GPU's ridge point (peak FLOP/s over memory bandwidth, "
        "~100-600 FLOP/B for HBM parts): the step is limited by memory bandwidth, not by the tensor cores. "
        "GPUs only: on a CPU the RSS cannot tell activations from the runtime's own growth after the "
        "model is built (a 2 MiB MLP's step showed ~95 MiB there), so the figure would decide nothing",
    ),
}


# what a verdict means for the reader's next step
ADVICE = {
    "input": "the step waits for its data: more loader threads, pinned memory or device prefetch would help; "
    "a faster framework would not",
    "host": "the device waits on the host: a larger batch, a compiler (torch.compile, XLA) or fewer Python-side "
    "operations per step would help more than a faster device",
    "compute": "the arithmetic is most of the step: lower precision (bf16/fp16 where accuracy holds) or a "
    "faster device helps; the framework is not what holds it back",
    "memory": "the step moves more bytes than it computes on: fused kernels, a compiler or a larger batch "
    "(more FLOPs per byte) would help",
    "none": "no single part stands out; the figures above are the step as a whole",
}


def by_verdict(rows: list[Row]) -> dict[str, list[Row]]:
    """The ok rows with a verdict, grouped by it (in ADVICE's order)."""
    found: dict[str, list[Row]] = {}
    for verdict in ADVICE:
        cells = [r for r in rows if r.get("status") == "ok" and r.get("bottleneck") == verdict]
        if cells:
            found[verdict] = cells
    return found


def _pct(part: float, whole: float) -> str:
    return f"{100 * part / whole:.0f}% of the step ({1000 * part:.2f} of {1000 * whole:.2f} ms)"


def verdict(r: Row) -> tuple[str | None, str | None]:
    """(bottleneck, evidence) of an ok row with a step breakdown; (None, None) where it has none."""
    step = r.get("step_profiled_s")
    if r.get("status") != "ok" or not step:
        return None, None
    t = THRESHOLDS
    data, other = r.get("step_data_s") or 0.0, r.get("step_other_s") or 0.0
    if data / step >= t["input_share"].value:
        return "input", f"data {_pct(data, step)}"
    util = r.get("gpu_utilization_train_pct")
    on_gpu = str(r.get("device", "")).startswith("cuda")
    if on_gpu and util is not None and util < t["host_gpu_util_pct"].value:
        return "host", f"GPU busy {util:.0f}% of the training window"
    if not on_gpu and other / step >= t["host_other_share"].value:
        return "host", f"outside the parts {_pct(other, step)}"
    mfu = r.get("mfu")
    if mfu is not None and mfu >= t["compute_mfu"].value:
        return "compute", f"MFU {100 * mfu:.0f}% of the measured peak"
    intensity = flops_per_activation_byte(r) if on_gpu else None
    limit = t["memory_flops_per_byte"].value
    if mfu is not None and mfu < t["memory_mfu"].value and intensity is not None and intensity < limit:
        return "memory", f"{intensity:.1f} FLOP per activation byte, MFU {100 * mfu:.0f}%"
    mfu_text = "MFU not measured" if mfu is None else f"MFU {100 * mfu:.0f}%"
    return "none", f"data {100 * data / step:.0f}%, other {100 * other / step:.0f}%, {mfu_text}"


def flops_per_activation_byte(r: Row) -> float | None:
    """A training step's FLOPs per byte of its activations: how much arithmetic each byte held buys."""
    per_sample, batch, act = (
        r.get("train_flops_per_sample"),
        r.get("per_device_batch_size"),
        r.get("memory_activations_mb"),
    )
    if not per_sample or not batch or not act:
        return None
    return per_sample * batch / (act * MIB)


def annotate(rows: list[Row]) -> None:
    """Fill bottleneck and bottleneck_evidence, in place (after calibration: the verdict reads MFU)."""
    for r in rows:
        r["bottleneck"], r["bottleneck_evidence"] = verdict(r)
