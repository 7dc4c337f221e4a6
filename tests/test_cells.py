"""Cell expansion and ids."""

from __future__ import annotations

import json
import os

import pytest

from mlbench.cells import expand
from mlbench.config import ConfigError, parse_suite
from tests.conftest import ROOT, suite_dict


def grid(**kw):
    return parse_suite(suite_dict(**kw))


def test_product_of_the_axes_in_a_stable_order() -> None:
    s = grid(
        frameworks=["pytorch", "jax"],
        models=["mlp", "bert"],
        devices=["cpu", "cuda:0"],
        precisions=["fp32", "bf16"],
        batch_sizes=[8, 16, 32],
    )
    cells = expand(s)
    assert len(cells) == 2 * 2 * 2 * 2 * 3
    assert len({c.cell_id for c in cells}) == len(cells)
    assert [c.cell_id for c in cells] == [c.cell_id for c in expand(s)]
    assert (cells[0].framework, cells[0].model, cells[0].device, cells[0].precision, cells[0].batch_size) == (
        "pytorch",
        "mlp",
        "cpu",
        "fp32",
        8,
    )


def test_excludes_with_scalars_and_lists() -> None:
    s = grid(
        models=["mlp", "bert"],
        devices=["cpu", "cuda:0"],
        precisions=["fp32", "fp16", "bf16"],
        excludes=[{"device": "cpu", "precision": ["fp16", "bf16"]}, {"model": "mlp", "device": "cuda:0"}],
    )
    labels = {(c.model, c.device, c.precision) for c in expand(s)}
    assert labels == {
        ("mlp", "cpu", "fp32"),
        ("bert", "cpu", "fp32"),
        ("bert", "cuda:0", "fp32"),
        ("bert", "cuda:0", "fp16"),
        ("bert", "cuda:0", "bf16"),
    }


def test_id_depends_on_the_spec_not_on_the_rest_of_the_grid() -> None:
    one = {c.cell_id for c in expand(grid(batch_sizes=[16]))}
    two = {c.cell_id for c in expand(grid(batch_sizes=[16, 32]))}
    assert one < two  # adding a batch size keeps the old cell's id
    assert expand(grid(timeout_s=5))[0].cell_id == expand(grid())[0].cell_id  # limits do not change a measurement
    for changed in (
        {"epochs": 2},
        {"seed": 1},
        {"warmup_steps": 3},
        {"compile": True},
        {"dataset": {"name": "synthetic", "train_samples": 256, "val_samples": 32}},
        {"model_overrides": {"mlp": {"hidden": [64]}}},
        {"workers": {"pytorch": "other.module"}},
        {"malloc": "system"},
    ):
        assert expand(grid(**changed))[0].cell_id != expand(grid())[0].cell_id, changed


def test_overrides_only_touch_their_model() -> None:
    base = {c.model: c.cell_id for c in expand(grid(models=["mlp", "bert"]))}
    over = {c.model: c.cell_id for c in expand(grid(models=["mlp", "bert"], model_overrides={"bert": {"layers": 2}}))}
    assert base["mlp"] == over["mlp"] and base["bert"] != over["bert"]


def test_a_changed_data_generator_changes_only_its_family_cells(monkeypatch) -> None:
    from workers.common import data

    base = {c.model: c.cell_id for c in expand(grid(models=["mlp", "bert"]))}
    monkeypatch.setitem(data.GENERATOR, "tokens", {**data.GENERATOR["tokens"], "background": 64})
    changed = {c.model: c.cell_id for c in expand(grid(models=["mlp", "bert"]))}
    assert base["mlp"] == changed["mlp"] and base["bert"] != changed["bert"]


def test_filters_narrow_and_refuse_values_outside_the_grid() -> None:
    s = grid(frameworks=["pytorch", "jax"], models=["mlp", "bert"], devices=["cpu", "cuda:0,1"])
    cells = expand(s, {"framework": ["jax"], "device": ["cuda:0,1"]})
    assert {(c.framework, c.device) for c in cells} == {("jax", "cuda:0,1")}
    assert len(expand(s, {"model": []})) == 8  # an empty filter does not narrow
    with pytest.raises(ConfigError, match="--models: 'resnet18' is not in this suite's grid"):
        expand(s, {"model": ["resnet18"]})


