"""`mlbench maxbatch`: the largest training batch that fits, per framework, model, device and precision.

Each probe is an ordinary worker running a short cell (one warm-up step, `maxbatch.steps` full
training steps, evaluation and an inference pass at that batch) in a fresh process: an allocator that
has failed once never serves the next probe, which is why in-process finders return batches that run
out of memory later. The search doubles from `start` until the first out-of-memory, then bisects
between the last batch that fit and the first that did not, until the two are within `resolution` of
the answer; `max_batch` caps it. Out of memory is data (`oom`: the framework's own error, the
kernel's OOM killer, the suite's `memory_limit_mb`); any other failure stops that search with its
reason and is never read as "does not fit".

Every probe is stored as it finishes (runs/<name>/maxbatch/<probe>.parquet, written atomically), so
a search killed mid-probe continues from its stored probes: the search is deterministic, and a probe
already stored under the same spec and memory limit is read back instead of run. At the end:
maxbatch_probes.parquet (one row per probe: its memory figures and step time, so the search also
gives memory and throughput against batch size) and maxbatch.parquet (one row per search).

The edge moves between processes (a tiny ResNet-18 under 900 MB: 512 ran out of memory in three
searches and fit in a fourth), so a found edge is probed again in fresh processes, its largest fit
and its first failure, and reported as a band: the largest batch that fit every time it was probed,
the smallest that ran out of memory every time, and the batches that did both. The recommended batch
is the margin below the band's low end, and is itself run once more before it is recommended
(stepping down by the margin, up to CONFIRM_TRIES times, where it does not fit).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from mlbench import executors
from mlbench.cells import Cell, Unit, expand
from mlbench.config import MaxBatchConfig, Suite
from mlbench.executors.base import run_here
from mlbench.process import environment, runner
from mlbench.results import rows, store
from mlbench.results.labels import band_text
from mlbench.runfolder import RunFolder
from workers.common.devices import Device

KEY = ("framework", "model_name", "device", "precision")
PROBE_COLUMNS = [
    ("framework", pa.string()),
    ("model_name", pa.string()),
    ("device", pa.string()),
    ("precision", pa.string()),
    ("batch_size", pa.int64()),
    ("status", pa.string()),  # the probe cell's: ok, oom, failed, crashed, timeout, skipped
    ("reason", pa.string()),
    ("fits", pa.bool_()),  # true: ok; false: oom; null: anything else (the search stops there)
    ("memory_limit_mb", pa.float64()),
    ("memory_limit_how", pa.string()),
    # the peak as the memory limit counts it (the cell's cgroup: its own pages and page cache, not the shared
    # libraries another process mapped first, which the RSS figures count): what is compared with the limit
    ("limit_peak_mb", pa.float64()),
    ("peak_memory_mb", pa.float64()),
    ("memory_source", pa.string()),
    ("host_rss_peak_mb", pa.float64()),
    ("device_peak_allocated_mb", pa.float64()),
    ("gpu_memory_used_peak_mb", pa.float64()),
    ("step_time_median_s", pa.float64()),
    ("samples_per_second", pa.float64()),
    ("duration_s", pa.float64()),
    ("probe_id", pa.string()),
    ("hostname", pa.string()),
    ("repeat", pa.int64()),  # 0: the search's probe; 1, 2, ...: the same batch again in a fresh process
]
PROBE_SCHEMA = pa.schema([pa.field(n, t) for n, t in PROBE_COLUMNS])
SEARCH_COLUMNS = [
    ("framework", pa.string()),
    ("model_name", pa.string()),
    ("device", pa.string()),
    ("precision", pa.string()),
    # found: a fitting and a failing batch bracket the answer; capped: max_batch fit; none fits: the start
    # did not; failed: a probe failed for another reason than memory (reason says which)
    ("status", pa.string()),
    ("reason", pa.string()),
    ("max_batch_size", pa.int64()),  # the largest batch that fit (null: none did)
    ("first_failing_batch_size", pa.int64()),  # the smallest that ran out of memory (null: the cap fit)
    ("recommended_batch_size", pa.int64()),  # margin x frontier_low, down to a multiple of the devices, rerun
    ("recommended_confirmed", pa.bool_()),  # it fit again in a fresh process (null: nothing to confirm)
    ("frontier_low", pa.int64()),  # the largest batch that fit every time it was probed
    ("frontier_high", pa.int64()),  # the smallest batch that ran out of memory every time it was probed
    ("flaky_batches", pa.string()),  # batches that fit in one process and not in another
    ("confirm_probes", pa.int64()),
    ("probes", pa.int64()),
    ("probes_run", pa.int64()),  # of those, run by this invocation (the rest were stored)
    ("search_s", pa.float64()),  # wall time of the probes that make the answer
    ("memory_limit_mb", pa.float64()),
    ("memory_limit_how", pa.string()),
    ("start", pa.int64()),
    ("max_batch", pa.int64()),
    ("resolution", pa.float64()),
    ("margin", pa.float64()),
]
SEARCH_SCHEMA = pa.schema([pa.field(n, t) for n, t in SEARCH_COLUMNS])


@dataclass
class Probe:
    batch_size: int
    fits: bool | None  # None: the probe failed for another reason
    status: str = "ok"
    reason: str = ""
    duration_s: float = 0.0
    stored: bool = False  # read back from an earlier invocation


@dataclass
class Search:
    status: str  # found | capped | none fits | failed
    reason: str
    max_fit: int | None
    first_fail: int | None
    probes: list[Probe] = field(default_factory=list)

    def recommended(self, margin: float, multiple: int) -> int | None:
        if self.max_fit is None:
            return None
        return max(multiple, math.floor(self.max_fit * margin / multiple) * multiple)


def search(probe: Callable[[int], Probe], cfg: MaxBatchConfig, multiple: int = 1) -> Search:
    """Double from cfg.start until the first batch that does not fit (or the cap), then bisect to
    cfg.resolution; every batch probed is a multiple of `multiple` (a data-parallel cell's device
    count). Stops at the first probe that failed for another reason than memory."""
    done: list[Probe] = []

    def ask(batch: int) -> Probe:
        p = probe(batch)
        done.append(p)
        return p

    def stop(p: Probe, fit: int | None, fail: int | None) -> Search:
        # never an answer: what fit before says nothing about where memory runs out
        known = f"; before it {fit} fit" + (f" and {fail} ran out of memory" if fail else "") if fit else ""
        return Search("failed", f"batch {p.batch_size}: {p.status}: {p.reason}{known}", None, None, done)

    cap = cfg.max_batch // multiple * multiple
    batch = max(multiple, -(-cfg.start // multiple) * multiple)
    fit: int | None = None
    fail: int | None = None
    while True:
        if batch > cap:
            batch = cap
        p = ask(batch)
        if p.fits is None:
            return stop(p, fit, fail)
        if not p.fits:
            fail = batch
            break
        fit = batch
        if batch >= cap:
            return Search("capped", f"{cap} fits (the max_batch cap)", fit, None, done)
        batch *= 2
    if fit is None:
        return Search("none fits", f"the first batch probed, {fail}, ran out of memory", None, fail, done)
    while fail - fit > max(multiple, cfg.resolution * fit):
        mid = (fit + fail) // 2 // multiple * multiple
        if mid <= fit:
            break
        p = ask(mid)
        if p.fits is None:
            return stop(p, fit, fail)
        if p.fits:
            fit = mid
        else:
            fail = mid
    return Search("found", f"{fit} fits, {fail} runs out of memory", fit, fail, done)


CONFIRM_TRIES = 3  # steps down by the margin where the recommended batch does not fit again


@dataclass
class Band:
    """Where memory runs out, as every probe of it says: the edge as a band, and the recommended batch
    once a fresh process has run it again."""

    low: int | None  # the largest batch that fit every time
    high: int | None  # the smallest batch that ran out of memory every time
    flaky: list[int]  # batches that fit once and ran out of memory another time
    recommended: int | None
    confirmed: bool | None  # the recommended batch fit again (None: no answer to confirm)
    probes: list[Probe] = field(default_factory=list)  # the confirming probes


def confirm(
    result: Search, probe: Callable[[int, int], Probe], margin: float, multiple: int = 1, tries: int = CONFIRM_TRIES
) -> Band:
    """Probe the search's edge again (its largest fit and first failure), then the recommended batch, each
    in a fresh process (`probe(batch, repeat)`); the band and the confirmed recommendation."""
    seen: dict[int, list[bool | None]] = {}
    for p in result.probes:
        seen.setdefault(p.batch_size, []).append(p.fits)
    done: list[Probe] = []

    def again(batch: int) -> Probe:
        p = probe(batch, len(seen.get(batch, [])))
        seen.setdefault(batch, []).append(p.fits)
        done.append(p)
        return p

    if result.max_fit is None:
        return Band(None, result.first_fail, [], None, None, done)
    for batch in (result.max_fit, result.first_fail):
        if batch is not None and again(batch).fits is None:  # another failure: the band is not known
            return Band(None, None, [], None, None, done)
    always = [b for b, o in seen.items() if o and all(x is True for x in o)]
    never = [b for b, o in seen.items() if o and all(x is False for x in o)]
    flaky = sorted(b for b, o in seen.items() if True in o and False in o)
    low = max((b for b in always if not any(f <= b for f in [*never, *flaky])), default=None)
    high = min(never, default=None)
    if low is None:
        return Band(None, high, flaky, None, None, done)
    rec = max(multiple, math.floor(low * margin / multiple) * multiple)
    for _ in range(tries):
        p = again(rec)
        if p.fits:
            return Band(low, high, flaky, rec, True, done)
        if p.fits is None or rec <= multiple:
            break
        rec = max(multiple, math.floor(rec * margin / multiple) * multiple)
    return Band(low, high, flaky, None, False, done)


def probe_cell(cell: Cell, batch: int, cfg: MaxBatchConfig) -> Cell:
    """The short cell that probes `batch`: one warm-up and cfg.steps training steps, one evaluation
    batch and one inference pass, all at that batch."""
    spec = cell.spec
    return Cell(
        dataclasses.replace(
            spec,
            batch_size=batch,
            epochs=1,
            warmup_steps=1,
            dataset={**spec.dataset, "train_samples": batch * (cfg.steps + 1), "val_samples": batch},
            inference={"warmup": 0, "runs": 1, "min_runs": 1, "max_s": 1.0},
            target_accuracy=None,
        )
    )


def _probe_row(cell: Cell, outcome: runner.Outcome, run_name: str, env: dict[str, Any]) -> dict[str, Any]:
    r = rows.build(cell, run_name, outcome, env)
    limit = getattr(outcome, "memory_limit", None) or {}
    return {
        "framework": cell.framework,
        "model_name": cell.model,
        "device": cell.device,
        "precision": cell.precision,
        "batch_size": cell.batch_size,
        "status": outcome.status,
        "reason": outcome.reason,
        "fits": True if outcome.status == "ok" else False if outcome.status == "oom" else None,
        "memory_limit_mb": limit.get("mb"),
        "memory_limit_how": limit.get("how"),
        "limit_peak_mb": limit.get("cgroup_peak_mb"),
        **{k: r.get(k) for k in ("peak_memory_mb", "memory_source", "host_rss_peak_mb")},
        **{k: r.get(k) for k in ("device_peak_allocated_mb", "gpu_memory_used_peak_mb", "step_time_median_s")},
        "samples_per_second": r.get("samples_per_second"),
        "duration_s": outcome.duration_s,
        "probe_id": cell.cell_id,
        "hostname": r.get("hostname"),
        "repeat": 0,
    }


def _stored(folder: Path) -> dict[tuple[str, float | None, int], dict[str, Any]]:
    """Probes stored by earlier invocations: (probe id, memory limit, repeat) -> row."""
    out = {}
    for path in sorted(folder.glob("*.parquet")) if folder.is_dir() else []:
        try:
            for r in pq.read_table(path).to_pylist():
                out[(r["probe_id"], r["memory_limit_mb"], r.get("repeat") or 0)] = r
        except (OSError, pa.ArrowInvalid):  # a torn file from a kill: the probe runs again
            continue
    return out


def searches(suite: Suite, only: dict[str, list[Any]] | None) -> list[Cell]:
    """One representative cell per framework, model, device and precision of the (narrowed) grid."""
    seen: dict[tuple[str, ...], Cell] = {}
    for c in expand(suite, {**(only or {}), "batch_size": []}):
        seen.setdefault((c.framework, c.model, c.device, c.precision), c)
    return list(seen.values())


def run(
    suite: Suite,
    run_dir: Path,
    only: dict[str, list[Any]] | None = None,
    say: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Search every framework x model x device x precision of the suite; returns the search rows."""
    folder = RunFolder(run_dir)
    folder.maxbatch_probes.mkdir(parents=True, exist_ok=True)
    prober = _Prober(suite, folder, say)
    out: list[dict[str, Any]] = []
    all_probes: list[dict[str, Any]] = []
    for base in searches(suite, only):
        multiple = Device.parse(base.device).count
        label = f"{base.framework} {base.model} {base.device} {base.precision}"
        say(
            f"maxbatch: {label}"
            + (f" under memory_limit_mb={suite.memory_limit_mb:g}" if suite.memory_limit_mb else "")
        )
        found: list[dict[str, Any]] = []
        result = search(functools.partial(prober.probe, base, label=label, found=found), suite.maxbatch, multiple)
        again = functools.partial(prober.probe, base, label=label, found=found)
        band = confirm(result, lambda b, k, again=again: again(b, repeat=k), suite.maxbatch.margin, multiple)
        all_probes.extend(found)
        out.append(_search_row(base, result, band, suite, found))
        said = f"; band {band.low}-{band.high}" + (f", {band.recommended} confirmed" if band.confirmed else "")
        say(f"maxbatch: {label}: {result.status}: {result.reason}{said if result.max_fit else ''}")
    _write(folder.maxbatch_probes_table, all_probes, PROBE_SCHEMA)
    _write(folder.maxbatch, out, SEARCH_SCHEMA)
    return out


