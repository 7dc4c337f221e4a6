"""The PyTorch worker with a planted fault in its data path (MLBENCH_PLANTED):

- `shuffle` (the default): its loader follows an order of its own: batches 2 and 3 of every epoch
  trade a sample, as a loader with its own shuffle would, so `mlbench verify --data` must name batch 2;
- `kill`: its DataLoader's worker process SIGKILLs itself at its third batch, so the cell must end
  `crashed` with that cause and leave no process behind.
"""

from __future__ import annotations

import os
import signal
import sys

import numpy as np

from workers.common.cli import main
from workers.common.datapath import loaders, torch_loader
from workers.common.registry import backend_class

MODE = os.environ.get("MLBENCH_PLANTED", "shuffle")

if MODE == "shuffle":
    _plan = loaders.Source.plan

    def plan(self, epoch):
        p = _plan(self, epoch).copy()
        p[2, 0], p[3, 0] = p[3, 0], p[2, 0]
        return np.sort(p, axis=1)

    loaders.Source.plan = plan
elif MODE == "kill":
    _getitems = torch_loader.ShardBatches.__getitems__
    calls = {"n": 0}

    def getitems(self, keys):
        import torch.utils.data

        if torch.utils.data.get_worker_info() is not None:
            calls["n"] += 1
            if calls["n"] == 3:
                os.kill(os.getpid(), signal.SIGKILL)
        return _getitems(self, keys)

    torch_loader.ShardBatches.__getitems__ = getitems


if __name__ == "__main__":
    sys.exit(main("pytorch", lambda cell: backend_class("pytorch")(cell)))
