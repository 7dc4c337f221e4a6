"""A worker that reports a cell's figures at once, for `bench/scale.py`: it imports no framework and
trains nothing, so a grid of thousands of its cells measures the orchestrator (spawning, streaming,
storing, rebuilding, reporting), not a model. Its figures are made up from the cell's batch size and
seed, and say nothing about any framework: it exists only for the bench."""

from __future__ import annotations

import json
import os
import sys

from workers.common.cli import setup_process
from workers.common.events import Emitter


def main() -> int:
    cell = json.loads(sys.argv[sys.argv.index("--cell") + 1])
    em = Emitter(cell["cell_id"], setup_process())
    em.emit("hello", protocol=1, framework=cell["framework"], pid=os.getpid())
    bs = cell["batch_size"]
    step = 0.001 * (1 + bs / 64) * (1 + (cell["seed"] % 7) / 50)  # a made-up step time that grows with the batch
    em.emit("model", num_parameters=1000, size_on_disk_bytes=4000)
    em.emit(
        "epoch", epoch=0, train_loss=1.0, train_accuracy=0.5, val_loss=1.0, val_accuracy=0.5, train_s=8 * step,
        eval_s=0.0, samples=8 * bs, samples_per_second=bs / step, data_wait_s=0.0,
    )  # fmt: skip
    em.emit("steps", phase="train", warmup_s=[2 * step], step_s=[step] * 8, batch_size=bs)
    em.emit("inference", batch_size=bs, runs=3, mean_ms=step * 300, p50_ms=step * 300, p95_ms=step * 320,
            p99_ms=step * 330, times_ms=[step * 300] * 3)  # fmt: skip
    em.emit("result", num_parameters=1000)
    return 0


if __name__ == "__main__":
    sys.exit(main())
