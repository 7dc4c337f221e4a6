"""The PyTorch worker with a planted slowdown, so `mlbench compare` has a real regression to find
between two real runs. By default every training step and inference pass sleeps DELAY_S more; with
MLBENCH_SLOWDOWN=F in the environment (F > 1) each one instead sleeps (F - 1) times its own duration,
so every model runs F times slower (`F=2`: the 2x slowdown docs/compare.md plants in `make quick`)."""

from __future__ import annotations

import os
import sys
import time

from workers.common.cli import main
from workers.common.registry import backend_class

DELAY_S = 0.040  # a 5 ms MLP step becomes 45 ms (-89%): far outside this machine's run-to-run drift


def _slowed(fn, factor: float | None):
    def slow(*args):
        t0 = time.perf_counter()
        out = fn(*args)  # on the CPU the work has run by the time it returns
        time.sleep(DELAY_S if factor is None else (factor - 1) * (time.perf_counter() - t0))
        return out

    return slow


def _load(cell):
    factor = float(os.environ["MLBENCH_SLOWDOWN"]) if os.environ.get("MLBENCH_SLOWDOWN") else None
    backend = backend_class("pytorch")(cell)
    backend.launch_step = _slowed(backend.launch_step, factor)
    backend.predict = _slowed(backend.predict, factor)
    return backend


if __name__ == "__main__":
    sys.exit(main("pytorch", _load))
