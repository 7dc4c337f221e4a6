"""The executor seam: which cells the local executor runs together (fake GPUs), a real parallel
run, and the one-line refusal of `--executor ray` where Ray is not installed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from mlbench.cells import Unit, expand
from mlbench.config import parse_suite
from mlbench.executors.local import can_start
from tests.conftest import ROOT, cli, fault_suite, suite_dict
from workers.common import data as datasets
from workers.common import specs


def _units(*devices: str) -> dict[str, Unit]:
    suite = parse_suite(suite_dict(devices=list(devices)))
    return {u.cell.device: u for u in (Unit(c) for c in expand(suite))}


def test_cells_on_disjoint_gpus_run_together_and_cpu_cells_run_alone() -> None:
    u = _units("cpu", "cuda:0", "cuda:1", "cuda:2,3", "cuda:1,2")
    # alone: anything may start
    assert all(can_start(x, [], parallel=1) for x in u.values())
    # disjoint GPUs side by side, within the parallel limit
    assert can_start(u["cuda:1"], [u["cuda:0"]], parallel=4)
    assert can_start(u["cuda:2,3"], [u["cuda:0"], u["cuda:1"]], parallel=4)
    assert not can_start(u["cuda:2,3"], [u["cuda:0"], u["cuda:1"]], parallel=2)  # the limit
    assert not can_start(u["cuda:1"], [u["cuda:0"]], parallel=1)  # parallel 1: one at a time
    # a shared GPU never
    assert not can_start(u["cuda:1,2"], [u["cuda:2,3"]], parallel=4)
    assert not can_start(u["cuda:1"], [u["cuda:1,2"]], parallel=4)
    # a CPU cell never beside another cell, nor another beside it
    assert not can_start(u["cpu"], [u["cuda:0"]], parallel=4)
    assert not can_start(u["cuda:0"], [u["cpu"]], parallel=4)


@pytest.mark.e2e
def test_a_parallel_run_overlaps_only_cells_on_disjoint_gpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake workers on fake GPUs (no GPU is touched; the host is told it has them): the journal says
    which cells ran at once."""
    from click.testing import CliRunner

    from mlbench import cli as mlbench_cli
    from mlbench.process import gpus

    suite = fault_suite("slow", devices=["cpu", "cuda:0", "cuda:1", "cuda:0,1"], parallel=4)
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(suite))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.setenv("FAULT_SLOW_S", "1.5")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(gpus, "check_present", lambda entries: None)
    result = CliRunner().invoke(mlbench_cli.main, ["run", "s.yaml", "--runs-dir", "runs"])
    assert result.exit_code == 0, result.output
    df = pd.read_parquet(tmp_path / "runs" / "t" / "results.parquet").set_index("device")
    assert (df.status == "ok").all() and (df.executor == "local").all()
    flags = {d: json.loads(f) for d, f in df.env_flags.items()}
    assert flags["cuda:0,1"]["CUDA_VISIBLE_DEVICES"] == "0,1" and flags["cpu"]["CUDA_VISIBLE_DEVICES"] == ""
    # the journal has the order of every start and end
    journal = [json.loads(line) for line in (tmp_path / "runs" / "t" / "journal.ndjson").read_text().splitlines()]
    ids = dict(zip(df.cell_id, df.index))
    running, together = set(), []
    for e in journal:
        if e["action"] == "cell_start":
            running.add(ids[e["cell_id"]])
            together.append(set(running))
        elif e["action"] == "cell":
            running.discard(ids[e["cell_id"]])
    assert {"cuda:0", "cuda:1"} in together  # ran at once
    for group in together:
        if len(group) > 1:
            assert "cpu" not in group and "cuda:0,1" not in group, group
    assert sum(e["action"] == "cell_start" for e in journal) == 4


def test_a_cells_gpus_count_in_those_the_user_gave_mlbench() -> None:
    """cuda:0 is the first GPU of a CUDA_VISIBLE_DEVICES set before mlbench started, not physical GPU 0."""
    from mlbench.process import gpus

    assert gpus.choose("cuda:0,1", {}) == ["0", "1"]  # nothing given: the machine's GPUs
    assert gpus.choose("cuda:0", {"CUDA_VISIBLE_DEVICES": "3,1"}) == ["3"]
    assert gpus.choose("cuda:1,0", {"CUDA_VISIBLE_DEVICES": "3,1"}) == ["1", "3"]
    assert gpus.choose("cuda:0", {"CUDA_VISIBLE_DEVICES": "GPU-8f2c"}) == ["GPU-8f2c"]
    assert gpus.choose("cpu", {"CUDA_VISIBLE_DEVICES": "3"}) == []
    with pytest.raises(gpus.NotHere, match="gives mlbench 2 GPU"):
        gpus.choose("cuda:2", {"CUDA_VISIBLE_DEVICES": "3,1"})


