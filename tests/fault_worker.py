"""A worker that misbehaves on command, to test the orchestrator for real.

Map framework names to it in a suite's `workers` section; the framework name picks the fault:
    workers: {raise: tests.fault_worker, segfault: tests.fault_worker, ...}
It imports no framework and fakes its figures: it exists only for the tests.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from workers.common.cli import setup_process
from workers.common.events import Emitter


def _finish(em: Emitter, step_s: float = 0.001) -> None:
    em.emit("model", num_parameters=1, size_on_disk_bytes=4)
    em.emit(
        "epoch",
        epoch=0,
        train_loss=1.0,
        train_accuracy=0.5,
        val_loss=1.0,
        val_accuracy=0.5,
        train_s=0.01,
        eval_s=0.0,
        samples=8,
        samples_per_second=800.0,
        data_wait_s=0.0,
    )
    em.emit("steps", phase="train", warmup_s=[0.002], step_s=[step_s] * 8, batch_size=8)
    em.emit(
        "inference", batch_size=8, runs=3, mean_ms=1.0, p50_ms=1.0, p95_ms=1.0, p99_ms=1.0, times_ms=[1.0, 1.0, 1.0]
    )
    em.emit("result", num_parameters=1)


def _note_pid(mode: str, pid: int) -> None:
    """Tell the test which extra processes to look for afterwards."""
    folder = os.environ.get("FAULT_PIDDIR")
    if folder:  # written whole, then renamed: a reader never sees an empty file
        tmp = os.path.join(folder, f".{mode}.pid.tmp")
        with open(tmp, "w") as f:
            f.write(str(pid))
        os.replace(tmp, os.path.join(folder, f"{mode}.pid"))


def main() -> int:
    cell = json.loads(sys.argv[sys.argv.index("--cell") + 1])
    mode = cell["framework"]
    events = setup_process()  # as every real worker does
    em = Emitter(cell["cell_id"], events)
    em.emit("hello", protocol=1, framework=mode, pid=os.getpid())
    _note_pid(f"{mode}-worker", os.getpid())
    if mode == "fine":
        _finish(em)
    elif mode == "spread":  # its runs alternate between two speeds, 2x apart (counted in FAULT_PIDDIR)
        counter = Path(os.environ["FAULT_PIDDIR"]) / "spread.runs"
        n = int(counter.read_text()) if counter.exists() else 0
        counter.write_text(str(n + 1))
        _finish(em, 0.001 * (1 + n % 2))
    elif mode == "raise":
        raise_it = {"x": 1}
        try:
            raise_it["missing"]
        except KeyError as exc:
            em.emit("error", kind="exception", message=f"KeyError: {exc}", traceback="...")
            return 1
    elif mode == "uncaught":
        raise RuntimeError("boom from the fault worker")
    elif mode == "bigcrash":  # fine at small batches, a segfault from batch 64 (not out of memory)
        if cell["batch_size"] >= 64:
            ctypes.string_at(0)
        _finish(em)
    elif mode == "segfault":
        ctypes.string_at(0)
    elif mode == "abort":
        os.abort()
    elif mode == "oom":
        em.emit("error", kind="oom", message="CUDA out of memory. Tried to allocate 2.00 GiB", traceback="")
        return 1
    elif mode == "unsupported":
        em.emit("error", kind="unsupported", message="bf16 is not supported on this device", traceback="")
        return 3
    elif mode == "noresult":
        return 0
    elif mode == "hang":
        time.sleep(3600)
    elif mode == "hangchild":  # a child keeps stdout open while the worker hangs
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"], stdout=events)
        _note_pid(mode, child.pid)
        time.sleep(3600)
    elif mode == "orphan":  # exits with a result while a child still holds stdout
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"], stdout=events)
        _note_pid(mode, child.pid)
        _finish(em)
        return 0
    elif mode == "flood":  # stdout and stderr floods, garbage and an over-long line, then a result
        for i in range(200_000):
            events.write(f"not an event {i}\n")
        events.write("x" * (3 << 20) + "\n")
        events.write('{"event": "epoch", "t": 1}\n')  # an event missing its fields
        sys.stderr.write("e" * (8 << 20))
        sys.stderr.flush()
        _finish(em)
    elif mode == "busy":  # keeps talking, never finishes: only the wall-clock limit stops it
        while True:
            em.log("still busy")
            time.sleep(0.2)
    elif mode == "notinstalled":  # the framework package is missing: the cell is skipped
        sys.modules["torch"] = None  # makes `import torch` raise ImportError
        from workers.common import harness, registry

        return harness.run(
            lambda c: registry.backend_class("pytorch")(c),
            {**cell, "data_dir": "unused"},
            em,
        )
    elif mode == "html":  # text that must be escaped wherever it is shown
        em.emit("error", kind="exception", message="<script>alert('mlbench')</script> & <b>bold</b>", traceback="")
        return 1
    elif mode == "oomkill":  # the kernel's OOM killer ends it, in a memory cgroup of its own
        from mlbench.process.memlimit import memory_cgroup

        group = memory_cgroup("self") / f"mlbench-oom-{os.getpid()}"
        try:
            group.mkdir()
            limit = group / ("memory.max" if (group / "memory.max").exists() else "memory.limit_in_bytes")
            limit.write_text(str(256 << 20))
            (group / "cgroup.procs").write_text(str(os.getpid()))
        except OSError as exc:
            em.emit("error", kind="unsupported", message=f"cannot make a memory cgroup here: {exc}", traceback="")
            return 3
        with open(os.path.join(os.environ.get("FAULT_PIDDIR", "/tmp"), "oomkill.cgroup"), "w") as f:
            f.write(str(group))
        time.sleep(1.0)  # let the monitor see the new cgroup
        hog = []
        while True:
            hog.append(bytearray(32 << 20))
    elif mode == "sigterm_ignorer":  # must be SIGKILLed
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        time.sleep(3600)
    elif mode == "slow":
        time.sleep(float(os.environ.get("FAULT_SLOW_S", "3")))
        _finish(em)
    elif mode == "hangonce":  # hangs the first time (until killed), then finishes at once (noted in FAULT_PIDDIR)
        marker = Path(os.environ["FAULT_PIDDIR"]) / "hangonce.ran"
        if not marker.exists():
            marker.touch()
            time.sleep(3600)
        _finish(em)
    else:
        em.emit("error", kind="exception", message=f"unknown fault mode {mode!r}", traceback="")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
