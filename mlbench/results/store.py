"""Cell files, written atomically, and the exports rebuilt from them.

runs/<run>/cells/<cell_id>.parquet holds one row (schema.SCHEMA). A file is written under a
temporary name, fsynced and renamed, so a kill at any instant leaves the whole file or none.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from mlbench.results import schema
from mlbench.runfolder import RunFolder

Row = dict[str, Any]


class StoreError(Exception):
    """The run folder cannot be written (full disk, permissions): the run stops, nothing half-written."""


class ResultsError(Exception):
    """A results file or run folder that cannot be read: one line for the user, naming the file."""


class RunLocked(Exception):
    """Another orchestrator holds this run folder."""


def cells_dir(run_dir: Path) -> Path:
    return RunFolder(run_dir).cells


def cell_path(run_dir: Path, cell_id: str) -> Path:
    return RunFolder(run_dir).cell(cell_id)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Any) -> None:
    """Call write(tmp_path), fsync it, and rename it over `path`; on failure remove the temporary."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        what = "the disk is full" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
        raise StoreError(f"cannot write {path}: {what}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def preload() -> None:
    """pyarrow imports pandas the first time it converts Python rows (0.2-0.7 s on 2 cores): done
    once before the first cell, so that it is not counted in any cell's orchestrator overhead."""
    pa.Table.from_pylist([{"cell_id": ""}])


def write_cell(run_dir: Path, row: dict[str, Any], name: str | None = None) -> Path:
    """Store one cell's row atomically, as cells/<name or cell_id>.parquet."""
    path = cell_path(run_dir, name or row["cell_id"])
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot create {path.parent}: {exc.strerror or exc}") from None
    table = pa.Table.from_pylist([row], schema=schema.SCHEMA)
    atomic_write(path, lambda tmp: pq.write_table(table, str(tmp)))
    return path


def read_status(path: Path) -> str | None:
    """The status stored in a cell file, or None if the file is not a whole, readable cell file."""
    try:
        meta = pq.read_metadata(path)  # reads the footer: a truncated file fails here
        if meta.num_rows != 1:
            return None
        return pq.read_table(path, columns=["status"]).column("status")[0].as_py()
    except (OSError, pa.ArrowException, KeyError):
        return None


def stored_statuses(run_dir: Path, cell_ids: Iterable[str]) -> dict[str, str | None]:
    """cell_id -> stored status (None: no valid file) for the given cells."""
    return {
        cid: (read_status(cell_path(run_dir, cid)) if cell_path(run_dir, cid).exists() else None) for cid in cell_ids
    }


def conform(table: pa.Table) -> pa.Table:
    """A cell table in the current schema: columns an older mlbench did not write are null (missing),
    columns it no longer knows are dropped."""
    if table.schema.equals(schema.SCHEMA):  # a file this mlbench wrote: as it is (the cast costs ms a file)
        return table
    have = set(table.column_names)
    for field in schema.SCHEMA:
        if field.name not in have:
            table = table.append_column(field, pa.nulls(table.num_rows, field.type))
    return table.select(schema.SCHEMA.names).cast(schema.SCHEMA)


COMPACT = 256  # files joined into one block: a table read from a file holds ~300 KB beside its data


def read_cells(run_dir: Path, cell_ids: Iterable[str] | None = None, columns: list[str] | None = None) -> pa.Table:
    """Valid cell files as one table: those of `cell_ids` in that order, or all of them by file name;
    only `columns` where given (columns every mlbench wrote)."""
    folder = cells_dir(run_dir)
    if cell_ids is None:
        paths = sorted(folder.glob("*.parquet")) if folder.is_dir() else []
    else:
        paths = [p for p in (cell_path(run_dir, cid) for cid in cell_ids) if p.exists()]
    blocks: list[pa.Table] = []  # every COMPACT files' rows in one contiguous table
    tables: list[pa.Table] = []
    for path in paths:
        try:
            # not read_table (its dataset layer costs 3 ms a file), one thread (a one-row file's 237
            # columns read faster than they are handed out to a pool)
            with pq.ParquetFile(path) as f:
                t = f.read(columns=columns, use_threads=False)
            t = conform(t) if columns is None else t.cast(pa.schema([schema.SCHEMA.field(c) for c in columns]))
        except (OSError, pa.ArrowException):
            continue  # a damaged file counts as not stored; --resume runs its cell again
        tables.append(t)
        if len(tables) == COMPACT:  # 10,000 tables held 3 GB
            blocks.append(pa.concat_tables(tables).combine_chunks())
            tables = []
    if tables:
        blocks.append(pa.concat_tables(tables).combine_chunks())
    empty = schema.SCHEMA.empty_table()
    return pa.concat_tables(blocks) if blocks else (empty if columns is None else empty.select(columns))


CELL_KEYS = ["cell_id", "framework", "model_name", "device", "precision", "batch_size"]


def epochs_table(results: pa.Table) -> pa.Table:
    """One row per cell and epoch: the cell's keys beside its epochs_detail's fields (in Arrow: a
    10,000-cell run's epochs never become Python objects)."""
    nested = results.column("epochs_detail").combine_chunks()
    owner = pc.list_parent_indices(nested)
    flat = pc.list_flatten(nested)
    cells = results.select(CELL_KEYS).take(owner)
    fields = dict(zip(schema.EPOCH.names, flat.flatten()))  # a null epoch: nulls (field() would read 0s)
    return pa.table({**{c: cells.column(c) for c in CELL_KEYS if c not in fields}, **fields})


STEP_KINDS = {"warmup_step": ("warmup_times_s", 1.0), "train_step": ("step_times_s", 1.0),
              "inference": ("inference_times_ms", 1e-3)}  # fmt: skip
STEPS = pa.schema([("cell_id", pa.string()), ("kind", pa.string()), ("index", pa.int64()), ("seconds", pa.float64())])


def steps_table(results: pa.Table) -> pa.Table:
    """One row per raw sample: training steps (warm-up and timed) and inference passes, a cell's
    together in that order (in Arrow, as epochs_table)."""
    parts = []
    for order, (kind, (column, scale)) in enumerate(STEP_KINDS.items()):
        nested = results.column(column).combine_chunks()
        owner = pc.list_parent_indices(nested)  # the row each sample came from
        n = len(owner)
        lengths = pc.fill_null(pc.list_value_length(nested), 0).to_numpy(zero_copy_only=False)
        first = np.repeat(np.cumsum(lengths) - lengths, lengths)  # where each sample's list starts
        part = {
            "owner": owner,
            "order": pa.repeat(order, n),
            "cell_id": results.column("cell_id").take(owner),
            "kind": pa.repeat(kind, n),
            "index": pa.array(np.arange(n) - first, pa.int64()),
            "seconds": pc.multiply(pc.cast(pc.list_flatten(nested), pa.float64()), scale),
        }
        parts.append(pa.table(part))
    steps = pa.concat_tables(parts)
    steps = steps.take(pc.sort_indices(steps, [("owner", "ascending"), ("order", "ascending"), ("index", "ascending")]))
    return steps.select(STEPS.names).cast(STEPS)


JSON_BLOCK = 256  # rows turned into Python objects at a time while results.json is written


def write_json(path: Path, results: pa.Table) -> None:
    """results.json: a JSON array, one cell's object a line, written a block of rows at a time (the
    whole list and its text at once held 400 MB at 10,000 cells)."""
    with path.open("w", encoding="utf-8") as f:
        f.write("[")
        sep = "\n"
        for batch in results.to_batches(max_chunksize=JSON_BLOCK):
            for row in batch.to_pylist():
                f.write(sep + json.dumps(row, default=str))
                sep = ",\n"
        f.write("\n]\n")


def write_exports(run_dir: Path, results: pa.Table) -> list[Path]:
    """results.parquet/csv/json plus epochs and raw steps, each written atomically."""
    flat = results.select(schema.FLAT)
    epochs, steps = epochs_table(results), steps_table(results)
    light = results.drop_columns(["step_times_s", "warmup_times_s", "inference_times_ms"])
    outputs = {
        "results.parquet": lambda p: pq.write_table(results, str(p)),
        "results.csv": lambda p: pacsv.write_csv(flat, str(p)),
        "results.json": lambda p: write_json(p, light),
        "epochs.parquet": lambda p: pq.write_table(epochs, str(p)),
        "epochs.csv": lambda p: pacsv.write_csv(epochs, str(p)),
        "steps.parquet": lambda p: pq.write_table(steps, str(p)),
    }
    written = []
    for name, write in outputs.items():
        atomic_write(RunFolder(run_dir).export(name), write)
        written.append(RunFolder(run_dir).export(name))
    return written


class RunLock:
    """An exclusive lock on a run folder (flock: the kernel drops it when its holder dies)."""

    def __init__(self, run_dir: Path) -> None:
        self.path = RunFolder(run_dir).lock
        self.fd: int | None = None

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise RunLocked(
                f"{self.path.parent} is in use by another mlbench run (pid {holder}); "
                "wait for it to finish or stop it first"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self.fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


# --- reading a run's results back (report --results, compare) ----------------------------------

RESULTS_FILES = (".parquet", ".json")  # results.parquet (every column) and results.json (no raw step samples)
ROW_ENVIRONMENT = (  # the environment columns every row carries
    "mlbench_version",
    "hostname",
    "cpu_model",
    "cpu_count_physical",
    "cpu_count_logical",
    "memory_total_gb",
    "os",
    "python_version",
    "gpu_driver",
)


@dataclass
class Results:
    """A run's rows as stored, with its environment and suite where they are known."""

    rows: list[Row]
    env: dict[str, Any]
    suite: dict[str, Any]
    folder: Path  # the run folder, or the folder holding the results file
    source: Path  # the file the rows came from


def _read_rows(path: Path) -> list[Row]:
    if path.suffix not in RESULTS_FILES:
        raise ResultsError(f"{path}: not a results file; give results.parquet or results.json, or a run folder")
    try:
        if path.suffix == ".parquet":
            return pq.read_table(path).to_pylist()
        rows = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise ResultsError(f"{path}: unreadable ({exc})") from exc
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise ResultsError(f"{path}: not a results file (mlbench's results.json is a list of rows)")
    columns = dict.fromkeys(schema.SCHEMA.names)  # the columns results.json leaves out (raw samples) are null
    return [{**columns, **r} for r in rows]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, ValueError) as exc:
        raise ResultsError(f"{path}: unreadable ({exc})") from exc


def environment_of(rows: list[Row]) -> dict[str, Any]:
    """The environment record as far as the rows carry it (where no environment.json lies beside them)."""
    env = {k: next((r[k] for r in rows if r.get(k) is not None), None) for k in ROW_ENVIRONMENT}
    env["gpus"] = sorted({r["gpu_model"] for r in rows if r.get("gpu_model")})
    env["frameworks"] = {r["framework"]: r["framework_version"] for r in rows if r.get("framework_version")}
    return env


def load_results(path: Path) -> Results:
    """A run folder's results.parquet, or a results file (results.parquet or results.json) with the
    environment.json and suite.json beside it where present (else the environment from the rows)."""
    path = Path(path)
    file = RunFolder(path).results if path.is_dir() else path
    if not file.exists():
        raise ResultsError(f"{path}: no results.parquet (run `mlbench report {path}` to rebuild it)")
    rows = _read_rows(file)
    if rows and "status" not in rows[0]:
        raise ResultsError(f"{file}: no status column (not mlbench's results)")
    folder = RunFolder(file.parent)
    env = _read_json(folder.environment) or environment_of(rows)
    suite = _read_json(folder.suite) or {"name": run_name(path)}
    return Results(rows, env, suite, file.parent, file)


def run_name(path: Path) -> str:
    """A short name for a run folder or a results file (runs/a/results.json: a)."""
    path = Path(path)
    if path.is_dir():
        return path.name
    return path.stem if path.stem != "results" else path.resolve().parent.name
