"""Shared helpers: tiny suites in a temporary folder, the CLI run as a real subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
# every mlbench a test starts writes RESULTS.md without chart images (a Chromium per run: seconds each,
# and browser processes beside the fault tests' signals); tests/test_publish.py turns them on and renders
os.environ.setdefault("MLBENCH_CHART_IMAGES", "0")


def suite_dict(**overrides: Any) -> dict[str, Any]:
    """A tiny valid suite (one PyTorch MLP cell) with overrides."""
    base: dict[str, Any] = {
        "name": "t",
        "frameworks": ["pytorch"],
        "models": ["mlp"],
        "devices": ["cpu"],
        "precisions": ["fp32"],
        "batch_sizes": [16],
        "epochs": 1,
        "seed": 0,
        "dataset": {"name": "synthetic", "train_samples": 128, "val_samples": 32},
        "warmup_steps": 2,
        "inference": {"warmup": 1, "runs": 5, "min_runs": 3, "max_s": 2},
        "calibrate": False,  # on where a test wants MFU (test_frameworks)
        "timeout_s": 120,
        "idle_timeout_s": 60,
        "monitor_interval_s": 0.05,
    }
    base.update(overrides)
    return base


def fault_suite(*modes: str, **overrides: Any) -> dict[str, Any]:
    return suite_dict(frameworks=list(modes), workers={m: "tests.fault_worker" for m in modes}, **overrides)


@pytest.fixture
def write_suite(tmp_path: Path):
    def _write(data: dict[str, Any], name: str = "suite.yaml") -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    return _write


def cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """`python -m mlbench ARGS` as a user runs it."""
    # RESULTS.md without chart images (4 s of Chromium a run); tests/test_publish.py renders them for real
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "MLBENCH_CHART_IMAGES": "0", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "mlbench", *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout
    )


def descendants_alive(pids: list[int]) -> list[int]:
    return [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]


def by_hand(module: str, data_dir: Path, *extra: str) -> list[str]:
    """A tiny MLP cell run by hand, as a person debugging one cell would."""
    return [
        sys.executable,
        "-m",
        module,
        "--model",
        "mlp",
        "--batch-size",
        "16",
        "--train-samples",
        "64",
        "--val-samples",
        "16",
        "--warmup-steps",
        "1",
        "--data-dir",
        str(data_dir),
        *extra,
    ]


_NETNS: list[str] | None = None


def loopback_only_prefix() -> list[str]:
    """argv prefix that runs a command in a network namespace of its own holding only the loopback
    interface (a local Ray cluster then listens on 127.0.0.1 alone and can reach nothing else);
    [] where no namespace can be made here (the caller skips)."""
    global _NETNS
    if _NETNS is None:
        _NETNS = []
        for unshare in (["unshare", "--net"], ["unshare", "--map-root-user", "--net"]):
            argv = [*unshare, "--", "sh", "-c", 'ip link set lo up && exec "$@"', "sh"]
            try:
                ok = subprocess.run([*argv, "true"], capture_output=True, timeout=30).returncode == 0
            except (OSError, subprocess.TimeoutExpired):
                ok = False
            if ok:
                _NETNS = argv
                break
    return _NETNS


def verify_run(
    framework: str,
    model: str,
    device: str,
    run_dir: Path,
    timeout_s: float = 600,
    overrides: dict | None = None,
    module: str | None = None,
) -> tuple[Any, dict]:
    """One framework's `mlbench verify` task for one model on `device` (cpu, cpu:0,1), in its built-in
    worker or `module` (a test's deliberately broken one): the worker's outcome and its verify event
    (None when it did not finish)."""
    from mlbench.config import BUILTIN_WORKERS
    from mlbench.process import runner
    from mlbench.tasks import verify

    module = module or BUILTIN_WORKERS[framework]
    cell = verify.verify_cell(framework, model, module, overrides, 0, device=device)
    run_dir.mkdir(parents=True, exist_ok=True)
    outcome = runner.run_cell(
        cell, run_dir, module=module, timeout_s=timeout_s, idle_timeout_s=timeout_s,
        extra={"verify_dir": str(run_dir.resolve())}, threads=2,
    )  # fmt: skip
    return outcome, next((e for e in outcome.events if e["event"] == "verify"), None)
