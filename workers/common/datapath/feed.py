"""What the training loop iterates when the data comes from files: a loader's batches, digested, made
into model inputs, with the data path's own figures.

`FileFeed.epoch` hands each batch the loader delivers (samples as stored, uint8 NCHW images) to the
digest (the first `digest_batches` of the first epoch) and then to the last stage every loader
shares, the same numpy code for all: images to normalised float32 in the framework's layout. That
stage runs in the training loop's thread, inside the step's data wait (`harness.pipelined` times
each `next()`), as a loader's own last map would; the in-memory feed does it before the epoch.

`probe` is the loader alone: one epoch of the same batches with no step, timed from the call that
starts it (worker processes, the first shard read) to the first batch, and from there to the last:
the loader's time to the first batch and its steady throughput in samples/s and MB/s.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from workers.common import data as datasets
from workers.common.datapath import formats
from workers.common.datapath import loaders as loaders_
from workers.common.datapath import order as orders


def shard_folder(ds_folder: Path, data: dict[str, Any]) -> Path:
    return ds_folder.parent / formats.folder_name(ds_folder.name, data["format"], data.get("shards", 1))


def materialise(ds_folder: Path, data: dict[str, Any]) -> formats.ShardSet:
    """The training set of a dataset folder as the cell's shards, written first where absent."""
    folder = shard_folder(ds_folder, data)
    if (folder / formats.META).is_file():
        return formats.ShardSet.open(folder)
    x = np.load(ds_folder / "x_train.npy", allow_pickle=False)  # as stored: images NCHW uint8
    y = np.load(ds_folder / "y_train.npy", allow_pickle=False)
    return formats.write(folder, data["format"], x, y, data.get("shards", 1))


class FileFeed:
    """Training batches through a framework's loader (see the module's docstring)."""

    def __init__(
        self,
        ds: datasets.Dataset,
        batch_size: int,
        cell: dict[str, Any],
        framework: str,
        host_buffer: Any = None,
    ) -> None:
        data = cell["dataset"]
        self.ds, self.batch_size = ds, batch_size
        self.spec = loaders_.LoaderSpec.from_dict(cell.get("loader"))
        self.kind = self.spec.resolved_kind(framework)
        self.digest_batches = int((cell.get("loader") or {}).get("digest_batches", orders.DIGEST_BATCHES))
        ds_folder = Path(cell["data_dir"]) / ds.key
        t0 = time.perf_counter()
        self.shardset = materialise(ds_folder, data)
        self.prepare_s = time.perf_counter() - t0
        self.source = loaders_.Source(
            folder=self.shardset.folder,
            batch_size=batch_size,
            seed=cell["seed"],
            order=data.get("order", "global"),
            shards=data.get("shards", 1),
            augment=data.get("augment", "none"),
            burn=self.spec.burn,
        )
        try:
            self.loader = loaders_.make(self.kind, self.source, self.spec, framework)
        except ImportError as exc:  # a cross cell's loader from a framework not installed here: skipped
            raise datasets.DataUnavailable(
                f"loader {self.kind} needs {exc.name or 'a package'}, not installed here ({exc})"
            ) from None
        self.n = self.shardset.n // batch_size
        self.host_buffer = host_buffer  # the backend's allocator of batch buffers, where it has one
        self._rings: dict[str, list[np.ndarray]] = {}
        self._turn: dict[str, int] = {}
        self.digests: list[str] = []
        self.probe_figures: dict[str, Any] = {}
        self.nbytes = 0  # no copy of the training set is held

    def __len__(self) -> int:
        return self.n

    RING = 4  # batches made into buffers in turn: a buffer is reused only after the step that read it is done

    def _buffer(self, key: str, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        """The next buffer of `key`'s ring: the backend's (page-locked where it copies to a GPU), or
        ALIGN-byte aligned host memory every framework takes without a copy."""
        ring = self._rings.setdefault(key, [])
        if len(ring) < self.RING:
            make = self.host_buffer if self.host_buffer is not None else datasets.aligned_empty
            ring.append(make(shape, dtype))
        self._turn[key] = (self._turn.get(key, -1) + 1) % self.RING
        return ring[self._turn[key]]

    def _inputs(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.ds.family == "image":
            if self.ds.layout == "NHWC":
                x = x.transpose(0, 2, 3, 1)
            out = self._buffer("x", x.shape, np.float32)
            self.ds.inputs(x, out=out)
        else:
            out = self._buffer("x", x.shape, x.dtype)
            out[...] = x
        labels = self._buffer("y", y.shape, y.dtype)
        labels[...] = y
        return out, labels

    def epoch(self, seed: int, epoch: int, start: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for i, (x, y) in enumerate(self.loader.epoch(epoch, start), start):
            if epoch == 0 and i < self.digest_batches and len(self.digests) == i:
                self.digests.append(orders.digest(x, y))
            yield self._inputs(x, y)

    def probe(self, epoch: int = 0) -> dict[str, Any]:
        """The loader alone over one epoch's batches: the time to its first batch (worker start-up, the
        first shard, a tf.data graph's tracing), then its steady throughput over the batches after the
        first, in samples/s and MB/s of records."""
        t0 = time.perf_counter()
        first, batches = None, 0
        for _ in self.loader.epoch(epoch):
            batches += 1
            if first is None:
                first = time.perf_counter()
        end = time.perf_counter()
        samples = (batches - 1) * self.batch_size
        steady = samples > 0 and end > (first or end)
        return {
            "time_to_first_batch_s": first - t0 if first is not None else None,
            "loader_samples_per_second": samples / (end - first) if steady else None,
            "loader_mb_per_second": samples * self.shardset.record_bytes / (end - first) / 1e6 if steady else None,
            "loader_probe_batches": batches,
        }

    def describe(self) -> dict[str, Any]:
        return {
            "format": self.shardset.format,
            "shards": self.shardset.shards,
            "loader": self.kind,
            "loader_workers": self.spec.workers,
            "record_bytes": self.shardset.record_bytes,
            "shard_prepare_s": self.prepare_s,
        }

    def close(self) -> None:
        self.loader.close()
