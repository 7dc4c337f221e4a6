"""The project's own files install it: `make venv` on CPU, `make venv GPU=1` with the CUDA builds."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def planned(venv: Path, *args: str) -> str:
    """The commands `make venv` would run for a venv at `venv` (make -n: nothing is run)."""
    return subprocess.run(
        ["make", "-n", "venv", f"VENV={venv}", *args], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout


def test_a_gpu_venv_installs_the_cuda_builds_and_keeps_them(tmp_path: Path) -> None:
    cpu = planned(tmp_path)
    assert "'.[torch,tensorflow,jax,ray,storage,dev]'" in cpu and "requirements-gpu.lock" not in cpu
    gpu = planned(tmp_path, "GPU=1")
    assert "'.[torch,tensorflow-gpu,jax-gpu,ray,storage,dev]'" in gpu and "-c requirements-gpu.lock" in gpu
    assert "uninstall --quiet --yes tensorflow-cpu" in gpu and "pip check" in gpu
    # built so once, the venv stays a GPU venv: a later plain `make test` does not bring tensorflow-cpu back
    (tmp_path / ".gpu").write_text("1\n")
    assert "tensorflow-gpu" in planned(tmp_path) and "'.[torch,tensorflow,jax" in planned(tmp_path, "GPU=0")


def test_the_gpu_extras_resolve_against_the_locks() -> None:
    """Every package the GPU extras name is pinned (in requirements.lock or requirements-gpu.lock)."""
    pins = {}
    for lock in ("requirements.lock", "requirements-gpu.lock"):
        for line in (ROOT / lock).read_text().splitlines():
            if m := re.match(r"([A-Za-z0-9_.-]+)==(\S+)", line):
                pins[m.group(1).lower().replace("_", "-")] = m.group(2)
    text = (ROOT / "pyproject.toml").read_text()
    for extra in ("tensorflow-gpu", "jax-gpu"):
        reqs = re.search(rf"^{extra} = \[(.*)\]$", text, re.M).group(1)
        for name, version in re.findall(r'"([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?==([^"]+)"', reqs):
            assert pins.get(name.lower()) == version, f"{extra}: {name}=={version} is not pinned in a lock"
    for plugin in ("jax-cuda12-plugin", "jax-cuda12-pjrt", "nvidia-cudnn-cu12"):
        assert plugin in pins
