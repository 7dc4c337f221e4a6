"""Runs a suite, stage by stage: prepare the run folder, plan the units (skipping what is stored,
with --resume), verify the models, calibrate, execute (an executor runs the units, locally or on a
Ray cluster; each is stored the moment its outcome arrives), and rebuild the exports and the report."""

from __future__ import annotations

import contextlib
import json
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pyarrow as pa
import pyarrow.parquet as pq

from mlbench import executors
from mlbench.analysis import bottleneck, datapath, parity, scaling
from mlbench.cells import Cell, Unit, expand, units
from mlbench.config import DATA_PARALLEL_CHECK_DEVICE, ConfigError, Suite, parse_suite
from mlbench.present import content, report, results_md
from mlbench.process import environment, runner
from mlbench.progress import RunProgress
from mlbench.results import repeats, rows, schema, store
from mlbench.runfolder import RunFolder
from mlbench.tasks import calibration, maxbatch, verify
from workers.common import data as datasets
from workers.common import public_data, specs
from workers.common.devices import Device
from workers.common.harness import host_peak_rss_bytes


@dataclass
class RunSummary:
    run_dir: Path
    counts: dict[str, int] = field(default_factory=dict)
    already_stored: int = 0
    interrupted_cell: str | None = None


@dataclass
class Plan:
    """What one invocation runs: the suite's cells (narrowed) and the units still to run."""

    cells: list[Cell]
    todo: list[Unit]
    already_stored: int


_JOURNAL_LOCK = threading.Lock()


def _journal(run_dir: Path, **entry: Any) -> None:
    """Append-only log of what the orchestrator did (run starts, each cell's end, interruptions)."""
    line = json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **entry}) + "\n"
    with _JOURNAL_LOCK, open(RunFolder(run_dir).journal, "a", encoding="utf-8") as f:
        f.write(line)


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _journal_entries(run_dir: Path) -> list[dict[str, Any]]:
    """The journal's entries in order; a line torn by a kill is skipped."""
    journal = RunFolder(run_dir).journal
    if not journal.is_file():
        return []
    entries = []
    for line in journal.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            entries.append(json.loads(line))
        except ValueError:
            continue
    return entries


def _reap_stale(run_dir: Path) -> list[int]:
    """Kill what an orchestrator killed earlier left behind on this host: its workers' process groups
    and the processes of a Ray instance it started."""
    reaped: list[int] = []
    here = socket.gethostname()
    for entry in _journal_entries(run_dir):
        if entry.get("action") == "ray_session":
            reaped += executors.reap_session(entry.get("processes") or [])
        if entry.get("action") != "cell_start" or entry.get("host", here) != here:
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
    """The units (cell repeats) this invocation runs, and how many it leaves because they are stored.
    Adaptive repeats past `repeats` are the rounds' to add (`further_runs`); a fresh run drops those an
    earlier run stored, and `--retry-failed` runs again those that failed."""
    every = units(cells, suite.repeats)
    extra = [Unit(c, r) for r in range(suite.repeats, suite.max_repeats or suite.repeats) for c in cells]
    if not resume:
        for u in extra:  # a fresh run's figures are its own runs alone
            store.cell_path(run_dir, u.unit_id).unlink(missing_ok=True)
        return every, 0
    stored = store.stored_statuses(run_dir, [u.unit_id for u in [*every, *extra]])
    todo = [u for u in every if stored[u.unit_id] is None or (retry_failed and stored[u.unit_id] != "ok")]
    already = len(every) - len(todo)
    if retry_failed:  # a failed adaptive run would fail its cell: it runs again as well
        todo += [u for u in extra if stored[u.unit_id] not in (None, "ok")]
    return todo, already