class _Prober:
    """Runs one probe (a fresh worker at one batch size), or answers it from a stored probe."""

    def __init__(self, suite: Suite, folder: RunFolder, say: Callable[[str], None]) -> None:
        self.suite, self.folder, self.say = suite, folder, say
        self.env = environment.capture()
        self.settings = executors.Settings.of(suite)
        self.stored = _stored(folder.maxbatch_probes)

    def probe(self, base: Cell, batch: int, *, label: str, found: list[dict[str, Any]], repeat: int = 0) -> Probe:
        cell = probe_cell(base, batch, self.suite.maxbatch)
        row = self.stored.get((cell.cell_id, self.suite.memory_limit_mb, repeat))
        was_stored = row is not None
        again = f" (again, {repeat + 1})" if repeat else ""
        if row is None:
            t0 = time.monotonic()
            outcome = run_here(
                Unit(cell, repeat),
                self.folder.maxbatch_runs,
                self.settings,
                executor="local",
                on_start=lambda pid: None,
                on_event=lambda e: None,
                cancel=runner.CancelToken(),
            )
            row = {**_probe_row(cell, outcome, self.suite.name, self.env), "repeat": repeat}
            _write(self.folder.maxbatch_probes / f"{Unit(cell, repeat).unit_id}.parquet", [row], PROBE_SCHEMA)
            reason = f" ({row['reason']})" if row["reason"] else ""
            self.say(f"  {label} bs={batch}{again}: {row['status']}{reason} in {time.monotonic() - t0:.0f}s")
        else:
            self.say(f"  {label} bs={batch}{again}: {row['status']} (stored)")
        found.append(row)
        return Probe(batch, row["fits"], row["status"], row["reason"] or "", row["duration_s"] or 0.0, was_stored)


