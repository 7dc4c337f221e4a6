"""PyTorch's DataLoader over the shards, set up as PyTorch's documentation advises.

A map-style Dataset whose `__getitems__` reads a whole batch at once (one sorted read per shard: a
memory-map gather, an HDF5 slice, the TFRecord offsets in order), a batch sampler that yields
`order.plan`'s rows (no random sampler of torch's), `num_workers` worker processes with `prefetch_factor`
batches each in flight, `persistent_workers` and `pin_memory` (page-locked batches, where a CUDA
device is there to copy them to), `in_order=True` so batches arrive in the sampler's order.
A sample's key carries its epoch (key = epoch * n + index), so a persistent worker augments each
sample as that epoch asks without being told the epoch.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from workers.common.datapath.formats import DataError, Reader
from workers.common.datapath.loaders import Loader, LoaderCrashed, LoaderSpec, Source, worker_error


class ShardBatches(Dataset):
    def __init__(self, source: Source) -> None:
        self.source = source
        self.n = source.shardset.n
        self.reader = Reader(source.shardset)  # each worker process opens its own files

    def __len__(self) -> int:
        return self.n

    def __getitems__(self, keys: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        keys_a = np.asarray(keys, np.int64)
        epoch, index = int(keys_a[0] // self.n), keys_a % self.n
        x, y = self.reader.read(index)
        x = self.source.finish(x, epoch, index)
        return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y)

    def __getitem__(self, key: int) -> Any:
        return self.__getitems__([key])


def as_is(batch: Any) -> Any:
    return batch


class PlanSampler:
    """The rows of the epoch's plan as keys, from batch `start` on."""

    def __init__(self, source: Source) -> None:
        self.source, self.epoch, self.start = source, 0, 0
        self.n = source.shardset.n

    def __iter__(self) -> Iterator[list[int]]:
        plan = self.source.plan(self.epoch)
        for row in plan[self.start :]:
            yield (row + self.epoch * self.n).tolist()

    def __len__(self) -> int:
        return self.n // self.source.batch_size - self.start


class TorchLoader(Loader):
    kind = "torch"

    def __init__(self, source: Source, spec: LoaderSpec, framework: str) -> None:
        self.sampler = PlanSampler(source)
        workers = spec.workers
        # fork is PyTorch's default on Linux; in a worker whose framework runs threads of its own
        # (TensorFlow, XLA) a fork can copy a held lock, so those start their loader workers by forkserver
        context = None if framework == "pytorch" or not workers else "forkserver"
        self.loader = DataLoader(
            ShardBatches(source),
            batch_sampler=self.sampler,
            num_workers=workers,
            collate_fn=as_is,
            pin_memory=spec.pin_memory and torch.cuda.is_available(),
            persistent_workers=spec.persistent_workers and workers > 0,
            prefetch_factor=max(1, spec.prefetch) if workers else None,
            multiprocessing_context=context,
            in_order=True,
        )

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        self.sampler.epoch, self.sampler.start = epoch, start
        try:
            for x, y in self.loader:
                yield x.numpy(), y.numpy()
        except DataError as exc:  # raised in a worker process: torch wraps it in its traceback
            raise type(exc)(worker_error(exc)) from None  # a storage failure stays one
        except RuntimeError as exc:
            # torch's words for a worker that died: "DataLoader worker (pid N) is killed by signal: ..."
            # or "... exited unexpectedly"; torch has stopped the others by then
            if "DataLoader worker" in str(exc):
                raise LoaderCrashed(f"a torch DataLoader worker died: {str(exc).splitlines()[0]}") from None
            raise

    def close(self) -> None:
        it = getattr(self.loader, "_iterator", None)
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()
