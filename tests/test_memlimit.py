"""`memory_limit_mb`, run for real: a cell's whole process tree under the limit, over it is `oom`.

The cgroup tests need a memory cgroup this process may make sub-groups in (root in a container with
/sys/fs/cgroup writable, or a delegated cgroup v2); elsewhere the runner falls back to the watchdog,
which the same assertions hold for, and the cgroup-only ones are skipped.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mlbench.cells import make_cell
from mlbench.config import parse_suite
from mlbench.process import memlimit, runner
from tests.conftest import descendants_alive, suite_dict

pytestmark = pytest.mark.e2e  # real worker processes or framework training: not in make test-fast


def _cgroup_place() -> Path | None:
    """Where this machine makes a cell's cgroup, or None where it cannot (the watchdog then)."""
    limit = memlimit.make(64, 0.1)
    limit.remove()
    return limit.cgroup.parent if limit.cgroup is not None else None


PLACE = _cgroup_place()
needs_cgroup = pytest.mark.skipif(PLACE is None, reason="no memory cgroup can be made here")


def _ours(place: Path | None) -> list[str]:
    """This process's cell cgroups still there."""
    if place is None:
        return []
    return [p.name for p in place.iterdir() if p.name.startswith(f"{memlimit.PREFIX}{os.getpid()}-")]


@pytest.fixture
def made(monkeypatch):
    """The memory limits run_cell makes; none of their cgroups may be left afterwards."""
    limits: list[memlimit.MemoryLimit] = []
    real = memlimit.make

    def make(*args, **kwargs):
        limits.append(real(*args, **kwargs))
        return limits[-1]

    monkeypatch.setattr(memlimit, "make", make)
    yield limits
    for limit in limits:
        assert limit.cgroup is None or not limit.cgroup.exists(), f"{limit.cgroup} left behind"
    assert _ours(PLACE) == []


@pytest.fixture
def no_cgroup(monkeypatch):
    """As on a machine where no memory cgroup can be made: the watchdog enforces the limit."""

    def refuse(mb: float) -> memlimit.MemoryLimit:
        raise memlimit._NoCgroup("refused by the test")

    monkeypatch.setattr(memlimit, "_cgroup_v1", refuse)
    monkeypatch.setattr(memlimit, "_cgroup_v2", refuse)


def _hog(tmp_path: Path, mode: str, hog_mb: float, limit_mb: float, **extra) -> runner.Outcome:
    suite = parse_suite(suite_dict(frameworks=[mode], workers={mode: "tests.memhog_worker"}))
    cell = make_cell(suite, mode, "mlp", "cpu", "fp32", 16)
    return runner.run_cell(
        cell, tmp_path, module="tests.memhog_worker", timeout_s=60, idle_timeout_s=60, monitor_interval_s=0.05,
        extra={"hog_mb": hog_mb, **extra}, memory_limit_mb=limit_mb,
    )  # fmt: skip


def _worker_pid(outcome: runner.Outcome) -> int:
    return next(e["pid"] for e in outcome.events if e["event"] == "hello")