def further_runs(suite: Suite, cells: list[Cell], run_dir: Path) -> list[Unit]:
    """Adaptive repeats (`max_repeats`): one more run of each cell whose throughput interval across its
    stored runs is still wider than the suite's target, as one more interleaved round; [] when none is."""
    if suite.max_repeats is None:
        return []
    out = []
    for cell in cells:
        ids = [Unit(cell, r).unit_id for r in range(suite.max_repeats)]
        stored = store.read_cells(run_dir, ids, columns=["repeat", "status", "samples_per_second"]).to_pylist()
        nxt = repeats.next_repeat(stored, suite.repeat_target, suite.max_repeats)
        if nxt is not None:
            out.append(Unit(cell, nxt))
    return out


def adaptive_round(suite: Suite, cells: list[Cell], run_dir: Path) -> list[Unit]:
    """`further_runs`, said and journaled where there are any."""
    todo = further_runs(suite, cells, run_dir)
    if todo:
        _say(
            f"adaptive repeats: {len(todo)} cell(s) still spread wider than +-{suite.repeat_target:.0%} "
            f"across their runs: another run of each (at most {suite.max_repeats})"
        )
        _journal(run_dir, action="adaptive_round", to_run=len(todo), units=[u.unit_id for u in todo])
    return todo


def abandoned(run_dir: Path, unit_ids: list[str]) -> list[str]:
    """Units among `unit_ids` an earlier orchestrator started and neither finished nor reported stopped (it
    was killed, or its host went away), and that have no stored file, in the order they were started."""
    open_: dict[str, None] = {}
    for entry in _journal_entries(run_dir):
        for cid in filter(None, str(entry.get("cell_id") or "").split(",")):
            if entry.get("action") == "cell_start":
                open_[cid] = None
            elif entry.get("action") in ("cell", "interrupted", "cluster_lost", "abandoned"):
                open_.pop(cid, None)
    wanted = set(unit_ids)
    candidates = [cid for cid in open_ if cid in wanted]
    stored = store.stored_statuses(run_dir, candidates)
    return [cid for cid in candidates if stored[cid] is None]


def stored_versions(run_dir: Path, current: str) -> dict[str, int]:
    """mlbench versions other than `current` that measured this run folder's stored cells, with counts
    (unknown where a cell predates the column)."""
    versions = [v or "unknown" for v in store.read_cells(run_dir).column("mlbench_version").to_pylist()]
    return {v: versions.count(v) for v in set(versions) - {current}}


# --- the stages of a run -------------------------------------------------------------------------


def prepare(suite: Suite, run_dir: Path, env: dict[str, Any]) -> None:
    """The run folder made ready: the suite and environment records, leftovers of a killed run gone."""
    store.preload()
    folder = RunFolder(run_dir)
    store.atomic_write(folder.suite, lambda p: p.write_text(suite.model_dump_json(indent=1)))
    store.atomic_write(folder.environment, lambda p: p.write_text(json.dumps(env, indent=1, default=str)))
    _reap_stale(run_dir)
    if suite.dataset.name != "synthetic" and not suite.dataset.path:
        families = {specs.get_spec(m, suite.model_overrides.get(m)).family for m in suite.models}
        for name in sorted({datasets.public_name(suite.dataset.name, f) for f in families} & set(public_data.REMOTES)):
            try:  # once, here, rather than in every cell: a failure is one line that says what to do
                public_data.fetch(name)
            except datasets.DownloadError as exc:
                raise ConfigError(f"dataset {name}: {exc}") from None
    for torn in store.cells_dir(run_dir).glob(".*.tmp"):  # a kill mid-write; never read as a cell
        torn.unlink(missing_ok=True)


