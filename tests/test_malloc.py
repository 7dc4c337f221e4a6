"""`malloc: steady`: the environment the workers get, and what it does to a real process's page faults."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from mlbench.cells import expand
from mlbench.config import Suite, parse_suite
from mlbench.process import runner
from tests.conftest import ROOT, suite_dict
from workers.common import malloc


def _cell(**overrides):
    return expand(parse_suite(suite_dict(frameworks=["pytorch"], models=["mlp"], batch_sizes=[8], **overrides)))[0]


def test_steady_sets_glibc_tunables_and_system_leaves_the_environment(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    steady = runner.worker_env(_cell(), 1, tmp_path)
    assert steady["GLIBC_TUNABLES"] == malloc.STEADY
    assert "GLIBC_TUNABLES" not in runner.worker_env(_cell(malloc="system"), 1, tmp_path)
    # a user's own tunables are kept, after ours: glibc takes the last value of a tunable
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=2")
    assert runner.worker_env(_cell(), 1, tmp_path)["GLIBC_TUNABLES"] == (malloc.STEADY + ":glibc.malloc.arena_max=2")
    assert runner.worker_env(_cell(malloc="system"), 1, tmp_path)["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2"
    # every mode the config allows has its entry, and nothing else passes for one
    assert set(malloc.TUNABLES) == set(Suite.model_fields["malloc"].annotation.__args__)
    assert Suite.model_fields["malloc"].default == malloc.DEFAULT  # what a worker started by hand takes
    with pytest.raises(KeyError):
        malloc.env_for("jemalloc", {})


# A step's temporaries as glibc sees them: three 1 MiB blocks taken, written and given back, over and
# over. By default the first frees raise the mmap threshold to 1 MiB and the trim threshold to 2 MiB,
# so the blocks come from the heap, and freeing all three leaves 3 MiB at its top: trimmed, given back
# to the kernel, and faulted in again by the next round.
ROUNDS = r"""
import ctypes, resource
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
def rounds(n):
    for _ in range(n):
        blocks = [libc.malloc(1 << 20) for _ in range(3)]
        for b in blocks:
            ctypes.memset(b, 1, 1 << 20)
        for b in blocks:
            libc.free(b)
rounds(5)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
rounds(20)
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20)
"""


@pytest.mark.e2e
@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="GLIBC_TUNABLES is glibc's")
def test_steady_malloc_stops_a_process_from_faulting_its_freed_memory_in_again() -> None:
    def faults_per_round(mode: str) -> float:
        env = {**malloc.env_for(mode, {}), "PATH": "/usr/bin:/bin"}
        return float(
            subprocess.run([sys.executable, "-c", ROUNDS], env=env, capture_output=True, text=True, check=True).stdout
        )

    system, steady = faults_per_round("system"), faults_per_round("steady")
    # 3 MiB written a round: 768 pages of 4 KiB each time by default; kept (next to none) when steady
    assert system > 500, system
    assert steady < 10, steady


def test_the_readme_gives_the_setting_a_worker_run_by_hand_needs() -> None:
    assert f"GLIBC_TUNABLES={malloc.STEADY}" in (ROOT / "README.md").read_text()


# glibc reads GLIBC_TUNABLES at start-up: a worker started by hand re-executes itself once with them
ENSURE = (
    r"""
import os, sys
from workers.common import malloc
malloc.ensure(sys.argv[1])
print(os.environ.get("GLIBC_TUNABLES"))
"""
    + ROUNDS
)


@pytest.mark.e2e
@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="GLIBC_TUNABLES is glibc's")
@pytest.mark.parametrize(
    ("mode", "own", "tunables"),
    [
        ("steady", None, malloc.STEADY),
        ("steady", "glibc.malloc.arena_max=2", malloc.STEADY + ":glibc.malloc.arena_max=2"),
        ("steady", malloc.STEADY, malloc.STEADY),  # under the orchestrator: already set, no restart
        ("system", None, None),
    ],
)
def test_a_process_started_by_hand_restarts_itself_once_with_the_malloc_setting(mode, own, tunables) -> None:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), **({"GLIBC_TUNABLES": own} if own else {})}
    proc = subprocess.run(
        [sys.executable, "-c", ENSURE, mode], env=env, cwd=ROOT, capture_output=True, text=True, check=True
    )
    seen, faults = proc.stdout.split()
    assert seen == str(tunables)
    restarted = mode == "steady" and own != malloc.STEADY
    assert proc.stderr.count("restarting with GLIBC_TUNABLES") == (1 if restarted else 0), proc.stderr
    # and glibc took them: the freed blocks are kept (see the test above)
    assert (float(faults) < 10) == (mode == "steady"), faults


@pytest.mark.parametrize("mode", ["steady", "system"])
def test_no_worker_the_orchestrator_starts_restarts_itself(mode: str, tmp_path: Path, monkeypatch) -> None:
    """Whatever the task (a grid cell, calibration, verify, a data check), the malloc its worker reads
    from its payload is what the orchestrator already put in its environment: a verify or data payload
    carries no malloc, and the by-hand default (steady) made such a worker restart itself."""
    from mlbench.tasks import calibration, verify, verify_data
    from workers.common import cli

    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    suite = parse_suite(suite_dict(frameworks=["pytorch"], models=["mlp"], batch_sizes=[8], malloc=mode))
    cells = {
        "train": expand(suite)[0],
        "calibrate": calibration.calibration_cell(suite, "pytorch", "cpu", "fp32"),
        "verify": verify.verify_cell("pytorch", ["mlp"], "workers.pytorch_worker", None, 0),
        "data": verify_data._cells(suite, "mlp", 0)[0],
    }
    for task, cell in cells.items():
        env = runner.worker_env(cell, 1, tmp_path)
        payload = cell.worker_payload(data_dir=str(tmp_path), device="cpu", threads=1)
        read = cli.parse(["--cell", json.dumps(payload)], "pytorch")["malloc"]
        assert malloc.restart_env(read, env) is None, (task, read, env.get("GLIBC_TUNABLES"))
    for task in ("train", "calibrate"):  # these take the suite's setting
        assert runner.worker_env(cells[task], 1, tmp_path).get("GLIBC_TUNABLES") == malloc.TUNABLES[mode], task
