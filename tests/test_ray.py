"""executor: ray, for real: a local Ray instance that mlbench starts for the run, in a network
namespace of its own that holds only the loopback interface (so it listens on 127.0.0.1 alone and
reaches nothing else), with fixed small resources; it stops with the run."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import psutil
import pyarrow.parquet as pq
import pytest
import yaml

from tests.conftest import ROOT, cli, descendants_alive, fault_suite, loopback_only_prefix, suite_dict

pytest.importorskip("ray", reason="the ray extra is not installed")
pytestmark = pytest.mark.e2e

RAY = {"executor": "ray", "threads": 1, "ray": {"num_cpus": 2, "num_gpus": 0}}
# what differs between two runs of the same cell by its nature: figures measured in time or
# memory, and when it ran. Every other column must be equal whatever executor ran the cell.
MEASURED = {
    "achieved_tflops", "avg_memory_mb", "compile_time_s", "cpu_other_pct", "cpu_util_avg_pct", "data_wait_s",
    "duration_s", "epochs_detail", "first_step_s", "host_rss_avg_mb", "host_rss_peak_mb", "inference_b1_runs",
    "inference_b1_latency_mean_ms", "inference_b1_latency_p50_ms", "inference_b1_latency_p95_ms",
    "inference_b1_latency_p99_ms", "inference_b1_times_ms", "inference_latency_mean_ms", "inference_runs",
    "inference_latency_p50_ms", "inference_latency_p95_ms", "inference_latency_p99_ms", "inference_times_ms",
    "model_load_s", "model_save_s", "monitor_samples", "page_faults_per_step", "peak_memory_mb",
    "samples_per_second", "samples_per_second_ci_high", "samples_per_second_ci_low", "started_at", "step_time_cv",
    "step_time_max_s", "step_time_mean_s", "step_time_median_s", "step_time_min_s", "step_times_s",
    "total_train_time", "train_time_per_epoch", "warmup_time_s", "warmup_times_s", "worker_max_rss_mb",
    "step_time_outliers", "noisy", "warmup_steps_detected", "steps_timed", "samples_per_second_per_device",
    "step_data_s", "step_forward_s", "step_backward_s", "step_optimizer_s", "step_other_s", "step_profiled_s",
    "memory_activations_mb", "bottleneck", "bottleneck_evidence", "cpu_other_train_pct",
    "cpu_orchestrator_train_pct", "cpu_other_inference_pct", "gc_pause_s", "gc_steps", "step_outliers_with_gc",
    "step_time_robust_cv", "steady_dropped_steps", "steady_capped", "inference_b1_latency_robust_cv",
    "inference_b1_outliers", "inference_b1_latency_p50_ci_low_ms", "inference_b1_latency_p50_ci_high_ms",
    "repeat_b1_latency_p50_ms", "ci_kind",
    # the data path's timings and the monitor's readings of the tree
    "data_wait_p50_s", "data_wait_p99_s", "data_wait_share", "accelerator_utilisation", "au_pass", "input_ready",
    "accelerator_utilisation_ci_low", "accelerator_utilisation_ci_high", "au_pass_reason",
    "loader_samples_per_second", "loader_mb_per_second", "time_to_first_batch_s", "data_tax", "data_tax_low",
    "data_tax_high", "child_cpu_avg_pct", "tree_pss_peak_mb", "dev_shm_peak_mb", "read_chars_mb", "read_disk_mb",
}  # fmt: skip


@pytest.fixture(scope="module")
def netns() -> list[str]:
    prefix = loopback_only_prefix()
    if not prefix:
        pytest.skip("no network namespace can be made here: a local Ray cluster would listen on every interface")
    return prefix


def _argv(netns: list[str], *args: str) -> list[str]:
    return [*netns, sys.executable, "-m", "mlbench", *args]


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), **extra}


def _journal(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "journal.ndjson").read_text().splitlines() if line.strip()]


def _ray_processes(run: Path) -> list[int]:
    """The processes of the local Ray instances the run's journal records, still alive."""
    out = []
    for e in _journal(run):
        if e["action"] == "ray_session":
            for p in e["processes"]:
                try:
                    proc = psutil.Process(p["pid"])
                    if abs(proc.create_time() - p["create_time"]) < 0.01 and proc.status() != psutil.STATUS_ZOMBIE:
                        out.append(p["pid"])
                except psutil.Error:
                    continue
    return out


