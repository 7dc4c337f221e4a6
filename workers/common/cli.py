"""Command line shared by every worker: `python -m workers.<name> --cell JSON` or flags by hand.

Run by hand to debug one cell, for example:
    python -m workers.pytorch_worker --model resnet18 --batch-size 64 --device cpu --precision fp32 --epochs 1
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import os
import signal
import sys
from collections.abc import Callable
from typing import IO, Any

from workers.common import harness, malloc, precision, profile, threads
from workers.common.cellspec import CellSpec
from workers.common.devices import Device
from workers.common.events import Emitter, protect_stdout

# The defaults a cell gets when run by hand; the orchestrator always passes every key.
DEFAULTS: dict[str, Any] = {
    "cell_id": "manual",
    "epochs": 1,
    "seed": 0,
    "dataset": {"name": "synthetic", "train_samples": 1024, "val_samples": 256, "path": None},
    "warmup_steps": 3,
    "inference": {"warmup": 3, "runs": 50, "min_runs": 5, "max_s": 20.0},
    "compile": False,
    "threads": None,
    "malloc": malloc.DEFAULT,
    "model_overrides": {},
    "data_dir": os.path.join("runs", "_manual", "data"),
}


def _parser(framework: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"python -m workers.{framework}_worker",
        description="Run one benchmark cell and print NDJSON events on stdout.",
    )
    p.add_argument("--cell", help="the whole cell as JSON (what the orchestrator passes)")
    p.add_argument("--model", default="mlp")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="cpu", help="cpu, cuda:N, cuda:N,M (data parallel), cpu:0,1 (CPU replicas)")
    p.add_argument("--precision", default="fp32", choices=list(precision.PRECISIONS))
    p.add_argument("--epochs", type=int, default=DEFAULTS["epochs"])
    p.add_argument("--seed", type=int, default=DEFAULTS["seed"])
    p.add_argument("--train-samples", type=int, default=DEFAULTS["dataset"]["train_samples"])
    p.add_argument("--val-samples", type=int, default=DEFAULTS["dataset"]["val_samples"])
    p.add_argument("--warmup-steps", type=int, default=DEFAULTS["warmup_steps"])
    p.add_argument("--compile", action="store_true", help="use the framework's compiler")
    p.add_argument("--deterministic", action="store_true", help="the framework's deterministic kernels")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument(
        "--malloc",
        choices=list(malloc.TUNABLES),
        default=malloc.DEFAULT,
        help="glibc's malloc settings, as the suite key `malloc` (steady: the worker restarts itself once with them)",
    )
    p.add_argument("--data-dir", default=DEFAULTS["data_dir"])
    p.add_argument("--weights-in", help="start from these canonical weights (NPZ) instead of the seeded ones")
    p.add_argument("--weights-out", help="write the trained weights here, canonical NPZ")
    p.add_argument(
        "--profile-steps",
        type=int,
        default=profile.DEFAULT_STEPS,
        help="extra steps after training timed by part (forward, backward, optimizer, data); 0: none",
    )
    p.add_argument("--profile-dir", help="keep a profiler trace of a few training steps in this folder")
    return p


def parse(argv: list[str] | None, framework: str) -> dict[str, Any]:
    """Build the cell dict from `--cell JSON` or from individual flags."""
    p = _parser(framework)
    a = p.parse_args(argv)
    run = {
        "weights_in": a.weights_in,
        "weights_out": a.weights_out,
        "profile_steps": a.profile_steps,
        "profile_dir": a.profile_dir and os.path.abspath(a.profile_dir),
    }
    if a.cell:  # the orchestrator's payload: a whole spec, checked here as the contract it is
        given = {k: v for k, v in run.items() if v and k != "profile_steps"}  # the payload's profile_steps wins
        cell = {**DEFAULTS, "profile_steps": 0, **json.loads(a.cell), **given, "framework": framework}
        try:
            CellSpec.from_dict(cell)
        except (TypeError, ValueError) as exc:
            p.error(f"--cell is not a cell spec: {exc}")
        return cell
    spec = CellSpec(
        framework=framework,
        worker=f"workers.{framework}_worker",
        model=a.model,
        batch_size=a.batch_size,
        device=a.device,
        precision=a.precision,
        epochs=a.epochs,
        seed=a.seed,
        warmup_steps=a.warmup_steps,
        compile=a.compile,
        deterministic=True if a.deterministic else None,
        threads=a.threads,
        malloc=a.malloc,
        batchnorm="sync" if Device.parse(a.device).data_parallel else None,
        dataset={**DEFAULTS["dataset"], "train_samples": a.train_samples, "val_samples": a.val_samples},
        inference=DEFAULTS["inference"],
    )
    return spec.payload(cell_id=DEFAULTS["cell_id"], data_dir=a.data_dir, **run)


def apply_threads(cell: dict[str, Any]) -> None:
    """Thread settings go into the environment before any framework is imported."""
    if cell.get("threads"):
        for var, value in threads.env_for(cell["threads"]).items():
            os.environ.setdefault(var, value)
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    os.environ.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")
    if cell.get("deterministic"):
        for var, value in DETERMINISTIC_ENV.items():
            os.environ.setdefault(var, value)
        flags = os.environ.get("XLA_FLAGS", "")
        if "xla_gpu_deterministic_ops" not in flags:  # JAX's and TensorFlow's XLA on a GPU (no effect on a CPU)
            os.environ["XLA_FLAGS"] = f"{flags} --xla_gpu_deterministic_ops=true".strip()


# what a `deterministic` cell needs in the environment before a framework is imported: cuBLAS's
# deterministic workspace (PyTorch's use_deterministic_algorithms refuses CUDA matmuls without it) and
# TensorFlow's op determinism (the backend also calls enable_op_determinism)
DETERMINISTIC_ENV = {"CUBLAS_WORKSPACE_CONFIG": ":4096:8", "TF_DETERMINISTIC_OPS": "1"}


def setup_process() -> IO[str]:
    """What every worker does first: keep stdout for events, and dump stacks on faults and on SIGUSR1."""
    events = protect_stdout()
    faulthandler.enable(file=sys.stderr, all_threads=True)
    if hasattr(signal, "SIGUSR1"):  # the orchestrator asks for a stack dump before killing a hung worker
        faulthandler.register(signal.SIGUSR1, file=sys.stderr, all_threads=True)
    return events


def main(framework: str, loader: Callable[[dict[str, Any]], harness.Backend], argv: list[str] | None = None) -> int:
    """Entry point of every worker: protect stdout, then run the cell with the framework's backend."""
    cell = parse(argv, framework)
    if argv is None:  # this process's own command line: started by hand, it takes the suites' malloc (may re-exec)
        malloc.ensure(cell["malloc"])
    events = setup_process()
    apply_threads(cell)
    return harness.run(loader, cell, Emitter(cell["cell_id"], events))
