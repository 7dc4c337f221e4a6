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
        self, pending: list[Cell], current: Cell | None, current_elapsed: float, fraction: float
    ) -> float | None:
        if not self.all:
            return None
        total = sum(self.estimate(c) or 0.0 for c in pending)
        if current is not None:
            if fraction > 0.05:
                total += current_elapsed * (1 - fraction) / fraction
            else:
                total += max(0.0, (self.estimate(current) or 0.0) - current_elapsed)
        return total


class RunProgress:
    """Shows where a run is; `finish_cell` prints one line per cell with its status."""

    def __init__(self, cells: list[Cell], stream: TextIO | None = None, tty: bool | None = None) -> None:
        self.pending = list(cells)
        self.total = len(cells)
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.counts: collections.Counter[str] = collections.Counter()
        self.eta = Eta()
        self.current: Cell | None = None
        self.current_start = 0.0
        self.fraction = 0.0
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
        elapsed = time.monotonic() - self.current_start if self.current else 0.0
        return self.eta.remaining(self.pending, self.current, elapsed, self.fraction)

    def _refresh(self) -> None:
        if self.bar is not None:
            done = self.total - len(self.pending) - (1 if self.current else 0)
            self.bar.update(
                self.task,
                completed=done + self.fraction,
                counts=self._counts(),
                eta=fmt_duration(self._eta()),
                description=self.current.label if self.current else "done",
            )

    def start_cell(self, cell: Cell) -> None:
        self.pending.remove(cell)
        self.current, self.current_start, self.fraction = cell, time.monotonic(), 0.0
        self._refresh()

    def on_event(self, event: dict[str, Any]) -> None:
        if event["event"] == "progress" and event.get("total_steps"):
            self.fraction = min(0.95, 0.9 * event["step"] / event["total_steps"])  # inference follows training
            self._refresh()
            if not self.tty and time.monotonic() - self.last_plain >= PLAIN_EVERY_S and self.current:
                self.last_plain = time.monotonic()
                print(
                    f"  ... {self.current.label}: step {event['step']}/{event['total_steps']}, "
                    f"ETA {fmt_duration(self._eta())}",
                    file=self.stream,
                    flush=True,
                )

    def finish_cell(self, cell: Cell, status: str, duration_s: float, reason: str) -> None:
        self.counts[status] += 1
        self.eta.learn(cell, duration_s)
        self.current, self.fraction = None, 0.0
        done = self.total - len(self.pending)
        why = f" ({reason})" if reason else ""
        line = f"[{done}/{self.total}] {cell.label}: {status} in {fmt_duration(duration_s)}{why}; ETA {fmt_duration(self._eta())}"
        if self.bar is not None:
            style = {"ok": "green", "skipped": "yellow"}.get(status, "red")
            self.console.print(
                f"[{style}]{status:>7}[/] {escape(cell.label)} ({fmt_duration(duration_s)}){escape(why)}", markup=True
            )
        else:
            print(line, file=self.stream, flush=True)
            self.last_plain = time.monotonic()
        self._refresh()