def test_worker_payload_carries_id_and_data_dir() -> None:
    cell = expand(grid())[0]
    payload = cell.worker_payload(data_dir="/data")
    assert payload["cell_id"] == cell.cell_id and payload["data_dir"] == "/data"
    assert payload["inference"]["runs"] == 5 and payload["worker"] == "workers.pytorch_worker"


def test_list_reports_each_builtin_framework_installed() -> None:
    from tests.conftest import ROOT, cli

    proc = cli("list", cwd=ROOT)
    assert proc.returncode == 0
    for fw in ("pytorch", "tensorflow", "jax"):
        line = next(x for x in proc.stdout.splitlines() if x.strip().startswith(fw))
        assert "installed " in line and "worker ready" in line, line


def test_worker_environment_fixes_threads_and_hides_gpus_from_a_cpu_cell(tmp_path, monkeypatch) -> None:
    import psutil

    from mlbench.process import runner

    monkeypatch.delenv("XLA_FLAGS", raising=False)
    cell = expand(grid(frameworks=["jax"], models=["mlp"], batch_sizes=[8]))[0]
    env = runner.worker_env(cell, 3, tmp_path)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TF_NUM_INTRAOP_THREADS"):
        assert env[var] == "3"
    assert env["CUDA_VISIBLE_DEVICES"] == ""  # a CPU cell initialises no CUDA
    assert "XLA_FLAGS" not in env  # the JAX worker sets XLA's pool itself, before importing jax
    # the workers/ beside this mlbench come first, whatever else is installed (a second checkout, a worktree)
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(ROOT) and (ROOT / "workers").is_dir()
    # no `threads` in the suite: the physical cores, the same figure for every framework
    physical = psutil.cpu_count(logical=False) or psutil.cpu_count()
    assert runner.worker_env(cell, None, tmp_path)["OMP_NUM_THREADS"] == str(physical)


def test_xla_flags_keep_the_users_and_set_the_pool_once() -> None:
    from workers.common import threads

    flags = threads.xla_flags(2, "--xla_dump_to=/tmp/x")
    assert flags == "--xla_dump_to=/tmp/x --xla_cpu_multi_thread_eigen=true intra_op_parallelism_threads=2"
    assert threads.xla_flags(2, flags) == flags  # set twice (the bench, then the worker's loader): once
    assert threads.xla_flags(1, None) == "--xla_cpu_multi_thread_eigen=true intra_op_parallelism_threads=1"


def test_cell_ids_of_the_quick_suite_are_unchanged() -> None:
    """A stored cell resumes only while its id is the same: the typed spec (0.4) had to hash exactly
    the JSON that 0.3's hand-built dicts did. Change this id only with a change that means to make
    every stored cell of this suite run again (and say so in the changelog)."""
    from mlbench.config import load_suite

    cells = expand(load_suite(ROOT / "configs" / "quick.yaml"))
    assert cells[0].label == "pytorch mlp cpu fp32 bs32" and cells[0].cell_id == "2ae6cb789d37"


def test_a_spec_holds_exactly_its_tasks_keys() -> None:
    from mlbench.tasks.calibration import calibration_cell
    from mlbench.tasks.verify import verify_cell
    from workers.common.cellspec import KEYS, CellSpec

    train = expand(grid())[0]
    assert "task" not in json.loads(train.spec_json) and set(json.loads(train.spec_json)) == set(KEYS["train"])
    calib = calibration_cell(grid(), "pytorch", "cpu", "fp32")
    assert json.loads(calib.spec_json)["task"] == "calibrate" and "model" not in json.loads(calib.spec_json)
    assert calib.label == "pytorch calibration matmul cpu fp32"  # not a model called "matmul"
    check = verify_cell("jax", ["mlp"], "workers.jax_worker", None, 0)
    assert json.loads(check.spec_json)["task"] == "verify"
    payload = train.worker_payload(data_dir="/d")
    assert payload["task"] == "train" and payload["cell_id"] == train.cell_id
    assert CellSpec.from_dict(payload) == train.spec  # the run's own keys (cell_id, data_dir) left out
    with pytest.raises(ValueError, match="task 'profile'"):
        CellSpec(framework="jax", worker="w", device="cpu", precision="fp32", task="profile", model="mlp")
    with pytest.raises(ValueError, match="cpu, cuda:N"):
        CellSpec(framework="jax", worker="w", device="tpu", precision="fp32", model="mlp")
