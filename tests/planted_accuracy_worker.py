"""The PyTorch worker with a planted accuracy difference, chosen by the framework name it runs under:
`lowlr` divides the learning rate by ten (a framework that learns slower: still climbing where the
others have settled, `not_converged`); `mislabel` trains on class 0 labelled as class 1 (one that trains
worse and settles as fast: accuracy parity over seeds must call it `different`); `rounding` perturbs every initial weight by
one part in a million (what another framework's arithmetic does: it must stay `equivalent`)."""

from __future__ import annotations

import json
import sys

import numpy as np

from workers.common.cli import main
from workers.common.registry import backend_class

LR_FACTOR = 10.0
ROUNDING = 1e-6


def _mode(argv: list[str]) -> str:
    """The framework name the orchestrator gave the cell (the worker itself runs as pytorch)."""
    return json.loads(argv[argv.index("--cell") + 1])["framework"] if "--cell" in argv else "pytorch"


MODE = _mode(sys.argv)


def _load(cell):
    backend = backend_class("pytorch")(cell)
    build = backend.build

    def planted(spec, weights):
        if MODE == "rounding":
            rng = np.random.default_rng(cell["seed"])
            weights = {k: v * (1 + ROUNDING * rng.standard_normal(v.shape)).astype(v.dtype) for k, v in weights.items()}
        build(spec, weights)
        if MODE == "lowlr":
            for group in backend.optimizer.param_groups:
                group["lr"] /= LR_FACTOR
                group["initial_lr"] /= LR_FACTOR
            backend.scheduler.base_lrs = [lr / LR_FACTOR for lr in backend.scheduler.base_lrs]

    backend.build = planted
    if MODE == "mislabel":  # trains on class 0 labelled as class 1: it learns never to answer 0
        step = backend.launch_step
        backend.launch_step = lambda x, y: step(x, np.where(y == 0, 1, y).astype(y.dtype))
    return backend


if __name__ == "__main__":
    sys.exit(main("pytorch", _load))
