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

import atexit
import dataclasses
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from workers.common import data as datasets
from workers.common.datapath import formats, storage
from workers.common.datapath import loaders as loaders_
from workers.common.datapath import order as orders


def record(data: dict[str, Any]) -> tuple[int, int] | None:
    """(mean, stdev) bytes of a record on disk where `dataset.record_bytes` sets them, else None."""
    return (int(data["record_bytes"]), int(data.get("record_bytes_stdev") or 0)) if data.get("record_bytes") else None


def folder_name(ds_folder: Path, data: dict[str, Any]) -> str:
    return formats.folder_name(
        ds_folder.name,
        data["format"],
        data.get("shards", 1),
        data.get("image_codec"),
        data.get("image_size"),
        record(data),
    )


def shard_folder(ds_folder: Path, data: dict[str, Any]) -> Path:
    """The local shard folder: beside the dataset's folder, or under a file:// `dataset.uri`."""
    name = folder_name(ds_folder, data)
    uri = data.get("uri")
    if uri and not storage.is_remote(uri):
        return Path(storage.local_path(uri)) / name
    return ds_folder.parent / name


def remote_folder(ds_folder: Path, data: dict[str, Any]) -> str | None:
    """The shard folder's URI where `dataset.uri` names object storage, else None."""
    uri = data.get("uri")
    if not uri or not storage.is_remote(uri):
        return None
    return storage.join(uri, folder_name(ds_folder, data))


