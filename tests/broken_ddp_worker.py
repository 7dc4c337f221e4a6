"""The PyTorch worker with a known data-parallel bug, to prove `mlbench verify` catches it: the training
forward pass calls the model itself instead of its DistributedDataParallel wrapper, so the backward pass
never all-reduces the gradients and each rank steps on its own slice's gradient (a bug found in a
public benchmark suite). On one device nothing changes. Map a framework name to this module in a
suite's `workers`."""

from __future__ import annotations

import json
import sys

from workers.common.cli import main
from workers.pytorch_worker.backend import Backend


class BypassingDDP(Backend):
    """Defined at the top of the module: the other ranks, spawned, find it here too."""

    def build(self, spec, weights):
        super().build(spec, weights)
        self.train_forward = self.model  # the bug: DDP's gradient hooks never run


def _load(cell):
    backend = BypassingDDP(cell)
    backend.framework = cell["framework"]
    return backend


if __name__ == "__main__":
    sys.exit(main(json.loads(sys.argv[sys.argv.index("--cell") + 1])["framework"], _load))
