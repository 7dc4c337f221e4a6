"""Grain's DataLoader over the shards (the loader JAX's documentation points to).

A `RandomAccessDataSource` whose record is one batch of the plan (key = epoch * batches + row: the
row's samples read at once, in ascending order), a sampler that yields those keys in order (Grain's
IndexSampler shuffles in its own way), the augmentation as a `MapTransform`, `worker_count` worker
processes and `worker_buffer_size` = prefetch. Grain deals records to its workers and reads their
outputs in strict round robin, so batches arrive in order; a record per batch keeps each batch
whole (Grain's `Batch` operation runs in each worker on that worker's records, so with per-sample
records batch k would hold every worker_count-th sample) and reads it in one go (Grain's
per-record path is its known cost: google/grain#569, #1164).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import grain.python as grain
import numpy as np

from workers.common.datapath.formats import DataError
from workers.common.datapath.loaders import Loader, LoaderCrashed, LoaderSpec, Source, ThreadReaders, worker_error


class PlanBatches(grain.RandomAccessDataSource):
    def __init__(self, source: Source) -> None:
        self.source = source
        ss = source.shardset
        self.n, self.batches = ss.n, ss.n // source.batch_size
        self.readers = ThreadReaders(ss)
        self._plan: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return self.batches * (1 << 20)

    def __getitem__(self, key: int) -> dict[str, Any]:
        epoch, row = divmod(int(key), self.batches)
        plan = self._plan  # one read: another read thread may replace it (an epoch boundary)
        if plan is None or plan[0] != epoch:
            plan = self._plan = (epoch, self.source.plan(epoch))
        index = plan[1][row]
        x, y = self.readers.get().read(index)
        return {"x": x, "y": y, "epoch": np.int64(epoch), "index": index}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_plan": None}

    def __repr__(self) -> str:  # Grain checks a checkpoint against it
        return f"PlanBatches({self.source!r})"


@dataclasses.dataclass
class Augment(grain.MapTransform):
    source: Source

    def map(self, batch: dict[str, Any]) -> dict[str, Any]:
        x = self.source.finish(batch["x"], int(batch["epoch"]), batch["index"])
        return {"x": x, "y": batch["y"]}


class KeySampler(grain.Sampler):
    """Keys first, first + 1, ... up to `end`: the batches of one epoch after another."""

    def __init__(self, first: int, end: int) -> None:
        self.first, self.end = first, end

    def __getitem__(self, i: int) -> grain.RecordMetadata:
        if self.first + i >= self.end:
            raise IndexError(i)
        return grain.RecordMetadata(index=i, record_key=self.first + i)

    def __len__(self) -> int:
        return self.end - self.first


class GrainLoader(Loader):
    kind = "grain"

    def __init__(self, source: Source, spec: LoaderSpec, framework: str) -> None:
        self.source, self.spec = source, spec
        self.records = PlanBatches(source)
        from absl import flags

        if not flags.FLAGS.is_parsed():  # Grain's worker processes read absl flags (their defaults here)
            flags.FLAGS.mark_as_parsed()
        self._it: Any = None
        self._next = -1  # the key the iterator gives next

    def close(self) -> None:
        self._it, self._next = None, -1  # Grain stops an iterator's worker processes when it goes

    def _loader(self, first_key: int) -> grain.DataLoader:
        return grain.DataLoader(
            data_source=self.records,
            sampler=KeySampler(first_key, len(self.records)),
            operations=[Augment(self.source)],
            worker_count=self.spec.workers,
            worker_buffer_size=max(1, self.spec.prefetch),
            shard_options=grain.NoSharding(),  # one process reads the whole set
            read_options=grain.ReadOptions(
                num_threads=self.spec.read_threads, prefetch_buffer_size=max(1, self.spec.prefetch)
            ),
        )

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """One iterator runs on across epochs (its worker processes stay up, as a training loop over
        Grain has them); it is made anew where a caller asks for another place (a restart, the probe)."""
        nb = self.records.batches
        key = epoch * nb + start
        if self._it is None or self._next != key:
            self.close()
            self._it, self._next = iter(self._loader(key)), key
        for _ in range(start, nb):
            try:
                batch = next(self._it)
            except DataError as exc:
                raise type(exc)(worker_error(exc)) from None  # a storage failure stays one
            except RuntimeError as exc:  # Grain's words for a worker process that died
                if "terminated unexpectedly" in str(exc):
                    raise LoaderCrashed(f"a Grain worker process died: {str(exc).splitlines()[0]}") from None
                raise
            self._next += 1
            yield np.asarray(batch["x"]), np.asarray(batch["y"], np.int32)
