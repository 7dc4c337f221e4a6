"""The cell contract: what a worker is asked to do, typed and frozen, in one place.

A `CellSpec` is built by the orchestrator (a grid cell, a calibration cell, a verify cell), by the
worker's command line (a cell run by hand) and by the bench; it travels to the worker as the JSON
of `payload()`. Its canonical JSON (`canonical_json`) is what a cell's id hashes, so it holds
exactly the keys of its task: a spec that measures the same thing always gets the same id, and a
new field changes no stored id unless it is set.

Tasks: `train` (a benchmark cell: train, evaluate, time inference), `calibrate` (a peak-FLOP/s
matmul, no model), `verify` (the cross-framework model check) and `data` (a loader's batches
digested, no model: `mlbench verify --data`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from workers.common.devices import Device

TASKS = ("train", "calibrate", "verify", "data")
# the keys of each task's canonical JSON (beside `task`, which a train cell leaves out)
_COMMON = ("framework", "worker", "device", "precision", "seed", "threads", "compile")
KEYS: dict[str, tuple[str, ...]] = {
    "train": (
        *_COMMON,
        "model",
        "model_overrides",
        "model_spec",
        "batch_size",
        "epochs",
        "dataset",
        "data_generator",
        "warmup_steps",
        "inference",
        "malloc",
    ),
    "calibrate": (*_COMMON, "malloc", "calibrate"),
    "verify": (
        *_COMMON,
        "model",
        "model_overrides",
        "batch_size",
        "epochs",
        "dataset",
        "warmup_steps",
        "inference",
        "verify",
    ),
    # `mlbench verify --data`: a loader's batches alone, no model trained (workers/common/harness.run_data)
    "data": (*_COMMON, "model", "model_overrides", "batch_size", "dataset", "data_check"),
}
# in the canonical JSON only when set, so that earlier ids stay valid
OPTIONAL = ("target_accuracy", "batchnorm", "deterministic", "loader")
# How BatchNorm's statistics are taken in a data-parallel cell. "sync": over the global batch, all
# replicas together, so a multi-device step computes what the one-device step computes; the only mode
# all three frameworks can share (JAX's sharded jit takes the global batch's statistics by construction,
# PyTorch's DDP and Keras under MirroredStrategy per replica unless asked). Set on multi-device cells only.
BATCHNORM_MODES = ("sync",)


@dataclass(frozen=True)
class CellSpec:
    """Everything that determines a cell's measurement (see KEYS for which fields each task uses)."""

    framework: str
    worker: str  # the module run as `python -m MODULE --cell JSON`
    device: str  # parsed by Device: cpu | cuda:N | cuda:N,M,...
    precision: str
    seed: int = 0
    threads: int | None = None
    compile: bool = False
    malloc: str = "system"
    task: str = "train"
    model: str | None = None
    model_overrides: dict[str, Any] = field(default_factory=dict)
    model_spec: dict[str, Any] | None = None  # the resolved architecture and recipe
    batch_size: int | None = None
    epochs: int = 1
    dataset: dict[str, Any] | None = None
    data_generator: dict[str, Any] | None = None  # how synthetic data is made (a changed generator: a new cell)
    warmup_steps: int = 0
    inference: dict[str, Any] | None = None
    target_accuracy: float | None = None
    calibrate: dict[str, Any] | None = None  # task calibrate: {n, max_s}
    verify: dict[str, Any] | None = None  # task verify: {batch, steps, recipe_optimizer}
    data_check: dict[str, Any] | None = None  # task data: {epoch, start, batches}: which batches to digest
    batchnorm: str | None = None  # a data-parallel cell's BatchNorm statistics (BATCHNORM_MODES)
    deterministic: bool | None = None  # the framework's deterministic kernels (True; None: its defaults)
    # a file-fed cell's loader (kind, workers, prefetch, ...: workers/common/datapath/loaders.py); None
    # for the in-memory feed, whose dataset has no `format` (or `memory`)
    loader: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task {self.task!r} is not one of {', '.join(TASKS)}")
        device = Device.parse(self.device)
        if device.data_parallel and self.batchnorm not in BATCHNORM_MODES:
            raise ValueError(f"a data-parallel cell needs batchnorm, one of {', '.join(BATCHNORM_MODES)}")
        if not device.data_parallel and self.batchnorm is not None:
            raise ValueError("batchnorm is a data-parallel cell's setting; this cell runs on one device")
        if self.batch_size is not None and self.batch_size % device.count:
            raise ValueError(
                f"batch size {self.batch_size} does not divide over the {device.count} devices of {device}"
            )
        fmt = (self.dataset or {}).get("format", "memory")
        if (fmt == "memory") != (self.loader is None):
            raise ValueError(f"a cell reading {fmt} data needs a loader exactly when its data is in files")
        if self.task != "calibrate" and not self.model:
            raise ValueError(f"a {self.task} cell needs a model")

    @property
    def parsed_device(self) -> Device:
        return Device.parse(self.device)

    @property
    def per_device_batch_size(self) -> int | None:
        return None if self.batch_size is None else self.batch_size // self.parsed_device.count

    def to_dict(self) -> dict[str, Any]:
        """The task's keys only (and `task` unless it is train): what the cell id is made of."""
        every = asdict(self)
        out = {k: every[k] for k in KEYS[self.task]}
        if self.task != "train":
            out["task"] = self.task
        out.update({k: every[k] for k in OPTIONAL if every[k] is not None})
        return out

    def canonical_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @property
    def cell_id(self) -> str:
        """Short hash of the canonical JSON: the same spec always gets the same id."""
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()[:12]

    def payload(self, **run: Any) -> dict[str, Any]:
        """What the worker receives as `--cell JSON`: the spec, its id, and how this run of it is set
        up (data_dir, the device as the worker sees it, threads, weights files ...). `malloc` always: the
        worker would otherwise take the by-hand default and restart itself into what was not set for it."""
        return {**self.to_dict(), "task": self.task, "cell_id": self.cell_id, "malloc": self.malloc, **run}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CellSpec:
        """A spec from a payload or canonical dict; keys that belong to one run (cell_id, data_dir,
        weights files) are left out."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
