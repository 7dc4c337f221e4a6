"""Where cells run: `local` (this machine) or `ray` (a Ray cluster). See base.py for the seam."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlbench.cells import Unit
from mlbench.config import Suite
from mlbench.executors.base import ClusterLost, Executor, ExecutorUnavailable, Finished, Settings, Started

__all__ = [
    "ClusterLost",
    "Executor",
    "ExecutorUnavailable",
    "Finished",
    "Settings",
    "Started",
    "check",
    "make",
    "reap_session",
]


def check(name: str) -> None:
    """Fail at once, before a run starts, when the executor cannot run here (ExecutorUnavailable)."""
    if name == "ray":
        from mlbench.executors.ray_cluster import import_ray

        import_ray()


def reap_session(processes: list[dict[str, Any]]) -> list[int]:
    """Kill what a killed run's local Ray instance left (its journal's `ray_session` processes)."""
    if not processes:
        return []
    from mlbench.executors import ray_cluster  # imports no Ray itself

    return ray_cluster.reap_session(processes)


def make(
    suite: Suite,
    run_dir: Path,
    *,
    on_start: Callable[[Unit, int, str], None] | None = None,
    on_session: Callable[[dict[str, Any]], None] | None = None,
) -> Executor:
    """The suite's executor, connected and ready (a Ray cluster joined or started)."""
    settings = Settings.of(suite)
    if suite.executor == "ray":
        from mlbench.executors.ray_cluster import RayExecutor

        return RayExecutor(
            run_dir,
            settings,
            address=suite.ray.address,
            num_cpus=suite.ray.num_cpus,
            num_gpus=suite.ray.num_gpus,
            node_root=suite.ray.node_dir,
            parallel=suite.parallel if suite.parallel > 1 else None,
            on_start=on_start,
            on_session=on_session,
        )
    from mlbench.executors.local import LocalExecutor

    return LocalExecutor(run_dir, settings, parallel=suite.parallel, on_start=on_start)
