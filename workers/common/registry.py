"""Which backend class runs each built-in framework: the one map the workers' entry points and the
tests use (a suite's own worker module names its own loader; `workers:` in the config)."""

from __future__ import annotations

from typing import Any

from workers.common.harness import import_backend

BACKENDS = {  # framework -> (module, class); imported only when asked, so this module imports no framework
    "pytorch": ("workers.pytorch_worker.backend", "TorchBackend"),
    "tensorflow": ("workers.tensorflow_worker.backend", "TFBackend"),
    "jax": ("workers.jax_worker.backend", "JaxBackend"),
}


def backend_class(framework: str) -> Any:
    """The framework's backend class (a missing framework package raises harness.Unsupported)."""
    try:
        module, name = BACKENDS[framework]
    except KeyError:
        raise ValueError(f"unknown framework {framework!r}; built in: {', '.join(BACKENDS)}") from None
    return import_backend(module, name)
