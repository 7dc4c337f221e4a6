"""Where a training step's time goes: a few extra steps after the timed window, timed by part.

Every backend's `step_parts(x, y)` runs one training step split at the same places, with a device
sync after each part (`PartClock`): `data` (the host batch's copy to the device), `forward` (the
forward pass and the loss), `backward` (the gradients), `optimizer` (the update, loss scaling and
the schedule). The harness (`breakdown`) adds the host's batch preparation to `data` and calls
`other` what the step's wall time holds beyond the parts: Python between them, launch gaps, the
read-back. So the parts of a profiled step add up to its wall time exactly; that wall time is
longer than a timed step's where splitting costs: a sync after each part (on a GPU, the queue
drains four times a step) and, in XLA (JAX, TensorFlow with `compile`), forward, backward and
update compiled apart instead of fused. `step_profiled_s` says how long the profiled steps took,
beside the timed window's `step_time_median_s`, so a reader sees how far the split moved them.

The profiled steps train on (an epoch of batches past the cell's last), after the trained weights
were exported and evaluated, so nothing measured before them changes; inference latency, measured
after, does not depend on the weights' values.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

PARTS = ("data", "forward", "backward", "optimizer")
DEFAULT_STEPS = 5  # profiled steps after one untimed (the split functions' first call compiles them)


class PartClock:
    """Laps of one step: `lap(name)` syncs the device and books the time since the last lap."""

    def __init__(self, sync: Callable[[], Any]) -> None:
        self.sync = sync
        self.parts: dict[str, float] = {}
        self._t = time.perf_counter()

    def lap(self, name: str) -> None:
        self.sync()
        now = time.perf_counter()
        self.parts[name] = self.parts.get(name, 0.0) + now - self._t
        self._t = now


def forward_apart(parts: dict[str, float]) -> dict[str, float]:
    """Parts of a step whose forward and backward run as one compiled function (JAX, TensorFlow):
    the forward pass was timed alone first (`forward`), then the step's own forward and backward
    (`forward_backward`). Backward is the difference; the lone forward was extra work, not part of
    the step, so its time is `excluded` from the step's wall time."""
    out = dict(parts)
    both, alone = out.pop("forward_backward"), out["forward"]
    # a tiny step's lone forward can take as long as the fused pair (its own launch and sync): the
    # forward's share is then at most the pair's time, and nothing is left for backward
    out["forward"] = min(alone, both)
    out["backward"] = both - out["forward"]
    out["excluded"] = alone
    return out


def breakdown(
    step_parts: Callable[[np.ndarray, np.ndarray], dict[str, float]],
    batches: Iterable[tuple[np.ndarray, np.ndarray]],
    prepare_s: float,
    steps: int = DEFAULT_STEPS,
) -> dict[str, Any]:
    """Mean seconds per step of each part over `steps` profiled steps (after one untimed step).

    `prepare_s` is the host's preparation of one batch (the epoch's gathering, per batch, as the
    training loop pays it before its step timers). Means, not medians, so the parts add up to the
    mean profiled step: `other` is that step's wall time minus its parts."""
    it = iter(batches)
    walls: list[float] = []
    sums = dict.fromkeys((*PARTS, "other"), 0.0)
    for i in range(steps + 1):
        t0 = time.perf_counter()
        batch = next(it, None)
        if batch is None:
            break
        t1 = time.perf_counter()
        parts = step_parts(*batch)
        wall = time.perf_counter() - t0 + prepare_s - parts.pop("excluded", 0.0)
        if i == 0:
            continue
        parts = {**parts, "data": parts.get("data", 0.0) + prepare_s + (t1 - t0)}
        walls.append(wall)
        for name in PARTS:
            sums[name] += parts.get(name, 0.0)
        sums["other"] += wall - sum(parts.get(name, 0.0) for name in PARTS)
    n = len(walls)
    if n == 0:
        return {}
    return {
        **{f"step_{name}_s": total / n for name, total in sums.items()},
        "step_profiled_s": sum(walls) / n,
        "profile_steps": n,
    }
