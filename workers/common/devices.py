"""A cell's device, parsed once: `cpu`, `cuda:N` or `cuda:N,M,...` (data parallel over those GPUs).

Framework-free: the orchestrator (config checks, GPU visibility, scheduling, monitoring) and the
workers read a device string the same way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

GRAMMAR = "cpu, cuda:N, cuda:N,M,... (data parallel)"
_CUDA = re.compile(r"^cuda:(\d+(?:,\d+)*)$")


@dataclass(frozen=True)
class Device:
    kind: str  # "cpu" | "cuda"
    indices: tuple[int, ...] = ()  # the GPUs of a cuda device, as the cell names them

    @classmethod
    def parse(cls, text: str) -> Device:
        """The device a string names; ValueError (saying what is allowed) for anything else."""
        if text == "cpu":
            return cls("cpu")
        m = _CUDA.match(text)
        if m is None:
            raise ValueError(f"device {text!r} is not one of: {GRAMMAR}")
        indices = tuple(int(i) for i in m.group(1).split(","))
        if len(set(indices)) != len(indices):
            raise ValueError(f"device {text!r} names a GPU twice")
        return cls("cuda", indices)

    def __str__(self) -> str:
        return "cpu" if self.kind == "cpu" else "cuda:" + ",".join(str(i) for i in self.indices)

    @property
    def gpus(self) -> tuple[int, ...]:
        """The GPU indices the cell needs (none for a CPU cell)."""
        return self.indices if self.kind == "cuda" else ()

    @property
    def count(self) -> int:
        """How many devices the cell runs on."""
        return max(1, len(self.indices))

    def visible(self) -> Device:
        """The same device as its worker sees it, once only its GPUs are visible (renumbered from 0)."""
        return self if self.kind == "cpu" else Device("cuda", tuple(range(len(self.indices))))
