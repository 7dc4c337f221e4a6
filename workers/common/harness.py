"""The measurement loop every worker shares: the same timing, data order and events for all frameworks.

A framework worker supplies a `Backend` (build, launch_step, step_result, eval_step, predict,
save, memory); this module does everything that must not differ between frameworks: seeds, data,
the training epochs with warm-up split from steady state, evaluation, inference latency, model
size on disk, and the events. Every clock read below follows a call that hands back host numbers
(or blocks on the device), so no timer misses asynchronous device work: the training steps of a
backend that queues them are read back one step late (see `pipelined`), every other call waits for
its own work.

A data-parallel cell (device `cuda:0,1`, `cpu:0,1`) runs this same loop on the global batch: the
backend splits each batch over its replicas and hands back the global batch's mean loss and correct
count only once every replica's step is done, so a step's time is the slowest replica's and the
throughput the global batch over it. Evaluation and inference run on the first replica alone (a
served model is replicated, not split per request): inference at batch 1 and at the per-device
batch. Where the replicas are processes (PyTorch's ranks) each runs this loop; only rank 0, the
`leader`, evaluates, measures inference and writes events.
"""

from __future__ import annotations

import base64
import collections
import dataclasses
import gc
import itertools
import math
import os
import resource
import tempfile
import time
import traceback
import zlib
from collections.abc import Iterable, Iterator
from typing import Any, Protocol

import numpy as np

from workers.common import data as datasets
from workers.common import profile
from workers.common.datapath import order as orders
from workers.common.datapath.formats import DataError, StorageUnavailable
from workers.common.datapath.loaders import LoaderCrashed
from workers.common.devices import Device
from workers.common.events import PROTOCOL_VERSION, Emitter
from workers.common.specs import (
    ModelSpec,
    OptimizerSpec,
    canonical_params,
    forward_flops,
    get_spec,
    input_spec,
    num_parameters,
    spec_dict,
    train_flops,
    with_total_steps,
)
from workers.common.stats import percentiles_ms, steady_throughput
from workers.common.weights import initial_weights, load_npz, save_npz


class Unsupported(Exception):
    """This framework cannot run this cell here (precision, device, feature): the cell is skipped."""


class DeviceMissing(RuntimeError):
    """The cell's GPU is on the host (the orchestrator starts a GPU cell only where NVML sees its GPUs)
    but the framework does not see it: a CPU build or a broken CUDA/cuDNN install. The cell fails."""

    def __init__(self, device: str, framework: str, seen: str) -> None:
        super().__init__(
            f"{device} asked for, but {framework} sees {seen}: a CPU-only build or a broken CUDA/cuDNN install "
            "(the README's GPU set-up says which packages to install)"
        )


FRAMEWORK_PACKAGES = {"torch", "tensorflow", "keras", "jax", "jaxlib", "flax", "optax"}


def import_backend(module: str, name: str) -> Any:
    """Import a worker's backend class; a missing framework package makes the cell `skipped`, not failed."""
    import importlib

    try:
        return getattr(importlib.import_module(module), name)
    except ImportError as exc:
        if (exc.name or "").split(".")[0] in FRAMEWORK_PACKAGES:
            raise Unsupported(f"{exc.name} is not installed here ({exc})") from None
        raise


class Backend(Protocol):
    """What a framework worker implements; every method that returns numbers has synced the device."""

    framework: str
    layout: str  # of image batches: "NCHW" or "NHWC"
    # launch_step returns before the step's work is done (JAX; CUDA): the harness then reads each
    # step back after queueing the next (see `pipelined`); False where the step has run by then
    async_steps: bool

    def info(self) -> dict[str, Any]: ...  # version, devices seen, threads, compiler
    def build(self, spec: ModelSpec, weights: dict[str, np.ndarray]) -> None: ...
    def num_parameters(self) -> int: ...
    # one training step launched, not waited for: a handle on its (mean loss, correct) still on the device
    def launch_step(self, x: np.ndarray, y: np.ndarray) -> Any: ...
    def step_result(self, handle: Any) -> tuple[float, int]: ...  # waits for that step; (mean loss, correct)
    # a host batch placed on the step's device(s), its copy started, not waited for (loader.device_prefetch);
    # launch_step takes what this returns as it takes host batches
    def to_device(self, x: np.ndarray, y: np.ndarray) -> tuple[Any, Any]: ...
    def eval_step(self, x: np.ndarray, y: np.ndarray) -> tuple[float, int]: ...  # (summed loss, correct)
    def predict(self, x: np.ndarray) -> None: ...  # inference forward pass, synced
    def save(self, path: str) -> str: ...  # native format; returns the file or folder written
    def load(self, path: str) -> None: ...  # read back what save wrote
    # a callable running `reps` dependent (n, n) @ (n, n) products on random normal data in the cell's
    # precision, synced once at the end
    def matmul(self, n: int, reps: int) -> Any: ...
    def memory(self) -> dict[str, Any]: ...  # framework allocator figures, bytes (the first replica's)
    def is_oom(self, exc: BaseException) -> bool: ...
    # for `mlbench verify`
    # optional: one training step timed by part (workers/common/profile.py), and a context that keeps
    # a profiler trace of what runs inside it in a folder, yielding the list its files are added to
    # def step_parts(self, x: np.ndarray, y: np.ndarray) -> dict[str, float]: ...
    # def trace(self, folder: str) -> ContextManager[list[str]]: ...
    def logits(self, x: np.ndarray) -> np.ndarray: ...  # inference-mode logits, fp32
    def export(self) -> dict[str, np.ndarray]: ...  # canonical tensors
    def activations(self, x: np.ndarray, modules: list[str]) -> dict[str, np.ndarray]: ...  # inference mode

    # data-parallel backends (see `data_parallel`) also have:
    #   rank: int (0, or this process's rank where the replicas are processes; rank 0 leads)
    #   replica_divergence() -> float: the largest difference between two replicas' parameters (a collective)
    #   close() -> None: stop the other ranks at the end of the cell
    #   lost_rank() -> (kind, message) | None: another rank died (the cause of this rank's error)


