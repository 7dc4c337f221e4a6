"""The executor seam: what every executor takes, what it hands back, and the one function that runs a
unit's worker on the host an executor chose.

An executor runs units (cell repeats) and streams reports back to the orchestrator's thread:
`Started` (where and as which process), `Event` (each worker event, as it comes) and `Finished`
(the outcome). The orchestrator alone stores cells, keeps the journal and shows progress. On Ctrl-C
an executor stops every unit in flight, kills their workers, and raises runner.Interrupted.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import queue
import socket
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlbench.cells import Cell, Unit
from mlbench.config import BUILTIN_WORKERS, Suite
from mlbench.process import gpus as host_gpus
from mlbench.process import runner
from mlbench.results import store
from mlbench.runfolder import RunFolder
from workers.common import data as datasets
from workers.common import specs

POLL_S = 2.0  # a pool with no report for this long asks again what may start


class ExecutorUnavailable(Exception):
    """The chosen executor cannot run here (its extra is not installed); the message says what to do."""


class ClusterLost(Exception):
    """The connection to the cluster is gone: the run stops; finished cells are kept."""


@dataclass(frozen=True)
class Settings:
    """What every unit of a run needs, whatever host runs it."""

    run_name: str
    modules: dict[str, str]  # framework -> worker module
    timeout_s: float
    idle_timeout_s: float
    threads: int | None
    monitor_interval_s: float
    memory_limit_mb: float | None = None  # the suite's memory_limit_mb: each worker's process tree under it
    profile_steps: int = 0  # the suite's profile_steps: steps timed by part after the timed window
    profile: bool = False  # keep each cell's profiler trace (runs/<name>/profiles/)

    @classmethod
    def of(cls, suite: Suite) -> Settings:
        return cls(
            run_name=suite.name,
            modules={fw: suite.worker_module(fw) for fw in suite.frameworks},
            timeout_s=suite.timeout_s,
            idle_timeout_s=suite.idle_timeout_s,
            threads=suite.threads,
            monitor_interval_s=suite.monitor_interval_s,
            memory_limit_mb=suite.memory_limit_mb,
            profile_steps=suite.profile_steps,
            profile=suite.profile,
        )

    @classmethod
    def standalone(cls, name: str, frameworks: list[str], workers: dict[str, str] | None = None) -> Settings:
        """Settings for a task run without a suite (`mlbench verify`): a suite's defaults, its own workers
        where given, else the built-in ones."""
        default = {k: f.default for k, f in Suite.model_fields.items()}
        modules = {**BUILTIN_WORKERS, **(workers or {})}
        return cls(
            run_name=name,
            modules={fw: modules[fw] for fw in frameworks},
            timeout_s=default["timeout_s"],
            idle_timeout_s=default["idle_timeout_s"],
            threads=default["threads"],
            monitor_interval_s=default["monitor_interval_s"],
        )


@dataclass
class Started:
    unit: Unit
    host: str
    pid: int


@dataclass
class Event:
    unit: Unit
    event: dict[str, Any]


@dataclass
class Finished:
    unit: Unit
    outcome: runner.Outcome


Report = Started | Event | Finished


def worker_missing(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is None
    except (ImportError, ValueError):
        return True


def skip_outcome(reason: str) -> runner.Outcome:
    return runner.Outcome(status="skipped", reason=reason, exit_code=None, duration_s=0.0, started_at=time.time())


def dataset_checksum(cell: Cell, data_dir: Path) -> str:
    """Make (or find) the cell's dataset in data_dir and return its checksum."""
    spec = cell.spec
    model = specs.get_spec(spec.model, spec.model_overrides)
    inp = specs.input_spec(model)
    return datasets.checksum(
        datasets.materialise(spec.dataset, model.family, inp, datasets.data_seed(spec.to_dict()), str(data_dir))
    )


