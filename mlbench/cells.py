"""Cells: the product of a suite's axes, minus excludes, each with a stable id."""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from mlbench.config import CELL_AXES, ConfigError, Suite
from workers.common import data as datasets
from workers.common import specs
from workers.common.cellspec import CellSpec
from workers.common.datapath import loaders
from workers.common.devices import Device


def describe(
    framework: str,
    model: str,
    device: str,
    precision: str,
    batch_size: int | None,
    deterministic: bool = False,
    seed: int | None = None,
    data: str | None = None,
) -> str:
    """A cell in words, the same in the progress bar, the journal and every output (a training seed
    other than 0 is named: with `seeds`, one configuration has a cell per seed; a file-fed cell's
    format and loader follow its batch size, e.g. `raw/torch w2`)."""
    det = " deterministic" if deterministic else ""
    return (
        f"{framework} {model} {device} {precision}{det} bs{batch_size}"
        + (f" {data}" if data else "")
        + (f" seed {seed}" if seed else "")
    )


def data_label(framework: str, dataset: dict[str, Any] | None, loader: dict[str, Any] | None) -> str | None:
    """A file-fed cell's data path in words (`raw/torch w2`: the native loader named); None for the
    in-memory feed."""
    if not loader:
        return None
    kind = loaders.LoaderSpec.from_dict(loader).resolved_kind(framework)
    emulated = loader.get("emulate_compute_s")
    sleep = (
        ""
        if emulated is None
        else " emulated " + ("measured" if emulated == "measured" else f"{emulated * 1000:.3g} ms")
    )
    where = f" {dataset['storage']}" if (dataset or {}).get("storage") else ""  # object storage: stream or cache
    return f"{(dataset or {}).get('format')}/{kind} w{loader['workers']}{where}{sleep}"


@dataclass(frozen=True, eq=False)
class Cell:
    """One cell as the orchestrator handles it: its typed spec, with the id and label derived from it.
    Two cells are the same cell when their canonical specs are."""

    spec: CellSpec

    @cached_property
    def spec_json(self) -> str:
        """The canonical JSON of everything that determines the measurement (stored as spec_json)."""
        return self.spec.canonical_json()

    @cached_property
    def cell_id(self) -> str:
        """Short hash of the canonical spec: the same spec always gets the same id."""
        return hashlib.sha256(self.spec_json.encode()).hexdigest()[:12]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Cell) and other.spec_json == self.spec_json

    def __hash__(self) -> int:
        return hash(self.spec_json)

    framework = property(lambda self: self.spec.framework)
    model = property(lambda self: self.spec.model or self.spec.task)
    device = property(lambda self: self.spec.device)
    precision = property(lambda self: self.spec.precision)
    batch_size = property(lambda self: self.spec.batch_size)

    @property
    def label(self) -> str:
        if self.spec.task == "calibrate":
            return f"{self.framework} calibration matmul {self.device} {self.precision}"
        return describe(
            self.framework,
            self.model,
            self.device,
            self.precision,
            self.batch_size,
            bool(self.spec.deterministic),
            self.spec.seed,
            data_label(self.framework, self.spec.dataset, self.spec.loader),
        )

    def worker_payload(self, **run: Any) -> dict[str, Any]:
        """What the worker receives as `--cell JSON`: the spec, its id and how this run is set up."""
        return self.spec.payload(**run)


def make_cell(
    suite: Suite,
    framework: str,
    model: str,
    device: str,
    precision: str,
    batch_size: int,
    seed: int | None = None,
    deterministic: bool | None = None,
    fmt: str | None = None,
    loader_kind: str | None = None,
    loader_workers: int | None = None,
    emulate: float | str | None = None,
    storage: str | None = None,
) -> Cell:
    """One cell of a suite (at its first training seed, `deterministic` value, data format and loader
    unless told)."""
    model_spec = specs.get_spec(model, suite.model_overrides.get(model))
    seed = suite.seed if seed is None else seed
    deterministic = suite.deterministic[0] if deterministic is None else deterministic
    fmt = suite.dataset.format[0] if fmt is None else fmt
    dataset = suite.dataset.cell_dict(fmt, storage)
    loader = None
    if fmt != "memory":
        loader = suite.loader.cell_dict(
            suite.loader.kind[0] if loader_kind is None else loader_kind,
            suite.loader.workers[0] if loader_workers is None else loader_workers,
            emulate,
        )
    dataset["name"] = datasets.public_name(dataset["name"], model_spec.family)  # public: the family's own
    data_seed = dataset.pop("seed")
    if data_seed is None:
        data_seed = suite.seeds[0]
    if data_seed != seed:  # in the spec only where it differs, so a one-seed cell keeps its id
        dataset["seed"] = data_seed
    return Cell(
        CellSpec(
            framework=framework,
            worker=suite.worker_module(framework),
            model=model,
            model_overrides=suite.model_overrides.get(model, {}),
            # the resolved architecture and recipe: a changed default in a new mlbench changes the id too
            model_spec=specs.spec_dict(model_spec),
            device=device,
            precision=precision,
            batch_size=batch_size,
            epochs=suite.epochs,
            seed=seed,
            dataset=dataset,
            # how synthetic data is made: a changed generator makes different data, so a new cell
            data_generator=datasets.GENERATOR[model_spec.family] if suite.dataset.name == "synthetic" else None,
            warmup_steps=suite.warmup_steps,
            inference=suite.inference.model_dump(),
            compile=suite.compile,
            threads=suite.threads,
            malloc=suite.malloc,  # moves the figures (see workers/common/malloc.py): part of the cell
            target_accuracy=suite.target_accuracy,
            batchnorm="sync" if Device.parse(device).data_parallel else None,
            deterministic=True if deterministic else None,  # in the spec only when on: earlier ids stay
            loader=loader,  # a file-fed cell's; None (left out of the spec) for the in-memory feed
        )
    )