def _gone(pids: list[int], wait_s: float = 5.0) -> bool:
    """Whether these processes are gone (or zombies) within `wait_s`: a SIGKILLed process takes a
    moment to leave, freeing its memory."""
    deadline = time.monotonic() + wait_s
    while descendants_alive(pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return descendants_alive(pids) == []


@pytest.mark.parametrize("mechanism", ["best", "watchdog"])
def test_a_worker_over_the_limit_is_oom_naming_the_limit_and_nothing_outlives_it(
    tmp_path: Path, made, request, mechanism: str
) -> None:
    if mechanism == "watchdog":
        request.getfixturevalue("no_cgroup")
    outcome = _hog(tmp_path, "hog", 600, 300)
    assert outcome.status == "oom", (outcome.reason, outcome.stderr_tail[-2000:])
    assert outcome.reason.startswith("out of memory under memory_limit_mb=300 (")
    assert _gone([_worker_pid(outcome)])
    assert outcome.memory_limit["mb"] == 300
    if made[0].cgroup is not None:  # the kernel stopped it at the limit
        assert "cgroup" in outcome.reason and "killed by the kernel's OOM killer" in outcome.reason
        assert outcome.memory_limit["how"].startswith(f"cgroup v{made[0].version} ")
        assert outcome.memory_limit["cgroup_peak_mb"] <= 300
    else:  # the watchdog, at the first sample over it
        assert "(RSS watchdog): the process tree's RSS reached" in outcome.reason
        assert outcome.killed_for == "memory"
        assert outcome.memory_limit["how"].startswith("RSS watchdog")
        assert "refused by the test" in outcome.memory_limit["how"] or mechanism == "best"
        assert 300 * 2**20 < outcome.monitor["host_rss_peak_bytes"] < 600 * 2**20


@pytest.mark.parametrize("mechanism", ["best", "watchdog"])
def test_the_same_worker_under_a_limit_it_fits_is_ok(tmp_path: Path, made, request, mechanism: str) -> None:
    if mechanism == "watchdog":
        request.getfixturevalue("no_cgroup")
    outcome = _hog(tmp_path, "hog", 600, 2000)
    assert (outcome.status, outcome.reason) == ("ok", ""), outcome.stderr_tail[-2000:]
    assert outcome.memory_limit["mb"] == 2000
    if made[0].cgroup is not None:  # everything it touched was charged to the cell's own cgroup
        assert 600 <= outcome.memory_limit["cgroup_peak_mb"] < 2000
    assert outcome.monitor["host_rss_peak_bytes"] > 600 * 2**20


@pytest.mark.parametrize("mechanism", ["best", "watchdog"])
def test_a_child_of_the_worker_is_under_the_limit_too(tmp_path: Path, made, request, mechanism: str) -> None:
    if mechanism == "watchdog":
        request.getfixturevalue("no_cgroup")
    pid_file = tmp_path / "child.pid"
    outcome = _hog(tmp_path, "hogchild", 600, 300, hog_pid_file=str(pid_file))
    assert outcome.status == "oom", (outcome.reason, outcome.stderr_tail[-2000:])
    assert outcome.reason.startswith("out of memory under memory_limit_mb=300 (")
    child = int(pid_file.read_text())
    assert _gone([_worker_pid(outcome), child])
    if made[0].cgroup is not None:  # the OOM killer ended the child (the largest), the worker said so
        assert outcome.reason.endswith(f"killed by the kernel's OOM killer; then child {child} died with status -9")


@needs_cgroup
def test_a_cgroup_left_by_a_killed_orchestrator_is_removed_by_the_next_one(made) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a pid no process has now (reused pids are told apart by start time too)
    stale = PLACE / f"{memlimit.PREFIX}{gone.pid}-123-0"
    stale.mkdir()
    busy = PLACE / f"{memlimit.PREFIX}{gone.pid}-123-1"  # still holds a process: stays
    busy.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (busy / "cgroup.procs").write_text(str(sleeper.pid))
        limit = memlimit.make(100, 0.1)
        limit.remove()
        assert not stale.exists() and busy.exists()
    finally:
        sleeper.kill()
        sleeper.wait()
        deadline = time.monotonic() + 5
        while busy.exists() and time.monotonic() < deadline:
            memlimit._rmtree(busy)
            time.sleep(0.05)
        assert not busy.exists()


@needs_cgroup
def test_the_worker_joins_the_cells_cgroup_before_it_runs(tmp_path: Path, made) -> None:
    """The worker is in the cgroup from its first instruction: /proc/<pid>/cgroup while it runs."""
    seen: list[str] = []

    def look(pid: int) -> None:
        seen.append(Path(f"/proc/{pid}/cgroup").read_text())

    suite = parse_suite(suite_dict(frameworks=["hog"], workers={"hog": "tests.memhog_worker"}))
    cell = make_cell(suite, "hog", "mlp", "cpu", "fp32", 16)
    outcome = runner.run_cell(
        cell, tmp_path, module="tests.memhog_worker", timeout_s=60, idle_timeout_s=60,
        extra={"hog_mb": 20}, memory_limit_mb=500, on_start=look,
    )  # fmt: skip
    assert outcome.status == "ok"
    assert made[0].cgroup.name in seen[0]


@needs_cgroup
def test_a_worker_that_cannot_join_the_cgroup_runs_under_the_watchdog(tmp_path: Path, made, monkeypatch) -> None:
    # the launcher's write of its pid fails for real, in the child (a folder is no cgroup.procs file)
    monkeypatch.setattr(memlimit.MemoryLimit, "procs_file", property(lambda self: tmp_path))
    outcome = _hog(tmp_path, "hog", 600, 300)
    assert outcome.status == "oom", (outcome.reason, outcome.stderr_tail[-2000:])
    assert "(RSS watchdog)" in outcome.reason
    assert "joining " in outcome.memory_limit["how"] and " failed" in outcome.memory_limit["how"]


def test_classify_names_the_limit_whoever_noticed_the_oom() -> None:
    limit = memlimit.MemoryLimit(1500, "cgroup v1 memory limit", "cgroup v1 memory.limit_in_bytes ...")
    limits = (10.0, 10.0)
    prefix = "out of memory under memory_limit_mb=1500 (cgroup v1 memory limit): "
    # the kernel's OOM killer ended the worker
    assert runner.classify(-9, [], None, 1, "", limits, memory=(limit, "killed by the kernel's OOM killer")) == (
        "oom",
        prefix + "killed by the kernel's OOM killer",
    )
    # the framework's allocator failed first: the worker's own oom error, under the limit
    error = {"event": "error", "kind": "oom", "message": "RuntimeError: DefaultCPUAllocator: can't allocate memory"}
    assert runner.classify(1, [error], None, 0, "", limits, memory=(limit, None)) == (
        "oom",
        prefix + "RuntimeError: DefaultCPUAllocator: can't allocate memory",
    )
    # a DDP rank the OOM killer ended reads as a dead rank to rank 0
    dead = {"event": "error", "kind": "crashed", "message": "rank 1 of 2 died: killed by SIGKILL"}
    assert runner.classify(1, [dead], None, 1, "", limits, memory=(limit, "killed by the kernel's OOM killer")) == (
        "oom",
        prefix + "killed by the kernel's OOM killer; then rank 1 of 2 died: killed by SIGKILL",
    )
    # a crash the limit had no part in stays a crash; no limit: as before
    assert runner.classify(-11, [], None, 0, "", limits, memory=(limit, None)) == ("crashed", "killed by SIGSEGV")
    assert runner.classify(-9, [], None, 0, "", limits) == ("crashed", "killed by SIGKILL")


def _torch_mlp(tmp_path: Path, batch_size: int, limit_mb: float) -> runner.Outcome:
    suite = parse_suite(
        suite_dict(
            batch_sizes=[batch_size], warmup_steps=1, inference={"warmup": 0, "runs": 1, "min_runs": 1, "max_s": 1},
            dataset={"name": "synthetic", "train_samples": 2 * batch_size, "val_samples": 32},
        )
    )  # fmt: skip
    cell = make_cell(suite, "pytorch", "mlp", "cpu", "fp32", batch_size)
    return runner.run_cell(
        cell, tmp_path, module="workers.pytorch_worker", timeout_s=180, idle_timeout_s=180, threads=2,
        memory_limit_mb=limit_mb,
    )  # fmt: skip


def test_a_pytorch_cell_over_the_limit_is_oom_and_under_it_ok(tmp_path: Path, made) -> None:
    """Measured on CPU without a limit: the MLP's tree peaks at 340 MB RSS at batch 16 (PyTorch itself),
    670 MB at 16384 and 1000 MB at 32768; under 600 MB the first fits and the last does not."""
    pytest.importorskip("torch")
    big = _torch_mlp(tmp_path / "big", 32768, 600)
    assert big.status == "oom", (big.reason, big.stderr_tail[-2000:])
    assert big.reason.startswith("out of memory under memory_limit_mb=600 (")
    small = _torch_mlp(tmp_path / "small", 16, 600)
    assert (small.status, small.reason) == ("ok", ""), small.stderr_tail[-2000:]
    assert small.memory_limit["mb"] == 600
    assert _gone([_worker_pid(big), _worker_pid(small)])


def test_the_outcome_without_a_limit_says_none(tmp_path: Path) -> None:
    suite = parse_suite(suite_dict(frameworks=["fine"], workers={"fine": "tests.fault_worker"}))
    cell = make_cell(suite, "fine", "mlp", "cpu", "fp32", 16)
    outcome = runner.run_cell(cell, tmp_path, module="tests.fault_worker", timeout_s=60, idle_timeout_s=60)
    assert (outcome.status, outcome.memory_limit) == ("ok", None)
