"""Outside monitoring: samples a worker's whole process tree while it runs (psutil, NVIDIA NVML).

Figures nothing measured stay None (missing), never zero: a CPU-only machine has no GPU
utilisation, and a GPU without a total-energy counter has no energy figure.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from mlbench.process.gpus import NVML, gpu_indices, pynvml
from mlbench.process.memlimit import memory_cgroup

THROTTLE_REASONS = {  # NVML's clock throttle reason bits (the idle bit left out: an idle GPU is not throttled)
    0x2: "applications clocks setting",
    0x4: "software power cap",
    0x8: "hardware slowdown",
    0x10: "sync boost",
    0x20: "software thermal slowdown",
    0x40: "hardware thermal slowdown",
    0x80: "hardware power brake",
    0x100: "display clock setting",
}


# what the GPU sampler's summary holds, None where nothing measured it (rows.py stores each)
GPU_FIGURES = (
    "gpu_utilization_pct",
    "gpu_utilization_peak_pct",
    "gpu_memory_used_peak_bytes",
    "gpu_memory_used_avg_bytes",
    "gpu_process_memory_peak_bytes",
    "gpu_process_memory_avg_bytes",
    "gpu_power_avg_w",
    "gpu_energy_j",
    "gpu_utilization_train_pct",
    "gpu_power_train_avg_w",
    "gpu_energy_train_j",
    "gpu_sm_clock_max_mhz",
    "gpu_throttle_reasons",
)


def throttle_names(bits: int | None) -> str | None:
    """The throttle reasons a bit mask names ("" when none but idle; None when never read)."""
    if bits is None:
        return None
    return ", ".join(name for bit, name in THROTTLE_REASONS.items() if bits & bit)


def _query(fn: Any, *args: Any) -> Any:
    """One NVML query; None where it is not supported (MIG, vGPU, an older GPU) or fails, so that one
    missing figure never costs the others in the same sample."""
    try:
        return fn(*args)
    except Exception:
        return None


def _summed(values: list[Any]) -> float | None:
    return None if not values or any(v is None for v in values) else float(sum(values))


def _process_memory(procs_per_gpu: list[Any], pids: set[int]) -> float | None:
    """Device memory NVML accounts to these processes on these GPUs, summed (their CUDA contexts
    included). None where a GPU could not list its processes, where none of ours is among them (a
    container's own PID namespace: NVML names host PIDs), or where a process's figure is unavailable."""
    if any(procs is None for procs in procs_per_gpu):
        return None
    used = [getattr(p, "usedGpuMemory", None) for procs in procs_per_gpu for p in procs if p.pid in pids]
    if not used or any(u is None for u in used):
        return None
    return float(sum(used))


class _GpuSampler:
    """NVML samples of a cell's GPUs, each with its time, and the energy counter at the marks of the
    worker's training window (`mark`), so the figures exist over the whole cell and over the window.
    Memory twice: the whole device's and the worker's processes' own (`pids`: its process tree)."""

    def __init__(self, indices: list[int], pids: Any = frozenset) -> None:
        self.handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in indices]
        self.pids = pids
        self.energy0 = self._energy_mj()
        # t, util %, device mem B, W, the worker's processes' mem B
        self.samples: list[tuple[float, float | None, float | None, float | None, float | None]] = []
        self.sm_clock_max = 0
        self.throttle: int | None = None
        self.window: list[list[Any]] = []  # [t_start, energy_start_mj, t_end, energy_end_mj]

    def _energy_mj(self) -> float | None:
        # millijoules since the driver loaded (Volta and later)
        return _summed([_query(pynvml.nvmlDeviceGetTotalEnergyConsumption, h) for h in self.handles])

    def sample(self) -> None:
        util = _summed([getattr(_query(pynvml.nvmlDeviceGetUtilizationRates, h), "gpu", None) for h in self.handles])
        mem = _summed([getattr(_query(pynvml.nvmlDeviceGetMemoryInfo, h), "used", None) for h in self.handles])
        power_mw = _summed([_query(pynvml.nvmlDeviceGetPowerUsage, h) for h in self.handles])
        own = _process_memory(
            [_query(pynvml.nvmlDeviceGetComputeRunningProcesses, h) for h in self.handles], set(self.pids())
        )
        for h in self.handles:
            clock = _query(pynvml.nvmlDeviceGetClockInfo, h, pynvml.NVML_CLOCK_SM)
            self.sm_clock_max = max(self.sm_clock_max, clock or 0)
            reasons = _query(pynvml.nvmlDeviceGetCurrentClocksThrottleReasons, h)
            if reasons is not None:
                self.throttle = (self.throttle or 0) | (reasons & ~0x1)
        n = len(self.handles)
        self.samples.append(
            (
                time.monotonic(),
                None if util is None else util / n,
                mem,
                None if power_mw is None else power_mw / 1000,
                own,
            )
        )

    def mark(self, state: str) -> None:
        now, energy = time.monotonic(), self._energy_mj()
        if state == "start":
            self.window.append([now, energy, None, None])
        elif state == "end" and self.window and self.window[-1][2] is None:
            self.window[-1][2:] = [now, energy]

    def _in_window(self, t: float) -> bool:
        # NVML's utilisation is over the period before the sample: a sample at the start mark is before it
        return any(start < t <= (end if end is not None else math.inf) for start, _, end, _ in self.window)

    def summary(self) -> dict[str, Any]:
        energy = self._energy_mj()
        joules = None if energy is None or self.energy0 is None else (energy - self.energy0) / 1000.0
        util = [s[1] for s in self.samples if s[1] is not None]
        mem = [s[2] for s in self.samples if s[2] is not None]
        power = [s[3] for s in self.samples if s[3] is not None]
        own = [s[4] for s in self.samples if s[4] is not None]
        win = [(u, p) for t, u, _, p, _ in self.samples if self._in_window(t)]
        win_util = [u for u, _ in win if u is not None]
        win_power = [p for _, p in win if p is not None]
        closed = [w for w in self.window if w[2] is not None]
        win_joules = (
            sum(w[3] - w[1] for w in closed) / 1000.0
            if closed and all(w[1] is not None and w[3] is not None for w in closed)
            else None
        )
        return {
            "gpu_utilization_pct": sum(util) / len(util) if util else None,
            "gpu_utilization_peak_pct": max(util) if util else None,
            "gpu_memory_used_peak_bytes": max(mem) if mem else None,
            "gpu_memory_used_avg_bytes": sum(mem) / len(mem) if mem else None,
            # over the samples in which the worker's processes held device memory (from their CUDA init on)
            "gpu_process_memory_peak_bytes": max(own) if own else None,
            "gpu_process_memory_avg_bytes": sum(own) / len(own) if own else None,
            "gpu_power_avg_w": sum(power) / len(power) if power else None,
            "gpu_energy_j": joules,
            "gpu_utilization_train_pct": sum(win_util) / len(win_util) if win_util else None,
            "gpu_power_train_avg_w": sum(win_power) / len(win_power) if win_power else None,
            "gpu_energy_train_j": win_joules,
            "gpu_sm_clock_max_mhz": self.sm_clock_max or None,
            "gpu_throttle_reasons": throttle_names(self.throttle),
        }


