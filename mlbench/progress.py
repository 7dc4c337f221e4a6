"""Run progress: a rich progress bar on a terminal, plain periodic lines otherwise; ETA learnt from finished cells."""

from __future__ import annotations

import collections
import sys
import time
from typing import Any, TextIO

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from mlbench.cells import Cell

PLAIN_EVERY_S = 30.0


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = round(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class Eta:
    """Remaining time from the durations of finished cells: by (framework, model), else the mean of all."""

    def __init__(self) -> None:
        self.by_kind: dict[tuple[str, str], list[float]] = collections.defaultdict(list)
        self.all: list[float] = []

    def learn(self, cell: Cell, duration_s: float) -> None:
        self.by_kind[(cell.framework, cell.model)].append(duration_s)
        self.all.append(duration_s)

    def estimate(self, cell: Cell) -> float | None:
        same = self.by_kind.get((cell.framework, cell.model))
        if same:
            return sum(same) / len(same)
        return sum(self.all) / len(self.all) if self.all else None

    def remaining(
        self, pending: list[Cell], running: list[tuple[Cell, float, float]], parallel: int = 1
    ) -> float | None:
        """Seconds left: the pending cells' estimates plus what the running ones (cell, elapsed,
        fraction done) have left, spread over the cells that run at once."""
        if not self.all:
            return None
        total = sum(self.estimate(c) or 0.0 for c in pending)
        for cell, elapsed, fraction in running:
            if fraction > 0.05:
                total += elapsed * (1 - fraction) / fraction
            else:
                total += max(0.0, (self.estimate(cell) or 0.0) - elapsed)
        return total / max(1, parallel)


class RunProgress:
    """Shows where a run is; `finish_cell` prints one line per cell with its status. Several cells may
    be in flight at once (parallel GPU cells, a Ray cluster)."""

    def __init__(self, cells: list[Any], stream: TextIO | None = None, tty: bool | None = None) -> None:
        self.pending = list(cells)
        self.total = len(cells)
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.counts: collections.Counter[str] = collections.Counter()
        self.eta = Eta()
        self.running: dict[Any, list[float]] = {}  # unit -> [start (monotonic), fraction done]
        self.most_at_once = 1
        self.last_plain = time.monotonic()
        self.console = Console(file=self.stream, force_terminal=self.tty, highlight=False)
        self.bar: Progress | None = None

    def __enter__(self) -> RunProgress:
        if self.tty:
            self.bar = Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[counts]}"),
                TimeElapsedColumn(),
                TextColumn("ETA {task.fields[eta]}"),
                console=self.console,
                transient=False,
            )
            self.bar.start()
            self.task = self.bar.add_task("starting", total=self.total, counts="", eta="?")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()

    def _counts(self) -> str:
        return " ".join(f"{k} {v}" for k, v in sorted(self.counts.items()))

    def _eta(self) -> float | None:
        now = time.monotonic()
        running = [(u, now - start, fraction) for u, (start, fraction) in self.running.items()]
        return self.eta.remaining(self.pending, running, self.most_at_once)

    def _description(self) -> str:
        labels = [u.label for u in self.running]
        if not labels:
            return "done" if not self.pending else "waiting"
        return labels[0] + (f" (+{len(labels) - 1} more)" if len(labels) > 1 else "")

    def _refresh(self) -> None:
        if self.bar is not None:
            done = self.total - len(self.pending) - len(self.running)
            self.bar.update(
                self.task,
                completed=done + sum(f for _, f in self.running.values()),
                counts=self._counts(),
                eta=fmt_duration(self._eta()),
                description=self._description(),
            )

    def start_cell(self, unit: Any) -> None:
        self.pending.remove(unit)
        self.running[unit] = [time.monotonic(), 0.0]
        self.most_at_once = max(self.most_at_once, len(self.running))
        self._refresh()

    def on_event(self, unit: Any, event: dict[str, Any]) -> None:
        if event["event"] == "progress" and event.get("total_steps") and unit in self.running:
            # inference follows training
            self.running[unit][1] = min(0.95, 0.9 * event["step"] / event["total_steps"])
            self._refresh()
            if not self.tty and time.monotonic() - self.last_plain >= PLAIN_EVERY_S:
                self.last_plain = time.monotonic()
                print(
                    f"  ... {unit.label}: step {event['step']}/{event['total_steps']}, ETA {fmt_duration(self._eta())}",
                    file=self.stream,
                    flush=True,
                )

    def finish_cell(self, unit: Any, status: str, duration_s: float, reason: str, where: str = "") -> None:
        self.counts[status] += 1
        self.eta.learn(unit, duration_s)
        self.running.pop(unit, None)
        if unit in self.pending:  # finished without starting (skipped before its worker)
            self.pending.remove(unit)
        done = self.total - len(self.pending) - len(self.running)
        why = f" ({reason})" if reason else ""
        at = f" on {where}" if where else ""
        line = f"[{done}/{self.total}] {unit.label}: {status} in {fmt_duration(duration_s)}{at}{why}; ETA {fmt_duration(self._eta())}"
        if self.bar is not None:
            style = {"ok": "green", "skipped": "yellow"}.get(status, "red")
            self.console.print(
                f"[{style}]{status:>7}[/] {escape(unit.label)} ({fmt_duration(duration_s)}){escape(at + why)}",
                markup=True,
            )
        else:
            print(line, file=self.stream, flush=True)
            self.last_plain = time.monotonic()
        self._refresh()
