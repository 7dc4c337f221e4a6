"""Runs a suite: expands its cells, skips what is stored (with --resume), runs the rest one at a
time, stores each as it finishes, and rebuilds the exports and the report."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pyarrow.parquet as pq

from mlbench import calibration, environment, parity, repeats, report, rows, runner, store, verify
from mlbench.cells import Cell, Unit, expand, units
from mlbench.config import Suite, parse_suite
from mlbench.progress import RunProgress

SUITE_FILE = "suite.json"
ENV_FILE = "environment.json"
JOURNAL = "journal.ndjson"


@dataclass
class RunSummary:
    run_dir: Path
    counts: dict[str, int] = field(default_factory=dict)
    already_stored: int = 0
    interrupted_cell: str | None = None


def _journal(run_dir: Path, **entry: Any) -> None:
    """Append-only log of what the orchestrator did (run starts, each cell's end, interruptions)."""
    with open(run_dir / JOURNAL, "a", encoding="utf-8") as f:
        f.write(json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **entry}) + "\n")


def _worker_missing(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is None
    except (ImportError, ValueError):
        return True


def _skip_outcome(reason: str) -> runner.Outcome:
    return runner.Outcome(status="skipped", reason=reason, exit_code=None, duration_s=0.0, started_at=time.time())


def _reap_stale_workers(run_dir: Path) -> list[int]:
    """Kill the process groups of workers that an orchestrator killed earlier left behind."""
    journal, reaped = run_dir / JOURNAL, []
    if not journal.is_file():
        return reaped
    for line in journal.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # a line torn by a kill
        if entry.get("action") != "cell_start":
            continue
        try:
            cmdline = psutil.Process(entry["pid"]).cmdline()
        except (psutil.Error, KeyError, TypeError):
            continue
        if any(entry.get("cell_id", "?") in arg for arg in cmdline) and "--cell" in cmdline:
            runner.kill_group(entry["pid"])
            reaped.append(entry["pid"])
    return reaped


def cells_to_run(
    suite: Suite, cells: list[Cell], run_dir: Path, resume: bool, retry_failed: bool
) -> tuple[list[Unit], int]:
    """The units (cell repeats) this invocation runs, and how many it leaves because they are stored."""
    every = units(cells, suite.repeats)
    if not resume:
        return every, 0
    stored = store.stored_statuses(run_dir, [u.unit_id for u in every])
    todo = [u for u in every if stored[u.unit_id] is None or (retry_failed and stored[u.unit_id] != "ok")]
    return todo, len(every) - len(todo)


def stored_versions(run_dir: Path, current: str) -> dict[str, int]:
    """mlbench versions other than `current` that measured this run folder's stored cells, with counts
    (unknown where a cell predates the column)."""
    versions = [v or "unknown" for v in store.read_cells(run_dir).column("mlbench_version").to_pylist()]
    return {v: versions.count(v) for v in set(versions) - {current}}


def run_suite(
    suite: Suite,
    *,
    resume: bool = False,
    retry_failed: bool = False,
    only: dict[str, list[Any]] | None = None,
    runs_root: Path = Path("runs"),
    tty: bool | None = None,
) -> RunSummary:
    """Run a suite's cells; raises runner.Interrupted (after storing what finished) on Ctrl-C/SIGTERM."""
    run_dir = runs_root / suite.name
    cells = expand(suite, only)
    with contextlib.ExitStack() as stack:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            stack.enter_context(store.RunLock(run_dir))
        except OSError as exc:
            raise store.StoreError(f"cannot use the run folder {run_dir}: {exc.strerror or exc}") from None
        env = environment.capture()
        store.preload()
        store.atomic_write(run_dir / SUITE_FILE, lambda p: p.write_text(suite.model_dump_json(indent=1)))
        store.atomic_write(run_dir / ENV_FILE, lambda p: p.write_text(json.dumps(env, indent=1, default=str)))
        _reap_stale_workers(run_dir)
        for torn in store.cells_dir(run_dir).glob(".*.tmp"):  # a kill mid-write; never read as a cell
            torn.unlink(missing_ok=True)
        todo, already = cells_to_run(suite, cells, run_dir, resume, retry_failed)
        if already and (older := stored_versions(run_dir, env["mlbench_version"])):
            print(
                f"resume: {sum(older.values())} stored cell(s) were measured by mlbench "
                f"{', '.join(sorted(older))}, this is {env['mlbench_version']}; how a figure is measured "
                "may differ between versions (see the README): to compare like with like, run into a new folder",
                file=sys.stderr,
                flush=True,
            )
        summary = RunSummary(run_dir, already_stored=already)
        # verify the models about to run (all the suite's frameworks: parity is between them), except
        # those this run folder already holds a verdict for when resuming
        stored = verify.load(run_dir)
        to_verify = [
            m
            for m in suite.models
            if any(u.cell.model == m for u in todo) and not (resume and any(c.model == m for c in stored))
        ]
        if suite.verify and to_verify:
            print(
                f"verify: checking {len(to_verify)} model(s) in {len(suite.frameworks)} framework(s) before timing ...",
                file=sys.stderr,
                flush=True,
            )
            checks = verify.run(
                to_verify,
                suite.frameworks,
                run_dir,
                workers=suite.workers,
                overrides=suite.model_overrides,
                seed=suite.seed,
                timeout_s=suite.timeout_s,
            )
            kept = [c for c in stored if c.model not in to_verify]  # the verdicts of other models' cells
            if kept:
                verify.save(run_dir, kept + checks)
            failed = [f"{c.model}/{c.framework}: {c.problems[0]}" for c in checks if c.status != "ok"]
            print(
                f"verify: {len(checks) - len(failed)} of {len(checks)} checks passed"
                + (f"; {'; '.join(failed)}" if failed else ""),
                file=sys.stderr,
                flush=True,
            )
            _journal(run_dir, action="verify", passed=len(checks) - len(failed), failed=failed)
        _journal(run_dir, action="start", cells=len(cells), to_run=len(todo), resume=resume)
        if suite.calibrate and todo:
            entries = calibration.run(suite, [u.cell for u in todo], run_dir)
            for e in entries:
                if e["status"] != "ok":
                    print(
                        f"calibration: {e['framework']} {e['device']} {e['precision']}: {e['status']} "
                        f"({e['reason']}); MFU against the other frameworks' peak",
                        file=sys.stderr,
                        flush=True,
                    )
        with RunProgress(todo, tty=tty) as progress:
            for unit in todo:
                cell = unit.cell
                unit_started = time.monotonic()
                cpu_started = time.process_time()  # all the orchestrator's threads: monitor, readers, progress
                progress.start_cell(unit)
                module = suite.worker_module(cell.framework)
                if _worker_missing(module):
                    outcome = _skip_outcome(f"worker module {module} is not installed")
                else:
                    try:
                        outcome = runner.run_cell(
                            cell,
                            run_dir,
                            module=module,
                            timeout_s=suite.timeout_s,
                            idle_timeout_s=suite.idle_timeout_s,
                            threads=suite.threads,
                            monitor_interval_s=suite.monitor_interval_s,
                            on_event=progress.on_event,
                            on_start=lambda pid, u=unit: _journal(
                                run_dir, action="cell_start", cell_id=u.unit_id, pid=pid
                            ),
                            log_name=unit.unit_id,
                        )
                    except runner.Interrupted:
                        summary.interrupted_cell = unit.unit_id
                        _journal(run_dir, action="interrupted", cell_id=unit.unit_id, cell=unit.label)
                        raise
                flags = {
                    k: v
                    for k, v in runner.worker_env(cell, suite.threads, run_dir / "cache").items()
                    if k in environment.ENV_FLAGS
                }
                if outcome.monitor.get("gpu_foreign_processes"):
                    others = ", ".join(
                        f"pid {p['pid']} ({p['name']})" for p in outcome.monitor["gpu_foreign_processes"]
                    )
                    print(f"warning: {unit.label}: other processes held its GPU: {others}", file=sys.stderr, flush=True)
                    _journal(
                        run_dir,
                        action="gpu_shared",
                        cell_id=unit.unit_id,
                        processes=outcome.monitor["gpu_foreign_processes"],
                    )
                row = rows.build(cell, suite.name, outcome, env, flags, repeat=unit.repeat)
                store.write_cell(run_dir, row, name=unit.unit_id)
                summary.counts[outcome.status] = summary.counts.get(outcome.status, 0) + 1
                overhead = (time.monotonic() - unit_started - outcome.worker_wall_s) if outcome.worker_wall_s else None
                _journal(
                    run_dir,
                    action="cell",
                    cell_id=unit.unit_id,
                    cell=unit.label,
                    status=outcome.status,
                    reason=outcome.reason,
                    duration_s=round(outcome.duration_s, 3),
                    worker_wall_s=outcome.worker_wall_s,
                    orchestrator_overhead_s=overhead,  # spawning, monitoring, reading, storing: all but the worker
                    # the CPU the orchestrator itself used meanwhile, which a worker on a small machine shares
                    orchestrator_cpu_s=round(time.process_time() - cpu_started, 3),
                )
                progress.finish_cell(unit, outcome.status, outcome.duration_s, outcome.reason)
        rebuild(run_dir)
        _journal(
            run_dir,
            action="end",
            counts=summary.counts,
            orchestrator_max_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        )
    return summary


def rebuild(run_dir: Path) -> list[Path]:
    """Rebuild results.* and report.html from the cell files of the run's suite grid."""
    suite_path = run_dir / SUITE_FILE
    if not suite_path.is_file():
        raise FileNotFoundError(f"{run_dir} has no {SUITE_FILE}: is it an mlbench run folder?")
    suite_data = json.loads(suite_path.read_text())
    suite = parse_suite(suite_data, str(suite_path))
    grid = expand(suite)
    unit_ids = [u.unit_id for u in units(grid, suite.repeats)]
    per_repeat = store.read_cells(run_dir, unit_ids)
    folder = store.cells_dir(run_dir)
    # cells stored under another spec (an older mlbench's defaults, a changed config): kept, not shown
    stale = len({p.stem for p in folder.glob("*.parquet")} - set(unit_ids)) if folder.is_dir() else 0
    table = repeats.combine(per_repeat) if suite.repeats > 1 else per_repeat
    table, groups = parity.annotate(table, verify.load(run_dir), suite.accuracy_parity_pts)
    table = calibration.annotate(table, calibration.load(run_dir))
    env_path = run_dir / ENV_FILE
    env = json.loads(env_path.read_text()) if env_path.is_file() else {}
    written = store.write_exports(run_dir, table)
    if suite.repeats > 1:  # every repeat's own row, beside the combined results
        store.atomic_write(run_dir / "repeats.parquet", lambda p: pq.write_table(per_repeat, str(p)))
        written.append(run_dir / "repeats.parquet")
    store.atomic_write(run_dir / "parity.json", lambda p: p.write_text(json.dumps(groups, indent=1), encoding="utf-8"))
    written.append(report.write(run_dir, table.to_pylist(), suite_data, env, grid_size=len(grid), stale=stale))
    return written
