"""Data-parallel cells (`cpu:0,1`, `cuda:0,1`): the config's device lists and batch divisibility, the
throughput accounting, scaling efficiency and its verdict, and real two-replica cells end to end in
the three frameworks, with a killed orchestrator and a dead rank. (Each framework's own data-parallel
checks: tests/test_data_parallel_<framework>.py.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
import yaml

from mlbench.analysis import scaling
from mlbench.config import ConfigError, parse_suite
from mlbench.results import schema
from mlbench.tasks import calibration
from tests.conftest import ROOT, cli, descendants_alive, suite_dict
from workers.common import harness
from workers.common.cellspec import CellSpec
from workers.common.devices import Device

SMALL = {"resnet18": {"widths": [8, 16, 32, 64]}}


# --- the config --------------------------------------------------------------------------------


def test_a_device_list_names_one_cells_devices() -> None:
    assert Device.parse("cpu:0,1").count == 2 and Device.parse("cpu:0,1").gpus == ()
    assert str(Device.parse("cpu:0,1").visible()) == "cpu:0,1"
    assert Device.parse("cuda:2,5").replica(1) == "cuda:1" and Device.parse("cpu:0,1").replica(1) == "cpu"
    assert Device.parse("cpu:0") == Device.parse("cpu")  # one replica is the CPU
    for bad, message in (("cpu:1,2", "numbered from 0"), ("cpu:0,0", "names a replica twice"), ("cpu:", "one of")):
        with pytest.raises(ValueError, match=message):
            Device.parse(bad)


def test_the_config_writes_each_device_once_under_one_name() -> None:
    suite = parse_suite(suite_dict(devices=["cpu:0", "cpu:0,1"], batch_sizes=[16]))
    assert suite.devices == ["cpu", "cpu:0,1"]
    with pytest.raises(ConfigError, match="listed more than once: cpu"):
        parse_suite(suite_dict(devices=["cpu", "cpu:0"]))


@pytest.mark.parametrize("device,batch", [("cpu:0,1", 15), ("cuda:0,1,2", 16)])
def test_a_global_batch_that_does_not_divide_over_the_devices_is_a_config_error(device: str, batch: int) -> None:
    with pytest.raises(ConfigError) as err:
        parse_suite(suite_dict(devices=["cpu", device], batch_sizes=[12, batch]))
    text = str(err.value)
    assert f"batch_sizes: {batch} does not divide over the {Device.parse(device).count} devices of {device}" in text
    assert "\n" not in text.strip()


def test_a_data_parallel_cell_says_how_it_takes_batchnorm_statistics() -> None:
    base = dict(framework="pytorch", worker="w", precision="fp32", model="mlp", batch_size=32)
    assert CellSpec(device="cpu:0,1", batchnorm="sync", **base).per_device_batch_size == 16
    with pytest.raises(ValueError, match="needs batchnorm"):
        CellSpec(device="cpu:0,1", **base)
    with pytest.raises(ValueError, match="runs on one device"):
        CellSpec(device="cpu", batchnorm="sync", **base)
    # one-device cells keep their ids: the field is left out of their canonical JSON
    assert "batchnorm" not in CellSpec(device="cpu", **base).to_dict()


# --- the throughput accounting -------------------------------------------------------------------


class TwoReplicas:
    """A backend of two replicas on a fake clock: a step ends when its slower replica's part does."""

    framework, layout, async_steps, replicas = "fake", "NCHW", False, 2

    def __init__(self, clock: list[float], times: list[tuple[float, float]]) -> None:
        self.clock, self.times = clock, iter(times)

    def launch_step(self, x, y):
        self.clock[0] += max(next(self.times))  # every replica's step, then the all-reduce: the slowest sets it
        return None

    def step_result(self, handle):
        return 1.0, 0

    def eval_step(self, x, y):
        return 0.0, 0


