"""What every loader reads (`Source`) and how it is set up (`LoaderSpec`); `make` builds one.

A loader yields each batch of an epoch as (samples as stored: uint8 NCHW images, int32 tokens or
float32 rows; int32 labels), batch k holding the samples of `order.plan` row k, augmented as
`order` says. What the model needs beyond that (float32 normalisation, NHWC) is done by the feed
(workers/common/datapath/feed.py), after the digest point, the same code for every loader.

Kinds (`loader.kind`): `torch` (PyTorch's DataLoader), `tfdata` (tf.data), `grain` (Grain's
DataLoader), and `native`: the framework's own (PyTorch: torch, TensorFlow: tfdata, JAX: grain).
Any kind can feed any framework (a loader x framework cross cell separates the loader's cost from
the framework's); a TensorFlow loader in another framework's worker sees no GPU, so two device
allocators never share a process.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

import numpy as np

from workers.common.datapath import order as orders
from workers.common.datapath.formats import Reader, ShardSet

KINDS = ("native", "torch", "tfdata", "grain")
NATIVE = {"pytorch": "torch", "tensorflow": "tfdata", "jax": "grain"}


@dataclass(frozen=True)
class LoaderSpec:
    """A cell's `loader` block (see mlbench/config.py's LoaderConfig for what each knob means)."""

    kind: str = "native"
    workers: int = 0
    prefetch: int = 2
    read_threads: int = 1
    pin_memory: bool = True
    device_prefetch: int = 0  # batches placed on the device ahead of their step (harness.ahead)
    persistent_workers: bool = True
    burn: int = 0  # planted per-sample CPU cost (order.burn rounds); 0: none
    decoder: str = "native"  # imagefolder: native (tf.data: tf.io.decode_image; others: Pillow) or pillow
    page_cache: str = "warm"  # cold: the files' pages dropped before each epoch (formats.evict)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> LoaderSpec:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in (d or {}).items() if k in known})

    def resolved_kind(self, framework: str) -> str:
        return NATIVE.get(framework, "torch") if self.kind == "native" else self.kind


@dataclass(frozen=True)
class Source:
    """The shards, the order and the augmentation one loader follows."""

    folder: str
    batch_size: int
    seed: int
    order: str = "global"
    shards: int = 1
    augment: str = "none"
    burn: int = 0
    options: dict[str, Any] | None = field(default=None, compare=False)  # object storage's (storage.py)
    mapped: bool = True  # False under a cold page cache: raw shards read with pread (formats.evict)

    @cached_property
    def shardset(self) -> ShardSet:  # read once: in object storage, meta.json is a request
        return replace(ShardSet.open(self.folder, self.options), mapped=self.mapped)

    def plan(self, epoch: int) -> np.ndarray:
        return orders.plan(self.shardset.n, self.batch_size, self.seed, epoch, self.order, self.shards)

    def finish(self, x: np.ndarray, epoch: int, index: np.ndarray) -> np.ndarray:
        """Augmentation and the planted cost, on samples as read (numpy: the torch and Grain paths)."""
        if self.augment == "crop_flip" and x.ndim == 4:  # images only
            x = orders.crop_flip(x, orders.crop_flip_params(self.seed, epoch, index))
        if self.burn:
            orders.burn(x, self.burn)
        return x


class LoaderCrashed(RuntimeError):
    """A loader's worker process died (killed, or out of memory): the cell `crashed`, with this cause."""


def worker_error(exc: BaseException) -> str:
    """The one line of a DataError raised in a loader's worker process (torch and Grain re-raise it with
    the worker's traceback around it)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    last = lines[-1] if lines else ""
    for name in ("StorageUnavailable: ", "DataError: "):
        if name in last:
            return last.split(name, 1)[-1]
    return last


class ThreadReaders:
    """One `Reader` per thread (a loader that reads from several threads: Grain's read threads)."""

    def __init__(self, shardset: ShardSet) -> None:
        self.shardset = shardset
        self._local = threading.local()

    def __getstate__(self) -> dict[str, Any]:
        return {"shardset": self.shardset}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["shardset"])  # type: ignore[misc]

    def get(self) -> Reader:
        reader = getattr(self._local, "reader", None)
        if reader is None:
            reader = self._local.reader = Reader(self.shardset)
        return reader


class Loader:
    """A loader: `epoch(e, start)` iterates epoch e's batches from batch `start` (a restart mid-epoch)."""

    kind: str

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        raise NotImplementedError

    def close(self) -> None:
        pass


def make(kind: str, source: Source, spec: LoaderSpec, framework: str) -> Loader:
    """The loader of `kind` (resolved: not `native`) over `source`."""
    if kind == "torch":
        from workers.common.datapath.torch_loader import TorchLoader

        return TorchLoader(source, spec, framework)
    if kind == "tfdata":
        from workers.common.datapath.tfdata_loader import TfDataLoader

        return TfDataLoader(source, spec, framework)
    if kind == "grain":
        from workers.common.datapath.grain_loader import GrainLoader

        return GrainLoader(source, spec, framework)
    raise ValueError(f"unknown loader kind {kind!r}; allowed: {', '.join(KINDS)}")
