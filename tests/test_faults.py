"""Every worker fault, run for real through the orchestrator: status, reason, the run goes on, nothing survives."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import ROOT, cli, descendants_alive, fault_suite

pytestmark = pytest.mark.e2e  # real worker processes or framework training: not in make test-fast


FAULTS = {  # mode: (status, fragment of the reason)
    "raise": ("failed", "KeyError"),
    "uncaught": ("crashed", "RuntimeError: boom from the fault worker"),
    "segfault": ("crashed", "killed by SIGSEGV"),
    "abort": ("crashed", "killed by SIGABRT"),
    "oom": ("oom", "CUDA out of memory"),
    "unsupported": ("skipped", "bf16 is not supported"),
    "noresult": ("crashed", "exited with status 0 without a result"),
    "hang": ("timeout", "no event for 3 s"),
    "hangchild": ("timeout", "no event for 3 s"),
    "busy": ("timeout", "wall-clock limit"),
    "sigterm_ignorer": ("timeout", "no event for 3 s"),
    "orphan": ("ok", ""),
    "flood": ("ok", ""),
    "fine": ("ok", ""),
    "notinstalled": ("skipped", "torch is not installed here"),
    "ghost": ("skipped", "worker module tests.no_such_worker is not installed"),
    "html": ("failed", "<script>"),
    "oomkill": ("oom", "killed by the kernel's OOM killer"),
}


@pytest.fixture(scope="module")
def fault_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("faults")
    piddir = tmp / "pids"
    piddir.mkdir()
    import yaml

    suite = fault_suite(*FAULTS, timeout_s=6, idle_timeout_s=3)
    suite["workers"]["ghost"] = "tests.no_such_worker"
    (tmp / "faults.yaml").write_text(yaml.safe_dump(suite))
    t0 = time.monotonic()
    proc = cli("run", "faults.yaml", "--runs-dir", "runs", cwd=tmp, env={"FAULT_PIDDIR": str(piddir)})
    elapsed = time.monotonic() - t0
    yield tmp, proc, elapsed, piddir
    group = piddir / "oomkill.cgroup"
    if group.exists():  # the memory cgroup the oomkill worker made for itself
        Path(group.read_text()).rmdir()


def test_the_run_goes_on_and_stores_every_cell(fault_run) -> None:
    tmp, proc, elapsed, _ = fault_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    df = pd.read_parquet(tmp / "runs" / "t" / "results.parquet")
    assert sorted(df.framework) == sorted(FAULTS)
    assert elapsed < 120


@pytest.mark.parametrize("mode", list(FAULTS))
def test_each_fault_is_classified(fault_run, mode: str) -> None:
    tmp, _, _, _ = fault_run
    df = pd.read_parquet(tmp / "runs" / "t" / "results.parquet").set_index("framework")
    status, fragment = FAULTS[mode]
    r = df.loc[mode]
    if mode == "oomkill" and r.status == "skipped":
        pytest.skip(r.reason)  # no permission to make a memory cgroup here
    assert r.status == status, (r.status, r.reason, r.stderr_tail)
    assert fragment in r.reason, r.reason
    assert "\n" not in r.reason


def test_no_process_of_any_cell_survives(fault_run) -> None:
    _, _, _, piddir = fault_run
    pids = [int(p.read_text()) for p in piddir.glob("*.pid")]
    assert len(pids) >= len(FAULTS) - 1 + 2  # every worker (ghost has none), plus hangchild's and orphan's children
    assert descendants_alive(pids) == []


def test_uncaught_exception_keeps_the_stderr_tail(fault_run) -> None:
    tmp, _, _, _ = fault_run
    r = pd.read_parquet(tmp / "runs" / "t" / "results.parquet").set_index("framework").loc["uncaught"]
    assert "Traceback" in r.stderr_tail and "boom from the fault worker" in r.stderr_tail


def test_hung_worker_dumps_its_stack_before_the_kill(fault_run) -> None:
    tmp, _, _, _ = fault_run
    r = pd.read_parquet(tmp / "runs" / "t" / "results.parquet").set_index("framework").loc["hang"]
    log = (tmp / "runs" / "t" / "logs" / f"{r.cell_id}.stderr.log").read_text()
    assert "time.sleep" in log or "File " in log, log[-2000:]


def test_flood_is_bounded_and_said(fault_run) -> None:
    tmp, _, _, _ = fault_run
    r = pd.read_parquet(tmp / "runs" / "t" / "results.parquet").set_index("framework").loc["flood"]
    logs_dir = tmp / "runs" / "t" / "logs"
    assert (logs_dir / f"{r.cell_id}.stderr.log").stat().st_size < 3 << 20  # 8 MiB written, head and tail kept
    assert "bytes cut by mlbench" in (logs_dir / f"{r.cell_id}.stderr.log").read_text()
    lines = json.loads(r.log_lines)
    assert any("was cut" in line for line in lines)  # the 3 MiB line
    assert any("log lines cut" in line for line in lines)
    assert len(lines) <= 202
    assert r.samples_per_second == pytest.approx(8 * 16 / 0.008)  # 8 timed steps of the cell's batch of 16


def test_worker_text_is_escaped_in_the_report(fault_run) -> None:
    tmp, _, _, _ = fault_run
    html = (tmp / "runs" / "t" / "report.html").read_text()
    assert "<script>alert" not in html and "&lt;script&gt;alert(&#x27;mlbench&#x27;)&lt;/script&gt;" in html


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupt_stops_the_cell_keeps_the_finished_and_exits_130(tmp_path: Path, sig: int) -> None:
    import yaml

    (tmp_path / "s.yaml").write_text(yaml.safe_dump(fault_suite("fine", "hang", timeout_s=60, idle_timeout_s=60)))
    piddir = tmp_path / "pids"
    piddir.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FAULT_PIDDIR": str(piddir)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlbench", "run", "s.yaml", "--runs-dir", "runs"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not (piddir / "hang-worker.pid").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    hang_pid = int((piddir / "hang-worker.pid").read_text())
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "resume with: python -m mlbench run s.yaml --resume" in err
    cells = list((tmp_path / "runs" / "t" / "cells").glob("*.parquet"))
    assert len(cells) == 1  # the finished cell; the interrupted one is not stored as done
    journal = (tmp_path / "runs" / "t" / "journal.ndjson").read_text()
    assert '"action": "interrupted"' in journal
    assert descendants_alive([hang_pid]) == []


def test_an_unwritable_run_folder_is_a_clear_error(tmp_path: Path) -> None:
    import yaml

    (tmp_path / "s.yaml").write_text(yaml.safe_dump(fault_suite("fine")))
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "t").write_text("a file where the run folder should be")
    proc = cli("run", "s.yaml", "--runs-dir", "runs", cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: cannot use the run folder runs/t:"), proc.stderr


def test_a_full_disk_stops_the_run_with_no_half_written_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    import yaml
    from click.testing import CliRunner

    from mlbench import cli as mlbench_cli
    from mlbench.results import store

    (tmp_path / "s.yaml").write_text(yaml.safe_dump(fault_suite("fine", "slow")))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    real = store.pq.write_table
    calls = {"n": 0}

    def full_after_first(table, where, *a, **kw):
        calls["n"] += 1
        if calls["n"] > 1:  # the first cell is stored; then the disk is full
            with open(where, "wb") as f:
                f.write(b"PAR1 half")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(table, where, *a, **kw)

    monkeypatch.setattr(store.pq, "write_table", full_after_first)
    monkeypatch.setenv("FAULT_SLOW_S", "0")
    result = CliRunner().invoke(mlbench_cli.main, ["run", "s.yaml", "--runs-dir", "runs"])
    assert result.exit_code == 1, result.output
    assert "the disk is full" in result.output and "resume with: python -m mlbench run s.yaml --resume" in result.output
    cells = tmp_path / "runs" / "t" / "cells"
    assert [p.name for p in cells.iterdir()] == [f"{p.stem}.parquet" for p in cells.glob("*.parquet")]  # no temporaries
    assert len(list(cells.glob("*.parquet"))) == 1 and store.read_status(next(cells.glob("*.parquet"))) == "ok"


def test_a_kill_by_the_kernel_oom_killer_is_oom() -> None:
    from mlbench.process.runner import classify

    # the cgroup's oom_kill counter rose while the worker died by SIGKILL that mlbench did not send
    assert classify(-9, [], None, 1, "", (10, 10)) == (
        "oom",
        "killed by the kernel's OOM killer (SIGKILL; the cgroup's oom_kill count rose)",
    )
    assert classify(-9, [], None, 0, "last words", (10, 10)) == ("crashed", "killed by SIGKILL: last words")


def test_a_second_orchestrator_on_the_same_run_is_refused(tmp_path: Path) -> None:
    import yaml

    (tmp_path / "s.yaml").write_text(yaml.safe_dump(fault_suite("hang", timeout_s=60, idle_timeout_s=60)))
    piddir = tmp_path / "pids"
    piddir.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FAULT_PIDDIR": str(piddir)}
    first = subprocess.Popen(
        [sys.executable, "-m", "mlbench", "run", "s.yaml", "--runs-dir", "runs"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not (piddir / "hang-worker.pid").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        second = cli("run", "s.yaml", "--runs-dir", "runs", "--resume", cwd=tmp_path)
        assert second.returncode == 1 and "Traceback" not in second.stderr
        assert f"runs/t is in use by another mlbench run (pid {first.pid})" in second.stderr
    finally:
        first.send_signal(signal.SIGINT)
        first.wait(timeout=60)


def test_a_storm_of_sigkills_then_resume_stores_every_cell_once(tmp_path: Path) -> None:
    """The orchestrator SIGKILLed at twenty random instants (seeded), resumed after each: every cell is
    stored exactly once, no finished file rewritten, no temporary left, no worker alive, and the journal
    names each cell a kill left unfinished and each start's plan."""
    import random

    import yaml

    batches = list(range(1, 13))  # 12 cells of about half a second each
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(fault_suite("slow", batch_sizes=batches)))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FAULT_SLOW_S": "0.4", "MLBENCH_CHART_IMAGES": "0"}
    argv = [sys.executable, "-m", "mlbench", "run", "s.yaml", "--runs-dir", "runs", "--resume"]
    cells = tmp_path / "runs" / "t" / "cells"
    rng, seen = random.Random(0), {}
    for _ in range(20):
        proc = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.5, 3.0))  # in the start-up, a cell, a store or the rebuild
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        for p in cells.glob("*.parquet"):
            seen.setdefault(p, (p.stat().st_ino, p.stat().st_mtime_ns))
    done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    df = pd.read_parquet(tmp_path / "runs" / "t" / "results.parquet")
    assert len(df) == len(batches) and df.cell_id.is_unique and set(df.status) == {"ok"}
    assert len(list(cells.glob("*.parquet"))) == len(batches) and not list(cells.glob(".*.tmp"))
    for p, stamp in seen.items():  # stored once: no finished cell file was written again
        assert (p.stat().st_ino, p.stat().st_mtime_ns) == stamp
    journal = [json.loads(x) for x in (tmp_path / "runs" / "t" / "journal.ndjson").read_text().splitlines() if x]
    time.sleep(0.5)
    assert descendants_alive([e["pid"] for e in journal if e["action"] == "cell_start"]) == []
    # each start of a cell ends once: its result, or (a kill cut it short) the next start names it abandoned
    open_: dict[str, bool] = {}
    for e in journal:
        if e["action"] == "cell_start":
            assert not open_.get(e["cell_id"]), e  # never started again before the last start was closed
            open_[e["cell_id"]] = True
        elif e["action"] in ("cell", "abandoned"):
            assert open_.get(e["cell_id"]), e
            open_[e["cell_id"]] = False
    # left open only where a kill fell between a cell's file and its journal line: then it is stored
    assert all(p.exists() for p in (cells / f"{cid}.parquet" for cid, o in open_.items() if o))
    assert any(e["action"] == "abandoned" for e in journal), "no kill landed in a cell: the storm tested nothing"
    plans = [e for e in journal if e["action"] == "start"]
    assert plans and all(p["to_run"] + p["stored"] == len(batches) for p in plans)
    assert plans[-1]["to_run"] == len(batches) - plans[-1]["stored"]