def _search_row(base: Cell, result: Search, band: Band, suite: Suite, found: list[dict[str, Any]]) -> dict[str, Any]:
    cfg = suite.maxbatch
    return {
        "framework": base.framework,
        "model_name": base.model,
        "device": base.device,
        "precision": base.precision,
        "status": result.status,
        "reason": result.reason,
        "max_batch_size": result.max_fit,
        "first_failing_batch_size": result.first_fail,
        "recommended_batch_size": band.recommended,
        "recommended_confirmed": band.confirmed,
        "frontier_low": band.low,
        "frontier_high": band.high,
        "flaky_batches": ", ".join(map(str, band.flaky)) or None,
        "confirm_probes": len(band.probes),
        "probes": len(result.probes),
        "probes_run": sum(not p.stored for p in result.probes),
        "search_s": sum(p.duration_s for p in result.probes),
        "memory_limit_mb": suite.memory_limit_mb,
        "memory_limit_how": next((r["memory_limit_how"] for r in found if r.get("memory_limit_how")), None),
        "start": cfg.start,
        "max_batch": cfg.max_batch,
        "resolution": cfg.resolution,
        "margin": cfg.margin,
    }


def table(found: list[dict[str, Any]], memory_limit_mb: float | None) -> Any:
    """The searches as a rich table, for the terminal."""
    from rich.table import Table

    limit = f" under memory_limit_mb={memory_limit_mb:g}" if memory_limit_mb else ""
    out = Table(title=f"mlbench maxbatch: the largest training batch that fits{limit}")
    columns = "framework model device precision|largest fit|first oom|band|recommended|probes|verdict"
    for col in columns.replace(" ", "|", 3).split("|"):
        out.add_column(col)
    sizes = ("max_batch_size", "first_failing_batch_size", "recommended_batch_size")
    for r in found:
        out.add_row(
            r["framework"], r["model_name"], r["device"], r["precision"],
            *("-" if r[k] is None else str(r[k]) for k in sizes[:2]), band_text(r),
            "-" if r["recommended_batch_size"] is None else f"{r['recommended_batch_size']} (rerun: fits)",
            f"{r['probes']} + {r.get('confirm_probes') or 0}", f"{r['status']}: {r['reason']}",
        )  # fmt: skip
    return out


def _write(path: Path, data: Iterable[dict[str, Any]], schema: pa.Schema) -> None:
    table = pa.Table.from_pylist(list(data), schema=schema)
    store.atomic_write(path, lambda p: pq.write_table(table, str(p)))


def load(run_dir: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(search rows, probe rows) of a run folder; empty where `maxbatch` has not run there."""
    folder = RunFolder(run_dir)
    if not folder.maxbatch.is_file():
        return [], []
    probes = pq.read_table(folder.maxbatch_probes_table).to_pylist() if folder.maxbatch_probes_table.is_file() else []
    return pq.read_table(folder.maxbatch).to_pylist(), probes