def _wait_for(path: Path, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.1)


def _launch(netns: list[str], tmp_path: Path, suite: dict[str, Any], **env: str) -> tuple[subprocess.Popen, Path]:
    """`mlbench run` on a fault suite in the loopback-only namespace; the fault workers note their pids."""
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(suite))
    piddir = tmp_path / "pids"
    piddir.mkdir()
    proc = subprocess.Popen(
        _argv(netns, "run", "s.yaml", "--runs-dir", "runs"),
        cwd=tmp_path, env=_env(FAULT_PIDDIR=str(piddir), **env), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    return proc, piddir


def _normalised_flags(flags: str) -> dict[str, str]:
    return {k: v for k, v in json.loads(flags).items() if not k.endswith("CACHE_DIR")}  # node-local folders


def test_real_cells_through_ray_equal_the_local_executors_rows(tmp_path: Path, netns: list[str]) -> None:
    suite = suite_dict(frameworks=["pytorch", "jax"], threads=1, ray=RAY["ray"])
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(suite))
    local = cli("run", "s.yaml", "--runs-dir", "local", cwd=tmp_path)
    assert local.returncode == 0, local.stderr[-3000:]
    on_ray = subprocess.run(
        _argv(netns, "run", "s.yaml", "--runs-dir", "ray", "--executor", "ray"),
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert on_ray.returncode == 0, on_ray.stderr[-3000:]
    a, b = (
        {r["cell_id"]: r for r in pq.read_table(tmp_path / where / "t" / "results.parquet").to_pylist()}
        for where in ("local", "ray")
    )
    assert sorted(a) == sorted(b) and len(a) == 2
    for cell, x in a.items():
        y = b[cell]
        assert x["status"] == y["status"] == "ok"
        assert (x["executor"], y["executor"]) == ("local", "ray")
        assert y["hostname"] == socket.gethostname()
        assert _normalised_flags(x["env_flags"]) == _normalised_flags(y["env_flags"])
        assert x["ray_node_id"] is None and len(y["ray_node_id"]) == 56  # the node that ran it, by its id
        for column in sorted(set(x) - MEASURED - {"executor", "env_flags", "ray_node_id"}):
            if column.startswith("final_") and x[column] is not None:
                assert y[column] == pytest.approx(x[column], rel=1e-6), column  # the same arithmetic and threads
            else:
                assert x[column] == y[column], (column, x[column], y[column])
    # the node's logs came back to the head
    for cell in b:
        events = (tmp_path / "ray" / "t" / "logs" / f"{cell}.ndjson").read_text().splitlines()
        assert json.loads(events[0])["event"] == "hello" and json.loads(events[-1])["event"] == "result"
    assert _ray_processes(tmp_path / "ray" / "t") == []  # the local instance stopped with the run


def test_sigkill_of_the_orchestrator_on_ray_then_resume_locally(tmp_path: Path, netns: list[str]) -> None:
    proc, piddir = _launch(netns, tmp_path, fault_suite("fine", "slow", **RAY), FAULT_SLOW_S="600")
    run = tmp_path / "runs" / "t"
    try:
        _wait_for(piddir / "slow-worker.pid")
        deadline = time.monotonic() + 120
        while not any(e["action"] == "cell" for e in _journal(run)):  # the fine cell is stored
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    stored = list((run / "cells").glob("*.parquet"))
    assert len(stored) == 1
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in stored}
    slow_pid = int((piddir / "slow-worker.pid").read_text())

    resumed = cli("run", "s.yaml", "--runs-dir", "runs", "--resume", "--executor", "local", cwd=tmp_path,
                  env={"FAULT_PIDDIR": str(piddir), "FAULT_SLOW_S": "0"})  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "1 ok (1 already stored)" in resumed.stdout
    after = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (run / "cells").glob("*.parquet")}
    assert len(after) == 2 and all(after[name] == before[name] for name in before)  # nothing rewritten
    ended = [e["cell_id"] for e in _journal(run) if e["action"] == "cell"]
    assert sorted(ended) == sorted(set(ended)) and len(ended) == 2  # each cell stored once
    df = pd.read_parquet(run / "results.parquet").set_index("framework")
    assert df.loc["fine", "executor"] == "ray" and df.loc["slow", "executor"] == "local"
    assert descendants_alive([slow_pid]) == []  # no worker left on the node
    assert _ray_processes(run) == []  # nor anything of the killed run's Ray instance