@pytest.mark.e2e
def test_a_gpu_cell_on_a_host_without_that_gpu_is_skipped_before_any_worker(tmp_path: Path) -> None:
    from mlbench.process import gpus
    from mlbench.process.monitor import NVML

    if NVML.available():
        pytest.skip("this host has an NVIDIA driver: its GPUs decide")
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(fault_suite("fine", devices=["cuda:0"])))
    piddir = tmp_path / "pids"
    piddir.mkdir()
    proc = cli("run", "s.yaml", "--runs-dir", "runs", cwd=tmp_path, env={"FAULT_PIDDIR": str(piddir)})
    assert proc.returncode == 0, proc.stderr
    r = pd.read_parquet(tmp_path / "runs" / "t" / "results.parquet").iloc[0]
    assert r.status == "skipped" and r.reason.startswith("no NVIDIA GPU on this host"), r.reason
    assert not list(piddir.iterdir())  # no worker was started
    with pytest.raises(gpus.NotHere):
        gpus.check_present(["0"])


@pytest.mark.e2e
def test_workers_number_gpus_as_nvml_and_jax_is_pinned_to_the_cells_platform(tmp_path: Path) -> None:
    from mlbench.process import runner

    cpu, gpu = (expand(parse_suite(suite_dict(devices=[d])))[0] for d in ("cpu", "cuda:0"))
    env = runner.worker_env(cpu, 1, tmp_path)
    assert env["CUDA_VISIBLE_DEVICES"] == "" and env["JAX_PLATFORMS"] == "cpu"
    env = runner.worker_env(gpu, 1, tmp_path, gpus=["5"])
    assert env["CUDA_VISIBLE_DEVICES"] == "5" and env["JAX_PLATFORMS"] == "cuda"
    assert env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"


@pytest.mark.e2e
def test_executor_ray_without_ray_installed_is_one_line_and_exit_2(tmp_path: Path, write_suite) -> None:
    fake = tmp_path / "noray" / "ray"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError(\"No module named 'ray'\")\n")
    path = write_suite(suite_dict())
    proc = cli(
        "run",
        str(path),
        "--runs-dir",
        "runs",
        "--executor",
        "ray",
        cwd=tmp_path,
        env={"PYTHONPATH": f"{fake.parent}:{ROOT}"},
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "pip install 'mlbench[ray]'" in proc.stderr
    assert not (tmp_path / "runs").exists()  # refused before anything was written


@pytest.mark.parametrize("bad", [{"executor": "slurm"}, {"parallel": 0}, {"ray": {"adress": "x"}}])
def test_executor_keys_are_validated(bad: dict) -> None:
    from mlbench.config import ConfigError

    with pytest.raises(ConfigError):
        parse_suite(suite_dict(**bad))


def test_executor_settings_are_not_part_of_a_cell() -> None:
    """A run resumes across executors: the same cell has the same id wherever it runs."""
    local = expand(parse_suite(suite_dict()))
    ray = expand(parse_suite(suite_dict(executor="ray", parallel=3, ray={"address": "head:6379"})))
    assert [c.cell_id for c in local] == [c.cell_id for c in ray]


@pytest.mark.e2e
def test_the_data_checksum_a_ray_node_checks_against_the_heads(tmp_path: Path) -> None:
    """Two machines that make a cell's data from the same seed agree on its checksum; other data does not."""
    from mlbench.executors.base import dataset_checksum

    cell = expand(parse_suite(suite_dict()))[0]
    head, node = dataset_checksum(cell, tmp_path / "head"), dataset_checksum(cell, tmp_path / "node")
    assert head == node and len(head) == 64
    other = expand(parse_suite(suite_dict(seed=1)))[0]
    assert dataset_checksum(other, tmp_path / "node") != head
    # a node whose copy of the data differs (another generator, a damaged file) is caught
    spec, model = cell.spec, specs.get_spec("mlp")
    folder = datasets.materialise(spec.dataset, model.family, specs.input_spec(model), 0, str(tmp_path / "node"))
    y = np.load(folder / "y_train.npy")
    y[0] += 1
    np.save(folder / "y_train.npy", y)
    assert dataset_checksum(cell, tmp_path / "node") != head


@pytest.mark.e2e
def test_a_ray_node_with_other_data_says_so(tmp_path: Path) -> None:
    from mlbench.executors.base import dataset_checksum
    from mlbench.executors.ray_cluster import _data_problem

    unit = Unit(expand(parse_suite(suite_dict()))[0])
    head = dataset_checksum(unit.cell, tmp_path / "head" / "data")
    assert _data_problem(unit, tmp_path / "node", head) is None
    assert "checksum" in _data_problem(unit, tmp_path / "node", "0" * 64)
    assert _data_problem(unit, tmp_path / "node", None) is None  # nothing to check against
