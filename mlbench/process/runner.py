"""Runs one cell as a fresh worker subprocess in its own process group, and says what happened.

No busy waiting: reader threads turn the worker's stdout lines, stdout EOF and its exit into
items of one queue, and the main thread blocks on that queue with a timeout equal to the
nearest deadline (wall-clock limit, no-event limit).
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

import mlbench
from mlbench.cells import Cell
from mlbench.process import gpus as host_gpus
from mlbench.process import memlimit, protocol
from mlbench.process.environment import ENV_FLAGS
from mlbench.process.logs import BoundedLog
from mlbench.process.monitor import Monitor, free_gpus_of_earlier_cells, gpu_memory_used_bytes
from mlbench.runfolder import RunFolder
from workers.common import malloc
from workers.common import threads as thread_settings
from workers.common.devices import Device

TERM_GRACE_S = 5.0  # between SIGTERM and SIGKILL of the group
DUMP_WAIT_S = 1.0  # after SIGUSR1 (faulthandler stack dump), before SIGTERM
ORPHAN_GRACE_S = 2.0  # after the worker exits, how long its children may keep stdout open
MAX_KEPT_EVENTS = 20000
MAX_KEPT_LOGS = 200
STARTED_GROUPS: set[int] = set()  # process groups of the workers this orchestrator started


class Interrupted(Exception):
    """The orchestrator was asked to stop (Ctrl-C or SIGTERM) while a cell ran. An executor that ran
    several at once says which it stopped and hands back those that finished meanwhile."""

    def __init__(self, cell_id: str = "", finished: list[Any] | None = None, stopped: list[str] | None = None):
        super().__init__(cell_id)
        self.finished = finished or []
        self.stopped = stopped if stopped is not None else ([cell_id] if cell_id else [])


class CancelToken:
    """Stops the cells that run in other threads: `cancel()` wakes each run_cell's wait at once (no
    polling), which then kills its worker's process group and raises Interrupted; callbacks stop what
    runs elsewhere (a Ray task)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queues: list[queue.Queue[tuple[str, Any]]] = []
        self._callbacks: dict[int, Callable[[], None]] = {}
        self.cancelled = False

    def watch(self, q: queue.Queue[tuple[str, Any]]) -> None:
        with self._lock:
            self._queues.append(q)
            if self.cancelled:
                q.put(("cancel", None))

    def on_cancel(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call `callback` on cancel (at once if already cancelled); returns what unregisters it."""
        with self._lock:
            key = id(callback)
            self._callbacks[key] = callback
            already = self.cancelled
        if already:
            callback()
        return lambda: self._callbacks.pop(key, None)

    def cancel(self) -> None:
        with self._lock:
            self.cancelled = True
            for q in self._queues:
                q.put(("cancel", None))
            callbacks = list(self._callbacks.values())
        for callback in callbacks:
            callback()


@dataclass
class Outcome:
    """Everything the orchestrator learnt about one cell run."""

    status: str
    reason: str
    exit_code: int | None
    duration_s: float
    events: list[dict[str, Any]] = field(default_factory=list)
    logs: list[str] = field(default_factory=list)
    stderr_tail: str = ""
    monitor: dict[str, Any] = field(default_factory=dict)
    started_at: float = 0.0
    killed_for: str | None = None
    worker_wall_s: float | None = None  # from spawning the worker to its exit
    env_flags: dict[str, str] = field(default_factory=dict)  # the worker's allocator/thread/device variables
    executor: str = "local"  # what ran it: local or ray
    physical_device: str | None = None  # the GPUs it ran on as NVML numbers them ("cuda:3"), or "cpu"
    host: dict[str, Any] | None = None  # the environment record of the machine it ran on (None: the head's)
    ray_node: str | None = None  # the Ray node that ran it (nodes on one machine share a hostname)
    # the memory limit it ran under and how it was enforced: {"mb", "how"} (mlbench/process/memlimit.py); None: none
    memory_limit: dict[str, Any] | None = None


def worker_env(cell: Cell, threads: int | None, cache_dir: Path, gpus: list[str] | None = None) -> dict[str, str]:
    """The worker's environment, fixed before it imports anything; `gpus`: the CUDA_VISIBLE_DEVICES
    entries of the GPUs it runs on (default: those the cell names, see mlbench/process/gpus.py)."""
    env = dict(os.environ)
    root = str(Path(mlbench.__file__).resolve().parent.parent)  # the checkout whose workers/ go with this mlbench
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONFAULTHANDLER"] = "1"
    env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"  # memory figures mean the same in every framework
    env["TF_FORCE_GPU_ALLOW_GROWTH"] = "true"
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    # compile caches in the run's folder, or in MLBENCH_COMPILE_CACHE where it names one that runs share
    # (a warm cache moves first-step figures: the folder is recorded with every row)
    cache_dir = Path(env["MLBENCH_COMPILE_CACHE"]) if env.get("MLBENCH_COMPILE_CACHE") else cache_dir
    env["TORCHINDUCTOR_CACHE_DIR"] = str(cache_dir / "inductor")
    env["JAX_COMPILATION_CACHE_DIR"] = str(cache_dir / "jax")
    # Only the cell's GPUs are visible (renumbered from 0), numbered in PCI bus order as NVML does;
    # a CPU cell sees none, so no framework initialises CUDA behind a CPU measurement, and JAX is
    # pinned to the cell's platform (no silent fallback to the CPU for a GPU cell)
    gpus = host_gpus.choose(cell.device) if gpus is None else gpus
    env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
    env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
    env["JAX_PLATFORMS"] = "cuda" if gpus else "cpu"
    # glibc's malloc (`malloc: steady`; workers/common/malloc.py says why), read at the worker's start
    env.update(malloc.env_for(cell.spec.malloc, env))
    env.update(thread_settings.env_for(resolved_threads(threads)))
    return env


def recorded_flags(env: dict[str, str]) -> dict[str, str]:
    """The variables of a worker's environment that move its figures (stored with its row)."""
    return {k: v for k, v in env.items() if k in ENV_FLAGS}


def resolved_threads(threads: int | None) -> int:
    """The intra-op thread count every framework gets: the config's, else the physical cores."""
    return threads or psutil.cpu_count(logical=False) or os.cpu_count() or 1


def visible_device(device: str) -> str:
    """The device name inside the worker, after CUDA_VISIBLE_DEVICES renumbering."""
    return str(Device.parse(device).visible())


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def kill_group(pgid: int) -> None:
    """SIGKILL a whole process group (a worker started by this module leads its own)."""
    _signal_group(pgid, signal.SIGKILL)


def _terminate(proc: subprocess.Popen[bytes], dump: bool) -> None:
    """Ask for a stack dump, then SIGTERM and finally SIGKILL the worker's whole process group."""
    if dump and hasattr(signal, "SIGUSR1") and proc.poll() is None:
        try:
            proc.send_signal(signal.SIGUSR1)
            proc.wait(timeout=DUMP_WAIT_S)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
    _signal_group(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=TERM_GRACE_S)
    except subprocess.TimeoutExpired:
        pass
    _signal_group(proc.pid, signal.SIGKILL)


def _read_stdout(stream: Any, q: queue.Queue[tuple[str, Any]]) -> None:
    while True:
        line = stream.readline(protocol.MAX_LINE_BYTES + 1)
        if not line:
            break
        if len(line) > protocol.MAX_LINE_BYTES and not line.endswith(b"\n"):
            cut = len(line)
            while True:  # drop the rest of the over-long line
                more = stream.readline(protocol.MAX_LINE_BYTES)
                cut += len(more)
                if not more or more.endswith(b"\n"):
                    break
            q.put(("long", cut))
            continue
        q.put(("line", line))
    q.put(("eof", None))


def _copy_stderr(stream: Any, log: BoundedLog) -> None:
    for chunk in iter(lambda: stream.read1(65536), b""):
        log.write(chunk)


def _wait_exit(proc: subprocess.Popen[bytes], q: queue.Queue[tuple[str, Any]]) -> None:
    q.put(("exit", proc.wait()))


# a worker's error kind -> the cell's status
STATUS_OF_ERROR = {"oom": "oom", "unsupported": "skipped", "exception": "failed", "crashed": "crashed"}


def classify(
    exit_code: int | None,
    events: list[dict[str, Any]],
    killed_for: str | None,
    oom_kills: int,
    stderr_tail: str,
    limits: tuple[float, float],
    memory: tuple[memlimit.MemoryLimit, str | None] | None = None,
) -> tuple[str, str]:
    """(status, one-line reason) from how the worker ended. `memory`: the cell's memory limit and what
    enforcing it did, if anything ("killed by the kernel's OOM killer", the watchdog's kill): a cell that
    did not end ok after that is `oom` whatever the worker said (a DDP rank the OOM killer ended reads
    as a dead rank to rank 0), and an `oom` under a limit names the limit and its mechanism."""
    status, reason = _classify(exit_code, events, killed_for, oom_kills, stderr_tail, limits)
    if memory is None:
        return status, reason
    limit, enforced = memory
    prefix = f"out of memory under memory_limit_mb={limit.mb:g} ({limit.mechanism})"
    if status == "ok":
        return status, reason
    if enforced is not None:
        if status == "oom" or reason.startswith("killed by SIGKILL"):
            return "oom", f"{prefix}: {enforced}"
        return "oom", f"{prefix}: {enforced}; then {reason}"
    if status == "oom":
        return "oom", f"{prefix}: {reason}"
    if limit.hit_limit():  # usage reached the limit; no OOM kill (page cache may have been reclaimed)
        return status, f"{reason} (memory use reached memory_limit_mb={limit.mb:g} meanwhile)"
    return status, reason


def _classify(
    exit_code: int | None,
    events: list[dict[str, Any]],
    killed_for: str | None,
    oom_kills: int,
    stderr_tail: str,
    limits: tuple[float, float],
) -> tuple[str, str]:
    last_line = next((ln.strip() for ln in reversed(stderr_tail.splitlines()) if ln.strip()), "")
    last_line = f": {last_line[:300]}" if last_line else ""
    if killed_for == "timeout":
        return "timeout", f"no result within the {limits[0]:g} s wall-clock limit; process group killed"
    if killed_for == "idle":
        return "timeout", f"no event for {limits[1]:g} s (hung); process group killed"
    error = next((e for e in reversed(events) if e["event"] == "error"), None)
    has_result = any(e["event"] == "result" for e in events)
    if error is not None:
        message = error["message"].splitlines()[0][:500] if error["message"] else error["kind"]
        return STATUS_OF_ERROR[error["kind"]], message
    if exit_code is not None and exit_code < 0:
        try:
            name = signal.Signals(-exit_code).name
        except ValueError:
            name = f"signal {-exit_code}"
        if name == "SIGKILL" and oom_kills > 0:
            return "oom", "killed by the kernel's OOM killer (SIGKILL; the cgroup's oom_kill count rose)"
        return "crashed", f"killed by {name}{last_line}"
    if has_result and exit_code == 0:
        return "ok", ""
    if has_result:
        return "crashed", f"exited with status {exit_code} after its result{last_line}"
    return "crashed", f"exited with status {exit_code} without a result{last_line}"


LAUNCHER = Path(__file__).with_name("launch.py")


def spawn(
    argv: list[str], env: dict[str, str], limit: memlimit.MemoryLimit | None, interval_s: float
) -> tuple[subprocess.Popen[bytes], memlimit.MemoryLimit | None]:
    """Start the worker in a session of its own through the launcher (launch.py: the parent-death signal,
    the cell's memory cgroup where it has one, then exec), so no Python runs between fork and exec in this
    threaded process; where the worker cannot join the cgroup, the limit falls back to the monitor's RSS
    watchdog."""

    def launch(procs: Path | None) -> tuple[subprocess.Popen[bytes], str]:
        read, write = os.pipe()
        command = [sys.executable, "-I", "-S", str(LAUNCHER), str(os.getpid()), str(write), str(procs or ""), "--"]
        try:
            proc = subprocess.Popen(
                [*command, *argv],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                start_new_session=True,
                pass_fds=(write,),
            )
        except BaseException:
            os.close(read)
            raise
        finally:
            os.close(write)
        with os.fdopen(read, "rb") as said:  # until the launcher execs the worker or exits
            return proc, said.read().decode(errors="replace")

    try:
        proc, said = launch(limit.procs_file if limit is not None else None)
        if said in ("ok", "") or limit is None or limit.cgroup is None:
            return proc, limit
        proc.wait()  # it could not join the cgroup, and ended without starting the worker
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
        limit.remove()
        limit = memlimit.watchdog(limit.mb, interval_s, said)
        return launch(None)[0], limit
    except BaseException:
        if limit is not None:
            limit.remove()
        raise


@dataclass
class _Reading:
    """What was read from a worker's stdout, and how the reading ended."""

    events: list[dict[str, Any]] = field(default_factory=list)
    logs: list[str] = field(default_factory=list)
    n_logs: int = 0
    exit_code: int | None = None
    exited_at: float = 0.0
    killed_for: str | None = None  # timeout | idle | memory

    def keep_log(self, text: str) -> None:
        self.n_logs += 1
        self.logs.append(text)
        if len(self.logs) > MAX_KEPT_LOGS:  # keep the first half and a sliding tail
            del self.logs[MAX_KEPT_LOGS // 2]

    def line(self, value: bytes, monitor: Monitor, on_event: Callable[[dict[str, Any]], None] | None) -> None:
        """One stdout line: an event (checked against the protocol), else kept as a log line."""
        text = value.decode("utf-8", "replace").rstrip("\n")
        try:
            event = protocol.parse_line(text)
        except protocol.ProtocolError as exc:
            self.keep_log(f"[stdout, {exc}] {text[:1000]}")
            return
        if event["event"] == "phase":
            monitor.mark(event["state"], event["name"])
        elif event["event"] == "log":
            self.keep_log(f"[{event.get('level', 'info')}] {event['message'][:1000]}")
        elif event["event"] != "progress" and len(self.events) < MAX_KEPT_EVENTS:
            self.events.append(event)
        if on_event is not None:
            on_event(event)

    def final_logs(self) -> list[str]:
        if self.n_logs > len(self.logs):
            self.logs.insert(MAX_KEPT_LOGS // 2, f"[mlbench] {self.n_logs - len(self.logs)} log lines cut")
        return self.logs


def _read(
    proc: subprocess.Popen[bytes],
    q: queue.Queue[tuple[str, Any]],
    reading: _Reading,
    stream_log: BoundedLog,
    monitor: Monitor,
    limits: tuple[float, float, float],
    on_event: Callable[[dict[str, Any]], None] | None,
) -> None:
    """Read the worker's stdout until it has exited and its stream ended; stop it at the timeout or
    when it goes idle (`limits`: its start, the wall-clock and the idle timeout). A child that outlives
    the worker and holds the pipe gets ORPHAN_GRACE_S, then its group is killed and reading stops."""
    t0, timeout_s, idle_timeout_s = limits
    eof = False
    drain_until: float | None = None  # once set: stop waiting for the streams at this instant
    deadline, idle_deadline = t0 + timeout_s, t0 + idle_timeout_s
    while not (eof and reading.exit_code is not None):
        now = time.monotonic()
        if drain_until is not None:
            wait = drain_until - now
        elif reading.exit_code is not None:  # exited; a child of it may still hold stdout open
            wait = reading.exited_at + ORPHAN_GRACE_S - now
        else:
            wait = min(deadline, idle_deadline) - now
        try:
            kind, value = q.get(timeout=max(0.0, wait))
        except queue.Empty:
            if drain_until is not None:
                break  # a process outside the group holds the pipe: stop reading it
            if reading.exit_code is None:
                reading.killed_for = "timeout" if time.monotonic() >= deadline else "idle"
                _terminate(proc, dump=True)
            else:
                _signal_group(proc.pid, signal.SIGKILL)  # children of the exited worker
            drain_until = time.monotonic() + ORPHAN_GRACE_S
            continue
        if kind == "cancel":
            raise KeyboardInterrupt
        if kind == "exit":
            reading.exit_code, reading.exited_at = value, time.monotonic()
        elif kind == "eof":
            eof = True
        elif kind == "long":
            reading.keep_log(f"[mlbench] a stdout line of {value} bytes was cut (limit {protocol.MAX_LINE_BYTES})")
        else:
            stream_log.write(value)
            idle_deadline = time.monotonic() + idle_timeout_s
            reading.line(value, monitor, on_event)


def _enforced(
    monitor: Monitor,
    limit: memlimit.MemoryLimit | None,
    oom_kills: int | None,
    exit_code: int | None,
    interval_s: float,
) -> str | None:
    """What enforcing the cell's memory limit did to it, if anything (the RSS watchdog's kill, the
    kernel's OOM killer in the cell's cgroup)."""
    if monitor.over_limit_rss is not None:
        return (
            f"the process tree's RSS reached {monitor.over_limit_rss / 2**20:.0f} MB at a"
            f" {interval_s:g} s sample; process group killed"
        )
    if oom_kills:
        return "killed by the kernel's OOM killer" + (f" ({oom_kills} processes of the cell)" if oom_kills > 1 else "")
    if limit is not None and oom_kills is None and limit.hit_limit() and exit_code == -signal.SIGKILL:
        # a kernel before 4.13 has no oom_kill counter: SIGKILL with usage at the limit is the OOM killer
        return "killed by SIGKILL with memory use at the limit (the kernel's OOM killer; it keeps no count here)"
    return None


def run_cell(
    cell: Cell,
    run_dir: Path,
    *,
    module: str,
    timeout_s: float,
    idle_timeout_s: float,
    threads: int | None = None,
    monitor_interval_s: float = 0.2,
    on_event: Callable[[dict[str, Any]], None] | None = None,
    on_start: Callable[[int], None] | None = None,
    extra: dict[str, Any] | None = None,
    log_name: str | None = None,
    python: str = sys.executable,
    cancel: CancelToken | None = None,
    gpus: list[str] | None = None,
    memory_limit_mb: float | None = None,
) -> Outcome:
    """Run one cell to its end, whatever that end is; raises Interrupted on Ctrl-C/SIGTERM, or when
    `cancel` is cancelled (from another thread). `gpus`: the CUDA_VISIBLE_DEVICES entries of the GPUs
    to run it on, where an executor chose them (a Ray task's), else those the cell names.
    `memory_limit_mb`: the worker's whole process tree runs under that much memory (host memory; a
    memory cgroup of the cell's own where possible, else the monitor's RSS watchdog, mlbench/process/memlimit.py);
    going over it is `oom`."""
    folder = RunFolder(run_dir)
    folder.logs.mkdir(parents=True, exist_ok=True)
    threads = resolved_threads(threads)
    payload = cell.worker_payload(
        data_dir=str(folder.data.resolve()), device=visible_device(cell.device), **(extra or {}), threads=threads
    )
    argv = [python, "-m", module, "--cell", json.dumps(payload, separators=(",", ":"))]  # no shell
    log_name = log_name or cell.cell_id
    stream_log = BoundedLog(folder.events_log(log_name), 8 << 20, 8 << 20)
    stderr_log = BoundedLog(folder.stderr_log(log_name))
    gpus = host_gpus.choose(cell.device) if gpus is None else list(gpus)
    nvml = [i for i in (host_gpus.nvml_index(g) for g in gpus) if i is not None]  # what the monitor samples
    physical = "cuda:" + ",".join(str(i) for i in nvml) if nvml else "cpu"
    foreign = free_gpus_of_earlier_cells(nvml, STARTED_GROUPS) if nvml else []
    gpu_before = gpu_memory_used_bytes(nvml)
    limit = memlimit.make(memory_limit_mb, monitor_interval_s) if memory_limit_mb is not None else None
    started_at, t0 = time.time(), time.monotonic()
    env = worker_env(cell, threads, folder.cache, gpus)
    proc, limit = spawn(argv, env, limit, monitor_interval_s)
    STARTED_GROUPS.add(proc.pid)  # the worker leads its own process group
    if on_start is not None:
        on_start(proc.pid)
    rss_limit = limit.limit_bytes if limit is not None and limit.cgroup is None else None
    monitor = Monitor(proc.pid, monitor_interval_s, physical, rss_limit_bytes=rss_limit).start()
    q: queue.Queue[tuple[str, Any]] = queue.Queue()
    if cancel is not None:
        cancel.watch(q)
    pipes = _start_pipes(proc, q, stderr_log)
    reading = _Reading()
    try:
        _read(proc, q, reading, stream_log, monitor, (t0, timeout_s, idle_timeout_s), on_event)
    except KeyboardInterrupt:
        _terminate(proc, dump=False)
        raise Interrupted(cell.cell_id) from None
    finally:
        ended = _tear_down(proc, limit, monitor, pipes[:2], (stream_log, stderr_log))
    ended.summary.update(
        gpu_memory_before_bytes=gpu_before,
        gpu_memory_after_bytes=gpu_memory_used_bytes(nvml),
        gpu_foreign_processes=foreign or None,
    )
    tail = stderr_log.tail_text()
    status, reason = _classify_run(proc, reading, ended, tail, (timeout_s, idle_timeout_s))
    return Outcome(
        status=status,
        reason=reason,
        exit_code=reading.exit_code,
        duration_s=time.monotonic() - t0,
        events=reading.events,
        logs=reading.final_logs(),
        stderr_tail=tail,
        monitor=ended.summary,
        started_at=started_at,
        killed_for=reading.killed_for,
        worker_wall_s=(reading.exited_at - t0) if reading.exit_code is not None else None,
        env_flags=recorded_flags(env),
        physical_device=physical,
        memory_limit=ended.memory_record,
    )


def _start_pipes(
    proc: subprocess.Popen[bytes], q: queue.Queue[tuple[str, Any]], stderr_log: BoundedLog
) -> list[threading.Thread]:
    """Threads that feed `q` with the worker's stdout lines and its exit, and copy its stderr to the log;
    the two that read pipes first."""
    pipes = [
        threading.Thread(target=_read_stdout, args=(proc.stdout, q), daemon=True),
        threading.Thread(target=_copy_stderr, args=(proc.stderr, stderr_log), daemon=True),
        threading.Thread(target=_wait_exit, args=(proc, q), daemon=True),
    ]
    for t in pipes:
        t.start()
    return pipes


@dataclass
class _Ended:
    """What is left of a cell's run once its processes are gone: what the monitor and the limit saw."""

    summary: dict[str, Any]  # the monitor's figures (Outcome.monitor)
    memory_record: dict[str, Any] | None
    oom_kills: int | None
    limit: memlimit.MemoryLimit | None
    monitor: Monitor


def _tear_down(
    proc: subprocess.Popen[bytes],
    limit: memlimit.MemoryLimit | None,
    monitor: Monitor,
    pipes: list[threading.Thread],
    logs: tuple[BoundedLog, BoundedLog],
) -> _Ended:
    """Nothing of the cell outlives it: the worker, its process group, its cgroup; then the monitor's
    and the limit's figures, read before the cgroup goes."""
    if proc.poll() is None:
        _terminate(proc, dump=False)
    _signal_group(proc.pid, signal.SIGKILL)
    if limit is not None:
        limit.kill_all()  # also what left the process group but not the cgroup
    summary = monitor.stop()
    record = limit.record() if limit is not None else None
    oom_kills = limit.oom_kills() if limit is not None else None
    if limit is not None:
        limit.remove()
    for t in pipes:
        t.join(timeout=2)
    for log in logs:
        log.close()
    return _Ended(summary, record, oom_kills, limit, monitor)


def _classify_run(
    proc: subprocess.Popen[bytes], reading: _Reading, ended: _Ended, tail: str, timeouts: tuple[float, float]
) -> tuple[str, str]:
    exit_code = reading.exit_code
    limit, monitor = ended.limit, ended.monitor
    enforced = _enforced(monitor, limit, ended.oom_kills, exit_code, monitor.interval_s)
    if monitor.over_limit_rss is not None:
        reading.killed_for = "memory"
    return classify(
        exit_code if exit_code is not None else proc.poll(),
        reading.events,
        reading.killed_for,
        ended.summary.get("oom_kills") or 0,
        tail,
        timeouts,
        memory=(limit, enforced) if limit is not None else None,
    )