def run_here(
    unit: Unit,
    run_dir: Path,
    settings: Settings,
    *,
    executor: str,
    on_start: Callable[[int], None],
    on_event: Callable[[dict[str, Any]], None],
    cancel: runner.CancelToken,
    gpus: list[str] | None = None,
    extra: dict[str, Any] | None = None,
) -> runner.Outcome:
    """Run one unit's worker on this host with runner.run_cell, with the run's threads, limits and
    timeouts: the one place mlbench starts a worker (grid cells, calibration, verify and maxbatch probes
    alike); or say why it is skipped. Raises runner.Interrupted when cancelled. `gpus`: the GPUs an
    executor chose for it (CUDA_VISIBLE_DEVICES entries), else those the cell names on this host;
    `extra`: what the task adds to the worker's payload (verify's folder for its arrays)."""
    module = settings.modules[unit.framework]
    try:
        if gpus is None:
            gpus = host_gpus.choose(unit.cell.device)
            host_gpus.check_present(gpus)
        missing = None
    except host_gpus.NotHere as exc:
        missing, gpus = str(exc), []
    emulate, why_not = emulated_step(unit, run_dir)
    if emulate is not None:
        extra = {**(extra or {}), "emulate_s": emulate}
    if missing is not None or worker_missing(module) or why_not:
        why = missing or why_not or f"worker module {module} is not installed"
        outcome = skip_outcome(why + _on_host(executor))
        env = runner.worker_env(unit.cell, settings.threads, RunFolder(run_dir).cache, gpus)
        outcome.env_flags = runner.recorded_flags(env)
    else:
        outcome = runner.run_cell(
            unit.cell,
            run_dir,
            module=module,
            timeout_s=settings.timeout_s,
            idle_timeout_s=settings.idle_timeout_s,
            threads=settings.threads,
            monitor_interval_s=settings.monitor_interval_s,
            on_event=on_event,
            on_start=on_start,
            log_name=unit.unit_id,
            cancel=cancel,
            gpus=gpus,
            memory_limit_mb=settings.memory_limit_mb,
            extra={**profile_request(settings, RunFolder(run_dir), unit), **(extra or {})},
        )
    outcome.executor = executor
    return outcome


def emulated_step(unit: Unit, run_dir: Path) -> tuple[float | None, str | None]:
    """The sleep that replaces a file-fed cell's step (loader.emulate_compute_s), and why there is none
    where `measured` has nothing to read: its memory twin's median step time, from the twin's stored
    cell in this run folder (the twin comes first in the grid; a run that has not stored it yet skips
    this cell, and --resume runs it once the twin is there)."""
    emulate = (unit.cell.spec.loader or {}).get("emulate_compute_s")
    if emulate is None:
        return None, None
    if emulate != "measured":
        return float(emulate), None
    spec = unit.cell.spec
    # a memory cell reads no files: none of the keys that say how files are read, but the order's
    files = set(datasets.DATA_PATH_KEYS) - {"shards", "order", "augment"}
    dataset = {k: v for k, v in (spec.dataset or {}).items() if k not in files}
    if dataset.get("order", "global") == "global":
        dataset.pop("shards", None)
    twin = Cell(dataclasses.replace(spec, dataset=dataset, loader=None))
    rows = store.read_cells(run_dir, [twin.cell_id]).to_pylist()
    step = rows[0].get("step_time_median_s") if rows and rows[0]["status"] == "ok" else None
    if not step:
        return None, (
            f"loader.emulate_compute_s measured: its memory twin {twin.cell_id} ({twin.label}) has no stored "
            "ok step time in this run yet; run it first (list memory first in dataset.format), then "
            "--resume --retry-failed"
        )
    return float(step), None


def profile_request(settings: Settings, folder: RunFolder, unit: Unit) -> dict[str, Any]:
    """The worker's profiling settings: steps timed by part, and where to keep its trace (a folder
    per cell and repeat under runs/<name>/profiles/) when the run keeps traces."""
    out: dict[str, Any] = {"profile_steps": settings.profile_steps}
    if settings.profile and settings.profile_steps:
        out["profile_dir"] = str((folder.profiles / unit.unit_id).resolve())
    return out


def _on_host(executor: str) -> str:
    return "" if executor == "local" else f" on {socket.gethostname()}"