def test_throughput_is_the_global_batch_over_the_slowest_replicas_step(monkeypatch: pytest.MonkeyPatch) -> None:
    import numpy as np

    from workers.common import data as datasets
    from workers.common.stats import steady_throughput

    clock = [0.0]
    monkeypatch.setattr(harness.time, "perf_counter", lambda: clock[0])
    steps = 8
    per_replica = [(0.10, 0.25)] * steps  # replica 1 is 2.5x slower than replica 0
    ds = datasets.Dataset(
        x_train=np.zeros((32 * steps, 4), np.float32),
        y_train=np.zeros(32 * steps, np.int64),
        x_val=np.zeros((8, 4), np.float32),
        y_val=np.zeros(8, np.int64),
        family="tabular",
        key="k",
        layout="NCHW",
    )
    cell = {"batch_size": 32, "seed": 0, "warmup_steps": 2, "epochs": 1}
    out = harness.train(TwoReplicas(clock, per_replica), ds, cell, type("Quiet", (), {"emit": lambda *a, **k: None})())
    assert out["step_s"] == pytest.approx([0.25] * (steps - 2))
    assert 32 * len(out["step_s"]) / sum(out["step_s"]) == pytest.approx(32 / 0.25)  # 128/s
    # the summed per-replica rates (16/0.10 + 16/0.25 = 224/s) would flatter it by 75%
    assert steady_throughput(out["warmup_s"], out["step_s"], 32)["samples_per_second"] == pytest.approx(128)


# --- scaling efficiency and its verdict ----------------------------------------------------------


def _row(device: str, batch: int, sps: float, spread: float = 0.02, **kw) -> dict:
    n = Device.parse(device).count
    r = dict.fromkeys(schema.SCHEMA.names)
    r.update(
        framework="pytorch", model_name="resnet18", precision="fp32", dataset="synthetic", epochs=1, seed=0,
        hostname="h", compile=False, status="ok", device=device, batch_size=batch, num_devices=n,
        per_device_batch_size=batch // n, samples_per_second=sps, samples_per_second_ci_low=sps * (1 - spread),
        samples_per_second_ci_high=sps * (1 + spread), cell_id=f"{device}-{batch}",
    )  # fmt: skip
    r.update(kw)
    return r


def test_scaling_efficiency_is_against_one_device_at_the_per_device_batch() -> None:
    rows = [
        _row("cuda:0", 32, 1000.0),
        _row("cuda:0", 64, 1500.0),  # same global batch as the pair below: not its baseline
        _row("cuda:0,1", 64, 1800.0),
        _row("cuda:0,1", 128, 2000.0),  # against the one-device cell at 64
        _row("cuda:0,1", 16, 500.0),  # no one-device cell at 8: null
        _row("cuda:0", 32, 999.0, framework="jax"),
    ]
    scaling.annotate(rows)
    out = {(r["framework"], r["device"], r["batch_size"]): r for r in rows}
    two = out[("pytorch", "cuda:0,1", 64)]
    assert two["scaling_efficiency"] == pytest.approx(1800 / (2 * 1000))
    assert two["scaling_efficiency_low"] == pytest.approx(1800 * 0.98 / (2 * 1000 * 1.02))
    assert two["scaling_efficiency_high"] == pytest.approx(1800 * 1.02 / (2 * 1000 * 0.98))
    assert out[("pytorch", "cuda:0,1", 128)]["scaling_efficiency"] == pytest.approx(2000 / (2 * 1500))
    assert out[("pytorch", "cuda:0,1", 16)]["scaling_efficiency"] is None
    assert out[("pytorch", "cuda:0", 32)]["scaling_efficiency"] is None  # one device: not a scaling figure