def _excluded(values: dict[str, Any], excludes: Iterable[dict[str, Any]]) -> bool:
    return any(
        all(values.get(k) == v or (isinstance(v, list) and values.get(k) in v) for k, v in ex.items())
        for ex in excludes
    )


def axes(suite: Suite, only: dict[str, list[Any]] | None = None) -> dict[str, list[Any]]:
    """The suite's axes narrowed by `only` (axis -> allowed values); a ConfigError names a filter value
    outside the grid. Cheap: no cell is made."""
    out = {
        "framework": suite.frameworks,
        "model": suite.models,
        "device": suite.devices,
        "precision": suite.precisions,
        "batch_size": suite.batch_sizes,
    }
    for axis, wanted in (only or {}).items():
        if not wanted:
            continue
        unknown = [w for w in wanted if w not in out[axis]]
        if unknown:
            allowed = ", ".join(str(a) for a in out[axis])
            raise ConfigError(
                f"--{axis.replace('_', '-')}s: {unknown[0]!r} is not in this suite's grid; allowed: {allowed}"
            )
        out[axis] = [a for a in out[axis] if a in wanted]
    return out


def expand(suite: Suite, only: dict[str, list[Any]] | None = None) -> list[Cell]:
    """All cells of the suite in a stable order, narrowed by `only` (axis -> allowed values): the whole
    grid at the first seed, then at each further one (a stopped run has the first seed complete)."""
    narrowed = axes(suite, only)
    cells = []
    for seed in suite.seeds:
        for deterministic in suite.deterministic:
            for combo in itertools.product(*(narrowed[a] for a in CELL_AXES)):
                values = dict(zip(CELL_AXES, combo))
                for data in data_axes(suite):
                    named = {
                        "format": data["fmt"],
                        "loader": data.get("loader_kind"),
                        "loader_workers": data.get("loader_workers"),
                        "emulate_compute_s": data.get("emulate"),
                        "storage": data.get("storage"),
                    }
                    if not _excluded({**values, **named}, suite.excludes):
                        cells.append(make_cell(suite, **values, seed=seed, deterministic=deterministic, **data))
    return cells


def data_axes(suite: Suite) -> list[dict[str, Any]]:
    """The data path's axes: each format, and for a file format each loader kind and worker count, and
    for shards in object storage each way to read them (a `memory` cell has no loader and reads no
    files, so it comes once)."""
    out: list[dict[str, Any]] = []
    modes = suite.dataset.storage if suite.dataset.remote else [None]
    for fmt in suite.dataset.format:
        if fmt == "memory":
            out.append({"fmt": fmt})
            continue
        for kind in suite.loader.kind:
            for workers in suite.loader.workers:
                for emulate in suite.loader.emulate_compute_s:
                    for mode in modes:
                        axes = {"fmt": fmt, "loader_kind": kind, "loader_workers": workers, "emulate": emulate}
                        out.append({**axes, "storage": mode} if mode else axes)
    return out


@dataclass(frozen=True)
class Unit:
    """One run of a cell: repeats of a cell are separate units, each stored in a file of its own."""

    cell: Cell
    repeat: int = 0
    node: str | None = None  # the cluster node it must run on (a calibration runs on each); None: any

    @property
    def unit_id(self) -> str:
        """The cell file's name: the cell id for the first repeat, `<cell_id>.r<k>` for the others;
        `@<node>` after it where the unit is pinned to a node."""
        base = self.cell.cell_id if self.repeat == 0 else f"{self.cell.cell_id}.r{self.repeat}"
        return base if self.node is None else f"{base}@{self.node[:12]}"

    @property
    def framework(self) -> str:
        return self.cell.framework

    @property
    def model(self) -> str:
        return self.cell.model

    @property
    def label(self) -> str:
        where = f" on node {self.node[:12]}" if self.node else ""
        return self.cell.label + (f" (repeat {self.repeat + 1})" if self.repeat else "") + where


def units(cells: list[Cell], repeats: int) -> list[Unit]:
    """Every repeat of every cell, interleaved: the whole grid once, then again, so that slow drift of
    a shared machine spreads over all cells instead of hitting the last ones."""
    return [Unit(c, r) for r in range(repeats) for c in cells]
