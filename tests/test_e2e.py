"""Real PyTorch cells end to end, on tiny sizes: figures, exports, report, resume, SIGKILL of the orchestrator."""

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
import yaml

from tests.conftest import (
    ROOT,
    SHARED_CELLS,
    TINY,
    by_hand,
    cli,
    copy_run,
    descendants_alive,
    shared_suite,
    suite_dict,
)
from workers.common import malloc, specs

pytest.importorskip("torch")
pytestmark = pytest.mark.e2e

SMALL = TINY


def tiny_suite(**kw) -> dict:
    base = suite_dict(
        models=["mlp", "resnet18", "bert"],
        precisions=["fp32", "bf16", "fp16"],
        batch_sizes=[16],
        model_overrides=SMALL,
        excludes=[{"model": ["resnet18", "bert"], "precision": ["bf16", "fp16"]}],
        dataset={"name": "synthetic", "train_samples": 96, "val_samples": 24},
    )
    base.update(kw)
    return base


def test_every_cell_is_ok_with_measured_figures(shared_run: Path) -> None:
    df = pd.read_parquet(shared_run / "results.parquet")
    assert len(df) == SHARED_CELLS and set(df.status) == {"ok"}, df[["model_name", "precision", "status", "reason"]]
    steps = 2 * (96 // 16) - 2  # two epochs, less the warm-up; steady state may drop a slow prefix
    for _, r in df.iterrows():
        assert r.num_parameters == specs.num_parameters(specs.get_spec(r.model_name, SMALL.get(r.model_name)))
        assert r.samples_per_second > 0 and r.step_time_median_s > 0 and 0 < r.steps_timed <= steps
        assert pd.isna(r.samples_per_second_ci_low) or r.samples_per_second_ci_low <= r.samples_per_second_ci_high
        assert 0 <= r.final_train_accuracy <= 1 and 0 <= r.final_val_accuracy <= 1
        assert r.inference_runs >= 3
        assert 0 < r.inference_latency_p50_ms <= r.inference_latency_p95_ms <= r.inference_latency_p99_ms
        assert r.peak_memory_mb > 50 and r.avg_memory_mb > 0 and r.monitor_samples > 0
        assert r.model_size_mb == pytest.approx(r.num_parameters * 4 / 2**20, rel=0.3, abs=0.05)
        assert r.first_step_s > 0 and r.total_train_time > 0
        assert r.train_time_per_epoch == pytest.approx(r.total_train_time / 2)
        assert r.framework_version and r.python_version and r.cpu_model
        assert pd.isna(r.gpu_utilization_pct) and pd.isna(r.gpu_energy_j)  # nothing measured them: missing, not 0
        assert len(r.step_times_s) == r.steps_timed and len(r.epochs_detail) == 2
        # counted, not assumed: a step of these tiny models may fault in no page at all
        assert r.page_faults_per_step >= 0
        assert json.loads(r.env_flags)["GLIBC_TUNABLES"] == malloc.STEADY  # `malloc: steady`, the default
    assert all(v.startswith("2.") for v in df[df.framework == "pytorch"].framework_version)


def test_precisions_are_recorded_as_run(shared_run: Path) -> None:
    df = pd.read_parquet(shared_run / "results.parquet")
    df = df[df.framework == "pytorch"].set_index(["model_name", "precision"])
    assert df.loc[("mlp", "fp16")].precision_mode == "autocast fp16 + GradScaler"
    assert df.loc[("mlp", "bf16")].precision_mode == "autocast bf16"


def test_exports_logs_and_report(shared_run: Path) -> None:
    run, n = shared_run, SHARED_CELLS
    assert len(pd.read_csv(run / "results.csv")) == n
    assert len(json.loads((run / "results.json").read_text())) == n
    assert len(pd.read_parquet(run / "epochs.parquet")) == 2 * n
    html = (run / "report.html").read_text()
    assert "Plotly.newPlot" in html and "<script src=" not in html  # self-contained
    assert html.count("Plotly.newPlot") >= 8 and html.count("plotly.js v") == 1  # plotly.js inlined once
    for _, r in pd.read_parquet(run / "results.parquet").iterrows():
        lines = (run / "logs" / f"{r.cell_id}.ndjson").read_text().splitlines()
        assert json.loads(lines[0])["event"] == "hello" and json.loads(lines[-1])["event"] == "result"
        # what a person running the worker by hand reads is the figure the results store
        assert json.loads(lines[-1])["samples_per_second"] == pytest.approx(r.samples_per_second, rel=1e-12)


def test_the_journal_says_what_the_orchestrator_itself_cost_each_cell(shared_run: Path) -> None:
    lines = (shared_run / "journal.ndjson").read_text().splitlines()
    cells = [e for e in map(json.loads, lines) if e["action"] == "cell"]
    assert len(cells) == SHARED_CELLS
    for e in cells:
        assert 0 < e["orchestrator_overhead_s"] < e["duration_s"]
        # its own CPU (spawning, the monitor's samples, reading events) is measured, and well below a core
        assert 0 < e["orchestrator_cpu_s"] < 0.5 * e["worker_wall_s"]


def test_report_opens_in_a_headless_browser_offline(shared_run: Path, tmp_path: Path) -> None:
    from tests.browser import open_report

    shot = tmp_path / "report.png"
    seen = open_report(shared_run / "report.html", screenshot=shot)
    assert seen["errors"] == [] and seen["console"] == [], seen
    assert seen["requests"] == [], "the report asked the network for something"
    html = (shared_run / "report.html").read_text()
    assert len(seen["charts"]) == html.count("Plotly.newPlot") >= 8
    assert all(c["drawn"] and c["traces"] > 0 for c in seen["charts"]), seen["charts"]
    # what has nothing to show on a CPU-only run says so
    assert any("no configuration ran on both the CPU and one GPU" in e for e in seen["empty"])
    assert any("NVIDIA GPU" in e for e in seen["empty"])
    assert shot.stat().st_size > 50_000


def test_resume_redoes_nothing_and_report_rebuilds(shared_run: Path, tmp_path: Path) -> None:
    run = copy_run(shared_run, tmp_path)
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(shared_suite(calibrate=False)))
    cells = sorted((run / "cells").glob("*.parquet"))
    before = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in cells}
    proc = cli("run", "s.yaml", "--runs-dir", "runs", "--resume", cwd=tmp_path)
    n = SHARED_CELLS
    assert proc.returncode == 0 and f"nothing to run ({n} already stored)" in proc.stdout, proc.stdout + proc.stderr
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in cells} == before
    proc = cli("report", "runs/shared", cwd=tmp_path)
    assert proc.returncode == 0 and "report.html" in proc.stdout


