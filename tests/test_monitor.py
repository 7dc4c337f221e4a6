"""The outside monitor on real processes; GPU hygiene with a stand-in for NVML (no GPU here)."""

from __future__ import annotations

import os
import subprocess
import sys
from types import SimpleNamespace

import pytest

from mlbench import monitor


def test_monitor_samples_a_real_process_tree() -> None:
    code = (
        "import subprocess, sys, time; b = bytearray(200 << 20); "
        "c = subprocess.Popen([sys.executable, '-c', 'x = bytearray(100 << 20); import time; time.sleep(3)']); "
        "t = time.time()\nwhile time.time() - t < 2: pass\nc.wait()"
    )
    proc = subprocess.Popen([sys.executable, "-c", code])
    mon = monitor.Monitor(proc.pid, interval_s=0.05).start()
    proc.wait()
    s = mon.stop()
    assert s["monitor_samples"] > 10
    assert s["host_rss_peak_bytes"] > 280 << 20  # parent's 200 MiB and the child's 100 MiB together
    assert s["host_rss_avg_bytes"] <= s["host_rss_peak_bytes"]
    assert s["cpu_util_peak_pct"] > 50  # the busy loop
    assert s["gpu_utilization_pct"] is None and s["gpu_energy_j"] is None  # CPU device: missing, not 0


def test_the_tree_is_walked_once_a_rescan_interval_and_late_children_are_found(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    walks = 0
    children = monitor.psutil.Process.children

    def counted(self, *a, **k):
        nonlocal walks
        walks += 1
        return children(self, *a, **k)

    monkeypatch.setattr(monitor.psutil.Process, "children", counted)
    code = (  # a child started after a second, holding 150 MiB for 1.5 s
        "import subprocess, sys, time; time.sleep(1); "
        "subprocess.run([sys.executable, '-c', 'x = bytearray(150 << 20); import time; time.sleep(1.5)'])"
    )
    proc = subprocess.Popen([sys.executable, "-c", code])
    mon = monitor.Monitor(proc.pid, interval_s=0.02, rescan_s=0.5).start()
    proc.wait()
    s = mon.stop()
    assert s["monitor_samples"] > 50
    assert 3 <= walks <= s["monitor_samples"] / 5  # ~1 walk per 25 samples, not one per sample
    assert s["host_rss_peak_bytes"] > 150 << 20  # the late child was found and sampled


def test_gpu_indices() -> None:
    assert monitor.gpu_indices("cpu") == [] and monitor.gpu_indices("cuda:3") == [3]
    assert monitor.gpu_indices("cuda:0,1") == [0, 1]


class FakeNVML:
    """Enough of pynvml to list processes on GPU 0: each of `pids` holds 1 GiB."""

    def __init__(self, pids):
        self.pids = pids

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetComputeRunningProcesses(self, h):
        return [SimpleNamespace(pid=p, usedGpuMemory=1 << 30) for p in self.pids if _alive(p)]

    def nvmlDeviceGetGraphicsRunningProcesses(self, h):
        return []

    def nvmlDeviceGetMemoryInfo(self, h):
        return SimpleNamespace(used=sum(1 << 30 for p in self.pids if _alive(p)), total=80 << 30)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return monitor.psutil.Process(pid).status() != monitor.psutil.STATUS_ZOMBIE


def test_leftovers_of_earlier_cells_are_ended_and_others_only_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    leftover = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        fake = FakeNVML([leftover.pid, os.getpid()])
        monkeypatch.setattr(monitor, "pynvml", fake)
        monkeypatch.setattr(monitor.NVML, "_state", True)
        assert monitor.gpu_memory_used_bytes([0]) == 2 << 30
        foreign = monitor.free_gpus_of_earlier_cells([0], {leftover.pid}, wait_s=5)
        leftover.wait(timeout=5)
        assert leftover.returncode == -9
        assert [p["pid"] for p in foreign] == [os.getpid()] and foreign[0]["used_mb"] == 1024
        assert monitor.gpu_memory_used_bytes([0]) == 1 << 30
    finally:
        if leftover.poll() is None:
            leftover.kill()


def test_without_nvml_nothing_is_measured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(monitor.NVML, "_state", False)
    assert monitor.gpu_memory_used_bytes([0]) is None and monitor.gpu_processes([0]) == []
    m = monitor.Monitor(os.getpid(), device="cuda:0")
    assert m.gpu is None


def test_load_from_other_processes_is_measured() -> None:
    busy = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 3: pass"])
    idle = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(2)"])
    mon = monitor.Monitor(idle.pid, interval_s=0.05).start()
    idle.wait()
    s = mon.stop()
    busy.kill()
    assert s["cpu_util_avg_pct"] < 20  # the monitored tree slept
    assert s["cpu_other_pct"] > 60  # while another process kept a core busy


def test_the_orchestrators_own_cpu_is_not_other_load() -> None:
    """A busy thread of the monitoring process itself (the orchestrator's readers, monitor, progress)
    is subtracted: only other processes are other load."""
    import threading
    import time

    stop = time.monotonic() + 2.0

    def spin() -> None:
        while time.monotonic() < stop:
            pass

    idle = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(2)"])
    mon = monitor.Monitor(idle.pid, interval_s=0.05).start()
    spinner = threading.Thread(target=spin)
    spinner.start()
    idle.wait()
    spinner.join()
    s = mon.stop()
    assert s["cpu_other_pct"] < 50  # a core's worth of the process's own work is not counted