PSS_INTERVAL_S = 1.0  # between two readings of the tree's PSS


def _shm_used() -> int | None:
    """Bytes in use on /dev/shm (machine-wide: a loader's shared-memory batches show as its growth)."""
    try:
        return shutil.disk_usage("/dev/shm").used
    except OSError:
        return None


def oom_kill_count(cgroup: Path) -> int | None:
    """How many processes the kernel's OOM killer has killed in a memory cgroup (None: unreadable)."""
    for name in ("memory.events", "memory.oom_control"):  # v2, v1
        try:
            for line in (cgroup / name).read_text().splitlines():
                if line.startswith("oom_kill "):
                    return int(line.split()[1])
        except (OSError, ValueError):
            continue
    return None


def _own_cpu_s() -> float:
    """CPU seconds this process (every thread of it, not its children) has used."""
    t = psutil.Process().cpu_times()
    return t.user + t.system


def _host_busy_pct(t0: float, times0: Any) -> float | None:
    """The whole machine's CPU busy since (t0, times0), in % of one core (idle and iowait excluded)."""
    wall = time.monotonic() - t0
    if wall <= 0:
        return None
    t1 = psutil.cpu_times()
    idle = lambda t: t.idle + getattr(t, "iowait", 0.0)  # noqa: E731
    busy = (sum(t1) - idle(t1)) - (sum(times0) - idle(times0))
    return 100.0 * busy / wall