def test_a_config_change_reruns_only_the_cells_it_changed(shared_run: Path, tmp_path: Path) -> None:
    run = copy_run(shared_run, tmp_path)
    changed = shared_suite(calibrate=False, verify=False, model_overrides={**SMALL, "mlp": {"hidden": [32]}})
    (tmp_path / "s2.yaml").write_text(yaml.safe_dump(changed))
    only = ("--frameworks", "pytorch", "--models", "mlp", "--precisions", "fp32")
    proc = cli("run", "s2.yaml", "--runs-dir", "runs", "--resume", *only, cwd=tmp_path)
    assert proc.returncode == 0 and "1 ok" in proc.stdout and "(0 already stored)" not in proc.stdout, proc.stdout
    df = pd.read_parquet(run / "results.parquet")
    # the results follow the new grid: the nine stale mlp cells are out, the eight not yet run are missing
    n = SHARED_CELLS
    assert len(df) == n - 9 + 1 and sorted(set(df.model_name)) == ["bert", "mlp", "resnet18"]
    page = (run / "report.html").read_text()
    assert f"{n - 8} of the grid's {n} cells" in page
    assert "9 stored cell(s) were measured under a different spec" in page  # the old mlp cells: said, not shown
    mlp = df[(df.model_name == "mlp")].iloc[0]
    assert mlp.framework == "pytorch" and mlp.num_parameters == 784 * 32 + 32 + 32 * 10 + 10


