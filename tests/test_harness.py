"""The shared training loop: steps read back one step late, in order, with nothing left running."""

from __future__ import annotations

import io
import json
import mmap

import numpy as np
import pytest

from workers.common import data, harness
from workers.common.events import Emitter
from workers.common.specs import get_spec, input_spec


class Recorder:
    """A backend whose steps are numbered; it logs every launch and read-back in the order they happen."""

    framework, layout, async_steps = "fake", "NCHW", True

    def __init__(self, fail_at: int | None = None) -> None:
        self.log: list[str] = []
        self.launched = 0
        self.fail_at = fail_at

    def launch_step(self, x: np.ndarray, y: np.ndarray) -> int:
        k = self.launched
        self.launched += 1
        self.log.append(f"launch {k}")
        return k

    def step_result(self, k: int) -> tuple[float, int]:
        self.log.append(f"result {k}")
        if k == self.fail_at:
            raise RuntimeError("RESOURCE_EXHAUSTED: out of memory")  # as a device error surfaces at the sync
        return float(k), k % 3

    def eval_step(self, x: np.ndarray, y: np.ndarray) -> tuple[float, int]:
        return 0.0, 0


def batches(n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(np.zeros((2, 3), np.float32), np.zeros(2, np.int32)) for _ in range(n)]


def test_each_step_is_read_back_after_the_next_is_launched() -> None:
    b = Recorder()
    out = list(harness.pipelined(b, batches(4)))
    assert [(loss, correct) for loss, correct, _ in out] == [(0.0, 0), (1.0, 1), (2.0, 2), (3.0, 0)]
    assert b.log == [
        "launch 0",
        "launch 1",
        "result 0",
        "launch 2",
        "result 1",
        "launch 3",
        "result 2",
        "result 3",  # the last step waited for before the loop ends: nothing runs past an epoch
    ]


class Placer(Recorder):
    """A recorder that also logs each batch placed ahead (`to_device`)."""

    def to_device(self, x: np.ndarray, y: np.ndarray) -> tuple[str, np.ndarray]:
        self.log.append(f"place {len([e for e in self.log if e.startswith('place')])}")
        return "placed", y


@pytest.mark.parametrize("depth", [0, 1, 2])
def test_device_prefetch_places_each_batch_depth_steps_ahead(depth: int) -> None:
    """Batch k+depth is placed before step k is launched (its copy then runs behind the queued steps),
    every batch once, in order; depth 0 places nothing ahead."""
    b = Placer()
    placed = []
    for x, y in harness.ahead(b, batches(4), depth):
        placed.append(x)
        b.launch_step(x, y)
    launches = [e for e in b.log if e.startswith("launch")]
    assert len(launches) == 4 and placed == (["placed"] * 4 if depth else placed)
    if depth:
        for k in range(4):  # every batch up to k + depth placed before launch k
            before = b.log[: b.log.index(f"launch {k}")]
            assert sum(e.startswith("place") for e in before) == min(4, k + depth + 1)
    else:
        assert not any(e.startswith("place") for e in b.log)


@pytest.mark.parametrize("n", [0, 1])
def test_no_batch_or_one(n: int) -> None:
    b = Recorder()
    assert [loss for loss, _, _ in harness.pipelined(b, batches(n))] == [float(k) for k in range(n)]
    assert b.log == [f"{what} {k}" for k in range(n) for what in ("launch", "result")]


def train(
    backend: Recorder, tmp_path, warmup_steps: int, epochs: int, train_samples: int, out: io.StringIO | None = None
) -> dict:
    """harness.train on a tiny synthetic MLP dataset, batches of 4 (its events into `out`)."""
    spec = get_spec("mlp")
    cell = {
        "batch_size": 4,
        "seed": 0,
        "warmup_steps": warmup_steps,
        "epochs": epochs,
        "dataset": {"name": "synthetic", "train_samples": train_samples, "val_samples": 8, "path": None},
    }
    ds = data.load(cell["dataset"], spec.family, input_spec(spec), 0, str(tmp_path))
    return harness.train(backend, ds, cell, Emitter("t", out if out is not None else io.StringIO()))


def test_a_backend_that_runs_each_step_as_it_is_launched_is_read_back_at_once() -> None:
    b = Recorder()
    b.async_steps = False
    out = list(harness.pipelined(b, batches(3)))
    assert [loss for loss, _, _ in out] == [0.0, 1.0, 2.0]
    assert b.log == ["launch 0", "result 0", "launch 1", "result 1", "launch 2", "result 2"]


