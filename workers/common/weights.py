"""Canonical weights: made once in NumPy from a spec and a seed, loaded by every framework.

Starting every framework from the very same numbers (not merely the same scheme) removes
initialisation as a source of difference between frameworks.
"""

from __future__ import annotations

import math

import numpy as np

from workers.common.specs import ModelSpec, Param, canonical_params


def _init(rng: np.random.Generator, p: Param) -> np.ndarray:
    if p.init == "zeros":
        return np.zeros(p.shape, np.float32)
    if p.init == "ones":
        return np.ones(p.shape, np.float32)
    if p.init in ("normal", "kaiming_normal_fan_out"):
        return (rng.standard_normal(p.shape, dtype=np.float32) * np.float32(p.std)).astype(np.float32)
    if p.init == "uniform_fan_in":
        bound = 1.0 / math.sqrt(p.fan_in)
        return rng.uniform(-bound, bound, p.shape).astype(np.float32)
    raise ValueError(f"unknown initialiser {p.init!r}")


def initial_weights(spec: ModelSpec, seed: int) -> dict[str, np.ndarray]:
    """Canonical initial tensors of a model; the same seed gives the same numbers everywhere."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x1417]))
    return {name: _init(rng, p) for name, p in canonical_params(spec).items()}


def save_npz(path: str, tensors: dict[str, np.ndarray]) -> None:
    """Write canonical tensors to an (uncompressed) NPZ file."""
    np.savez(path, **tensors)


def load_npz(path: str) -> dict[str, np.ndarray]:
    """Read canonical tensors from an NPZ file (no pickles allowed)."""
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}