def plan(suite: Suite, cells: list[Cell], run_dir: Path, env: dict[str, Any], resume: bool, retry: bool) -> Plan:
    """The units of the (narrowed) grid's cells this invocation runs."""
    todo, already = cells_to_run(suite, cells, run_dir, resume, retry)
    every = {u.unit_id: u for u in units(cells, suite.repeats)}
    for cid in abandoned(run_dir, list(every)):  # journaled once, by the first start that finds it
        _journal(
            run_dir,
            action="abandoned",
            cell_id=cid,
            why="an earlier orchestrator started it and ended without storing it",
        )
        _say(
            f"{'resume' if resume else 'run'}: {every[cid].label} was left unfinished by an earlier "
            "orchestrator that ended (killed?); it runs again"
        )
    if already and (older := stored_versions(run_dir, env["mlbench_version"])):
        _say(
            f"resume: {sum(older.values())} stored cell(s) were measured by mlbench "
            f"{', '.join(sorted(older))}, this is {env['mlbench_version']}; how a figure is measured "
            "may differ between versions (see CHANGELOG.md): to compare like with like, run into a new folder"
        )
    return Plan(cells, todo, already)


def verify_models(suite: Suite, todo: list[Unit], run_dir: Path, resume: bool) -> None:
    """Verify the models about to run (in all the suite's frameworks: parity is between them), except
    those this run folder already holds a verdict for when resuming."""
    stored = verify.load(run_dir)
    to_verify = [
        m
        for m in suite.models
        if any(u.cell.model == m for u in todo) and not (resume and any(c.model == m for c in stored))
    ]
    if not (suite.verify and to_verify):
        return
    _say(f"verify: checking {len(to_verify)} model(s) in {len(suite.frameworks)} framework(s) before timing ...")
    checks = verify.run(
        to_verify,
        suite.frameworks,
        run_dir,
        executors.Settings.of(suite),
        overrides=suite.model_overrides,
        seed=suite.seed,
        # a suite with data-parallel cells also proves data parallel equals one device, per framework
        data_parallel=DATA_PARALLEL_CHECK_DEVICE if any(Device.parse(d).data_parallel for d in suite.devices) else None,
        on_start=lambda unit, pid: _journal(
            run_dir, action="cell_start", cell_id=unit.unit_id, pid=pid, host=socket.gethostname()
        ),
    )
    kept = [c for c in stored if c.model not in to_verify]  # the verdicts of other models' cells
    if kept:
        verify.save(run_dir, kept + checks)
    failed = [f"{c.model}/{c.framework}: {c.problems[0]}" for c in checks if c.status != "ok"]
    _say(
        f"verify: {len(checks) - len(failed)} of {len(checks)} checks passed"
        + (f"; {'; '.join(failed)}" if failed else "")
    )
    _journal(run_dir, action="verify", passed=len(checks) - len(failed), failed=failed)


def calibrate(suite: Suite, todo: list[Unit], run_dir: Path, executor: executors.Executor | None) -> None:
    """Peak matmul FLOP/s per framework, device and precision of the units, on each host that runs them
    (for MFU), through the executor like every cell."""
    if not (suite.calibrate and todo and executor is not None):
        return
    for e in calibration.run(suite, [u.cell for u in todo], run_dir, executor):
        if e["status"] != "ok":
            _say(
                f"calibration: {e['framework']} {e['device']} {e['precision']} on {e['hostname']}: {e['status']} "
                f"({e['reason']}); MFU against the other frameworks' peak"
            )