def materialise(ds_folder: Path, data: dict[str, Any]) -> formats.ShardSet:
    """The training set of a dataset folder as the cell's shards, written first where absent (on the
    local disk; object storage is written by `mlbench data prepare` only, never by a run)."""
    folder = shard_folder(ds_folder, data)
    if (folder / formats.META).is_file():
        return formats.ShardSet.open(folder)
    x = np.load(ds_folder / "x_train.npy", allow_pickle=False)  # as stored: images NCHW uint8
    y = np.load(ds_folder / "y_train.npy", allow_pickle=False)
    if data["format"] == "imagefolder" and x.ndim != 4:
        raise datasets.DataUnavailable("imagefolder holds images; this model reads tokens or rows")
    return formats.write(
        folder,
        data["format"],
        x,
        y,
        data.get("shards", 1),
        data.get("image_codec"),
        data.get("image_size"),
        record(data),
    )


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
        if (data["format"] == "imagefolder" or data.get("image_codec")) and ds.family != "image":
            raise datasets.DataUnavailable(
                f"{data['format']} of encoded images holds images; {cell['model']} reads {ds.family} data"
            )
        self.storage: dict[str, Any] = {"data_storage": "local"}
        self.ledger: str | None = None
        t0 = time.perf_counter()
        remote = remote_folder(ds_folder, data)
        if remote is None:
            self.shardset = materialise(ds_folder, data)
        else:
            self.shardset = self._remote(remote, data, Path(cell["data_dir"]) / "cache")
        self.prepare_s = time.perf_counter() - t0
        self.source = loaders_.Source(
            folder=self.shardset.folder,
            options=self.shardset.options,
            batch_size=batch_size,
            seed=cell["seed"],
            order=data.get("order", "global"),
            shards=data.get("shards", 1),
            augment=data.get("augment", "none"),
            burn=self.spec.burn,
            mapped=self.spec.page_cache != "cold",  # a cold cache reads raw shards with pread, in every process
        )
        try:
            self.loader = loaders_.make(self.kind, self.source, self.spec, framework)
        except ImportError as exc:  # a cross cell's loader from a framework not installed here: skipped
            raise datasets.DataUnavailable(
                f"loader {self.kind} needs {exc.name or 'a package'}, not installed here ({exc})"
            ) from None
        self.n = self.shardset.n // batch_size
        self.host_buffer = host_buffer  # the backend's allocator of batch buffers, where it has one
        # a buffer is reused only after the step that read it is done: with batches placed ahead of their
        # step (device_prefetch), that many more are in flight
        self.ring = self.RING + self.spec.device_prefetch
        self._rings: dict[str, list[np.ndarray]] = {}
        self._turn: dict[str, int] = {}
        self.digests: list[str] = []
        # imagefolder: the loader's decoder, and the largest difference from Pillow's pixels over the digested
        # batches (0 where the loader decodes with Pillow; a few levels where another JPEG decoder rounds otherwise)
        self.decoder = getattr(self.loader, "image_decoder", "pillow") if self.shardset.codec else None
        self.decode_diff: int | None = None
        self._decoded: list[tuple[int, int, np.ndarray]] = []  # the digested batches of encoded images
        self.probe_figures: dict[str, Any] = {}
        self.nbytes = 0  # no copy of the training set is held

    def __len__(self) -> int:
        return self.n

    def _remote(self, uri: str, data: dict[str, Any], cache_root: Path) -> formats.ShardSet:
        """The shards in object storage: streamed, or copied to the local cache first (storage.py). Every
        process that fetches (loader workers too) counts into this cell's ledger folder."""
        mode = data.get("storage", "stream")
        self.ledger = tempfile.mkdtemp(prefix="mlbench-storage-")
        atexit.register(shutil.rmtree, self.ledger, True)  # a cell that fails never reaches close()
        os.environ[storage.LEDGER_ENV] = self.ledger
        # the ledger rides in the options every loader process unpickles with the shard set
        options = {**(data.get("storage_options") or {}), storage.LEDGER_KEY: self.ledger}
        self.storage = {"data_storage": mode, "data_uri": storage.redact(uri)}
        if mode == "cache":
            try:
                got = storage.fetch_folder(uri, options, cache_root)
            except storage.StorageError as exc:
                raise formats.StorageUnavailable(str(exc)) from None
            self.storage.update(
                storage_cache_hit=got["hit"],
                storage_fetch_s=got["seconds"] if not got["hit"] else None,
                storage_read_mb_per_second=got["bytes"] / got["seconds"] / 1e6
                if not got["hit"] and got["seconds"] > 0
                else None,
            )
            return formats.ShardSet.open(got["folder"])
        return formats.ShardSet.open(uri, options)

    def storage_figures(self) -> dict[str, Any]:
        """Where the shards came from and what reading them fetched from storage, in every process so far."""
        out = dict(self.storage)
        if self.ledger is not None:
            nbytes, requests = storage.ledger_totals(self.ledger)
            out.update(storage_read_mb=nbytes / 1e6, storage_requests=requests)
        return out

    RING = 4  # batches made into buffers in turn (more with device_prefetch: `ring`)

    def _buffer(self, key: str, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        """The next buffer of `key`'s ring: the backend's (page-locked where it copies to a GPU), or
        ALIGN-byte aligned host memory every framework takes without a copy."""
        ring = self._rings.setdefault(key, [])
        if len(ring) < self.ring:
            make = self.host_buffer if self.host_buffer is not None else datasets.aligned_empty
            ring.append(make(shape, dtype))
        self._turn[key] = (self._turn.get(key, -1) + 1) % self.ring
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

    def cold(self) -> None:
        """With loader.page_cache cold, the files' pages dropped now: the harness calls it before each epoch's
        clock starts, and the probe before its own."""
        if self.spec.page_cache == "cold" and not self.shardset.remote:
            formats.evict(self.shardset)

    def epoch(self, seed: int, epoch: int, start: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for i, (x, y) in enumerate(self.loader.epoch(epoch, start), start):
            if epoch == 0 and i < self.digest_batches and len(self.digests) == i:
                self.digests.append(orders.digest(x, y))
                if self.decoder is not None:  # kept, compared with Pillow's decode after training (describe)
                    self._decoded.append((epoch, i, np.array(x, copy=True)))
            yield self._inputs(x, y)

    def _compare_decoder(self) -> None:
        """The digested batches against the same files decoded by Pillow (and augmented alike): the largest
        pixel gap. Run once, after training (outside every timed step); its reads are not the cell's: a remote
        shard set is read here without the ledger."""
        if not self._decoded:
            return
        ss = self.shardset
        if ss.remote:
            ss = dataclasses.replace(
                ss, options={k: v for k, v in (ss.options or {}).items() if k != storage.LEDGER_KEY}
            )
        reader, saved = formats.Reader(ss), os.environ.pop(storage.LEDGER_ENV, None)
        try:
            for epoch, i, x in self._decoded:
                row = self.source.plan(epoch)[i]
                ref = self.source.finish(reader.read(row)[0], epoch, row)
                gap = int(np.max(np.abs(ref.astype(np.int16) - x.astype(np.int16)))) if len(row) else 0
                self.decode_diff = max(self.decode_diff or 0, gap)
        finally:
            reader.close()
            if saved is not None:
                os.environ[storage.LEDGER_ENV] = saved
        self._decoded = []

    def probe(self, epoch: int = 0) -> dict[str, Any]:
        """The loader alone over one epoch's batches: the time to its first batch (worker start-up, the
        first shard, a tf.data graph's tracing), then its steady throughput over the batches after the
        first, in samples/s and MB/s of records."""
        self.cold()
        fetched0 = storage.ledger_totals(self.ledger)[0] if self.ledger else 0
        t0 = time.perf_counter()
        first, batches = None, 0
        for _ in self.loader.epoch(epoch):
            batches += 1
            if first is None:
                first = time.perf_counter()
        end = time.perf_counter()
        samples = (batches - 1) * self.batch_size
        steady = samples > 0 and end > (first or end)
        if self.storage["data_storage"] == "stream" and end > t0:  # what the loader drew from storage, per second
            fetched = storage.ledger_totals(self.ledger)[0] - fetched0  # type: ignore[arg-type]
            self.storage["storage_read_mb_per_second"] = fetched / (end - t0) / 1e6
        return {
            "time_to_first_batch_s": first - t0 if first is not None else None,
            "loader_samples_per_second": samples / (end - first) if steady else None,
            "loader_mb_per_second": samples * self.shardset.mean_record_bytes / (end - first) / 1e6 if steady else None,
            "loader_probe_batches": batches,
        }

    def describe(self) -> dict[str, Any]:
        figures = self.storage_figures()  # before the decoder check reads anything
        self._compare_decoder()
        return {
            "format": self.shardset.format,
            "shards": self.shardset.shards,
            "loader": self.kind,
            "loader_workers": self.spec.workers,
            "device_prefetch": self.spec.device_prefetch,
            "record_bytes": self.shardset.mean_record_bytes,
            "record_bytes_stdev": self.shardset.record_stdev,
            "shard_prepare_s": self.prepare_s,
            "image_decoder": self.decoder,
            "decode_max_abs_diff": self.decode_diff,
            # warm: as the last read left it; cold: dropped before each epoch; none: nothing local to cache
            "page_cache": "none" if self.shardset.remote else ("cold" if self.spec.page_cache == "cold" else "warm"),
            **figures,
        }

    def close(self) -> None:
        self.loader.close()
        if self.ledger is not None and os.environ.get(storage.LEDGER_ENV) == self.ledger:
            self.storage = self.storage_figures()  # the totals kept past the ledger folder
            self.ledger = None
            shutil.rmtree(os.environ.pop(storage.LEDGER_ENV), ignore_errors=True)