class Executor(ABC):
    """Runs units somewhere and streams their reports back (see the module's docstring)."""

    name: str

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:  # noqa: B027 - an executor with nothing to release keeps this
        """Release what the executor holds (a Ray instance it started)."""

    @abstractmethod
    def execute(self, units: list[Unit]) -> Iterator[Report]:
        """Run every unit; yield reports as they come; raise runner.Interrupted on Ctrl-C after
        stopping everything in flight."""

    def hosts(self) -> list[str]:
        """The host names of the machines that may run this run's cells."""
        return [socket.gethostname()]

    def on_each_host(self, units: list[Unit]) -> Iterator[Report]:
        """Run each unit once on every host that may run this run's cells (a calibrated peak belongs to
        its host); one host here."""
        return self.execute(units)

    def describe(self) -> dict[str, Any]:
        """What the journal records about where this run's cells run."""
        return {"executor": self.name}

    def lost(self) -> str | None:
        """Why the run must stop because the executor lost where its cells run (a cluster), or None."""
        return None


# --- the shared driver: one thread per unit in flight, reports through one queue --------------

RunOne = Callable[[Unit, Callable[[Any], None], runner.CancelToken], runner.Outcome]
CanStart = Callable[[Unit, list[Unit]], bool]


@dataclass
class _Done:
    unit: Unit
    outcome: runner.Outcome | None = None
    error: BaseException | None = None


@dataclass
class Pool:
    """Runs units in threads, each with `run_one(unit, report, cancel)`, starting a pending unit when
    `can_start(unit, running)` says so (the first in plan order that may), and yields every report in
    the caller's thread. Ctrl-C there cancels every unit in flight and waits for their workers to end."""

    run_one: RunOne
    can_start: CanStart
    grace_s: float = runner.TERM_GRACE_S + runner.DUMP_WAIT_S + 10.0
    running: dict[Unit, threading.Thread] = field(default_factory=dict)

    def execute(self, units: list[Unit]) -> Iterator[Report]:
        pending = list(units)
        reports: queue.Queue[Any] = queue.Queue()
        cancel = runner.CancelToken()
        try:
            while pending or self.running:
                self._start_what_fits(pending, reports, cancel)
                try:  # woken every POLL_S with no report, so what fits is asked again (a Ray node may join)
                    item = reports.get(timeout=POLL_S)
                except queue.Empty:
                    continue
                if isinstance(item, _Done):
                    self.running.pop(item.unit).join()
                    if item.error is not None:
                        raise item.error
                    yield Finished(item.unit, item.outcome)  # type: ignore[arg-type]
                else:
                    yield item
        except KeyboardInterrupt:
            raise self._stop(cancel, reports) from None
        except BaseException:
            self._stop(cancel, reports)
            raise

    def _start_what_fits(self, pending: list[Unit], reports: queue.Queue[Any], cancel: runner.CancelToken) -> None:
        while True:
            unit = next((u for u in pending if self.can_start(u, list(self.running))), None)
            if unit is None:
                return
            pending.remove(unit)
            thread = threading.Thread(
                target=self._run, args=(unit, reports, cancel), name=f"unit-{unit.unit_id}", daemon=True
            )
            self.running[unit] = thread
            thread.start()

    def _run(self, unit: Unit, reports: queue.Queue[Any], cancel: runner.CancelToken) -> None:
        try:
            reports.put(_Done(unit, outcome=self.run_one(unit, reports.put, cancel)))
        except BaseException as exc:  # Interrupted when cancelled, or a failure of the executor itself
            reports.put(_Done(unit, error=exc))

    def _stop(self, cancel: runner.CancelToken, reports: queue.Queue[Any]) -> runner.Interrupted:
        """Cancel everything in flight, wait for each unit's thread (its worker is dead when it ends)."""
        cancel.cancel()
        deadline = time.monotonic() + self.grace_s
        for thread in list(self.running.values()):
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        self.running.clear()
        finished, stopped = [], []  # units that ended on their own just as the run stopped are kept
        while not reports.empty():
            item = reports.get_nowait()
            if isinstance(item, _Done):
                if item.outcome is not None:
                    finished.append(Finished(item.unit, item.outcome))
                else:
                    stopped.append(item.unit.unit_id)
        return runner.Interrupted(",".join(stopped), finished=finished, stopped=stopped)
