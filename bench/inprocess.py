"""The harness against the hand-written loop in one process: what mlbench's measurement code costs.

Two processes run twice differ by several percent on a shared machine, which buries a small cost
of the harness under noise (`bench.fidelity` compares whole processes). Here one process sets up
the framework's worker backend, fed by the harness's own training loop (`harness.train`: the
batch feed, per-step timers, host read-back of loss and accuracy, events), and two instances of the
hand-written loop of `bench.handwritten`, with the same model, weights, optimizer and batch size;
then it runs timed blocks of steps of the three in turn (every order in rotation), so the machine's
drift falls on all alike.

The second hand-written instance is the control (an A/A test): identical code, so its ratio to the
first measures what no code change causes. Two instances of the same loop in one process differ
persistently by a few percent (PyTorch MLP, 2 cores: 0.971, 0.981 and 1.012 in three processes,
16 blocks each; where each instance's tensors land in memory is the likely cause), so one process
cannot resolve a cost smaller than that: `bench.fidelity` runs several processes and takes its
interval across them.

Prints one JSON line with each block's times, the ratio (harness samples/s over the geometric
mean of the two hand-written instances': each instance's own placement draw then weighs half, and
the ratio does not move with the control, as it did against the first instance alone) and the
control (the second hand-written loop's over the first's).

    python -m bench.inprocess --framework jax --model resnet18 --batch-size 64 --steps 5 --blocks 6
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import sys
import tempfile
from collections.abc import Callable
from typing import Any

from bench.handwritten import LOOPS, use_threads
from workers.common import data as datasets
from workers.common import harness, registry
from workers.common.cellspec import CellSpec
from workers.common.events import Emitter
from workers.common.specs import get_spec, input_spec, with_total_steps
from workers.common.weights import initial_weights


def harness_loop(
    framework: str, model: str, bs: int, steps: int, total_steps: int, data_dir: str, threads: int | None = None
) -> Any:
    """The worker's backend trained by `harness.train`, one epoch of `steps` steps a call; returns
    run() -> the summed wall time of that epoch's steps (what a cell's throughput is made of)."""
    cell = CellSpec(
        framework=framework,
        worker=f"workers.{framework}_worker",
        model=model,
        batch_size=bs,
        device="cpu",
        precision="fp32",
        threads=threads,
        dataset={"name": "synthetic", "train_samples": bs * steps, "val_samples": bs, "path": None},
    ).payload(cell_id="inprocess")
    # the worker's own loader: the backend set up (environment, flags) exactly as a cell's worker does it
    backend = registry.load_backend(framework, cell)
    spec = get_spec(model)
    ds = datasets.load(cell["dataset"], spec.family, input_spec(spec), 0, data_dir, backend.layout)
    spec = with_total_steps(spec, total_steps)
    backend.build(spec, initial_weights(spec, 0))
    events = Emitter("inprocess", io.StringIO())

    def run() -> float:
        events.stream = io.StringIO()  # the events are written as in a worker, then dropped
        return sum(harness.train(backend, ds, cell, events)["step_s"])

    return run


# block b runs ORDERS[b % 6]: the three rotations (each loop in each position once in three blocks),
# then the same reversed (over six, each loop runs right after each other loop equally often)
_ROTATIONS = [("hand", "twin", "harness"), ("twin", "harness", "hand"), ("harness", "hand", "twin")]
ORDERS = _ROTATIONS + [r[::-1] for r in _ROTATIONS]
NAMES = ("hand", "twin", "harness")


def timed_blocks(
    loops: dict[str, Callable[[], float]], blocks: int, warmup_blocks: int, names: tuple[str, str, str] = NAMES
) -> list[dict[str, float]]:
    """Each loop's block seconds, `blocks` times after `warmup_blocks` untimed rounds (compilation,
    tracing, first touch of memory), the three loops (`names`, in ORDERS' roles) in rotating order."""
    for _ in range(warmup_blocks):
        for run in loops.values():
            run()
    role = dict(zip(NAMES, names))
    return [{role[n]: loops[role[n]]() for n in ORDERS[b % len(ORDERS)]} for b in range(blocks)]


def compare(
    framework: str, model: str, bs: int, steps: int, blocks: int, warmup_blocks: int = 1, threads: int | None = None
) -> dict[str, Any]:
    if threads:  # before the framework is imported; the harness's backend makes its own call as well
        use_threads(framework, threads)
    total = (warmup_blocks + blocks) * steps
    with tempfile.TemporaryDirectory(prefix="mlbench-inprocess-") as tmp:
        ours = harness_loop(framework, model, bs, steps, total, tmp, threads)
        # a block's worth of distinct batches each, as the harness's epoch
        hand, twin = (LOOPS[framework](model, bs, total, steps) for _ in range(2))
        loops = {"hand": lambda: hand(steps), "twin": lambda: twin(steps), "harness": ours}
        timed = [
            {
                "hand_s": t["hand"],
                "twin_s": t["twin"],
                "harness_s": t["harness"],
                "ratio": math.sqrt(t["hand"] * t["twin"]) / t["harness"],
                "control": t["hand"] / t["twin"],
            }
            for t in timed_blocks(loops, blocks, warmup_blocks)
        ]
    return {
        "framework": framework,
        "model": model,
        "batch_size": bs,
        "steps_per_block": steps,
        "blocks": timed,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--framework", choices=list(LOOPS), required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--batch-size", type=int, required=True)
    p.add_argument("--steps", type=int, default=5, help="steps per timed block")
    p.add_argument("--blocks", type=int, default=6, help="timed blocks per loop, in rotating order")
    p.add_argument("--threads", type=int, help="intra-op threads, as a suite's `threads` (default: the framework's)")
    a = p.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    out = compare(a.framework, a.model, a.batch_size, a.steps, a.blocks, threads=a.threads)
    sys.stdout.write(json.dumps(out) + "\n")


if __name__ == "__main__":
    main()