def data_parallel(backend: Backend) -> bool:
    return bool(getattr(backend, "replicas", 1) > 1)


def leader(backend: Backend) -> bool:
    """Whether this process writes events, evaluates and measures inference (rank 0)."""
    return getattr(backend, "rank", 0) == 0


def _disk_bytes(path: str) -> int:
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)
    return os.path.getsize(path)


def host_peak_rss_bytes() -> int:
    """Peak resident set of this process: Linux's VmHWM, the high-water mark of this program's own memory.
    Not getrusage's ru_maxrss: Linux carries that over fork and exec, so a worker started by a 1 GB
    process reported 1 GB however little it used itself (measured: 811 MB against 11 MB)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) * 1024
    except (OSError, StopIteration, ValueError, IndexError):  # not Linux: the rusage figure (KiB on Linux)
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def current_rss_bytes() -> int | None:
    """This process's resident memory now (Linux /proc; None elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def minor_faults() -> int:
    """Minor page faults of this process so far: memory the kernel had to map (and zero) on first touch."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def train_step(backend: Backend, x: np.ndarray, y: np.ndarray) -> tuple[float, int]:
    """One training step, waited for: (mean loss, correct)."""
    return backend.step_result(backend.launch_step(x, y))


def pipelined(backend: Backend, batches: Iterable[tuple[np.ndarray, np.ndarray]]) -> Iterator[tuple[float, int, float]]:
    """Trains on each batch in turn; yields each step's (mean loss, correct, data wait in s) as it
    completes, in order. The caller's clock read after each yield marks that step's completion.

    Where the backend queues steps (`async_steps`: JAX, CUDA), a step is read back only after the
    next one is launched. A loop that reads its loss back right after each step leaves the device
    (or JAX's dispatcher) idle while the host converts the number and launches the next step; an
    expert's loop reads back seldom. Here step k+1 is queued before step k is waited for, so the
    queue never runs dry and every step's figures still reach the host. Measured (JAX MLP, batch
    256, 2 CPU cores, one process): a read-back after every step cost 3.5% of the hand-written
    loop's throughput. The interval between two completions is a step's time in steady state.

    Where `launch_step` runs the whole step before it returns (PyTorch and TensorFlow on a CPU), each
    step is read back at once: read one step late, the yield for step k would come after step k+1
    had run, so every interval would hold the next step's work, the first two steps' and the last
    none (a 0.1 ms "step"), and a window of n intervals n-1 steps' work (PyTorch ResNet-18, 15 timed
    steps: its throughput 1/14 too high). The last step of the batches is waited for before this
    returns: nothing runs on past an epoch.
    """
    data_s = 0.0
    it = iter(batches)
    if not backend.async_steps:
        while True:
            t0 = time.perf_counter()
            batch = next(it, None)
            data_s = time.perf_counter() - t0
            if batch is None:
                return
            yield (*backend.step_result(backend.launch_step(*batch)), data_s)
    pending = None
    while True:
        t0 = time.perf_counter()
        batch = next(it, None)
        data_s += time.perf_counter() - t0
        handle = None if batch is None else backend.launch_step(*batch)
        if pending is not None:
            yield (*backend.step_result(pending), data_s)
            data_s = 0.0
        if handle is None:
            return
        pending = handle


def ahead(backend: Backend, batches: Iterable[tuple[Any, Any]], depth: int) -> Iterator[tuple[Any, Any]]:
    """Device prefetch (`loader.device_prefetch`): each host batch handed to the backend's `to_device`
    `depth` batches before its step is launched, so its host-to-device copy runs while the steps before
    it compute; the batches come out placed, in order. The call that places batch k+depth runs inside the
    `next()` that `pipelined` times for batch k (a data wait, as a loader's own prefetch would be)."""
    if depth <= 0:
        yield from batches
        return
    queue: collections.deque[tuple[Any, Any]] = collections.deque()
    for x, y in batches:
        queue.append(backend.to_device(x, y))
        if len(queue) > depth:
            yield queue.popleft()
    while queue:
        yield queue.popleft()


class GcClock:
    """Time Python's cyclic garbage collector has spent collecting (it pauses the training loop's
    thread), counted through gc.callbacks while installed: a slow step with a collection inside it is
    named a GC pause, not guessed at."""

    def __init__(self) -> None:
        self.total_s = 0.0
        self._started: float | None = None

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        elif self._started is not None:
            self.total_s += time.perf_counter() - self._started
            self._started = None

    def __enter__(self) -> GcClock:
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self)