def test_the_verdict_says_whether_a_second_device_pays_or_that_it_cannot_tell() -> None:
    """Between-run intervals (ci_kind runs): told apart beyond them; 1.10x is inside them. Single runs: only
    beyond what a rerun moves (45%), so 1.3x from one run each cannot be told."""
    runs = {"ci_kind": "runs", "repeats": 5}
    rows = [
        _row("cuda:0", 32, 1000.0, **runs),
        _row("cuda:0,1", 64, 1900.0, **runs),
        _row("cuda:0,1", 128, 600.0, **runs),
    ]
    rows += [_row("cuda:0", 64, 1000.0, **runs), _row("cuda:0", 16, 1000.0, spread=0.3, **runs)]
    rows += [_row("cuda:0,1", 32, 1100.0, **runs)]
    rows += [_row("cuda:0", 8, 1000.0, framework="jax"), _row("cuda:0,1", 16, 1300.0, framework="jax")]
    scaling.annotate(rows)
    found = {(v.row["framework"], v.row["batch_size"]): v for v in scaling.verdicts(rows)}
    assert found[("pytorch", 64)].verdict == "pays" and "1.90x cuda:0's throughput" in found[("pytorch", 64)].text
    assert "beyond the between-run uncertainty" in found[("pytorch", 64)].text
    assert (
        found[("pytorch", 128)].verdict == "does not pay" and "one device trains faster" in found[("pytorch", 128)].text
    )
    assert (
        found[("pytorch", 32)].verdict == "cannot tell"
        and "within the between-run uncertainty" in found[("pytorch", 32)].text
    )
    single = found[("jax", 16)]
    assert single.verdict == "cannot tell" and "under the 45% a rerun of the same code moves" in single.text


def test_the_peak_of_several_gpus_is_their_sum_and_cpu_replicas_share_one() -> None:
    top = {("h", "cuda:0", "fp32"): 50.0, ("h", "cpu", "fp32"): 1.0}
    assert calibration.peak_of(top, {"hostname": "h", "device": "cuda:0,1", "precision": "fp32"}) == 100.0
    assert calibration.peak_of(top, {"hostname": "h", "device": "cpu:0,1", "precision": "fp32"}) == 1.0
    assert calibration.peak_of(top, {"hostname": "h", "device": "cuda:3", "precision": "fp32"}) is None


