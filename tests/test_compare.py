"""`mlbench compare` on real runs: two runs of the same code pass, a planted slowdown is flagged."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import cli, cli_here, suite_dict

pytest.importorskip("torch")
pytestmark = [pytest.mark.e2e, pytest.mark.serial]


def suite(name: str, **kw) -> dict:
    # enough steps and inference passes for the rank test; an MLP so each run takes seconds; repeats, so
    # that compare's threshold is the run-to-run variation they measure (docs/compare.md)
    return suite_dict(
        name=name,
        repeats=3,
        batch_sizes=[64],
        dataset={"name": "synthetic", "train_samples": 2048, "val_samples": 256},
        inference={"warmup": 3, "runs": 40, "min_runs": 20, "max_s": 3},
        **kw,
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("compare")
    for name, extra in (
        ("base", {}),
        ("same", {}),
        ("slow", {"workers": {"pytorch": "tests.slow_worker"}, "malloc": "system"}),
    ):
        (tmp / f"{name}.yaml").write_text(yaml.safe_dump(suite(name, **extra)))
        proc = cli("run", f"{name}.yaml", "--runs-dir", "runs", cwd=tmp)
        assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    return tmp


# a threshold above what two runs of the same code differ by on a small shared machine, in relative and
# in ms terms (docs/compare.md); the planted slowdown (-89% throughput, +40 ms) stays far beyond both
MIN_CHANGE = ("--min-change", "0.6", "--min-change-ms", "0.2")


def test_two_runs_of_the_same_code_pass(runs: Path) -> None:
    proc = cli_here("compare", "runs/base", "runs/same", "--fail-on-regression", *MIN_CHANGE, cwd=runs)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 cell(s) in both runs: 0 regression(s)" in proc.stdout
    assert (runs / "runs" / "same" / "compare-base-vs-same.html").exists()


def test_a_planted_slowdown_is_a_regression(runs: Path) -> None:
    slow = pd.read_parquet(runs / "runs" / "slow" / "results.parquet").iloc[0]
    assert slow.worker_module == "tests.slow_worker"
    proc = cli_here(
        "compare",
        "runs/base",
        "runs/slow",
        "--fail-on-regression",
        *MIN_CHANGE,
        "--out",
        "cmp",
        cwd=runs,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    text = (runs / "cmp" / "compare-base-vs-slow.txt").read_text()
    lines = [line for line in text.splitlines() if "regression" in line and "pytorch mlp" in line]
    assert any("training throughput" in line for line in lines), text
    assert any("latency p50" in line for line in lines), text
    assert "worker workers.pytorch_worker in A, tests.slow_worker in B" in text
    assert "GLIBC_TUNABLES" in text and "unset" in text  # `malloc: steady` in A, `system` in B
    # without the flag the regression is reported, not an error
    assert cli_here("compare", "runs/base", "runs/slow", "--out", "cmp", cwd=runs).returncode == 0


def test_compare_needs_results(runs: Path) -> None:
    (runs / "empty").mkdir()
    proc = cli_here("compare", "runs/base", "empty", cwd=runs)
    assert proc.returncode == 2 and "no results.parquet" in proc.stderr and "Traceback" not in proc.stderr