class Monitor:
    """Samples RSS and CPU of a process and all its descendants every `interval_s` on a thread, and
    watches the OOM-kill counters of every memory cgroup they are seen in.

    With `rss_limit_bytes` it is also the memory limit's fallback where no memory cgroup could be made
    (mlbench/process/memlimit.py): the sample that finds the tree's summed RSS over the limit SIGKILLs the
    worker's process group and every process of the tree, and `over_limit_rss` keeps the RSS it saw.
    Only samples are checked, so an allocation that rises and falls between two of them escapes it; the
    tree is then walked at every sample, not every `rescan_s`, so a child found late overshoots less
    (docs/findings.md)."""

    def __init__(
        self,
        pid: int,
        interval_s: float = 0.2,
        device: str = "cpu",
        rescan_s: float = 1.0,
        rss_limit_bytes: int | None = None,
    ) -> None:
        self.pid, self.interval_s = pid, interval_s
        self.rescan_s = 0.0 if rss_limit_bytes is not None else rescan_s
        self.rss_limit_bytes = rss_limit_bytes
        self.over_limit_rss: int | None = None  # the tree's RSS at the sample that found it over the limit
        self._scanned = 0.0
        self.rss: list[int] = []
        self.cpu: list[float] = []
        self._procs: dict[int, psutil.Process] = {}
        # the worker's child processes (a data loader's workers, a data-parallel cell's ranks): their
        # CPU apart, and what every process of the tree read (cumulative counters, the last seen per pid)
        self.child_cpu: list[float] = []
        self._io: dict[int, tuple[int, int]] = {}
        self.pss: list[int] = []  # the tree's proportional set size: shared pages split, not counted twice
        self._pss_at = 0.0
        self._shm0 = _shm_used()
        self.shm_peak: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"monitor-{pid}", daemon=True)
        self.gpu = None
        self.gpu_error: str | None = None
        self.oom_baseline: dict[Path, int] = {}
        self._watch_cgroup("self")  # the worker starts in the orchestrator's cgroup
        self._host0 = (time.monotonic(), psutil.cpu_times())  # the whole machine's CPU, to see other load
        self._own0 = _own_cpu_s()  # the orchestrator's own threads are not other load
        self._phase_open: dict[str, tuple[float, float, float, float]] = {}
        self._phase_cpu: dict[str, list[float]] = {}  # phase -> [wall, busy, tree, own] summed over its windows
        indices = gpu_indices(device)
        if indices:
            if NVML.available():
                try:
                    self.gpu = _GpuSampler(indices, pids=lambda: self._procs.keys())
                except Exception as exc:
                    self.gpu_error = str(exc)
            else:
                self.gpu_error = NVML.error

    def _watch_cgroup(self, pid: int | str) -> None:
        group = memory_cgroup(pid)
        if group is not None and group not in self.oom_baseline:
            count = oom_kill_count(group)
            if count is not None:
                self.oom_baseline[group] = count

    def start(self) -> Monitor:
        self._thread.start()
        return self

    def _tree(self) -> list[psutil.Process]:
        """The worker's process tree. Finding the descendants means reading every process's
        /proc/<pid>/stat on the machine (psutil's parent map): 1.5 ms with 120 processes, 19 ms with
        1100, so the tree is walked once every `rescan_s`, and the processes already found are
        sampled in between; a descendant that lives less than `rescan_s` may go unseen."""
        now = time.monotonic()
        if self._procs and now - self._scanned < self.rescan_s:
            return list(self._procs.values())
        self._scanned = now
        try:
            root = self._procs.get(self.pid) or psutil.Process(self.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            return []
        alive = {}
        for p in procs:  # keep Process objects so cpu_percent() measures since the last sample
            alive[p.pid] = self._procs.get(p.pid, p)
        self._procs = alive
        return list(alive.values())

    def sample(self) -> None:
        rss, cpu, child_cpu = 0, 0.0, 0.0
        now = time.monotonic()
        # PSS reads /proc/<pid>/smaps_rollup (a few ms for a framework's process): once a second
        pss_due = now - self._pss_at >= PSS_INTERVAL_S
        pss: int | None = 0 if pss_due else None
        for p in self._tree():
            try:
                with p.oneshot():
                    rss += p.memory_info().rss
                    c = p.cpu_percent(None)
                    cpu += c
                    if p.pid != self.pid:
                        child_cpu += c
                    try:
                        io = p.io_counters()
                        self._io[p.pid] = (io.read_chars, io.read_bytes)
                    except (psutil.AccessDenied, AttributeError, NotImplementedError):
                        pass
                if pss is not None:
                    try:
                        pss += p.memory_full_info().pss
                    except (psutil.AccessDenied, AttributeError):
                        pss = None
            except psutil.Error:  # gone since the last walk of the tree
                self._procs.pop(p.pid, None)
                continue
            # at every sample (~85 us a process, reading mountinfo): a worker may move itself into a cgroup of its own
            self._watch_cgroup(p.pid)
        if rss:
            self.rss.append(rss)
            self.cpu.append(cpu)
            self.child_cpu.append(child_cpu)
        if pss_due:
            self._pss_at = now
            if pss:
                self.pss.append(pss)
        shm = _shm_used()
        if shm is not None and self._shm0 is not None:
            self.shm_peak = max(self.shm_peak or 0, shm - self._shm0)
        if self.rss_limit_bytes is not None and rss > self.rss_limit_bytes and self.over_limit_rss is None:
            self.over_limit_rss = rss
            self._kill_tree()
        if self.gpu is not None:
            try:
                self.gpu.sample()
            except Exception as exc:
                self.gpu_error = str(exc)

    def _kill_tree(self) -> None:
        """SIGKILL the worker's process group, and each process of its tree (one may have left the group)."""
        try:
            os.killpg(self.pid, signal.SIGKILL)  # the worker leads its own process group
        except OSError:
            pass
        for p in list(self._procs.values()):
            try:
                p.kill()
            except psutil.Error:
                pass

    def _loop(self) -> None:
        while not self._stop.is_set():
            t0 = time.perf_counter()
            self.sample()
            self._stop.wait(max(0.0, self.interval_s - (time.perf_counter() - t0)))

    def mark(self, state: str, name: str = "train") -> None:
        """A phase of the worker starts or ends (its `phase` event): the machine's other load over each
        phase, and the GPU figures over the training window too."""
        if self.gpu is not None and name == "train":
            try:
                self.gpu.mark(state)
            except Exception as exc:
                self.gpu_error = str(exc)
        now = self._cpu_clocks()
        if state == "start":
            self._phase_open[name] = now
        elif state == "end" and name in self._phase_open:
            opened = self._phase_open.pop(name)
            total = self._phase_cpu.setdefault(name, [0.0, 0.0, 0.0, 0.0])
            for i, (a, b) in enumerate(zip(opened, now)):
                total[i] += b - a

    def _cpu_clocks(self) -> tuple[float, float, float, float]:
        """(wall, the machine's busy CPU seconds, the worker tree's, the orchestrator's own) now."""
        t = psutil.cpu_times()
        busy = sum(t) - t.idle - getattr(t, "iowait", 0.0)
        tree = 0.0
        for p in list(self._procs.values()):
            try:
                c = p.cpu_times()
                tree += c.user + c.system
            except psutil.Error:
                continue
        return time.monotonic(), busy, tree, _own_cpu_s()

    def phase_load(self) -> dict[str, float | None]:
        """Other processes' CPU (% of one core) over each phase, and the orchestrator's own over training:
        what competed with the timed steps and passes, not the whole cell's average."""
        out: dict[str, float | None] = {}
        for name in ("train", "inference"):
            wall, busy, tree, own = self._phase_cpu.get(name, (0.0, 0.0, 0.0, 0.0))
            out[f"cpu_other_{name}_pct"] = max(0.0, 100.0 * (busy - tree - own) / wall) if wall > 0 else None
            if name == "train":
                out["cpu_orchestrator_train_pct"] = 100.0 * own / wall if wall > 0 else None
        return out

    def stop(self) -> dict[str, Any]:
        """Stop sampling; the summary of what was measured (None where nothing was)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        n = len(self.rss)
        out: dict[str, Any] = {
            "monitor_samples": n,
            "host_rss_peak_bytes": max(self.rss) if n else None,
            "host_rss_avg_bytes": sum(self.rss) / n if n else None,
            # the first cpu_percent() of a process reads 0 by definition: leave it out
            "cpu_util_avg_pct": (sum(self.cpu[1:]) / (n - 1)) if n > 1 else None,
            "cpu_util_peak_pct": max(self.cpu[1:]) if n > 1 else None,
            # the data path's cost beside the step's: the loader's worker processes (any child of the worker)
            "child_cpu_avg_pct": (sum(self.child_cpu[1:]) / (n - 1)) if n > 1 else None,
            "tree_pss_peak_bytes": max(self.pss) if self.pss else None,
            "dev_shm_peak_bytes": self.shm_peak,
            "read_chars_bytes": sum(c for c, _ in self._io.values()) if self._io else None,
            "read_disk_bytes": sum(b for _, b in self._io.values()) if self._io else None,
        }
        host_busy = _host_busy_pct(*self._host0)
        if host_busy is not None and out["cpu_util_avg_pct"] is not None:
            # what the machine's CPUs did beyond the worker's tree and the orchestrator itself (its monitor,
            # readers, progress, other cells' threads): other processes, in % of one core
            own_pct = 100.0 * (_own_cpu_s() - self._own0) / max(time.monotonic() - self._host0[0], 1e-9)
            out["cpu_other_pct"] = max(0.0, host_busy - out["cpu_util_avg_pct"] - own_pct)
        out.update(self.phase_load())
        gpu = self.gpu.summary() if self.gpu is not None else {}
        out.update({key: gpu.get(key) for key in GPU_FIGURES})
        out["gpu_monitor_error"] = self.gpu_error
        # kills by the kernel's OOM killer in any cgroup the worker's tree was seen in, during the cell
        out["oom_kills"] = sum(max(0, (oom_kill_count(g) or 0) - n) for g, n in self.oom_baseline.items())
        return out


def gpu_memory_used_bytes(indices: list[int]) -> int | None:
    """Device memory in use now on these GPUs, summed (None without NVML or GPUs)."""
    if not indices or not NVML.available():
        return None
    try:
        return sum(pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(i)).used for i in indices)
    except Exception:
        return None


def gpu_processes(indices: list[int]) -> list[dict[str, Any]]:
    """Processes holding these GPUs (compute and graphics contexts), with their device memory."""
    if not indices or not NVML.available():
        return []
    found: dict[int, dict[str, Any]] = {}
    for i in indices:
        try:
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            procs = [*pynvml.nvmlDeviceGetComputeRunningProcesses(h), *pynvml.nvmlDeviceGetGraphicsRunningProcesses(h)]
        except Exception:
            continue
        for p in procs:
            try:
                name = psutil.Process(p.pid).name()
            except psutil.Error:
                name = "?"
            used = getattr(p, "usedGpuMemory", None)
            found[p.pid] = {"pid": p.pid, "gpu": i, "name": name, "used_mb": (used / 2**20) if used else None}
    return list(found.values())


def free_gpus_of_earlier_cells(indices: list[int], our_groups: set[int], wait_s: float = 5.0) -> list[dict[str, Any]]:
    """Before a GPU cell: end processes of earlier cells (by process group) still holding these GPUs;
    return the other processes found there (someone else's: reported, never killed)."""
    foreign = []
    for proc in gpu_processes(indices):
        try:
            group = os.getpgid(proc["pid"])
        except OSError:
            continue
        if group in our_groups:
            try:
                os.killpg(group, signal.SIGKILL)
            except OSError:
                pass
        else:
            foreign.append(proc)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline and any(_pgid(p["pid"]) in our_groups for p in gpu_processes(indices)):
        time.sleep(0.2)
    return foreign


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None