@dataclasses.dataclass
class StepLog:
    """Every training step's wall time and minor page faults, the warm-up steps apart from the timed
    ones; it also tells the orchestrator's monitor when the timed steps run (GPU figures over them)."""

    warmup: int
    em: Emitter
    count: int = 0
    warmup_s: list[float] = dataclasses.field(default_factory=list)
    step_s: list[float] = dataclasses.field(default_factory=list)  # the timed (post-warm-up) steps
    warmup_faults: list[int] = dataclasses.field(default_factory=list)
    step_faults: list[int] = dataclasses.field(default_factory=list)
    warmup_gc_s: list[float] = dataclasses.field(default_factory=list)  # GC time inside each step
    step_gc_s: list[float] = dataclasses.field(default_factory=list)
    # how long each step waited for its batch (the feed's next(): a loader's queue, the last stage)
    warmup_wait_s: list[float] = dataclasses.field(default_factory=list)
    step_wait_s: list[float] = dataclasses.field(default_factory=list)
    in_window: bool = False

    def add(self, seconds: float, faults: int, gc_s: float = 0.0, wait_s: float = 0.0) -> None:
        timed = self.count >= self.warmup
        (self.step_wait_s if timed else self.warmup_wait_s).append(wait_s)
        (self.step_s if timed else self.warmup_s).append(seconds)
        (self.step_faults if timed else self.warmup_faults).append(faults)
        (self.step_gc_s if timed else self.warmup_gc_s).append(gc_s)
        self.count += 1

    def window(self, open_: bool) -> None:
        """The timed window opens (once the warm-up is over) or closes (evaluation is not part of it)."""
        if open_ and not self.in_window and self.count >= self.warmup:
            self.em.emit("phase", name="train", state="start")
            self.in_window = True
        elif not open_ and self.in_window:
            self.em.emit("phase", name="train", state="end")
            self.in_window = False

    def figures(self) -> dict[str, list[Any]]:
        return {
            "warmup_s": self.warmup_s,
            "step_s": self.step_s,
            "warmup_faults": self.warmup_faults,
            "step_faults": self.step_faults,
            "warmup_gc_s": self.warmup_gc_s,
            "step_gc_s": self.step_gc_s,
            "warmup_wait_s": self.warmup_wait_s,
            "step_wait_s": self.step_wait_s,
        }


def train_epoch(
    backend: Backend,
    batches: Iterable[tuple[np.ndarray, np.ndarray]],
    log: StepLog,
    bs: int,
    progress: Any,
    gc_clock: GcClock | None = None,
) -> dict[str, float]:
    """One epoch's steps, each timed from the last one's completion to its own; (loss, accuracy, data wait)."""
    loss_sum, correct, seen, data_s = 0.0, 0, 0, 0.0
    log.window(True)
    t_prev, f_prev = time.perf_counter(), minor_faults()
    g_prev = gc_clock.total_s if gc_clock else 0.0
    for loss, n_correct, wait_s in pipelined(backend, batches):
        t_end = time.perf_counter()  # this step's figures are on the host: it is done
        f_end = minor_faults()  # ~1 us, after the clock: it falls in the next step's interval
        g_end = gc_clock.total_s if gc_clock else 0.0
        data_s += wait_s
        log.add(t_end - t_prev, f_end - f_prev, g_end - g_prev, wait_s)
        t_prev, f_prev, g_prev = t_end, f_end, g_end
        loss_sum, correct, seen = loss_sum + loss * bs, correct + n_correct, seen + bs
        log.window(True)  # the next step is the first timed one once the warm-up is over
        progress(log.count)
    return {"train_loss": loss_sum / seen, "train_accuracy": correct / seen, "samples": seen, "data_wait_s": data_s}


def evaluate(backend: Backend, ds: datasets.Dataset, bs: int) -> dict[str, Any]:
    """The validation set in stored order (on the first replica only): summed loss and correct count."""
    t0 = time.perf_counter()
    loss, correct, seen = 0.0, 0, 0
    for x_host, y_host in datasets.val_batches(ds, bs) if leader(backend) else ():
        l_sum, n_correct = backend.eval_step(x_host, y_host)
        loss, correct, seen = loss + l_sum, correct + n_correct, seen + len(y_host)
    return {
        "val_loss": loss / seen if seen else None,
        "val_accuracy": correct / seen if seen else None,
        "eval_s": time.perf_counter() - t0,
    }


def make_feed(backend: Backend, ds: datasets.Dataset, cell: dict[str, Any]) -> Any:
    """The cell's training batches: in memory (`dataset.format` memory, the default) or through a loader
    from files (workers/common/datapath/feed.py); both in the order and augmentation the cell's
    dataset asks for, and both digest their first batches."""
    data = cell.get("dataset") or {}
    if data.get("format", "memory") == "memory":
        return datasets.BatchFeed(
            ds,
            cell["batch_size"],
            order=data.get("order", "global"),
            shards=data.get("shards", 1),
            augment=data.get("augment", "none"),
            digest_batches=int((cell.get("loader") or {}).get("digest_batches", orders.DIGEST_BATCHES)),
        )
    from workers.common.datapath.feed import FileFeed

    pinned = (cell.get("loader") or {}).get("pin_memory", True)
    return FileFeed(
        ds, cell["batch_size"], cell, backend.framework, getattr(backend, "host_buffer", None) if pinned else None
    )