def store_outcome(
    run_dir: Path,
    suite: Suite,
    unit: Unit,
    outcome: runner.Outcome,
    env: dict[str, Any],
    summary: RunSummary,
    cpu_started: float | None = None,
) -> None:
    """One finished unit: its row written to the cell file at once, and a journal line (with what the
    orchestrator itself cost the unit where it ran here: all but the worker's wall time, and the CPU
    of all its threads, monitor, readers and progress, which a worker on a small machine shares)."""
    if outcome.monitor.get("gpu_foreign_processes"):
        others = ", ".join(f"pid {p['pid']} ({p['name']})" for p in outcome.monitor["gpu_foreign_processes"])
        _say(f"warning: {unit.label}: other processes held its GPU: {others}")
        _journal(run_dir, action="gpu_shared", cell_id=unit.unit_id, processes=outcome.monitor["gpu_foreign_processes"])
    row = rows.build(unit.cell, suite.name, outcome, env, repeat=unit.repeat)
    store.write_cell(run_dir, row, name=unit.unit_id)
    summary.counts[outcome.status] = summary.counts.get(outcome.status, 0) + 1
    here = outcome.executor == "local" and outcome.worker_wall_s
    _journal(
        run_dir,
        action="cell",
        cell_id=unit.unit_id,
        cell=unit.label,
        status=outcome.status,
        reason=outcome.reason,
        executor=outcome.executor,
        host=(outcome.host or env).get("hostname"),
        duration_s=round(outcome.duration_s, 3),
        worker_wall_s=outcome.worker_wall_s,
        orchestrator_overhead_s=(time.time() - outcome.started_at - outcome.worker_wall_s) if here else None,
        orchestrator_cpu_s=round(time.process_time() - cpu_started, 3) if here and cpu_started is not None else None,
    )


def connect(suite: Suite, run_dir: Path) -> executors.Executor:
    """The suite's executor, connected (a Ray cluster joined or started) before anything is measured,
    so that a wrong address fails at once; its journal hooks record where each worker started."""

    def started(unit: Unit, pid: int, host: str) -> None:  # before the worker's first event
        _journal(run_dir, action="cell_start", cell_id=unit.unit_id, pid=pid, host=host)

    def session(info: dict[str, Any]) -> None:  # a local Ray instance: what a later run reaps if this one is killed
        _journal(run_dir, action="ray_session", **info)

    executor = executors.make(suite, run_dir, on_start=started, on_session=session)
    _journal(run_dir, action="executor", **executor.describe())
    return executor


def execute(
    executor: executors.Executor,
    suite: Suite,
    todo: list[Unit],
    run_dir: Path,
    env: dict[str, Any],
    summary: RunSummary,
    tty: bool | None,
) -> None:
    """Hand the units to the executor and store each one the moment its outcome arrives."""
    cpu_at_start: dict[Unit, float] = {}

    def finish(unit: Unit, outcome: runner.Outcome) -> None:
        store_outcome(run_dir, suite, unit, outcome, env, summary, cpu_at_start.pop(unit, None))
        where = (outcome.host or {}).get("hostname", "") if outcome.executor != "local" else ""
        progress.finish_cell(unit, outcome.status, outcome.duration_s, outcome.reason, where)

    with RunProgress(todo, tty=tty) as progress, contextlib.closing(executor.execute(todo)) as reports:
        try:
            for report in reports:
                if isinstance(report, executors.Started):
                    cpu_at_start[report.unit] = time.process_time()
                    progress.start_cell(report.unit)
                elif isinstance(report, executors.Finished):
                    finish(report.unit, report.outcome)
                else:
                    progress.on_event(report.unit, report.event)
        except (runner.Interrupted, KeyboardInterrupt) as exc:
            for done in getattr(exc, "finished", []):  # ended on their own as the run stopped: kept
                finish(done.unit, done.outcome)
            summary.interrupted_cell = ",".join(getattr(exc, "stopped", [])) or None
            lost = executor.lost()
            _journal(run_dir, action="cluster_lost" if lost else "interrupted", cell_id=summary.interrupted_cell)
            if lost:
                raise executors.ClusterLost(lost) from None
            raise


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
    cells = expand(suite, only)  # a bad filter is a ConfigError before anything is touched
    with contextlib.ExitStack() as stack:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            stack.enter_context(store.RunLock(run_dir))
        except OSError as exc:
            raise store.StoreError(f"cannot use the run folder {run_dir}: {exc.strerror or exc}") from None
        env = environment.capture()
        prepare(suite, run_dir, env)
        the_plan = plan(suite, cells, run_dir, env, resume, retry_failed)
        summary = RunSummary(run_dir, already_stored=the_plan.already_stored)
        # a resumed run whose planned rounds are stored may still owe adaptive ones
        todo = the_plan.todo or adaptive_round(suite, cells, run_dir)
        executor = stack.enter_context(connect(suite, run_dir)) if todo else None
        verify_models(suite, todo, run_dir, resume)
        _journal(
            run_dir, action="start", cells=len(the_plan.cells), to_run=len(todo),
            stored=the_plan.already_stored, resume=resume,
        )  # fmt: skip
        calibrate(suite, todo, run_dir, executor)
        while executor is not None and todo:
            execute(executor, suite, todo, run_dir, env, summary, tty)
            todo = adaptive_round(suite, cells, run_dir)
        rebuild(run_dir)
        _journal(
            run_dir,
            action="end",
            counts=summary.counts,
            orchestrator_max_rss_mb=host_peak_rss_bytes() / 2**20,
        )
    return summary


