"""`deterministic`: each framework's deterministic kernels on request, an axis whose cost is an effect,
recorded per row as the framework reports it."""

from __future__ import annotations

import json
import os

import pandas as pd
import pytest
import yaml

from mlbench.analysis import recommend
from mlbench.cells import expand
from mlbench.config import ConfigError, parse_suite
from mlbench.results import labels, schema
from tests.conftest import cli, suite_dict
from workers.common import cli as worker_cli

BASE = {"name": "t", "frameworks": ["pytorch"], "models": ["mlp"], "batch_sizes": [32]}


def test_a_list_makes_it_an_axis_and_the_default_keeps_every_id() -> None:
    off = expand(parse_suite(BASE, "t.yaml"))
    assert [c.cell_id for c in expand(parse_suite({**BASE, "deterministic": False}, "t.yaml"))] == [off[0].cell_id]
    both = expand(parse_suite({**BASE, "deterministic": [False, True]}, "t.yaml"))
    assert [c.spec.deterministic for c in both] == [None, True] and both[0].cell_id == off[0].cell_id
    assert both[1].label == "pytorch mlp cpu fp32 deterministic bs32"
    assert json.loads(both[1].spec_json)["deterministic"] is True and "deterministic" not in both[0].spec_json
    with pytest.raises(ConfigError, match="listed more than once"):
        parse_suite({**BASE, "deterministic": [True, True]}, "t.yaml")


def test_the_worker_sets_what_each_framework_needs_before_it_is_imported(monkeypatch) -> None:
    monkeypatch.setattr(os, "environ", {"XLA_FLAGS": "--xla_cpu_multi_thread_eigen=true"})
    worker_cli.apply_threads({"deterministic": True})
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8" and os.environ["TF_DETERMINISTIC_OPS"] == "1"
    assert os.environ["XLA_FLAGS"] == "--xla_cpu_multi_thread_eigen=true --xla_gpu_deterministic_ops=true"
    monkeypatch.setattr(os, "environ", {})
    worker_cli.apply_threads({})
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ and "XLA_FLAGS" not in os.environ


def row(deterministic: bool, sps: float) -> dict:
    r = dict.fromkeys(schema.SCHEMA.names)
    r.update(
        framework="pytorch", model_name="mlp", device="cpu", precision="fp32", batch_size=32, status="ok",
        deterministic=deterministic, samples_per_second=sps, samples_per_second_ci_low=0.98 * sps,
        samples_per_second_ci_high=1.02 * sps, ci_kind="runs", repeats=5,
    )  # fmt: skip
    return r


def test_its_cost_is_an_effect_like_precisions() -> None:
    rows = [row(False, 1000.0), row(True, 700.0)]
    found = recommend.effects(rows, "deterministic", lambda d: not d)
    assert len(found) == 1 and found[0].row is rows[1] and found[0].verdict == "slower"
    assert found[0].ratio == pytest.approx(0.7)
    # a row from before the setting (null) is a cell with the defaults, and other effects keep the two apart
    rows[0]["deterministic"] = None
    assert len(recommend.effects(rows, "deterministic", lambda d: not d)) == 1
    assert recommend.effects(rows, "precision", lambda p: p == "fp32") == []
    assert labels.config_label(rows[1]) == "pytorch fp32 deterministic bs32"


@pytest.mark.e2e
def test_a_deterministic_cell_runs_and_its_row_says_what_the_framework_switched_on(tmp_path) -> None:
    pytest.importorskip("torch")
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(suite_dict(deterministic=True)))
    proc = cli("run", "s.yaml", "--runs-dir", "runs", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = pd.read_parquet(tmp_path / "runs" / "t" / "results.parquet").iloc[0]
    assert r.status == "ok" and r.deterministic
    assert "are_deterministic_algorithms_enabled()=True" in r.determinism and "cudnn.benchmark=False" in r.determinism


def test_parity_and_batch_1_latency_keep_deterministic_cells_apart() -> None:
    from mlbench.analysis import parity

    rows = [row(d, 1000.0) | {"framework": fw, "final_val_accuracy": acc, "val_samples": 1000, "dataset": "synthetic",
            "epochs": 2, "seed": 0, "inference_b1_latency_p50_ms": 1.0}
            for fw, d, acc in (("pytorch", False, 0.80), ("pytorch", True, 0.50), ("jax", False, 0.80), ("jax", True, 0.81))]  # fmt: skip
    groups = parity.annotate(rows, {}, 2.0)
    assert len(groups) == 2 and all(len(g["pairs"]) == 1 for g in groups)  # off with off, on with on
    assert {e.name for e in recommend.latency_estimates(rows)} == {
        "pytorch fp32", "pytorch fp32 deterministic", "jax fp32", "jax fp32 deterministic",
    }  # fmt: skip
