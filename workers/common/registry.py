"""The built-in frameworks, named once: each framework's worker package follows one naming rule
(`workers.<name>_worker`, its backend class `Backend` in `backend.py`, its entry point's public
`load_backend(cell)` in `__main__.py`), so this table holds only what a rule cannot say. The config,
the environment record, the workers and the bench all read it; importing it imports no framework."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Framework:
    name: str
    distributions: tuple[str, ...]  # the packages that provide it, the first installed one counts

    @property
    def module(self) -> str:
        """The worker package, run as `python -m MODULE --cell JSON`."""
        return f"workers.{self.name}_worker"


FRAMEWORKS = {
    f.name: f
    for f in (
        Framework("pytorch", ("torch",)),
        Framework("tensorflow", ("tensorflow", "tensorflow-cpu", "tensorflow-macos")),
        Framework("jax", ("jax",)),
    )
}


def get(framework: str) -> Framework:
    try:
        return FRAMEWORKS[framework]
    except KeyError:
        raise ValueError(f"unknown framework {framework!r}; built in: {', '.join(FRAMEWORKS)}") from None


def backend_class(framework: str) -> Any:
    """The framework's Backend class (a missing framework package raises harness.Unsupported)."""
    from workers.common.harness import import_backend

    return import_backend(f"{get(framework).module}.backend", "Backend")


def load_backend(framework: str, cell: dict[str, Any]) -> Any:
    """A backend for `cell` as the framework's worker makes one: its entry point sets what must be set
    before the framework is imported (thread pools, XLA flags, CPU replicas), then builds the Backend."""
    return importlib.import_module(f"{get(framework).module}.__main__").load_backend(cell)
