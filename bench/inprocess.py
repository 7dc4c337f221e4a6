"""The harness against the hand-written loop in one process: what mlbench's measurement code costs.

Two processes run twice differ by several percent on a shared machine, which buries a small cost
of the harness under noise (`bench.fidelity` compares whole processes). Here one process sets up
both the framework's worker backend, fed by the harness's own training loop (`harness.train`: the
batch feed, per-step timers, host read-back of loss and accuracy, events), and the hand-written
loop of `bench.handwritten`, with the same model, weights, optimizer and batch size; then it
alternates timed blocks of steps between the two, so the machine's drift falls on both alike.
Prints one JSON line with the ratio of each block pair (harness samples/s over hand-written).

    python -m bench.inprocess --framework jax --model resnet18 --batch-size 64 --steps 5 --blocks 6
"""

from __future__ import annotations

import argparse
import importlib
import io
import json
import os
import sys
import tempfile
from typing import Any

from bench.handwritten import LOOPS
from workers.common import data as datasets
from workers.common import harness
from workers.common.events import Emitter
from workers.common.specs import get_spec, input_spec, with_total_steps
from workers.common.weights import initial_weights


def harness_loop(framework: str, model: str, bs: int, steps: int, total_steps: int, data_dir: str) -> Any:
    """The worker's backend trained by `harness.train`, one epoch of `steps` steps a call; returns
    run() -> the summed wall time of that epoch's steps (what a cell's throughput is made of)."""
    cell: dict[str, Any] = {
        "cell_id": "inprocess",
        "framework": framework,
        "model": model,
        "batch_size": bs,
        "device": "cpu",
        "precision": "fp32",
        "epochs": 1,
        "seed": 0,
        "warmup_steps": 0,
        "compile": False,
        "dataset": {"name": "synthetic", "train_samples": bs * steps, "val_samples": bs, "path": None},
    }
    # the worker's own loader: the backend set up (environment, flags) exactly as a cell's worker does it
    backend = importlib.import_module(f"workers.{framework}_worker.__main__")._load(cell)
    spec = get_spec(model)
    ds = datasets.load(cell["dataset"], spec.family, input_spec(spec), 0, data_dir, backend.layout)
    spec = with_total_steps(spec, total_steps)
    backend.build(spec, initial_weights(spec, 0))
    events = Emitter("inprocess", io.StringIO())

    def run() -> float:
        events.stream = io.StringIO()  # the events are written as in a worker, then dropped
        return sum(harness.train(backend, ds, cell, events)["step_s"])

    return run


def compare(framework: str, model: str, bs: int, steps: int, blocks: int, warmup_blocks: int = 1) -> dict[str, Any]:
    total = (warmup_blocks + blocks) * steps
    with tempfile.TemporaryDirectory(prefix="mlbench-inprocess-") as tmp:
        ours = harness_loop(framework, model, bs, steps, total, tmp)
        hand = LOOPS[framework](model, bs, total, steps)  # a block's worth of distinct batches, as the harness's epoch
        for _ in range(warmup_blocks):  # compilation, tracing, first-touch of memory: untimed
            ours()
            hand(steps)
        pairs = []
        for b in range(blocks):
            if b % 2 == 0:
                h, o = hand(steps), ours()
            else:
                o, h = ours(), hand(steps)
            pairs.append({"hand_s": h, "harness_s": o, "ratio": h / o})
    return {
        "framework": framework,
        "model": model,
        "batch_size": bs,
        "steps_per_block": steps,
        "blocks": pairs,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--framework", choices=list(LOOPS), required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--batch-size", type=int, required=True)
    p.add_argument("--steps", type=int, default=5, help="steps per timed block")
    p.add_argument("--blocks", type=int, default=6, help="timed blocks per side, alternating")
    a = p.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    out = compare(a.framework, a.model, a.batch_size, a.steps, a.blocks)
    sys.stdout.write(json.dumps(out) + "\n")


if __name__ == "__main__":
    main()
