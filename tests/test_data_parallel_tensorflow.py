"""TensorFlow's data-parallel cells (MirroredStrategy over logical CPU devices, `cpu:0,1`): the same
losses as one device on the same global batches, replicas in lockstep, and a broken all-reduce caught.

Each run is a subprocess: a `cpu:N` backend configures N logical CPU devices before TensorFlow's
runtime starts, which a test process that already imported TensorFlow cannot do again."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import TINY, shared_verifies, two_device_verifies, verify_run

pytest.importorskip("tensorflow")


def _verify(model: str, device: str, run_dir: Path, module: str | None = None) -> tuple[Any, dict]:
    return verify_run("tensorflow", model, device, run_dir, overrides=TINY.get(model), module=module)


@pytest.fixture(scope="module")
def one_device(shared_run: Path) -> dict[str, dict]:
    """The one-device side: the shared run's verify of the same models (TINY, seed 0, one thread)."""
    return shared_verifies("tensorflow", shared_run)


@pytest.fixture(scope="module")
def two_devices(tmp_path_factory) -> tuple[Any, dict[str, dict]]:
    return two_device_verifies("tensorflow", tmp_path_factory)


@pytest.mark.e2e
@pytest.mark.parametrize(
    "model,recipe_rtol",
    # ResNet-18's momentum steps (lr 0.01) amplify the fp32 rounding of the replicas' split sums (BatchNorm
    # gradients cancel); its math is exact (float64 gradients equal to 1e-15), see SyncBatchNormalization
    [("mlp", 1e-5), ("resnet18", 1e-3)],
)
def test_two_cpu_replicas_give_one_devices_losses(model: str, recipe_rtol: float, one_device, two_devices) -> None:
    one_ev, (two, two_events) = one_device[model], two_devices
    assert two.status == "ok", two.reason
    two_ev = two_events[model]
    assert one_ev["replica_divergence"] is None
    np.testing.assert_allclose(two_ev["losses"], one_ev["losses"], rtol=1e-5)
    np.testing.assert_allclose(two_ev["recipe_losses"], one_ev["recipe_losses"], rtol=recipe_rtol)
    assert two_ev["replica_divergence"] < 1e-6
    hello = next(e for e in two.events if e["event"] == "hello")
    dp = hello["data_parallel"]
    assert (
        dp["replicas"] == 2
        and len(dp["devices"]) == 2
        and dp["batchnorm"].startswith("sync")
        and dp["collective"].startswith("MirroredStrategy")
    )
    # inference-mode logits on the first replica: the same initial weights, the same numbers
    a = np.load(one_ev["arrays"])["logits"]
    b = np.load(two_ev["arrays"])["logits"]
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


@pytest.mark.e2e
def test_a_broken_all_reduce_shows_as_divergence_and_other_losses(one_device, tmp_path) -> None:
    one_ev = one_device["mlp"]
    two, two_ev = _verify("mlp", "cpu:0,1", tmp_path / "broken", module="tests.broken_dp_tensorflow_worker")
    assert two.status == "ok", two.reason
    assert two_ev["replica_divergence"] > 1e-4
    # a working all-reduce matches one device to ~1e-7 here; the broken one ~1e-5 (plain SGD at lr 1e-3
    # moves little in 3 steps) and more with the recipe's momentum
    assert not np.allclose(two_ev["losses"][1:], one_ev["losses"][1:], rtol=3e-6)
    assert not np.allclose(two_ev["recipe_losses"][1:], one_ev["recipe_losses"][1:], rtol=3e-6)


@pytest.mark.e2e
def test_a_two_replica_training_cell_runs_end_to_end(tmp_path) -> None:
    """A whole cell by hand (flags): training, evaluation and inference on the first replica, a result."""
    import json
    import subprocess
    import sys

    losses = {}
    for device in ("cpu", "cpu:0,1"):
        proc = subprocess.run(
            [sys.executable, "-m", "workers.tensorflow_worker", "--model", "mlp", "--device", device,
             "--batch-size", "32", "--train-samples", "256", "--val-samples", "48", "--epochs", "1",
             "--data-dir", str(tmp_path / "data")],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
        result = next((e for e in events if e["event"] == "result"), None)
        assert result is not None, proc.stdout[-2000:] + proc.stderr[-3000:]
        assert result["num_devices"] == (2 if device != "cpu" else 1)
        epoch = next(e for e in events if e["event"] == "epoch")
        assert epoch["val_loss"] is not None  # val 48: a partial last batch on the first replica
        losses[device] = epoch["train_loss"]
    assert losses["cpu:0,1"] == pytest.approx(losses["cpu"], rel=1e-4)


def test_a_data_parallel_cell_needs_synchronised_batchnorm() -> None:
    from workers.common.harness import Unsupported
    from workers.tensorflow_worker.backend import Backend

    cell = {"device": "cpu:0,1", "precision": "fp32", "seed": 0, "compile": False, "threads": None}
    with pytest.raises(Unsupported, match="batchnorm"):
        Backend({**cell, "batchnorm": None})