class Timed(Recorder):
    """Step k takes k + 1 seconds of a fake clock: inside launch_step where the backend runs its steps
    as they are launched, inside step_result (the wait for the device) where it queues them."""

    def __init__(self, clock: list[float], async_steps: bool) -> None:
        super().__init__()
        self.clock, self.async_steps = clock, async_steps

    def launch_step(self, x: np.ndarray, y: np.ndarray) -> int:
        k = super().launch_step(x, y)
        if not self.async_steps:
            self.clock[0] += k + 1.0
        return k

    def step_result(self, k: int) -> tuple[float, int]:
        if self.async_steps:
            self.clock[0] += k + 1.0
        return super().step_result(k)


@pytest.mark.parametrize("async_steps", [True, False])
def test_each_steps_time_is_its_own_work(monkeypatch, tmp_path, async_steps: bool) -> None:
    # read one step late, a synchronous backend's intervals would be [1+2, 3, 4, 5, 6] and [0]:
    # five intervals holding six steps' work but four counted as timed steps' samples
    clock = [0.0]
    monkeypatch.setattr(harness.time, "perf_counter", lambda: clock[0])
    out = train(Timed(clock, async_steps), tmp_path, warmup_steps=2, epochs=1, train_samples=24)
    assert out["warmup_s"] == [1.0, 2.0]
    assert out["step_s"] == [3.0, 4.0, 5.0, 6.0]  # every step's own work: 18 s for 4 timed steps


def touch_fresh_pages(n: int) -> None:
    """n minor page faults: fresh pages mapped and written, as a step whose temporaries the allocator
    gave back to the kernel pays them."""
    with mmap.mmap(-1, n * mmap.PAGESIZE) as fresh:
        for i in range(n):
            fresh[i * mmap.PAGESIZE] = 1


class Faulting(Recorder):
    """Step 2 faults 64 pages in: inside launch_step where steps run as launched, inside step_result
    (where the host waits for the device's work) where they are queued."""

    def __init__(self, async_steps: bool) -> None:
        super().__init__()
        self.async_steps = async_steps

    def launch_step(self, x: np.ndarray, y: np.ndarray) -> int:
        k = super().launch_step(x, y)
        if k == 2 and not self.async_steps:
            touch_fresh_pages(64)
        return k

    def step_result(self, k: int) -> tuple[float, int]:
        if k == 2 and self.async_steps:
            touch_fresh_pages(64)
        return super().step_result(k)


@pytest.mark.parametrize("async_steps", [True, False])
def test_each_steps_page_faults_are_counted_with_it(tmp_path, async_steps: bool) -> None:
    out = train(Faulting(async_steps), tmp_path, warmup_steps=1, epochs=1, train_samples=24)
    faults = out["warmup_faults"] + out["step_faults"]
    assert len(out["warmup_faults"]) == 1 and len(out["step_faults"]) == len(out["step_s"]) == 5
    assert faults[2] >= 64, faults
    assert max(faults[:2] + faults[3:]) < 64, faults


def test_the_wait_for_data_is_counted_once_and_whole(monkeypatch) -> None:
    clock = [0.0]  # the loop's clock, moved only by the feed: 1 s a batch
    monkeypatch.setattr(harness.time, "perf_counter", lambda: clock[0])

    def slow_feed():
        for batch in batches(3):
            clock[0] += 1.0
            yield batch

    waits = [w for _, _, w in harness.pipelined(Recorder(), slow_feed())]
    # the first two batches are taken before step 0 is read back, the third before step 1; the end
    # of the feed costs nothing: every second counted, none twice
    assert waits == [2.0, 1.0, 0.0]


def test_a_failing_step_surfaces_when_it_is_read_back() -> None:
    b = Recorder(fail_at=1)
    with pytest.raises(RuntimeError, match="RESOURCE_EXHAUSTED"):
        list(harness.pipelined(b, batches(4)))
    assert b.log[-1] == "result 1"


def test_train_counts_every_step_once(tmp_path) -> None:
    b = Recorder()
    out = train(b, tmp_path, warmup_steps=3, epochs=2, train_samples=20)
    assert b.launched == 10  # 5 steps an epoch, 2 epochs
    assert len(out["warmup_s"]) == 3 and len(out["step_s"]) == 7
    e0, e1 = out["epochs"]
    # losses 0..4 then 5..9 (the recorder's step numbers), each the mean of a batch of 4
    assert e0["train_loss"] == pytest.approx(2.0) and e1["train_loss"] == pytest.approx(7.0)
    assert e0["train_accuracy"] == pytest.approx((0 + 1 + 2 + 0 + 1) / 20)
    # the steps' samples are the intervals between read-backs: together, the epochs' step time
    assert sum(out["warmup_s"]) + sum(out["step_s"]) <= e0["train_s"] + e1["train_s"]


