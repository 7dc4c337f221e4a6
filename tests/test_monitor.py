"""The outside monitor on real processes; GPU hygiene with a stand-in for NVML (no GPU here)."""

from __future__ import annotations

import os
import subprocess
import sys
from types import SimpleNamespace

import pytest

from mlbench.process import monitor


@pytest.mark.e2e
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


@pytest.mark.e2e
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


@pytest.mark.e2e
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


@pytest.mark.e2e
@pytest.mark.serial
def test_load_from_other_processes_is_measured() -> None:
    busy = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 3: pass"])
    idle = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(2)"])
    mon = monitor.Monitor(idle.pid, interval_s=0.05).start()
    idle.wait()
    s = mon.stop()
    busy.kill()
    assert s["cpu_util_avg_pct"] < 20  # the monitored tree slept
    assert s["cpu_other_pct"] > 60  # while another process kept a core busy


@pytest.mark.e2e
@pytest.mark.serial
def test_other_load_is_measured_over_the_timed_window_alone() -> None:
    """A busy neighbour during the marked training window, none outside it: the window's figure says it,
    the whole cell's average halves it, and a phase never marked has no figure (not 0)."""
    import time

    idle = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3)"])
    mon = monitor.Monitor(idle.pid, interval_s=0.05).start()
    time.sleep(1.0)  # quiet
    mon.mark("start", "train")
    busy = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 1.2: pass"])
    busy.wait()
    mon.mark("end", "train")
    idle.wait()
    s = mon.stop()
    assert s["cpu_other_train_pct"] > 60 and s["cpu_other_train_pct"] > s["cpu_other_pct"] + 20, s
    assert s["cpu_orchestrator_train_pct"] is not None and s["cpu_other_inference_pct"] is None


@pytest.mark.e2e
@pytest.mark.serial
def test_the_orchestrators_own_cpu_is_not_other_load() -> None:
    """A busy thread of the monitoring process itself (the orchestrator's readers, monitor, progress)
    is subtracted: only other processes are other load."""
    import threading
    import time

    def watch(spinning: bool) -> float:
        stop = time.monotonic() + 2.0

        def spin() -> None:
            while time.monotonic() < stop:
                pass

        idle = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(2)"])
        mon = monitor.Monitor(idle.pid, interval_s=0.05).start()
        spinner = threading.Thread(target=spin if spinning else lambda: None)
        spinner.start()
        idle.wait()
        spinner.join()
        return mon.stop()["cpu_other_pct"]

    # against the same window without the spinner: what the rest of the machine does (a shared CI host,
    # tests of another session) is other load in both, and is not this test's business
    baseline = watch(spinning=False)
    assert watch(spinning=True) < baseline + 50  # a core's worth of the process's own work is not counted


class FakeGpu:
    """A GPU as NVML reports it, on a fake clock: utilisation 20% outside the training window and 90%
    inside, power 100 W and 400 W (NVML reports milliwatts), the energy counter in millijoules; one query
    (power) unsupported on demand, as on a MIG slice."""

    NVML_CLOCK_SM = 1

    def __init__(self, clock: list[float], power_supported: bool = True, processes: str = "listed") -> None:
        self.clock, self.training, self.energy_mj, self.power_supported = clock, False, 5_000_000.0, power_supported
        self.processes = processes  # "listed", "unsupported" (vGPU), "foreign" (another PID namespace)

    def advance(self, seconds: float) -> None:
        self.energy_mj += (400.0 if self.training else 100.0) * seconds * 1000.0
        self.clock[0] += seconds

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetUtilizationRates(self, h):
        return SimpleNamespace(gpu=90 if self.training else 20)

    def nvmlDeviceGetMemoryInfo(self, h):
        return SimpleNamespace(used=3 << 30)

    def nvmlDeviceGetPowerUsage(self, h):
        if not self.power_supported:
            raise RuntimeError("NVML_ERROR_NOT_SUPPORTED")
        return 400_000 if self.training else 100_000

    def nvmlDeviceGetTotalEnergyConsumption(self, h):
        return self.energy_mj

    def nvmlDeviceGetClockInfo(self, h, kind):
        return 1980 if self.training else 345

    def nvmlDeviceGetComputeRunningProcesses(self, h):
        """The worker (pid 4242: 2 GiB while it trains, 1 GiB of context before) and a foreign 5 GiB."""
        if self.processes == "unsupported":
            raise RuntimeError("NVML_ERROR_NOT_SUPPORTED")
        ours = 4242 if self.processes == "listed" else 1
        return [
            SimpleNamespace(pid=ours, usedGpuMemory=(2 << 30) if self.training else (1 << 30)),
            SimpleNamespace(pid=999_999, usedGpuMemory=5 << 30),
        ]

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, h):
        return 0x1 | (0x4 if self.training else 0)  # idle outside, the power cap inside


