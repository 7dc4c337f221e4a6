"""`mlbench data prepare CONFIG`: every dataset and shard set the suite's cells read, written into the
run's data folder before the run (a run makes what is missing itself; preparing first keeps the
writing out of the first cells' time and lets a storage team place the files).

Shards are written as workers/common/datapath/formats.py describes, atomically; nothing here imports
a framework (TFRecord files are framed and encoded without TensorFlow). Where `dataset.uri` names
object storage, each shard folder is written locally, then uploaded there (meta.json last), unless
the URI holds it already: a run reads object storage and never writes it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from mlbench.cells import Cell
from workers.common import data as datasets
from workers.common import specs
from workers.common.datapath import feed, storage


@dataclass(frozen=True)
class Prepared:
    folder: Path | str  # a local folder, or the URI a shard folder was uploaded to
    files: int
    bytes: int
    seconds: float
    made: bool  # False: it was there already


def _size(folder: Path) -> tuple[int, int]:
    files = [p for p in folder.rglob("*") if p.is_file()]  # an image folder's files sit in a folder per class
    return len(files), sum(p.stat().st_size for p in files)


def prepare(cells: list[Cell], data_dir: Path) -> list[Prepared]:
    """Make the dataset folder of every train cell and the shard set of every file-fed one."""
    out: list[Prepared] = []
    seen: set[Path] = set()
    for cell in cells:
        spec = cell.spec
        if spec.task != "train" or spec.dataset is None:
            continue
        model = specs.get_spec(spec.model, spec.model_overrides)
        inp = specs.input_spec(model)
        encoded = spec.dataset.get("format") == "imagefolder" or spec.dataset.get("image_codec")
        if datasets.fits(spec.dataset["name"], model.family, inp) or (encoded and model.family != "image"):
            continue  # data this model cannot read: the cell is skipped at run time with the reason
        t0 = time.perf_counter()
        folder = datasets.materialise(
            spec.dataset, model.family, inp, datasets.data_seed(spec.to_dict()), str(data_dir)
        )
        targets = [(folder, time.perf_counter() - t0)]
        if spec.dataset.get("format", "memory") != "memory":
            shard_folder = feed.shard_folder(folder, spec.dataset)
            existed = shard_folder.is_dir()
            t0 = time.perf_counter()
            feed.materialise(folder, spec.dataset)
            targets.append((shard_folder, 0.0 if existed else time.perf_counter() - t0))
        remote = feed.remote_folder(folder, spec.dataset) if spec.dataset.get("format", "memory") != "memory" else None
        for target, seconds in targets:
            if target in seen:
                continue
            seen.add(target)
            files, size = _size(target)
            out.append(Prepared(target, files, size, seconds, made=seconds > 0))
        if remote is not None and remote not in seen:
            seen.add(remote)
            out.append(upload(targets[-1][0], remote, spec.dataset.get("storage_options") or None))
    return out


def upload(local: Path, uri: str, options: dict | None) -> Prepared:
    """A local shard folder copied to object storage where the URI does not hold it yet."""
    files, size = _size(local)
    if storage.exists(storage.join(uri, "meta.json"), options):
        return Prepared(storage.redact(uri), files, size, 0.0, made=False)
    t0 = time.perf_counter()
    written = storage.put_folder(local, uri, options)
    return Prepared(storage.redact(uri), files, written, time.perf_counter() - t0, made=True)
