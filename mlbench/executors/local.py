"""The local executor: every unit's worker on this machine.

One cell at a time by default. With `parallel: N` (`--jobs N`), up to N cells run at once, but only
cells whose devices are disjoint sets of GPUs: each worker sees only its own GPUs. A CPU cell never
runs beside another cell, since cells on one CPU take each other's cores and memory bandwidth, and
each cell's median step hides it (docs/findings.md).
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from mlbench.cells import Unit
from mlbench.executors.base import Event, Executor, Pool, Report, Settings, Started, run_here
from mlbench.process import runner
from mlbench.process.gpus import gpu_indices


def can_start(unit: Unit, running: list[Unit], parallel: int) -> bool:
    """May `unit` start beside the `running` ones? Alone always; beside others only on GPUs no
    running cell holds, never on the CPU, and never past `parallel` cells at once."""
    if not running:
        return True
    if len(running) >= parallel:
        return False
    mine = set(gpu_indices(unit.cell.device))
    if not mine:
        return False
    for other in running:
        theirs = set(gpu_indices(other.cell.device))
        if not theirs or mine & theirs:
            return False
    return True


class LocalExecutor(Executor):
    name = "local"

    def __init__(
        self,
        run_dir: Path,
        settings: Settings,
        parallel: int = 1,
        on_start: Callable[[Unit, int, str], None] | None = None,
    ) -> None:
        self.run_dir = run_dir
        self.settings = settings
        self.parallel = parallel
        self.on_start = on_start  # the journal's cell_start, written before the first event arrives
        self.host = socket.gethostname()

    def describe(self) -> dict[str, Any]:
        return {"executor": self.name, "parallel": self.parallel, "host": self.host}

    def _run_one(self, unit: Unit, report: Callable[[Any], None], cancel: runner.CancelToken) -> runner.Outcome:
        def started(pid: int) -> None:
            if self.on_start is not None:
                self.on_start(unit, pid, self.host)
            report(Started(unit, self.host, pid))

        return run_here(
            unit,
            self.run_dir,
            self.settings,
            executor=self.name,
            on_start=started,
            on_event=lambda event: report(Event(unit, event)),
            cancel=cancel,
        )

    def execute(self, units: list[Unit]) -> Iterator[Report]:
        pool = Pool(self._run_one, lambda u, running: can_start(u, running, self.parallel))
        return pool.execute(units)
