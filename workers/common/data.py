"""Datasets every worker reads: made once per run into the run's data folder, seed-stable batch order.

A dataset is stored as plain .npy files (x_train, y_train, x_val, y_val) in a folder named by a
hash of what made it, written to a temporary folder and renamed, so two workers never see half of
one. Images are stored as uint8 NCHW and normalised when an epoch is gathered; tokens as int32; tabular as float32.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from workers.common import public_data
from workers.common.datapath import order as orders
from workers.common.datapath.order import epoch_order  # noqa: F401 (its historical home)
from workers.common.specs import InputSpec

CIFAR_MEAN = np.array([0.4914, 0.4822, 0.4465], np.float32)
CIFAR_STD = np.array([0.2470, 0.2435, 0.2616], np.float32)
# the image task: class prototypes (smooth 4x4-block colour patterns) of amplitude IMAGE_SIGNAL under
# per-pixel noise IMAGE_NOISE. ResNet-18 (PyTorch, 1024 samples, batch 32) reaches 90% validation
# accuracy after 2 epochs and 99% after 3; with amplitude 0.4 it overfits (59%), with 1.0 it saturates.
IMAGE_SIGNAL, IMAGE_NOISE = 0.6, 1.8
# the token task: marker tokens per class, and how many of the label's and of another class's
# markers each sequence holds among background tokens drawn from TOKEN_BACKGROUND ids. With the
# whole vocabulary as background (8160 ids, each seen ~29 times in 2048 samples) BERT could memorise
# rare tokens: one framework's run fell from 99.7% to 97.7% while the others held 99.4-99.9%.
# 512 background ids, each seen hundreds of times, carry no such shortcut (99.7-100% in both seeds
# tried with PyTorch).
TOKEN_MARKERS, TOKEN_OWN, TOKEN_OTHER = 16, 9, 3
TOKEN_BACKGROUND = 512
# what a synthetic dataset of each family is made with: part of the dataset's key and of each cell's
# spec, so a changed generator makes new data and re-runs cells on --resume
GENERATOR = {
    "image": {"signal": IMAGE_SIGNAL, "noise": IMAGE_NOISE, "version": 2},
    "tokens": {"markers": TOKEN_MARKERS, "own": TOKEN_OWN, "other": TOKEN_OTHER, "background": TOKEN_BACKGROUND},
    "tabular": {"version": 1},
}
CHANNEL_SHAPE = {"NCHW": (1, 3, 1, 1), "NHWC": (1, 1, 1, 3)}
# bytes: a host array starting on this boundary is taken without a copy by XLA:CPU (jax.device_put:
# 0.03 ms for a 3 MB batch, 0.44 ms when it is copied) and by TensorFlow's DLPack import (which
# aborts on a misaligned one); NumPy's large arrays start 16 bytes past a page
ALIGN = 64


def aligned_empty(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """An uninitialised C-contiguous array whose data starts on an ALIGN-byte boundary."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    raw = np.empty(nbytes + ALIGN, np.uint8)
    offset = -raw.ctypes.data % ALIGN
    return raw[offset : offset + nbytes].view(dtype).reshape(shape)


def aligned(a: np.ndarray) -> np.ndarray:
    """An ALIGN-byte aligned copy of `a`."""
    out = aligned_empty(a.shape, a.dtype)
    out[...] = a
    return out


class DataUnavailable(Exception):
    """The dataset asked for cannot serve this model (the cell is skipped, not failed)."""


@dataclass
class Dataset:
    """Train and validation arrays plus the per-batch transform into model inputs."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    family: str
    key: str
    layout: str = "NCHW"  # of images: NCHW as stored, or NHWC (transposed once at load)

    def inputs(self, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Raw stored samples -> model inputs (float32 normalised images; others unchanged), into
        `out` when given (images only; the same operations in the same order, the same bits)."""
        if self.family == "image":
            shape = CHANNEL_SHAPE[self.layout]
            if out is None:
                return ((x.astype(np.float32) / 255.0) - CIFAR_MEAN.reshape(shape)) / CIFAR_STD.reshape(shape)
            np.divide(x, np.float32(255.0), out=out, dtype=np.float32)
            np.subtract(out, CIFAR_MEAN.reshape(shape), out=out)
            return np.divide(out, CIFAR_STD.reshape(shape), out=out)
        return x if x.flags.writeable else np.array(x)  # frameworks want writable arrays