def rebuild(run_dir: Path) -> list[Path]:
    """Rebuild results.*, report.html and RESULTS.md from the cell files of the run's suite grid."""
    folder = RunFolder(run_dir)
    if not folder.suite.is_file():
        raise FileNotFoundError(f"{run_dir} has no {folder.suite.name}: is it an mlbench run folder?")
    suite_data = json.loads(folder.suite.read_text())
    suite = parse_suite(suite_data, str(folder.suite))
    grid = expand(suite)
    unit_ids = [u.unit_id for u in units(grid, suite.max_repeats or suite.repeats)]  # adaptive ones too
    per_repeat = store.read_cells(run_dir, unit_ids)
    # cells stored under another spec (an older mlbench's defaults, a changed config): kept, not shown
    stored = {p.stem for p in folder.cells.glob("*.parquet")} if folder.cells.is_dir() else set()
    stale = len(stored - set(unit_ids))
    table = repeats.combine(per_repeat) if suite.repeats > 1 else per_repeat
    # the derived columns, in one pass over the rows
    rows_ = table.to_pylist()
    groups = parity.annotate(rows_, verify.verdicts(verify.load(run_dir)), suite.accuracy_parity_pts)
    calibration.annotate(rows_, calibration.load(run_dir))
    scaling.annotate(rows_)
    datapath.annotate(rows_, suite.loader.au_threshold)
    bottleneck.annotate(rows_)  # after calibration: the verdict reads MFU
    written = store.write_exports(run_dir, pa.Table.from_pylist(rows_, schema=schema.SCHEMA))
    if suite.repeats > 1:  # every repeat's own row, beside the combined results
        store.atomic_write(folder.repeats, lambda p: pq.write_table(per_repeat, str(p)))
        written.append(folder.repeats)
    store.atomic_write(folder.parity, lambda p: p.write_text(json.dumps(groups, indent=1), encoding="utf-8"))
    env = json.loads(folder.environment.read_text()) if folder.environment.is_file() else {}
    found = content.gather(rows_, suite_data, env, grid_size=len(grid), stale=stale, frontier=maxbatch.load(run_dir))
    return [*written, *publish(found, folder)]


def publish(found: content.Content, out: RunFolder, command: str | None = None) -> list[Path]:
    """report.html and RESULTS.md (with its chart images) of one Content, side by side, into `out`."""
    out.root.mkdir(parents=True, exist_ok=True)
    return [report.write(out.report, found), results_md.write(out.root, found, command=command)]


def from_results(source: Path, out_dir: Path | None = None, command: str | None = None) -> list[Path]:
    """report.html and RESULTS.md from a results file (results.parquet, results.json) or a run folder's
    results.parquet, nothing rebuilt, into out_dir (default: the folder holding the results)."""
    found = store.load_results(source)
    frontier = maxbatch.load(found.folder)
    return publish(
        content.gather(found.rows, found.suite, found.env, frontier=frontier),
        RunFolder(out_dir or found.folder),
        command,
    )
