"""The PyTorch worker with a slow input path: every batch's copy to the device sleeps 20 ms, as a
starved data loader would, so the step-time breakdown must call the cell input-bound."""

from __future__ import annotations

import sys
import time

from workers.common.cli import main
from workers.common.registry import backend_class

DELAY_S = 0.020  # a ~3 ms MLP step becomes ~23 ms, most of it waiting for the batch


def _load(cell):
    backend = backend_class("pytorch")(cell)
    inputs = backend._inputs

    def slow_inputs(x, y=None):
        time.sleep(DELAY_S)
        return inputs(x, y)

    backend._inputs = slow_inputs
    return backend


if __name__ == "__main__":
    sys.exit(main("pytorch", _load))