# --- real cells ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_replica_run(tmp_path_factory):
    pytest.importorskip("torch")
    pytest.importorskip("tensorflow")
    pytest.importorskip("jax")
    tmp = tmp_path_factory.mktemp("dp")
    suite = suite_dict(
        frameworks=["pytorch", "tensorflow", "jax"],
        models=["mlp", "resnet18"],
        devices=["cpu", "cpu:0,1"],
        batch_sizes=[16, 32],
        model_overrides=SMALL,
        dataset={"name": "synthetic", "train_samples": 256, "val_samples": 32},
        # what the checks need: mlp one device and two at the same global batch (the losses) and one device
        # at the per-device batch (the efficiency); resnet18 on two replicas
        excludes=[{"device": "cpu:0,1", "batch_size": 16}, {"model": "resnet18", "device": "cpu", "batch_size": 32}],
        threads=2,
    )
    (tmp / "s.yaml").write_text(yaml.safe_dump(suite))
    proc = cli("run", "s.yaml", "--runs-dir", "runs", cwd=tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return pd.read_parquet(tmp / "runs" / "t" / "results.parquet"), tmp


@pytest.mark.e2e
def test_two_replica_cells_are_ok_in_every_framework_with_the_new_columns(two_replica_run) -> None:
    df, tmp = two_replica_run
    assert set(df.status) == {"ok"}, df[["framework", "model_name", "device", "status", "reason"]]
    dp = df[df.device == "cpu:0,1"]
    assert len(dp) == 6 and set(dp.framework) == {"pytorch", "tensorflow", "jax"}
    for _, r in dp.iterrows():
        assert r.num_devices == 2 and r.per_device_batch_size == 16 and r.inference_batch_size == 16
        assert r.samples_per_second_per_device == pytest.approx(r.samples_per_second / 2)
        assert r.collective and r.batchnorm.startswith("sync")
        assert 0 < r.scaling_efficiency_low <= r.scaling_efficiency <= r.scaling_efficiency_high, r.framework
    one = df[df.device == "cpu"]
    assert one.num_devices.eq(1).all() and one.collective.isna().all() and one.scaling_efficiency.isna().all()
    page = (tmp / "runs" / "t" / "report.html").read_text()
    assert "id='scaling'" in page and "Several devices" in page and "CPU replicas share" in page


@pytest.mark.e2e
def test_two_replicas_reach_the_one_device_loss_on_the_same_global_batches(two_replica_run) -> None:
    df, _ = two_replica_run
    mlp = df[(df.model_name == "mlp") & (df.batch_size == 32)].set_index(["framework", "device"])
    for fw in ("pytorch", "tensorflow", "jax"):
        one, two = mlp.loc[(fw, "cpu"), "final_train_loss"], mlp.loc[(fw, "cpu:0,1"), "final_train_loss"]
        assert two == pytest.approx(one, rel=0.01), fw  # measured: within 1e-6 in each


def _tree(pid: int) -> list[int]:
    try:
        return [pid, *(c.pid for c in psutil.Process(pid).children(recursive=True))]
    except psutil.NoSuchProcess:
        return []


def _ranks(worker: int) -> list[int]:
    """The worker's other ranks (spawned interpreters), by pid."""
    out = []
    for pid in _tree(worker)[1:]:
        try:
            if "spawn_main" in " ".join(psutil.Process(pid).cmdline()):
                out.append(pid)
        except psutil.NoSuchProcess:
            pass
    return out


@pytest.mark.e2e
def test_a_killed_orchestrator_leaves_no_rank_alive(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    suite = suite_dict(
        devices=["cpu:0,1"], models=["resnet18"], batch_sizes=[32], timeout_s=600, idle_timeout_s=600,
        model_overrides=SMALL, dataset={"name": "synthetic", "train_samples": 32 * 300, "val_samples": 32},
    )  # fmt: skip
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(suite))
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlbench", "run", "s.yaml", "--runs-dir", "runs"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    journal = tmp_path / "runs" / "t" / "journal.ndjson"
    deadline, ranks = time.monotonic() + 180, []
    while time.monotonic() < deadline and proc.poll() is None:
        starts = [json.loads(x) for x in journal.read_text().splitlines()] if journal.is_file() else []
        worker = next((e["pid"] for e in starts if e["action"] == "cell_start"), None)
        ranks = _tree(worker) if worker else []
        if worker and _ranks(worker):
            break
        time.sleep(0.2)
    assert len(ranks) >= 2, "the second rank never started"
    time.sleep(1.0)  # inside the training steps
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 10
    while descendants_alive(ranks) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert descendants_alive(ranks) == []


@pytest.mark.e2e
def test_a_rank_that_dies_ends_the_cell_as_crashed_naming_the_rank(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from mlbench.cells import make_cell
    from mlbench.process import runner

    suite = parse_suite(
        suite_dict(
            devices=["cpu:0,1"], models=["resnet18"], batch_sizes=[32], model_overrides=SMALL,
            dataset={"name": "synthetic", "train_samples": 32 * 300, "val_samples": 32},
        )
    )  # fmt: skip
    cell = make_cell(suite, "pytorch", "resnet18", "cpu:0,1", "fp32", 32)

    def kill_rank_1(worker: int) -> None:
        def later() -> None:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                ranks = _ranks(worker)
                if ranks:
                    time.sleep(3.0)  # into training
                    os.kill(ranks[0], signal.SIGKILL)
                    return
                time.sleep(0.2)

        __import__("threading").Thread(target=later, daemon=True).start()

    outcome = runner.run_cell(
        cell, tmp_path, module="workers.pytorch_worker", timeout_s=300, idle_timeout_s=300, on_start=kill_rank_1
    )
    assert (outcome.status, outcome.reason) == ("crashed", "rank 1 of 2 died: killed by SIGKILL")