def data_seed(cell: dict[str, Any]) -> int:
    """The seed a cell's data is made from: the dataset's own where the suite set one apart from the
    training seed (`seeds`: every training seed reads the same data), else the cell's seed."""
    return (cell.get("dataset") or {}).get("seed", cell["seed"])


class BatchFeed:
    """Full training batches of each epoch in the seed-stable order (the last partial one dropped),
    ready as model inputs.

    `epoch()` gathers the epoch's samples in batch order in one go, and turns images into
    normalised float32, into arrays made once (and their pages touched) when the feed is made,
    before training; each batch is then a contiguous, ALIGN-byte aligned slice that every framework
    takes without a copy on the CPU. So the training steps' timers hold the framework's work on a
    ready host batch, as an expert's loop times it, and the preparation is timed apart (the
    harness's data wait). Gathering per step cost the MLP ~0.3 ms of its ~8 ms step; normalising
    images per step 0.14 ms a batch of 64 (a few % of a GPU step); gathering into a fresh array each
    epoch, ~0.5 s of page faults per 240 MB; an unaligned batch, a copy in JAX and TensorFlow. The
    cost: one more copy of the training set in host memory (images as float32: 4x their uint8 size).
    """

    def __init__(
        self,
        ds: Dataset,
        batch_size: int,
        order: str = "global",
        shards: int = 1,
        augment: str = "none",
        digest_batches: int = 0,
    ) -> None:
        self.ds, self.batch_size = ds, batch_size
        # the order and augmentation a file-fed cell's loader follows (datapath/order.py), so a
        # `memory` cell of a data-path comparison trains on the same batches
        self.order, self.shards, self.augment = order, shards, augment
        self.digest_batches, self.digests = digest_batches, []
        self.n = len(ds.y_train) // batch_size
        rows = self.n * batch_size
        self.raw = aligned_empty((rows, *ds.x_train.shape[1:]), ds.x_train.dtype)
        self.y = aligned_empty((rows,), ds.y_train.dtype)
        self.raw.fill(0)  # map every page now, not inside the first epoch
        self.x = self.raw
        if ds.family == "image":  # the model inputs, apart from the gathered uint8
            self.x = aligned_empty(self.raw.shape, np.float32)
            self.x.fill(0)

    def __len__(self) -> int:
        return self.n

    @property
    def layout_nchw(self) -> bool:
        return self.ds.family != "image" or self.ds.layout == "NCHW"

    @property
    def nbytes(self) -> int:
        """Host memory the feed's arrays hold."""
        return self.raw.nbytes + self.y.nbytes + (self.x.nbytes if self.x is not self.raw else 0)

    def epoch(self, seed: int, epoch: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Gathers (and normalises) the epoch now; returns its batches (views, valid until the next call)."""
        # each batch's indices sorted: the same set, a faster gather
        idx = orders.plan(len(self.ds.y_train), self.batch_size, seed, epoch, self.order, self.shards).ravel()
        # mode "clip": with the default "raise", numpy gathers into a fresh buffer first (the indices
        # are a permutation, always in range)
        np.take(self.ds.x_train, idx, axis=0, out=self.raw, mode="clip")
        np.take(self.ds.y_train, idx, axis=0, out=self.y, mode="clip")
        nchw = self.raw if self.layout_nchw else self.raw.transpose(0, 3, 1, 2)  # a view
        if self.augment == "crop_flip" and self.ds.family == "image":
            nchw[...] = orders.crop_flip(nchw, orders.crop_flip_params(seed, epoch, idx))
        if epoch == 0:
            bs = self.batch_size
            self.digests = [
                orders.digest(nchw[i * bs : (i + 1) * bs], self.y[i * bs : (i + 1) * bs])
                for i in range(min(self.digest_batches, self.n))
            ]
        if self.x is not self.raw:
            for i in range(0, len(self.raw), self.batch_size):  # a batch at a time: in cache
                self.ds.inputs(self.raw[i : i + self.batch_size], out=self.x[i : i + self.batch_size])
        return self._batches()

    def digest_range(self, seed: int, epoch: int, start: int, count: int) -> list[str]:
        """Digests of batches start .. start + count - 1 of an epoch (gathered and augmented as
        training has them; the samples as stored, NCHW)."""
        self.epoch(seed, epoch)
        nchw = self.raw if self.layout_nchw else self.raw.transpose(0, 3, 1, 2)
        bs = self.batch_size
        return [
            orders.digest(nchw[i * bs : (i + 1) * bs], self.y[i * bs : (i + 1) * bs])
            for i in range(start, min(start + count, self.n))
        ]

    def _batches(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        bs = self.batch_size
        for i in range(self.n):
            yield self.x[i * bs : (i + 1) * bs], self.y[i * bs : (i + 1) * bs]


def train_batches(ds: Dataset, batch_size: int, seed: int, epoch: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """One epoch's training batches (what `BatchFeed` gives), for a caller that needs only one epoch."""
    return BatchFeed(ds, batch_size).epoch(seed, epoch)


def val_batches(ds: Dataset, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Validation batches in stored order, the last one possibly smaller."""
    for i in range(0, len(ds.y_val), batch_size):
        yield ds.inputs(ds.x_val[i : i + batch_size]), np.array(ds.y_val[i : i + batch_size])


# --- synthetic data ---------------------------------------------------------------------------


def _synthetic(
    family: str, inp: InputSpec, n: int, rng: np.random.Generator, proto: Any
) -> tuple[np.ndarray, np.ndarray]:
    y = rng.integers(0, inp.num_classes, n).astype(np.int32)
    if family == "image":
        # class prototypes (smooth colour patterns) + per-sample noise, brightness and shift
        noise = rng.normal(0.0, IMAGE_NOISE, (n, *inp.shape)).astype(np.float32)
        x = proto[y] * rng.uniform(0.6, 1.4, (n, 1, 1, 1)).astype(np.float32) + noise
        shifts = rng.integers(-3, 4, (n, 2))
        for i, (dy, dx) in enumerate(shifts):
            x[i] = np.roll(x[i], (dy, dx), axis=(1, 2))
        x = np.clip(x * 40.0 + 128.0, 0, 255).astype(np.uint8)
        return x, y
    if family == "tokens":
        # token 0 is the classification token; each class has marker tokens; both classes'
        # markers appear, the label's more often, so the model has to weigh them
        vocab, seq = inp.extra["vocab_size"], inp.shape[0]
        first = proto["background"]
        x = rng.integers(first, min(vocab, first + TOKEN_BACKGROUND), (n, seq)).astype(np.int32)
        x[:, 0] = 0
        for i in range(n):
            pos = rng.choice(np.arange(1, seq), TOKEN_OWN + TOKEN_OTHER, replace=False)
            own, other = pos[:TOKEN_OWN], pos[TOKEN_OWN:]
            x[i, own] = rng.choice(proto["markers"][y[i]], len(own))
            x[i, other] = rng.choice(
                proto["markers"][1 - y[i] if inp.num_classes == 2 else (y[i] + 1) % inp.num_classes], len(other)
            )
        return x, y
    # tabular: Gaussian classes around random centres
    x = proto[y] + rng.normal(0.0, 1.0, (n, *inp.shape)).astype(np.float32)
    return x.astype(np.float32), y


def _prototypes(family: str, inp: InputSpec, rng: np.random.Generator) -> Any:
    if family == "image":
        c, h, w = inp.shape
        coarse = rng.normal(0.0, 1.0, (inp.num_classes, c, 4, 4)).astype(np.float32)
        return IMAGE_SIGNAL * np.kron(coarse, np.ones((1, 1, h // 4, w // 4), np.float32))
    if family == "tokens":
        m = TOKEN_MARKERS * inp.num_classes
        markers = rng.choice(np.arange(1, 1 + m), (inp.num_classes, TOKEN_MARKERS), replace=False)
        return {"markers": markers, "background": 1 + m}
    return rng.normal(0.0, 0.12, (inp.num_classes, *inp.shape)).astype(np.float32)


def make_synthetic(family: str, inp: InputSpec, train: int, val: int, seed: int) -> dict[str, np.ndarray]:
    """A deterministic, learnable dataset for one model family."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5E7]))
    proto = _prototypes(family, inp, rng)
    x_train, y_train = _synthetic(family, inp, train, rng, proto)
    x_val, y_val = _synthetic(family, inp, val, rng, proto)
    return {"x_train": x_train, "y_train": y_train, "x_val": x_val, "y_val": y_val}


# --- CIFAR-10 from a local folder, or downloaded ------------------------------------------------------------


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles only what the CIFAR-10 python batches contain: dicts, lists, bytes and arrays."""

    ALLOWED = {(m, n) for m in ("numpy.core.multiarray", "numpy._core.multiarray") for n in ("_reconstruct", "scalar")}
    ALLOWED |= {("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR batch file")


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with open(path, "rb") as f:
        d = _CifarUnpickler(f, encoding="bytes").load()
    x = np.asarray(d[b"data"], np.uint8).reshape(-1, 3, 32, 32)
    return x, np.asarray(d[b"labels"], np.int32)


DownloadError = public_data.DownloadError
cache_dir = public_data.cache_dir
# `dataset.name: public`: each model family's public dataset
PUBLIC = {"image": "cifar10", "tokens": "sst2", "tabular": "covertype"}


def public_name(name: str, family: str) -> str:
    return PUBLIC[family] if name == "public" else name


def fits(name: str, family: str, inp: InputSpec) -> str | None:
    """Why a named dataset cannot feed this model (None: it can), with the override that would make it fit."""
    wants = {"cifar10": "image", "sst2": "tokens", "covertype": "tabular"}.get(name)
    if wants is None or wants == family:
        if name == "covertype" and (inp.shape != (54,) or inp.num_classes < 7):
            return (
                f"covertype has 54 features in 7 classes; this model takes {inp.shape[0]} features in "
                f"{inp.num_classes} classes (set model_overrides: {{mlp: {{in_features: 54, num_classes: 7}}}})"
            )
        if name == "sst2" and inp.num_classes < 2:
            return "sst2 has 2 classes; this model has fewer"
        return None
    held = {"image": "images", "tokens": "tokens", "tabular": "table rows"}[wants]
    return f"{name} holds {held}; this model reads {family} data"


def fetch_cifar10() -> Path:
    """The CIFAR-10 python batches, downloaded into the cache on first use and checked against the
    published md5 (workers/common/public_data.py); the folder holding cifar-10-batches-py."""
    return public_data.fetch("cifar10")


def read_cifar10(path: str, train: int | None, val: int | None) -> dict[str, np.ndarray]:
    """CIFAR-10 in the standard python format (data_batch_1..5, test_batch); nothing is downloaded."""
    root = Path(path)
    if (root / "cifar-10-batches-py").is_dir():
        root = root / "cifar-10-batches-py"
    files = [root / f"data_batch_{i}" for i in range(1, 6)]
    missing = [str(f) for f in [*files, root / "test_batch"] if not f.is_file()]
    if missing:
        raise DataUnavailable(f"CIFAR-10 python batches not found: {missing[0]}")
    xs, ys = zip(*(_read_cifar_batch(f) for f in files))
    x_val, y_val = _read_cifar_batch(root / "test_batch")
    x_train, y_train = np.concatenate(xs), np.concatenate(ys)
    return {"x_train": x_train[:train], "y_train": y_train[:train], "x_val": x_val[:val], "y_val": y_val[:val]}


# --- the cache in the run's folder ------------------------------------------------------------


DATA_PATH_KEYS = (
    "format",
    "shards",
    "order",
    "augment",
    "uri",
    "storage",
    "storage_options",
    "image_codec",
    "image_size",
    "record_bytes",
    "record_bytes_stdev",
)  # read how, not what


def dataset_key(dataset: dict[str, Any], family: str, inp: InputSpec, seed: int) -> str:
    """Folder name of a dataset: what made it, hashed."""
    made_of = {
        # the seed is `seed`; the data path's keys say how the data is read, not what it is
        "dataset": {k: v for k, v in dataset.items() if k not in ("seed", *DATA_PATH_KEYS)},
        "family": family,
        "shape": inp.shape,
        "classes": inp.num_classes,
        "extra": inp.extra,
        "seed": seed,
        "format": 3,  # of the folder
        "generator": GENERATOR[family] if dataset["name"] == "synthetic" else None,
    }
    digest = hashlib.sha256(json.dumps(made_of, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return f"{dataset['name']}-{family}-{digest}"


def materialise(dataset: dict[str, Any], family: str, inp: InputSpec, seed: int, data_dir: str) -> Path:
    """The folder of a dataset in data_dir, made there first if absent (atomically: whole or not at all)."""
    dataset = {**dataset, "name": public_name(dataset["name"], family)}
    why = fits(dataset["name"], family, inp)
    if why:
        raise DataUnavailable(why)
    key = dataset_key(dataset, family, inp, seed)
    folder = Path(data_dir) / key
    if not (folder / "y_val.npy").is_file():
        if dataset["name"] == "synthetic":
            arrays = make_synthetic(family, inp, dataset["train_samples"], dataset["val_samples"], seed)
        elif dataset["name"] == "cifar10":  # a local folder, else the download (cached)
            where = dataset.get("path") or str(fetch_cifar10())
            arrays = read_cifar10(where, dataset.get("train_samples"), dataset.get("val_samples"))
        elif dataset["name"] == "sst2":  # tokenised here, once: every framework reads the same ids
            where = dataset.get("path") or str(public_data.fetch("sst2"))
            arrays, vocab = public_data.read_sst2(
                where, dataset.get("train_samples"), dataset.get("val_samples"), inp.extra["vocab_size"], inp.shape[0]
            )
        elif dataset["name"] == "covertype":
            where = dataset.get("path") or str(public_data.fetch("covertype"))
            arrays = public_data.read_covertype(where, dataset.get("train_samples"), dataset.get("val_samples"))
        else:
            raise DataUnavailable(f"unknown dataset {dataset['name']!r}")
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=folder.parent))
        for name, arr in arrays.items():
            np.save(tmp / f"{name}.npy", arr)
        if dataset["name"] == "sst2":
            (tmp / "vocab.txt").write_text("\n".join(vocab) + "\n")  # the ids' words, one per line
        try:
            os.rename(tmp, folder)
        except OSError:  # another worker made it first: theirs is identical
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


ARRAYS = ("x_train", "y_train", "x_val", "y_val")


def checksum(folder: Path) -> str:
    """sha256 of a dataset folder's arrays (dtype, shape and bytes): two machines that made the same
    data from the same seed agree on it."""
    h = hashlib.sha256()
    for name in ARRAYS:
        a = np.load(folder / f"{name}.npy", allow_pickle=False)
        h.update(f"{name}:{a.dtype.str}:{a.shape}".encode())
        h.update(np.ascontiguousarray(a).data)
    return h.hexdigest()


def load(
    dataset: dict[str, Any], family: str, inp: InputSpec, seed: int, data_dir: str, layout: str = "NCHW"
) -> Dataset:
    """The dataset for a cell: read from data_dir, made there first if absent.

    Images are stored NCHW; a framework that wants NHWC gets them transposed once here, in memory,
    outside every timed region.
    """
    folder = materialise(dataset, family, inp, seed, data_dir)
    arrays = {n: np.load(folder / f"{n}.npy", allow_pickle=False) for n in ARRAYS}  # in memory: cheap gathers
    if family == "image" and layout == "NHWC":
        for n in ("x_train", "x_val"):
            arrays[n] = np.ascontiguousarray(arrays[n].transpose(0, 2, 3, 1))
    return Dataset(**arrays, family=family, key=folder.name, layout=layout)
