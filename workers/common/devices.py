"""A cell's devices, parsed once: `cpu`, `cuda:N`, `cuda:N,M,...` (data parallel over those GPUs) or
`cpu:0,1,...` (data parallel over that many CPU replicas: the multi-device code paths on any machine).

Framework-free: the orchestrator (config checks, GPU visibility, scheduling, monitoring) and the
workers read a device string the same way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

GRAMMAR = "cpu, cuda:N, cuda:N,M,... (data parallel over those GPUs), cpu:0,1,... (data parallel over CPU replicas)"
_INDEXED = re.compile(r"^(cpu|cuda):(\d+(?:,\d+)*)$")


@dataclass(frozen=True)
class Device:
    kind: str  # "cpu" | "cuda"
    indices: tuple[int, ...] = ()  # the GPUs of a cuda device, as the cell names them; a CPU's replicas

    @classmethod
    def parse(cls, text: str) -> Device:
        """The device a string names; ValueError (saying what is allowed) for anything else."""
        if text == "cpu":
            return cls("cpu")
        m = _INDEXED.match(text)
        if m is None:
            raise ValueError(f"device {text!r} is not one of: {GRAMMAR}")
        kind, indices = m.group(1), tuple(int(i) for i in m.group(2).split(","))
        if len(set(indices)) != len(indices):
            raise ValueError(f"device {text!r} names a {'GPU' if kind == 'cuda' else 'replica'} twice")
        if kind == "cpu" and indices != tuple(range(len(indices))):
            # CPU replicas are not pinned to cores: they are counted, so they are named 0..n-1
            raise ValueError(f"device {text!r}: CPU replicas are numbered from 0, as cpu:0,1")
        if kind == "cpu" and len(indices) == 1:
            return cls("cpu")  # cpu:0 is the CPU
        return cls(kind, indices)

    def __str__(self) -> str:
        return self.kind if not self.indices else f"{self.kind}:" + ",".join(str(i) for i in self.indices)

    @property
    def gpus(self) -> tuple[int, ...]:
        """The GPU indices the cell needs (none for a CPU cell)."""
        return self.indices if self.kind == "cuda" else ()

    @property
    def count(self) -> int:
        """How many devices (replicas) the cell runs on."""
        return max(1, len(self.indices))

    @property
    def data_parallel(self) -> bool:
        return self.count > 1

    def single(self) -> Device:
        """The one device a data-parallel device's single-device baseline runs on: the CPU for CPU replicas
        (they share its cores), the first GPU of a GPU list."""
        return Device("cpu") if self.kind == "cpu" else Device("cuda", self.indices[:1])

    def visible(self) -> Device:
        """The same device as its worker sees it, once only its GPUs are visible (renumbered from 0)."""
        return self if self.kind == "cpu" else Device("cuda", tuple(range(len(self.indices))))

    def replica(self, rank: int) -> str:
        """The single device replica `rank` runs on, as the worker sees it: cuda:<rank> or cpu."""
        return f"cuda:{rank}" if self.kind == "cuda" else "cpu"