def test_verify_covers_the_models_about_to_run_and_resume_keeps_earlier_verdicts(tmp_path: Path) -> None:
    suite = suite_dict(models=["mlp", "bert"], model_overrides={"bert": SMALL["bert"]}, verify=True)
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(suite))
    stored = tmp_path / "runs" / "t" / "verify.json"
    proc = cli("run", "s.yaml", "--runs-dir", "runs", "--models", "mlp", cwd=tmp_path)
    assert proc.returncode == 0 and "verify: checking 1 model(s)" in proc.stderr, proc.stderr
    assert [c["model"] for c in json.loads(stored.read_text())] == ["mlp"]
    proc = cli("run", "s.yaml", "--runs-dir", "runs", "--resume", cwd=tmp_path)  # now bert: mlp's verdict stays
    assert proc.returncode == 0 and "verify: checking 1 model(s)" in proc.stderr, proc.stderr
    assert sorted(c["model"] for c in json.loads(stored.read_text())) == ["bert", "mlp"]
    df = pd.read_parquet(tmp_path / "runs" / "t" / "results.parquet")
    assert df.verify_passed.tolist() == [True, True], df[["model_name", "verify_passed", "verify_detail"]]
    proc = cli("run", "s.yaml", "--runs-dir", "runs", "--resume", cwd=tmp_path)  # nothing to run, nothing to verify
    assert proc.returncode == 0 and "verify:" not in proc.stderr, proc.stderr


def test_worker_run_by_hand_prints_the_same_events(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    proc = subprocess.run(
        by_hand("workers.pytorch_worker", tmp_path),
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "hello" and kinds[-1] == "result"
    assert {"model", "epoch", "steps", "inference", "memory"} <= set(kinds)
    # started by hand, it restarted itself once with the suites' default malloc, as a cell gets it
    assert events[0]["glibc_tunables"] == malloc.STEADY
    assert proc.stderr.count("restarting with GLIBC_TUNABLES") == 1


def test_a_device_that_is_not_there_is_skipped(tmp_path: Path) -> None:
    from mlbench.process.monitor import NVML

    if NVML.available():
        pytest.skip("this machine has an NVIDIA driver")
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(suite_dict(devices=["cuda:0"])))
    proc = cli("run", "s.yaml", "--runs-dir", "runs", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    r = pd.read_parquet(tmp_path / "runs" / "t" / "results.parquet").iloc[0]
    # the orchestrator says so before starting a worker (NVML is the judge of which GPUs are here)
    assert r.status == "skipped" and r.reason.startswith("no NVIDIA GPU on this host"), r.reason


def _start(tmp: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "mlbench", "run", "s.yaml", "--runs-dir", "runs", "--resume"],
        cwd=tmp,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
    )


def _wait_for_cells(folder: Path, n: int, proc: subprocess.Popen[str], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while len(list(folder.glob("*.parquet"))) < n:
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before the kill"
        time.sleep(0.05)


def test_sigkill_of_the_orchestrator_then_resume_completes_the_run(tmp_path: Path) -> None:
    suite = tiny_suite(models=["mlp", "bert"], precisions=["fp32"], batch_sizes=[8, 16], excludes=[])
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(suite))
    cells = tmp_path / "runs" / "t" / "cells"
    seen: dict[Path, tuple[int, int]] = {}
    for kill_after, extra_delay in ((1, 0.0), (2, 1.5)):  # right after a store, and in the middle of a cell
        proc = _start(tmp_path)
        _wait_for_cells(cells, kill_after, proc)
        time.sleep(extra_delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        for p in cells.glob("*.parquet"):
            seen.setdefault(p, (p.stat().st_ino, p.stat().st_mtime_ns))
    proc = _start(tmp_path)
    assert proc.wait(timeout=300) == 0
    df = pd.read_parquet(tmp_path / "runs" / "t" / "results.parquet")
    assert len(df) == 4 and set(df.status) == {"ok"} and df.cell_id.is_unique
    assert not list(cells.glob(".*.tmp"))  # temporaries torn by a kill are cleared by the next run
    for p, stamp in seen.items():  # no finished cell file was rewritten
        assert (p.stat().st_ino, p.stat().st_mtime_ns) == stamp
    journal = [json.loads(line) for line in (tmp_path / "runs" / "t" / "journal.ndjson").read_text().splitlines()]
    pids = [e["pid"] for e in journal if e["action"] == "cell_start"]
    time.sleep(0.5)
    assert descendants_alive(pids) == []  # workers died with their orchestrator