@pytest.mark.parametrize("warmup", [0, 3, 7])
def test_the_worker_marks_its_training_window_for_the_gpu_monitor(tmp_path, warmup: int) -> None:
    """phase events bracket the timed steps of each epoch, evaluation left out (warm-up 7 of 10 steps:
    the window opens inside the second epoch)."""
    out = io.StringIO()
    train(Recorder(), tmp_path, warmup_steps=warmup, epochs=2, train_samples=20, out=out)
    order = []
    for line in out.getvalue().splitlines():
        e = json.loads(line)
        if e["event"] == "phase":
            order.append(e["state"])
        elif e["event"] == "progress":
            order.append(f"step {e['step']}")
        elif e["event"] == "epoch":
            order.append("epoch")
    first_timed_epoch = warmup // 5  # 5 steps an epoch
    assert order.count("start") == order.count("end") == 2 - first_timed_epoch
    assert all(order[i + 1] == "epoch" for i, x in enumerate(order) if x == "end")  # closed before evaluation
    # opened as the last warm-up step is read back (its progress follows), or as training starts
    assert order.index("start") == 0 if not warmup else order[order.index("start") + 1] == f"step {warmup}"


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FakeMatmul:
    """A device whose product takes `product_s` of the fake clock; one run in six is a slow one."""

    def __init__(self, clock: FakeClock, product_s: float) -> None:
        self.clock, self.product_s, self.calls, self.reps_asked = clock, product_s, 0, []

    def matmul(self, n: int, reps: int):
        self.reps_asked.append(reps)

        def run() -> None:
            self.calls += 1
            self.clock.now += reps * self.product_s * (2.0 if self.calls % 6 == 0 else 1.0)

        return run


def test_calibration_is_sustained_and_reports_the_median(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a fake clock: runs of about CALIBRATION_RUN_S (a chain of products sized from one product),
    at least CALIBRATION_MIN_RUNS of them and CALIBRATION_SUSTAINED_S in all, the median run the peak."""
    clock = FakeClock()
    monkeypatch.setattr(harness.time, "perf_counter", clock)
    backend = FakeMatmul(clock, product_s=0.01)
    out = io.StringIO()
    harness.calibrate(backend, {"calibrate": {"n": 1000, "max_s": 3.0}}, Emitter("c", out))
    event = json.loads(out.getvalue().splitlines()[-1])
    reps = round(harness.CALIBRATION_RUN_S / 0.01)
    assert backend.reps_asked == [1, reps] and event["reps"] == reps
    assert event["sustained_s"] >= harness.CALIBRATION_SUSTAINED_S and event["runs"] >= harness.CALIBRATION_MIN_RUNS
    flops = 2 * 1000**3 * reps
    assert event["peak_tflops"] == pytest.approx(flops / (reps * 0.01) / 1e12)  # the median run, not a slow one
    assert event["worst_tflops"] == pytest.approx(event["peak_tflops"] / 2)  # the slow run is the spread's end
    assert event["best_tflops"] == pytest.approx(event["peak_tflops"])


def test_calibration_stops_at_its_budget_on_a_slow_device(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    monkeypatch.setattr(harness.time, "perf_counter", clock)
    backend = FakeMatmul(clock, product_s=2.0)  # one product longer than a run: one product a run
    out = io.StringIO()
    harness.calibrate(backend, {"calibrate": {"n": 1000, "max_s": 3.0}}, Emitter("c", out))
    event = json.loads(out.getvalue().splitlines()[-1])
    assert event["reps"] == 1 and event["runs"] == 3  # at least three runs, then the budget ends it


def test_garbage_collection_inside_a_step_is_timed_and_named() -> None:
    """GcClock counts the collector's pauses while installed; the row names the outlier steps they explain."""
    import gc

    from mlbench.results.rows import gc_figures
    from workers.common.harness import GcClock

    with GcClock() as clock:
        gc.collect()
    before = clock.total_s
    gc.collect()  # uninstalled: not counted
    assert before > 0 and clock.total_s == before
    steps = [0.010] * 20 + [0.040]  # one 4x step among steady ones
    pauses = [0.0] * 20 + [0.028]  # ... with a collection inside it
    assert gc_figures(steps, pauses) == {"gc_pause_s": 0.028, "gc_steps": 1, "step_outliers_with_gc": 1}
    assert gc_figures(steps, []) == {"gc_pause_s": None, "gc_steps": None, "step_outliers_with_gc": None}


def test_a_workers_peak_rss_is_its_own_not_its_parents(tmp_path) -> None:
    """Linux carries getrusage's ru_maxrss over fork and exec: a worker started by a big process reported
    that process's size. VmHWM is the started program's own: a child of a parent holding 300 MB peaks far
    under it."""
    import subprocess
    import sys

    held = bytearray(300 << 20)
    held[:: 1 << 12] = b"x" * len(held[:: 1 << 12])  # touched: resident
    code = "from workers.common.harness import host_peak_rss_bytes; print(host_peak_rss_bytes())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert int(out) < 200 << 20, int(out) >> 20
    del held
