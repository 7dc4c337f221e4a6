"""`mlbench verify --data`: prove that every framework's loaders deliver the same batches.

For a suite's data path (its formats, loader kinds and worker counts), each framework's worker (a
fresh process each, no model) digests a few batches of one epoch through each loader: from the
epoch's first batch, and again from a batch in the middle (a loader started there, as after a stop
and a restart mid-epoch). Every digest list is compared with a reference made here, in numpy alone,
from the dataset's arrays and the order and augmentation functions (workers/common/datapath/order.py):
the first batch that differs is named. Epoch 1 is checked, not 0: the order and the augmentation
both change with the epoch. JPEG files decode to other pixels than the arrays they were made from:
their reference is Pillow's decode of the same files (what torchvision's ImageFolder uses).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from mlbench.cells import Cell, Unit, data_axes, data_label
from mlbench.config import Suite
from mlbench.executors.base import Settings, run_here
from mlbench.process.runner import CancelToken
from mlbench.runfolder import RunFolder
from workers.common import data as datasets
from workers.common import specs
from workers.common.cellspec import CellSpec
from workers.common.datapath import feed, formats
from workers.common.datapath import order as orders

EPOCH = 1
BATCHES = 3  # digested from each start


@dataclass
class DataCheck:
    framework: str
    model: str
    data: str  # memory, or format/loader wN
    start: int
    status: str  # ok | mismatch | error
    batches: int = 0
    first_difference: int | None = None  # the epoch's batch index
    problem: str = ""


def _cells(suite: Suite, model: str, start: int) -> list[Cell]:
    cells = []
    dataset_seed = suite.dataset.seed if suite.dataset.seed is not None else suite.seeds[0]
    family = specs.get_spec(model, suite.model_overrides.get(model)).family
    for fw in suite.frameworks:
        for axes in data_axes(suite):
            if axes.get("emulate") is not None:  # the same loader as its real-compute cell
                continue
            if axes["fmt"] == "imagefolder" and family != "image":  # images only
                continue
            dataset = suite.dataset.cell_dict(axes["fmt"], axes.get("storage"))
            dataset.pop("seed")
            if dataset_seed != suite.seed:
                dataset["seed"] = dataset_seed
            loader = (
                suite.loader.cell_dict(axes["loader_kind"], axes["loader_workers"]) if axes["fmt"] != "memory" else None
            )
            cells.append(
                Cell(
                    CellSpec(
                        task="data",
                        framework=fw,
                        worker=suite.worker_module(fw),
                        model=model,
                        model_overrides=suite.model_overrides.get(model, {}),
                        device="cpu",
                        precision="fp32",
                        batch_size=suite.batch_sizes[0],
                        seed=suite.seed,
                        threads=suite.threads,
                        malloc=suite.malloc,
                        dataset=dataset,
                        loader=loader,
                        data_check={"epoch": EPOCH, "start": start, "batches": BATCHES},
                    )
                )
            )
    return cells


def reference(suite: Suite, model: str, data_dir: Path, lossy: tuple[str, int | None] | None = None) -> list[str]:
    """Every batch digest of the epoch, from the dataset's arrays in numpy alone; `lossy` (a codec and a
    stored size): from such image files as Pillow decodes (and resizes) them, whose pixels are not the arrays'."""
    spec = specs.get_spec(model, suite.model_overrides.get(model))
    dataset = suite.dataset.cell_dict("memory")
    seed = suite.dataset.seed if suite.dataset.seed is not None else suite.seeds[0]
    folder = datasets.materialise(dataset, spec.family, specs.input_spec(spec), seed, str(data_dir))
    x = np.load(folder / "x_train.npy", mmap_mode="r")
    y = np.load(folder / "y_train.npy")
    if lossy:
        codec, size = lossy
        imagefolder = {**dataset, "format": "imagefolder", "image_codec": codec, "shards": suite.dataset.shards}
        imagefolder |= {"image_size": size} if size else {}
        images = feed.materialise(folder, imagefolder)  # the files the cells read, written once
        x = formats.Reader(images).read(np.arange(len(y)))[0]
    d = suite.dataset
    plan = orders.plan(len(y), suite.batch_sizes[0], suite.seed, EPOCH, d.order, d.shards)
    out = []
    for row in plan:
        xb = np.asarray(x[row])
        if d.augment == "crop_flip" and spec.family == "image":
            xb = orders.crop_flip(xb, orders.crop_flip_params(suite.seed, EPOCH, row))
        out.append(orders.digest(xb, y[row]))
    return out


def run(suite: Suite, run_dir: Path, settings: Settings, models: list[str] | None = None) -> list[DataCheck]:
    """Digest each framework's batches through each of the suite's data paths, from the epoch's first
    batch and from its middle, against the numpy reference; one DataCheck each."""
    folder = RunFolder(run_dir)
    settings = replace(settings, idle_timeout_s=max(settings.idle_timeout_s, settings.timeout_s))
    checks: list[DataCheck] = []
    families: dict[str, str] = {}
    for m in models or suite.models:  # one model per kind of data: the data is the family's
        families.setdefault(specs.get_spec(m, suite.model_overrides.get(m)).family, m)
    for model in families.values():
        refs = {None: reference(suite, model, folder.data)}
        restart = max(1, len(refs[None]) // 2)
        for start in (0, restart):
            for cell in _cells(suite, model, start):
                name = data_label(cell.framework, cell.spec.dataset, cell.spec.loader) or "memory"
                d = cell.spec.dataset or {}
                lossy = (
                    (d["image_codec"], d.get("image_size"))
                    if d.get("image_codec") == "jpeg" or (d.get("image_codec") and d.get("image_size"))
                    else None
                )
                if lossy not in refs:
                    refs[lossy] = reference(suite, model, folder.data, lossy=lossy)
                ref = refs[lossy]
                outcome = run_here(
                    Unit(cell),
                    run_dir,
                    settings,
                    executor="local",
                    on_start=lambda pid: None,
                    on_event=lambda e: None,
                    cancel=CancelToken(),
                )
                event = next((e for e in outcome.events if e["event"] == "data"), None)
                if outcome.status != "ok" or event is None:
                    problem = f"{outcome.status}: {outcome.reason}"
                    checks.append(DataCheck(cell.framework, model, name, start, "error", problem=problem))
                    continue
                got, want = event["digests"], ref[start : start + BATCHES]
                first = next((start + i for i, (a, b) in enumerate(zip(got, want)) if a != b), None)
                if first is None and len(got) != len(want):
                    first = start + min(len(got), len(want))
                check = DataCheck(cell.framework, model, name, start, "ok", batches=len(got), first_difference=first)
                if first is not None:
                    check.status = "mismatch"
                    check.problem = f"batch {first} of epoch {EPOCH} differs from " + (
                        "Pillow's decode of the same image files (this decoder, or its resize, rounds otherwise; "
                        "loader.decoder: pillow gives the same bytes)"
                        if lossy
                        else "the numpy reference"
                    )
                checks.append(check)
    folder.root.mkdir(parents=True, exist_ok=True)
    (folder.root / "verify-data.json").write_text(json.dumps([asdict(c) for c in checks], indent=1))
    return checks


def table(checks: list[DataCheck]) -> Any:
    from rich.table import Table

    t = Table(title=f"Batches through each loader against the numpy reference (epoch {EPOCH})")
    for col in ("framework", "model", "data path", "from batch", "batches", "verdict"):
        t.add_column(col)
    for c in checks:
        verdict = "same bytes" if c.status == "ok" else c.problem
        t.add_row(c.framework, c.model, c.data, str(c.start), str(c.batches), verdict)
    return t
