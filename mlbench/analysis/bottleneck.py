"""What holds a cell back: a bottleneck verdict with its evidence, from the step's time by part
(workers/common/profile.py), MFU and GPU utilisation (the memory by part is the row's: results/rows.py).

Every threshold sits in THRESHOLDS with its reason; `verdict` applies them in a fixed order (input,
host, overhead, compute, memory) and says "none" where no rule holds: no single part stands out. A
breakdown whose profiled step is far from the timed step (three jitted parts in place of one fused
step) gets no verdict: its shares describe another program. What a CPU verdict cannot see is said
(CPU_BLIND): dispatch overhead sits inside the forward and backward laps, and the feed is in memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mlbench.results.rows import INPUT_READY_S

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
    "overhead_step_growth": Threshold(
        0.5,
        "the step grew by under half of what the batch did (twice the batch, under 1.5x the step time): a "
        "fixed cost per step (Python, dispatch, launches) dominates, which a larger batch or a compiler amortises",
    ),
    "profile_match": Threshold(
        0.5,
        "a profiled step more than 50% off the timed median step is another program (separately jitted "
        "parts, or eager parts of a compiled step): its shares do not describe the timed step",
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
    "input": "the step waits for its data: in a file-fed cell, what the run's own sweep over loader workers and "
    "formats measured is said per cell; otherwise more loader workers, prefetch or another format would help, "
    "a faster framework would not",
    "host": "the device waits on the host: a larger batch, a compiler (torch.compile, XLA) or fewer Python-side "
    "operations per step would help more than a faster device",
    "overhead": "a fixed cost per step dominates (the step barely grows with the batch): a larger batch, a "
    "compiler (torch.compile, XLA) or fewer Python-side operations per step would help",
    "compute": "the arithmetic is most of the step: lower precision (bf16/fp16 where accuracy holds) or a "
    "faster device helps; where another framework runs the same FLOPs faster (said per cell), the framework too",
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


CPU_BLIND = (
    "on a CPU the verdicts cannot see dispatch overhead (it sits inside the forward and backward laps; the "
    "overhead rule reads batch scaling instead); a memory cell's feed is in host memory, so only file-fed "
    "cells (dataset.format) show a real input pipeline's waits"
)

TF_DATA_READY_S = (
    INPUT_READY_S  # tf.data's guide: input is not the bottleneck when the next batch is ready within 50 us
)


def waited(r: Row) -> tuple[str, str] | None:
    """The input verdict from a file-fed cell's real waits: the steady steps waited for their batch at
    least `input_share` of their time (AU at most 1 - that)."""
    share = r.get("data_wait_share")
    if r.get("data_format") in (None, "memory") or share is None:
        return None
    if share < THRESHOLDS["input_share"].value:
        return None
    p50, p99 = r.get("data_wait_p50_s") or 0.0, r.get("data_wait_p99_s") or 0.0
    ready = "above" if p50 > TF_DATA_READY_S else "within"
    if r.get("au_source") == "memory twin":
        return "input", (
            f"the steps ran at {100 * (1 - share):.0f}% of their memory twin's speed (AU; the backend queues steps, "
            f"so a wait overlaps device work: wait p50 {1000 * p50:.2f} ms, p99 {1000 * p99:.2f} ms, the median "
            f"{ready} tf.data's 50 us)"
        )
    return "input", (
        f"the steps waited for their batch {100 * share:.0f}% of their time (AU {100 * (1 - share):.0f}%; "
        f"wait p50 {1000 * p50:.2f} ms, p99 {1000 * p99:.2f} ms, the median {ready} tf.data's 50 us)"
    )


def sweep(r: Row, rows: list[Row]) -> str:
    """What the run's sweep measured for an input-bound file-fed cell: each sibling with another loader
    worker count, or another format, at the same framework, model, device, precision, batch, loader
    kind and data order, its throughput against this cell's, told as every comparison is told (beyond
    the noise, or not)."""
    from mlbench.analysis import evidence

    same = (
        "framework", "model_name", "device", "precision", "batch_size", "hostname", "data_order", "data_augment",
        "seed", "deterministic", "compile", "emulated_compute_s",
    )  # fmt: skip
    said = []
    for x in rows:
        if x is r or x.get("status") != "ok" or not all(x.get(k) == r.get(k) for k in same):
            continue
        if x.get("data_format") == "memory" or not (x.get("samples_per_second") and r.get("samples_per_second")):
            continue
        if x["data_format"] == r["data_format"] and x.get("loader") == r.get("loader"):
            if x.get("loader_workers") == r.get("loader_workers"):
                continue
            knob = f"{x['loader_workers']} loader worker{'s' if x['loader_workers'] != 1 else ''}"
        elif x.get("loader_workers") == r.get("loader_workers") and x.get("loader") == r.get("loader"):
            knob = f"the {x['data_format']} format"
        else:
            continue
        a, b = x["samples_per_second"], r["samples_per_second"]
        told = evidence.tell_throughput(x, r)
        au = x.get("accelerator_utilisation")
        au_text = f", AU {100 * au:.0f}%" if au is not None else ""
        if not told.clear:
            said.append(f"{knob}: {a:.0f} samples/s{au_text}, no clear change ({told.why})")
        elif a > b:
            said.append(f"{knob}: {a:.0f} samples/s{au_text}, {told.ratio:.2f}x faster")
        else:
            more = x.get("loader_workers") is not None and x["loader_workers"] > (r.get("loader_workers") or 0)
            compete = " (more workers compete with the step for the cores)" if more else ""
            said.append(f"{knob}: {a:.0f} samples/s{au_text}, {told.ratio:.2f}x slower{compete}")
    return "; the sweep measured " + "; ".join(said) if said else ""


def verdict(r: Row, scaling: tuple[int, float] | None = None) -> tuple[str | None, str | None]:
    """(bottleneck, evidence) of an ok row with a step breakdown; (None, None) where it has none.
    `scaling`: (a larger batch, its median step time) of the same framework, model, device and precision."""
    if r.get("status") == "ok" and waited(r):  # a real loader's waits, not a planted one
        return waited(r)
    step = r.get("step_profiled_s")
    if r.get("status") != "ok" or not step:
        return None, None
    t = THRESHOLDS
    timed = r.get("step_time_median_s")
    if timed and abs(step / timed - 1) > t["profile_match"].value:
        return None, (
            f"the profiled step ({1000 * step:.2f} ms) is not the timed step ({1000 * timed:.2f} ms): its parts "
            "describe another program, so no verdict reads them"
        )
    data, other = r.get("step_data_s") or 0.0, r.get("step_other_s") or 0.0
    if data / step >= t["input_share"].value:
        return "input", f"data {_pct(data, step)}"
    util = r.get("gpu_utilization_train_pct")
    on_gpu = str(r.get("device", "")).startswith("cuda")
    if on_gpu and util is not None and util < t["host_gpu_util_pct"].value:
        return "host", f"GPU busy {util:.0f}% of the training window"
    if not on_gpu and other / step >= t["host_other_share"].value:
        return "host", f"outside the parts {_pct(other, step)}"
    if scaling is not None and timed:
        batch, step_at = scaling
        growth = (step_at / timed - 1) / (batch / r["batch_size"] - 1)
        if growth < t["overhead_step_growth"].value:
            return "overhead", (
                f"the step takes {1000 * step_at:.2f} ms at batch {batch} against {1000 * timed:.2f} ms at "
                f"{r['batch_size']}: it grew {growth:.0%} as much as the batch"
            )
    mfu = r.get("mfu")
    low = r.get("mfu_low") if r.get("mfu_low") is not None else mfu
    if mfu is not None and low is not None and low >= t["compute_mfu"].value:
        spread = (
            f" ({100 * low:.0f}-{100 * r['mfu_high']:.0f}% over the calibration's runs)" if r.get("mfu_high") else ""
        )
        return "compute", f"MFU {100 * mfu:.0f}% of the measured peak{spread}"
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


SAME_SERIES = ("framework", "model_name", "device", "precision", "hostname", "deterministic")
SAME_WORK = ("model_name", "device", "precision", "batch_size", "hostname", "deterministic")  # across frameworks


def _by(rows: list[Row], keys: tuple[str, ...]) -> dict[tuple, list[Row]]:
    groups: dict[tuple, list[Row]] = {}
    for x in rows:
        groups.setdefault(tuple(x.get(k) for k in keys), []).append(x)
    return groups


def ladders(rows: list[Row]) -> dict[tuple, list[Row]]:
    """The ok, timed rows of each framework, model, device and precision, by batch size."""
    timed = [x for x in rows if x.get("status") == "ok" and x.get("step_time_median_s")]
    return {k: sorted(v, key=lambda x: x["batch_size"]) for k, v in _by(timed, SAME_SERIES).items()}


def larger_batch(r: Row, ladder: list[Row]) -> tuple[int, float] | None:
    """The next larger batch (at least twice this one) in `r`'s ladder (`ladders`), and its median step
    time: how the step grows with the batch."""
    import bisect

    i = bisect.bisect_left(ladder, 2 * r["batch_size"], key=lambda x: x["batch_size"])
    return (ladder[i]["batch_size"], ladder[i]["step_time_median_s"]) if i < len(ladder) else None


def faster_elsewhere(r: Row, rows: list[Row]) -> str:
    """Another framework running the same model, device, precision and batch clearly faster (the evidence
    rule of every throughput comparison), in words; '' where none is."""
    from mlbench.analysis import evidence

    best = ""
    for x in rows:
        if (
            x.get("status") != "ok"
            or x["framework"] == r["framework"]
            or not all(x.get(k) == r.get(k) for k in SAME_WORK)
        ):
            continue
        if (
            not (x.get("samples_per_second") and r.get("samples_per_second"))
            or x["samples_per_second"] <= r["samples_per_second"]
        ):
            continue
        said = evidence.tell_throughput(x, r)
        if said.clear:
            best = f"; {x['framework']} runs the same FLOPs {said.ratio:.2f}x faster here: the framework matters"
    return best


def annotate(rows: list[Row]) -> None:
    """Fill bottleneck and bottleneck_evidence, in place (after calibration: the verdict reads MFU). Each
    row is compared only with the rows that share its key (a grid's rows grouped once, not scanned per row)."""
    series = ladders(rows)
    peers = _by(rows, SAME_WORK)
    for r in rows:
        ladder = series.get(tuple(r.get(k) for k in SAME_SERIES))
        scaling = larger_batch(r, ladder) if r.get("status") == "ok" and ladder else None
        r["bottleneck"], r["bottleneck_evidence"] = verdict(r, scaling)
        if r["bottleneck"] == "compute":
            r["bottleneck_evidence"] += faster_elsewhere(r, peers[tuple(r.get(k) for k in SAME_WORK)])
        if r["bottleneck"] == "input" and r.get("data_format") not in (None, "memory"):
            r["bottleneck_evidence"] += sweep(r, rows)