def _gpu_cell(monkeypatch: pytest.MonkeyPatch, gpu: FakeGpu, clock: list[float]) -> dict:
    monkeypatch.setattr(monitor, "pynvml", gpu)
    monkeypatch.setattr(monitor.NVML, "_state", True)
    monkeypatch.setattr(monitor.time, "monotonic", lambda: clock[0])
    sampler = monitor._GpuSampler([0], pids=lambda: {4242, 4243})
    for phase, seconds in (("idle", 2.0), ("start", 0), ("train", 4.0), ("end", 0), ("idle", 2.0)):
        if phase in ("start", "end"):
            gpu.training = phase == "start"
            sampler.mark(phase)
            continue
        for _ in range(int(seconds / 0.5)):
            gpu.advance(0.5)
            sampler.sample()
    return sampler.summary()


def test_gpu_figures_over_the_cell_and_over_the_training_window(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [100.0]
    s = _gpu_cell(monkeypatch, FakeGpu(clock), clock)
    assert s["gpu_utilization_train_pct"] == 90 and s["gpu_utilization_pct"] == pytest.approx(
        (4 * 20 + 8 * 90 + 4 * 20) / 16
    )
    assert s["gpu_power_train_avg_w"] == 400 and s["gpu_power_avg_w"] == pytest.approx(250)  # milliwatts to W
    assert s["gpu_energy_train_j"] == pytest.approx(400 * 4) and s["gpu_energy_j"] == pytest.approx(400 * 4 + 100 * 4)
    assert s["gpu_sm_clock_max_mhz"] == 1980 and s["gpu_throttle_reasons"] == "software power cap"  # idle left out
    assert s["gpu_memory_used_peak_bytes"] == 3 << 30


def test_an_unsupported_nvml_query_costs_only_its_own_figure(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [100.0]
    s = _gpu_cell(monkeypatch, FakeGpu(clock, power_supported=False), clock)
    assert s["gpu_power_avg_w"] is None and s["gpu_power_train_avg_w"] is None  # missing, never zero
    assert s["gpu_utilization_train_pct"] == 90 and s["gpu_energy_train_j"] == pytest.approx(1600)


def test_the_workers_own_gpu_memory_apart_from_the_whole_device(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [100.0]
    s = _gpu_cell(monkeypatch, FakeGpu(clock), clock)
    # only the worker's processes count, not the foreign process on the same GPU
    assert s["gpu_process_memory_peak_bytes"] == 2 << 30
    assert s["gpu_process_memory_avg_bytes"] == pytest.approx((8 * (1 << 30) + 8 * (2 << 30)) / 16)
    assert s["gpu_memory_used_peak_bytes"] == 3 << 30  # the whole device: another figure, another column
    for processes in ("unsupported", "foreign"):  # never zero: missing where NVML cannot say
        clock = [100.0]
        s = _gpu_cell(monkeypatch, FakeGpu(clock, processes=processes), clock)
        assert s["gpu_process_memory_peak_bytes"] is None and s["gpu_process_memory_avg_bytes"] is None


def test_a_gpu_cells_peak_and_average_come_from_one_source() -> None:
    from mlbench.results import rows

    mon = {
        "gpu_memory_used_peak_bytes": 9 << 30,
        "gpu_memory_used_avg_bytes": 8 << 30,
        "gpu_process_memory_peak_bytes": 3 << 30,
        "gpu_process_memory_avg_bytes": 2 << 30,
    }
    memory = {"device_peak_bytes": 2 << 30, "device_reserved_peak_bytes": (5 << 29)}
    peak, avg, source = rows._memory_figures(True, memory, mon)
    assert (peak, avg) == (3 << 30, 2 << 30) and "worker's processes" in source
    assert rows._outside_allocator(memory, mon) == (3 << 30) - (5 << 29)  # above the reserved pool
    assert rows._outside_allocator({"device_peak_bytes": 2 << 30}, mon) == 1 << 30  # TensorFlow: no pool figure
    whole = {k: v for k, v in mon.items() if not k.startswith("gpu_process")}
    peak, avg, source = rows._memory_figures(True, memory, whole)
    assert (peak, avg) == (9 << 30, 8 << 30) and "whole device" in source
    assert rows._outside_allocator(memory, whole) is None