def test_sigint_during_a_ray_cell_exits_130_and_leaves_nothing(tmp_path: Path, netns: list[str]) -> None:
    proc, piddir = _launch(netns, tmp_path, fault_suite("hang", **RAY, timeout_s=300, idle_timeout_s=300))
    try:
        _wait_for(piddir / "hang-worker.pid")
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert "resume with: python -m mlbench run s.yaml --resume" in err
    assert not list((tmp_path / "runs" / "t" / "cells").glob("*.parquet"))
    assert descendants_alive([int((piddir / "hang-worker.pid").read_text())]) == []
    assert _ray_processes(tmp_path / "runs" / "t") == []


def test_a_dead_node_marks_its_cell_crashed_and_the_run_goes_on(tmp_path: Path, netns: list[str]) -> None:
    """The Ray worker process that runs a cell's task dies (as when its node goes): that cell is
    `crashed` naming the node, the other cell still runs."""
    suite = fault_suite("slow", "fine", **{**RAY, "ray": {"num_cpus": 1, "num_gpus": 0}})
    proc, piddir = _launch(netns, tmp_path, suite, FAULT_SLOW_S="600")
    try:
        _wait_for(piddir / "slow-worker.pid")
        slow_pid = int((piddir / "slow-worker.pid").read_text())
        psutil.Process(slow_pid).parent().kill()  # the Ray worker process that runs the task
        out, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    df = pd.read_parquet(tmp_path / "runs" / "t" / "results.parquet").set_index("framework")
    assert df.loc["fine", "status"] == "ok"
    assert df.loc["slow", "status"] == "crashed"
    assert (
        f"the Ray task on {socket.gethostname()} (node " in df.loc["slow", "reason"]
        and ") died" in df.loc["slow", "reason"]
    )
    assert descendants_alive([slow_pid]) == []


def test_a_lost_cluster_stops_the_run_with_one_line_and_the_resume_command(tmp_path: Path, netns: list[str]) -> None:
    """The cluster's GCS dies mid-cell: Ray would end the driver from C++ a minute later without a
    word; mlbench notices first, stops in good order and says what happened."""
    proc, piddir = _launch(netns, tmp_path, fault_suite("slow", **RAY), FAULT_SLOW_S="600")
    run = tmp_path / "runs" / "t"
    try:
        _wait_for(piddir / "slow-worker.pid")
        session = next(e for e in _journal(run) if e["action"] == "ray_session")
        gcs = next(p["pid"] for p in session["processes"] if p["name"] == "gcs_server")
        psutil.Process(gcs).kill()
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, err[-3000:]
    mine = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(mine) == 1 and "lost the Ray cluster" in mine[0], err[-3000:]
    assert "resume with: python -m mlbench run s.yaml --resume" in mine[0]
    assert any(e["action"] == "cluster_lost" for e in _journal(run))
    assert descendants_alive([int((piddir / "slow-worker.pid").read_text())]) == []
    assert _ray_processes(run) == []