def data_path(feed: Any, cell: dict[str, Any], em: Emitter, overlap: bool = False) -> None:
    """The data path's figures beside the steps' (a `data` event): the format and loader, the first
    batches' digests and, for a file-fed cell, the loader alone over one epoch (before training)."""
    data = cell.get("dataset") or {}
    figures: dict[str, Any] = {
        "format": data.get("format", "memory"),
        "order": data.get("order", "global"),
        "augment": data.get("augment", "none"),
        "digests": feed.digests,
        "train_samples": len(feed.ds.y_train),
        "page_cache": "warm",  # unless the feed says otherwise (loader.page_cache: cold drops it per epoch)
        # the backend queues steps (`pipelined`): a wait for batch k+1 runs while the device works on step k,
        # so a wait is not the device's idle time (AU then comes from the memory twin's step, at rebuild)
        "waits_overlap_steps": overlap,
    }
    if hasattr(feed, "probe"):
        figures.update(feed.describe(), **feed.probe_figures)
    else:
        figures.update(loader="memory", loader_workers=None)
    em.emit("data", **figures)


def train(backend: Backend, ds: datasets.Dataset, cell: dict[str, Any], em: Emitter) -> dict[str, Any]:
    """Train for the cell's epochs, evaluating after each; returns the figures for the result."""
    bs, seed, warmup = cell["batch_size"], cell["seed"], cell["warmup_steps"]
    steps_per_epoch = len(ds.y_train) // bs
    if steps_per_epoch == 0:
        raise Unsupported(f"batch size {bs} is larger than the {len(ds.y_train)} training samples")
    total_steps = steps_per_epoch * cell["epochs"]
    log = StepLog(warmup, em)
    epochs: list[dict[str, Any]] = []
    total_train_s = total_eval_s = 0.0
    target, reached = cell.get("target_accuracy"), None  # time to accuracy: training and evaluation time
    feed = make_feed(backend, ds, cell)
    if hasattr(feed, "probe"):  # the loader alone first: its throughput and time to the first batch
        feed.probe_figures = feed.probe()

    def progress(step: int) -> None:
        if step % max(1, total_steps // 20) == 0 or step == total_steps:
            em.emit("progress", step=step, total_steps=total_steps, epoch=len(epochs))

    gc_clock = GcClock()
    for epoch in range(cell["epochs"]):
        if hasattr(feed, "cold"):  # loader.page_cache: cold drops the files' pages here, outside the epoch's time
            feed.cold()
        t_epoch = time.perf_counter()
        batches = feed.epoch(seed, epoch)  # the epoch gathered in batch order, before the step timers
        batches = ahead(backend, batches, (cell.get("loader") or {}).get("device_prefetch", 0))
        gather_s = time.perf_counter() - t_epoch
        with gc_clock:
            figures = train_epoch(backend, batches, log, bs, progress, gc_clock)
        train_s = time.perf_counter() - t_epoch
        log.window(False)
        total_train_s += train_s
        val = evaluate(backend, ds, bs)
        if target is not None and reached is None and (val["val_accuracy"] or 0) >= target:
            reached = {"time_to_target_s": total_train_s + total_eval_s + val["eval_s"], "epochs_to_target": epoch + 1}
            em.log(f"validation accuracy reached {target:.3f} after {epoch + 1} epoch(s)")
        total_eval_s += val["eval_s"]
        record = {
            "epoch": epoch,
            **figures,
            **val,
            "train_s": train_s,
            "samples_per_second": figures["samples"] / train_s,
        }
        record["data_wait_s"] += gather_s
        epochs.append(record)
        em.emit("epoch", **record)
    em.emit("steps", phase="train", **log.figures(), batch_size=bs)
    if not log.step_s:
        em.log(
            f"no timed steps: {total_steps} steps in all, {warmup} of them warm-up; "
            "throughput is missing; raise train_samples or lower warmup_steps",
            level="warning",
        )
    return {
        "epochs": epochs,
        "total_train_s": total_train_s,
        **log.figures(),
        "feed": feed,  # the profiled steps after training reuse it (no second copy of the training set)
        **(reached or {"time_to_target_s": None, "epochs_to_target": None}),
    }


TRACED_STEPS = 3  # training steps a kept profiler trace holds (the real, fused step)


def profile_steps(backend: Backend, feed: datasets.BatchFeed, cell: dict[str, Any], em: Emitter) -> None:
    """Where a step's time goes (workers/common/profile.py): `profile_steps` extra steps timed by
    part, and, where the run keeps traces (`profile_dir`), a profiler trace of a few real steps
    after them (traced apart, so the tracer's overhead is in no figure)."""
    steps = int(cell.get("profile_steps") or 0)
    if not steps:
        return
    if data_parallel(backend) or not hasattr(backend, "step_parts"):
        why = "a data-parallel cell" if data_parallel(backend) else f"{backend.framework} has no step_parts"
        em.emit("profile", skipped=f"not profiled: {why}")
        return
    t0 = time.perf_counter()
    epoch = feed.epoch(cell["seed"], cell["epochs"])  # an epoch past the trained ones
    if hasattr(feed, "loader"):  # a loader's batches live in a ring of buffers: copied out of it as they come
        batches = [(datasets.aligned(x), datasets.aligned(y)) for x, y in epoch]
    else:
        batches = list(epoch)
    prepare_s = (time.perf_counter() - t0) / len(batches)
    ring = itertools.islice(itertools.cycle(batches), steps + 1 + TRACED_STEPS)
    figures = profile.breakdown(backend.step_parts, ring, prepare_s, steps)
    trace = None
    if cell.get("profile_dir") and hasattr(backend, "trace"):
        os.makedirs(cell["profile_dir"], exist_ok=True)
        with backend.trace(cell["profile_dir"]) as files:
            for x, y in itertools.islice(ring, TRACED_STEPS):
                train_step(backend, x, y)
        trace = files[0] if files else None
        if trace is None:
            em.log(f"the {backend.framework} profiler wrote no trace under {cell['profile_dir']}", level="warning")
    em.emit("profile", **figures, trace=trace)


def measure_inference(
    backend: Backend, ds: datasets.Dataset, batch_size: int, cell: dict[str, Any], em: Emitter
) -> dict[str, Any]:
    """Latency of the inference forward pass at one batch size, after warm-up runs."""
    inf = cell["inference"]
    em.emit("phase", name="inference", state="start")  # the monitor measures other load over it
    n_val = len(ds.y_val)
    idx = np.arange(batch_size) % n_val  # repeat validation samples when there are too few
    # aligned, as training batches are: no framework copies it on the way in (see data.ALIGN)
    x = datasets.aligned(ds.inputs(ds.x_val[np.sort(idx)] if batch_size <= n_val else ds.x_val[idx]))
    for _ in range(inf["warmup"]):
        backend.predict(x)
    times: list[float] = []
    deadline = time.perf_counter() + inf["max_s"]
    while len(times) < inf["runs"] and (len(times) < inf["min_runs"] or time.perf_counter() < deadline):
        t0 = time.perf_counter()
        backend.predict(x)
        times.append(time.perf_counter() - t0)
    em.emit("phase", name="inference", state="end")
    summary = percentiles_ms(times)
    em.emit(
        "inference",
        batch_size=batch_size,
        runs=len(times),
        warmup=inf["warmup"],
        **summary,
        times_ms=[t * 1e3 for t in times],
    )
    return {"batch_size": batch_size, "runs": len(times), **summary}


CALIBRATION_RUN_S = 0.2  # one timed run: a chain of products this long, one sync at its end
CALIBRATION_SUSTAINED_S = 1.0  # timed work in all, at least: boost clocks of a short burst do not last
CALIBRATION_MIN_RUNS = 5


def calibrate(backend: Backend, cell: dict[str, Any], em: Emitter) -> None:
    """Sustained matmul throughput of this framework on this device and precision: chains of `reps`
    dependent (n, n) @ (n, n) products on random normal data (2*n^3 FLOPs each), timed at least
    CALIBRATION_SUSTAINED_S in all; the median run is the peak, the best and worst its spread."""
    n, budget_s = cell["calibrate"]["n"], cell["calibrate"]["max_s"]
    one = backend.matmul(n, 1)
    one()  # compile, allocate
    t0 = time.perf_counter()
    one()
    reps = max(1, math.ceil(CALIBRATION_RUN_S / max(time.perf_counter() - t0, 1e-6)))
    run = backend.matmul(n, reps)
    run()  # compile this chain outside the timing
    times: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(times) < 3 or (
        len(times) < 200
        and (len(times) < CALIBRATION_MIN_RUNS or sum(times) < CALIBRATION_SUSTAINED_S)
        and time.perf_counter() < deadline
    ):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    flops = 2 * n**3 * reps
    em.emit(
        "calibration",
        n=n,
        reps=reps,
        flops=flops,
        runs=len(times),
        sustained_s=sum(times),
        best_s=min(times),
        median_s=float(np.median(times)),
        peak_tflops=flops / float(np.median(times)) / 1e12,
        best_tflops=flops / min(times) / 1e12,
        worst_tflops=flops / max(times) / 1e12,
    )


def probe_modules(spec: ModelSpec) -> list[str]:
    """Canonical module names whose outputs `verify` compares, in canonical (forward) order."""
    return list(dict.fromkeys(name.rsplit(".", 1)[0] for name in canonical_params(spec)))


def update_fingerprint(
    before: dict[str, np.ndarray], after: dict[str, np.ndarray], names: list[str]
) -> dict[str, list[float]]:
    """Per tensor, the norm of one update and its projection on a fixed random direction (seeded by the
    name), so two frameworks' gradients can be compared without shipping them."""
    out = {}
    for name in names:
        d = after[name].astype(np.float64) - before[name].astype(np.float64)
        r = np.random.default_rng(zlib.crc32(name.encode())).standard_normal(d.shape)
        out[name] = [float(np.linalg.norm(d)), float(np.sum(d * r) / np.linalg.norm(r))]
    return out


def verify(backend: Backend, spec: ModelSpec, ds: datasets.Dataset, cell: dict[str, Any], em: Emitter) -> None:
    """What `mlbench verify` compares across frameworks: structure, weight round trip, per-module outputs,
    logits, and the losses of a few plain-SGD steps, all from the same initial weights and batches."""
    params = canonical_params(spec)
    weights = initial_weights(spec, cell["seed"])
    backend.build(spec, weights)
    exported = backend.export()
    worst, worst_name = 0.0, None
    for name, ref in weights.items():
        diff = float(np.max(np.abs(exported[name] - ref))) if exported[name].shape == ref.shape else float("inf")
        if diff > worst:
            worst, worst_name = diff, name
    opts = cell["verify"]
    x = ds.inputs(ds.x_train[: opts["batch"]])
    acts = backend.activations(x, probe_modules(spec))
    if ds.layout == "NHWC":  # compare in the canonical NCHW layout
        acts = {k: (np.transpose(v, (0, 3, 1, 2)) if v.ndim == 4 else v) for k, v in acts.items()}
    logits = backend.logits(x)
    batches = list(itertools.islice(datasets.train_batches(ds, opts["batch"], cell["seed"], 0), opts["steps"]))
    losses, fingerprint = [], {}
    for i, (xb, yb) in enumerate(batches):
        losses.append(train_step(backend, xb, yb)[0])
        if i == 0:  # the first update, from identical weights: a direct check of the gradients
            fingerprint = update_fingerprint(weights, backend.export(), [k for k, p in params.items() if p.trainable])
    recipe_losses, recipe_fingerprint = [], {}
    if opts.get("recipe_optimizer"):  # the same steps again with the model's own optimizer (momentum, AdamW)
        recipe = OptimizerSpec(**{**opts["recipe_optimizer"], "total_steps": opts["steps"]})
        backend.build(dataclasses.replace(spec, optimizer=recipe), weights)
        trainable = [k for k, p in params.items() if p.trainable]
        for i, (xb, yb) in enumerate(batches):
            # a copy: an export may share memory with the live parameters (PyTorch on the CPU)
            before = {k: np.array(v, copy=True) for k, v in backend.export().items()} if i == 1 else None
            recipe_losses.append(train_step(backend, xb, yb)[0])
            if before is not None:  # the second update: the first with optimizer state, under a new rate
                recipe_fingerprint = update_fingerprint(before, backend.export(), trainable)
    # a data-parallel cell: how far the replicas' parameters drifted apart over the steps (0: in lockstep)
    divergence = backend.replica_divergence() if data_parallel(backend) else None
    path = os.path.join(cell["verify_dir"], f"{backend.framework}-{cell['model']}-{cell['cell_id']}.npz")
    if leader(backend):
        np.savez(path, logits=logits, **{f"act:{k}": np.asarray(v, np.float32) for k, v in acts.items()})
    em.emit(
        "verify",
        model=cell["model"],
        num_parameters=backend.num_parameters(),
        expected_parameters=num_parameters(spec),
        shapes={k: list(v.shape) for k, v in exported.items()},
        trainable=[k for k, p in params.items() if p.trainable],
        roundtrip_max_abs=worst,
        roundtrip_worst=worst_name,
        losses=losses,
        recipe_losses=recipe_losses,
        recipe_update_fingerprint=recipe_fingerprint,
        arrays=path,
        update_fingerprint=fingerprint,
        device=cell["device"],
        replica_divergence=divergence,
    )


def _dataset(backend: Backend, cell: dict[str, Any]) -> tuple[ModelSpec, datasets.Dataset]:
    spec = get_spec(cell["model"], cell.get("model_overrides"))
    ds = datasets.load(
        cell["dataset"], spec.family, input_spec(spec), datasets.data_seed(cell), cell["data_dir"], backend.layout
    )
    return spec, ds


def run_data(backend: Backend, cell: dict[str, Any], em: Emitter) -> None:
    """`mlbench verify --data`: the digests of batches start .. start + batches - 1 of one epoch, as
    the cell's feed delivers them (a loader asked to start there: a restart mid-epoch), no model."""
    check = cell["data_check"]
    _, ds = _dataset(backend, cell)
    feed = make_feed(backend, ds, cell)
    epoch, start, count = check["epoch"], check["start"], check["batches"]
    if hasattr(feed, "loader"):
        batches = itertools.islice(feed.loader.epoch(epoch, start), count)
        digests = [orders.digest(x, y) for x, y in batches]
        feed.close()
    else:
        digests = feed.digest_range(cell["seed"], epoch, start, count)
    em.emit("data", format=cell["dataset"].get("format", "memory"), digests=digests, epoch=epoch, start=start)
    em.emit("result", task="data")


def run_calibrate(backend: Backend, cell: dict[str, Any], em: Emitter) -> None:
    calibrate(backend, cell, em)
    em.emit("result", task="calibrate")


def run_verify(backend: Backend, cell: dict[str, Any], em: Emitter) -> None:
    """Verify each of the cell's models in turn (one process a framework: its start costs more than a
    small model's check). A model that raises is told as `verify_error` and the next one goes on; a
    data-parallel process that lost a rank cannot, and ends as any cell does."""
    for item in cell["verify"]["models"]:
        one = {**cell, "model": item["model"], "model_overrides": item["model_overrides"]}
        one["verify"] = {**cell["verify"], "recipe_optimizer": item["recipe_optimizer"]}
        try:
            spec, ds = _dataset(backend, one)
            verify(backend, spec, ds, one, em)
        except Exception as exc:
            if getattr(backend, "lost_rank", lambda: None)():
                raise
            kind = "unsupported" if isinstance(exc, Unsupported | datasets.DataUnavailable) else "exception"
            kind = "oom" if isinstance(exc, MemoryError) or backend.is_oom(exc) else kind
            em.emit("verify_error", model=item["model"], kind=kind, message=f"{type(exc).__name__}: {exc}"[:2000])
    em.emit("result", task="verify")


def build_model(backend: Backend, spec: ModelSpec, ds: datasets.Dataset, cell: dict[str, Any], em: Emitter) -> int:
    """Build the model from the canonical weights, check its size, time a save and a load of it, and
    say so (`model`); returns its parameter count."""
    weights = load_npz(cell["weights_in"]) if cell.get("weights_in") else initial_weights(spec, cell["seed"])
    t0 = time.perf_counter()
    backend.build(spec, weights)
    build_s = time.perf_counter() - t0
    n_params = backend.num_parameters()
    if n_params != num_parameters(spec):
        raise AssertionError(f"{backend.framework} built {n_params} parameters; the spec has {num_parameters(spec)}")
    with tempfile.TemporaryDirectory(prefix="mlbench-save-") as tmp:
        t0 = time.perf_counter()
        saved = backend.save(os.path.join(tmp, "model"))
        save_s = time.perf_counter() - t0
        size = _disk_bytes(saved)
        t0 = time.perf_counter()
        backend.load(saved)
        load_s = time.perf_counter() - t0
    em.emit(
        "model",
        name=cell["model"],
        num_parameters=n_params,
        parameter_bytes=4 * n_params,
        size_on_disk_bytes=size,
        save_s=save_s,
        load_s=load_s,
        build_s=build_s,
        format=os.path.basename(saved),
        spec=spec_dict(spec),
        train_flops_per_sample=train_flops(spec),
        inference_flops_per_sample=forward_flops(spec),
        dataset=ds.key,
        train_samples=len(ds.y_train),
        val_samples=len(ds.y_val),
    )
    return n_params


class EmulatedStep:
    """DLIO's emulated compute: a training step that sleeps (loader.emulate_compute_s) instead of
    training, so the loader is measured against a step of a given length. Nothing is trained."""

    async_steps = False

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def launch_step(self, x: np.ndarray, y: np.ndarray) -> tuple[float, int]:
        time.sleep(self.seconds)
        return 0.0, 0

    def step_result(self, handle: tuple[float, int]) -> tuple[float, int]:
        return handle


def run_emulated(backend: Backend, cell: dict[str, Any], em: Emitter, seconds: float) -> None:
    """A file-fed cell with emulated compute: the loader probed, then the cell's epochs of batches, each
    step a sleep; the steps, their waits and the data path are reported, no model figure (none exists)."""
    _, ds = _dataset(backend, cell)
    bs, warmup = cell["batch_size"], cell["warmup_steps"]
    feed = make_feed(backend, ds, cell)
    feed.probe_figures = feed.probe()
    log, step, epochs = StepLog(warmup, em), EmulatedStep(seconds), []
    total = len(feed) * cell["epochs"]
    for epoch in range(cell["epochs"]):
        feed.cold()  # loader.page_cache: cold drops the files' pages here, outside the epoch's time
        t0 = time.perf_counter()
        figures = train_epoch(step, feed.epoch(cell["seed"], epoch), log, bs, lambda n: None)  # type: ignore[arg-type]
        train_s = time.perf_counter() - t0
        log.window(False)
        record = {
            "epoch": epoch,
            **dict.fromkeys(("train_loss", "train_accuracy", "val_loss", "val_accuracy")),  # nothing trained
            "samples": figures["samples"],
            "train_s": train_s,
            "data_wait_s": figures["data_wait_s"],
        }
        em.emit("epoch", **record, samples_per_second=figures["samples"] / train_s)
        em.emit("progress", step=log.count, total_steps=total, epoch=epoch + 1)
        epochs.append(record)
    em.emit("steps", phase="train", **log.figures(), batch_size=bs)
    data_path(feed, cell, em)
    feed.close()
    em.emit("memory", host_peak_rss_bytes=host_peak_rss_bytes())
    em.emit(
        "result",
        emulated_compute_s=seconds,
        total_train_s=sum(e["train_s"] for e in epochs),
        samples_per_second=steady_throughput(log.warmup_s, log.step_s, bs)["samples_per_second"],
        num_devices=Device.parse(cell["device"]).count,
        per_device_batch_size=bs // Device.parse(cell["device"]).count,
    )


def run_train(backend: Backend, cell: dict[str, Any], em: Emitter) -> None:
    """A benchmark cell: build, train with evaluation, the step-time breakdown, inference latency, memory."""
    emulate = (cell.get("loader") or {}).get("emulate_compute_s")
    if emulate is not None:  # `measured` arrives resolved, from the memory twin's stored step (executors/base.py)
        run_emulated(backend, cell, em, float(cell["emulate_s"] if emulate == "measured" else emulate))
        return
    spec, ds = _dataset(backend, cell)
    spec = with_total_steps(spec, cell["epochs"] * (len(ds.y_train) // cell["batch_size"]))
    rss_before_build = current_rss_bytes()  # the framework, its runtime and the data, no model yet
    n_params = build_model(backend, spec, ds, cell, em)
    trained = train(backend, ds, cell, em)
    data_path(trained["feed"], cell, em, overlap=bool(backend.async_steps))
    correct_bits = val_correct_bits(backend, ds, cell["batch_size"])
    if cell.get("weights_out"):  # the trained weights in the canonical NPZ format, readable by every worker
        save_npz(cell["weights_out"], backend.export())
    profile_steps(backend, trained["feed"], cell, em)  # train on: after the export and the evaluation
    if hasattr(trained["feed"], "close"):  # a loader's worker processes end here
        trained["feed"].close()
    device = Device.parse(cell["device"])
    per_device = cell["batch_size"] // device.count
    # one replica's latency: at batch 1 and at the batch each device trained on
    latency = (
        {bs: measure_inference(backend, ds, bs, cell, em) for bs in sorted({1, per_device})}
        if leader(backend)
        else {per_device: None}
    )
    em.emit(
        "memory",
        **backend.memory(),
        host_peak_rss_bytes=host_peak_rss_bytes(),
        host_rss_before_build_bytes=rss_before_build,
        data_feed_bytes=trained["feed"].nbytes,  # the training set's batch-ordered copy
    )
    last = trained["epochs"][-1]
    em.emit(
        "result",
        num_parameters=n_params,
        final_train_accuracy=last["train_accuracy"],
        final_val_accuracy=last["val_accuracy"],
        total_train_s=trained["total_train_s"],
        # the same figure the orchestrator stores, from the same samples and the same function
        samples_per_second=steady_throughput(trained["warmup_s"], trained["step_s"], cell["batch_size"])[
            "samples_per_second"
        ],
        inference=latency[per_device],
        num_devices=device.count,
        per_device_batch_size=per_device,
        time_to_target_s=trained["time_to_target_s"],
        epochs_to_target=trained["epochs_to_target"],
        val_correct_bits=correct_bits,
    )


def val_correct_bits(backend: Backend, ds: datasets.Dataset, bs: int) -> str | None:
    """Which validation samples the trained model gets right, one bit each in stored order (numpy
    packbits, base64): every framework is evaluated on the same samples, so two frameworks' accuracies
    are a paired comparison (mlbench/analysis/parity.py). From the inference-mode logits, as the evaluation
    counts them; on the first replica only."""
    if not leader(backend) or not len(ds.y_val):
        return None
    right = [np.argmax(backend.logits(x), axis=-1) == y for x, y in datasets.val_batches(ds, bs)]
    return base64.b64encode(np.packbits(np.concatenate(right))).decode("ascii")


TASKS = {
    "train": run_train,
    "calibrate": run_calibrate,
    "verify": run_verify,
    "data": run_data,
}  # CellSpec.task -> what runs


def run(backend_loader: Any, cell: dict[str, Any], em: Emitter) -> int:
    """Run one cell end to end and emit its events; returns the process exit status."""
    backend = None
    try:
        backend = backend_loader(cell)
        em.emit(
            "hello",
            protocol=PROTOCOL_VERSION,
            framework=backend.framework,
            pid=os.getpid(),
            glibc_tunables=os.environ.get("GLIBC_TUNABLES"),  # the malloc this process started with
            **backend.info(),
        )
        TASKS[cell.get("task") or "train"](backend, cell, em)
        return 0
    except Unsupported as exc:
        em.emit("error", kind="unsupported", message=str(exc), traceback="")
        return 3
    except datasets.DataUnavailable as exc:
        em.emit("error", kind="unsupported", message=str(exc), traceback="")
        return 3
    except DataError as exc:  # bad data, or object storage that did not answer: one line naming the file
        what = "object storage" if isinstance(exc, StorageUnavailable) else "bad data"
        em.emit("error", kind="exception", message=f"{what}: {exc}", traceback=traceback.format_exc()[-8000:])
        return 1
    except LoaderCrashed as exc:
        em.emit("error", kind="crashed", message=str(exc), traceback=traceback.format_exc()[-8000:])
        return 1
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            raise
        # a data-parallel backend whose other rank died says so: that is the cause, not the broken
        # collective this rank saw
        lost = getattr(backend, "lost_rank", lambda: None)() if backend is not None else None
        if lost:  # (kind, message): crashed, or oom where the rank ran out of memory
            em.emit("error", kind=lost[0], message=lost[1], traceback=traceback.format_exc()[-8000:])
            return 1
        oom = isinstance(exc, MemoryError) or (backend is not None and backend.is_oom(exc))
        # torch's SIGCHLD handler raises a dead DataLoader worker's RuntimeError wherever the main thread
        # is (inside a step, not only inside the loader's next()): the cell crashed, with that cause
        died = "DataLoader worker" in str(exc) and not oom
        em.emit(
            "error",
            kind="oom" if oom else "crashed" if died else "exception",
            message=f"{type(exc).__name__}: {exc}"[:2000],
            traceback=traceback.format_exc()[-8000:],
        )
        return 1
    finally:
        if backend is not None and hasattr(backend, "close"):
            backend.close()
