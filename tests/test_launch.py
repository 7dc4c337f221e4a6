"""The worker launcher (mlbench/process/launch.py): no Python runs between fork and exec in the threaded
orchestrator; the launcher sets what a worker needs, then becomes the worker."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

from mlbench.process import launch, runner
from tests.conftest import ROOT

PR_GET_PDEATHSIG = 2
SHOW = (
    "import ctypes, os\n"
    "v = ctypes.c_int()\n"
    f"ctypes.CDLL('libc.so.6').prctl({PR_GET_PDEATHSIG}, ctypes.byref(v))\n"
    "print(os.getpid(), os.getsid(0), v.value)"
)


def test_no_process_is_started_through_preexec_fn() -> None:
    """Python documents preexec_fn as unsafe in a process with threads (the orchestrator has several)."""
    for folder in ("mlbench", "workers"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Call):
                    assert all(k.arg != "preexec_fn" for k in node.keywords), path


def test_the_launcher_becomes_the_worker_in_a_session_of_its_own_that_dies_with_its_parent() -> None:
    proc, limit = runner.spawn([sys.executable, "-c", SHOW], dict(os.environ), None, 0.1)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and limit is None, err
    pid, session, deathsig = (int(x) for x in out.split())
    assert pid == proc.pid and session == proc.pid  # exec'd in place: the pid the runner watches and kills
    assert deathsig == 9  # SIGKILL when the orchestrator ends, even by SIGKILL


def test_a_launcher_whose_parent_is_already_gone_starts_nothing(tmp_path: Path) -> None:
    """Its parent ended before the death signal was set (it names another parent than it has): it exits."""
    marker = tmp_path / "ran"
    read, write = os.pipe()
    argv = [sys.executable, "-I", "-S", launch.__file__, "1", str(write), "", "--", "/bin/touch", str(marker)]
    done = subprocess.run(argv, pass_fds=(write,), timeout=60)
    os.close(write)
    assert done.returncode == 1 and not marker.exists() and os.read(read, 100) == b""
    os.close(read)


def test_the_benchs_median_interval_by_hand() -> None:
    from bench.launch_cost import median_interval

    assert median_interval([5.0, 1.0, 3.0, 2.0, 4.0]) == (3.0, 1.0, 5.0)  # n=5: +-2 order statistics
    assert median_interval([1.0, 2.0, 3.0, 4.0]) == (2.5, 1.0, 4.0)