def test_a_cluster_of_nodes_places_cells_loses_one_takes_a_joiner_and_resumes(tmp_path: Path, netns: list[str]) -> None:
    """Three raylets on this machine (a head without CPUs and, first, one node of one CPU): the hanging
    cell takes the node, a node that joins mid-run takes the other cell, then the first node is killed
    (its raylet and every process under it) in the middle of its cell: that cell is `crashed` naming the
    lost node's id, the other cell's row names the node that ran it, the run ends in good order, and
    `--resume --retry-failed` runs that cell alone, on the node left. Nothing keeps running."""
    suite = fault_suite("hangonce", "fine", executor="ray", threads=1)
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(suite))
    piddir = tmp_path / "pids"
    piddir.mkdir()
    run = [sys.executable, "-m", "mlbench", "run", "s.yaml", "--runs-dir", "runs"]
    resume = [*run, "--resume", "--retry-failed"]  # the hanging cell finishes at once the second time
    proc = subprocess.Popen(
        [*netns, sys.executable, "-m", "tests.ray_nodes", str(tmp_path), "1", *run, "--then", *resume],
        cwd=tmp_path, env=_env(FAULT_PIDDIR=str(piddir)),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    cells = tmp_path / "runs" / "t" / "cells"
    try:
        _wait_for(piddir / "hangonce-worker.pid", 180)
        cluster = json.loads((tmp_path / "cluster.json").read_text())
        ((first, raylet),) = cluster["nodes"].items()
        slow_pid = int((piddir / "hangonce-worker.pid").read_text())
        assert raylet in [p.pid for p in psutil.Process(slow_pid).parents()]  # the one node runs it
        assert not (piddir / "fine-worker.pid").exists()  # one CPU in the cluster: the other cell waits
        (tmp_path / "add-node").touch()  # a node joins mid-run ...
        _wait_for(piddir / "fine-worker.pid", 120)  # ... and receives the waiting cell
        deadline = time.monotonic() + 120
        while len(list(cells.glob("*.parquet"))) < 1:
            assert time.monotonic() < deadline, "the joining node's cell never finished"
            time.sleep(0.2)
        node = psutil.Process(raylet)  # the first node lost: its raylet and everything under it
        doomed = [node, *node.children(recursive=True)]
        for p in doomed:
            with contextlib.suppress(psutil.Error):
                p.kill()
        out, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    first_run = (tmp_path / "run0.out").read_text() + (tmp_path / "run0.err").read_text()
    second_run = (tmp_path / "run1.out").read_text() + (tmp_path / "run1.err").read_text()
    assert proc.returncode == 0, (err[-2000:], first_run[-3000:], second_run[-3000:])
    cluster = json.loads((tmp_path / "cluster.json").read_text())
    (second,) = set(cluster["nodes"]) - {first}
    journal = _journal(tmp_path / "runs" / "t")
    crashed = [e for e in journal if e["action"] == "cell" and e["status"] == "crashed"]
    assert len(crashed) == 1 and f"(node {first[:12]})" in crashed[0]["reason"] and "died" in crashed[0]["reason"]
    assert "1 ok (1 already stored)" in second_run, second_run[-3000:]
    rows = pd.read_parquet(tmp_path / "runs" / "t" / "results.parquet").set_index("framework")
    assert set(rows.status) == {"ok"} and set(rows.executor) == {"ray"}
    assert rows.loc["fine", "ray_node_id"] == second and rows.loc["hangonce", "ray_node_id"] == second
    assert rows.loc["fine", "hostname"] == rows.loc["hangonce", "hostname"] == socket.gethostname()
    assert descendants_alive([slow_pid, int((piddir / "fine-worker.pid").read_text()), *cluster["pids"]]) == []
