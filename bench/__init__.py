"""`make bench`: how close mlbench's figures are to hand-written loops, and what the orchestrator costs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
ENV = {"PYTHONPATH": str(ROOT), "MLBENCH_CHART_IMAGES": "0"}  # this checkout's mlbench; no chart images


def run_suite(folder: Path, suite: dict) -> Path:
    """`mlbench run` of `suite` (its name is the run's) in `folder`, as a user runs it; its run folder. A
    run that fails stops the bench with its stderr's end."""
    name = suite["name"]
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(suite))
    proc = subprocess.run(
        [sys.executable, "-m", "mlbench", "run", f"{name}.yaml", "--runs-dir", "runs"],
        cwd=folder, env={**os.environ, **ENV}, capture_output=True, text=True,
    )  # fmt: skip
    if proc.returncode != 0:
        raise SystemExit(f"the run {name} failed: {proc.stderr[-2000:]}")
    return folder / "runs" / name
