"""The PyTorch worker with a planted slowdown: every training step and inference pass sleeps a few
milliseconds more, so `mlbench compare` has a real regression to find between two real runs."""

from __future__ import annotations

import sys
import time

from workers.common.cli import main
from workers.common.registry import backend_class

DELAY_S = 0.040  # a 5 ms MLP step becomes 45 ms (-89%): far outside this machine's run-to-run drift


def _load(cell):
    backend = backend_class("pytorch")(cell)
    launch_step, predict = backend.launch_step, backend.predict

    def slow_launch_step(x, y):
        time.sleep(DELAY_S)
        return launch_step(x, y)

    def slow_predict(x):
        time.sleep(DELAY_S)
        return predict(x)

    backend.launch_step, backend.predict = slow_launch_step, slow_predict
    return backend


if __name__ == "__main__":
    sys.exit(main("pytorch", _load))
