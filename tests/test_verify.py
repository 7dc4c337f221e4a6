"""`mlbench verify` through its real command: passes on the shipped models, fails naming the layer."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from mlbench.tasks.verify import Check, compare, verdicts, verify_overrides
from tests.conftest import cli, suite_dict


@pytest.fixture
def frameworks() -> None:
    """The end-to-end tests run all three frameworks; the tests of verify's own logic need none."""
    for package in ("torch", "tensorflow", "jax"):
        pytest.importorskip(package)


TINY = {
    "resnet18": {"widths": [8, 16, 32, 64]},
    "bert": {"layers": 2, "hidden": 64, "heads": 2, "ffn": 128, "vocab_size": 512, "seq_len": 32},
}


@pytest.mark.e2e
@pytest.mark.usefixtures("frameworks")
def test_verify_passes_for_every_model_across_the_three_frameworks(shared_run) -> None:
    """The shared run verified its models before timing them (data parallel against one device:
    tests/test_verify.py's last test and tests/test_data_parallel_*.py)."""
    checks = json.loads((shared_run / "verify.json").read_text())
    assert len(checks) == 9 and {c["framework"] for c in checks} == {"pytorch", "tensorflow", "jax"}
    assert {c["model"] for c in checks} == {"mlp", "resnet18", "bert"}
    for c in checks:
        assert c["status"] == "ok" and c["roundtrip_max_abs"] == 0.0 and c["structure"] == "ok"
        assert c["logits_rel_err"] <= 1e-4 and c["loss_rel_diff"] <= 1e-3
        # the same steps with each model's own optimizer (AdamW with bert's warm-up schedule, momentum SGD)
        assert c["recipe_loss_rel_diff"] <= (5e-3 if c["model"] == "resnet18" else 5e-5), c
        assert c["recipe_update_rel_err"] <= 8e-2, c  # the second update, under a changed learning rate
    journal = (shared_run / "journal.ndjson").read_text()
    assert '"action": "verify", "passed": 9, "failed": []' in journal


@pytest.mark.e2e
@pytest.mark.usefixtures("frameworks")
def test_verify_fails_an_optimizer_that_keeps_the_learning_rate_in_its_momentum(tmp_path) -> None:
    """Keras' own momentum SGD equals PyTorch's only while the rate stays put: verify's check with the
    model's own optimizer changes the rate at every update and names the second update. (The shipped
    TensorFlow worker passes the same check: the shared run's verify, the first test of this module.)"""
    (tmp_path / "s.yaml").write_text(
        yaml.safe_dump(
            suite_dict(
                frameworks=["pytorch", "keras_sgd"],
                models=["resnet18"],
                model_overrides={"resnet18": TINY["resnet18"]},
                workers={"keras_sgd": "tests.keras_sgd_worker"},
            )
        )
    )
    proc = cli("verify", "--config", "s.yaml", "--no-data-parallel", cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    checks = {c["framework"]: c for c in json.loads((tmp_path / "runs" / "verify" / "verify.json").read_text())}
    bad = checks["keras_sgd"]
    assert bad["status"] == "mismatch" and bad["recipe_update_rel_err"] > 0.1, bad
    assert any("second update with the model's own optimizer" in p for p in bad["problems"]), bad["problems"]


@pytest.mark.e2e
@pytest.mark.usefixtures("frameworks")
@pytest.mark.parametrize(
    "altered,fragment",
    [
        ("altered_activation", "layer layers.1: output differs from pytorch"),
        ("altered_shape", "layers.1.weight"),
    ],
)
def test_verify_fails_on_an_altered_model_naming_the_layer(tmp_path, altered: str, fragment: str) -> None:
    (tmp_path / "s.yaml").write_text(
        yaml.safe_dump(
            suite_dict(frameworks=["pytorch", altered], models=["mlp"], workers={altered: "tests.altered_worker"})
        )
    )
    proc = cli("verify", "--config", "s.yaml", "--no-data-parallel", cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "1 of 2 checks passed" in proc.stdout
    check = json.loads((tmp_path / "runs" / "verify" / "verify.json").read_text())[1]
    assert check["framework"] == altered and check["status"] in ("mismatch", "error")
    assert any(fragment in p for p in check["problems"]), check["problems"]


@pytest.mark.e2e
def test_one_process_checks_each_model_and_a_model_that_raises_does_not_stop_the_next(tmp_path) -> None:
    """A framework's models are verified in one process: BERT raising there (a worker without it) is that
    model's error, in the runner's words; the MLP checked after it in the same process still passes."""
    pytest.importorskip("torch")
    suite = suite_dict(
        frameworks=["pytorch", "no_bert"], models=["bert", "mlp"], workers={"no_bert": "tests.altered_worker"},
        model_overrides={"bert": TINY["bert"]},
    )  # fmt: skip
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(suite))
    proc = cli("verify", "--config", "s.yaml", "--no-data-parallel", cwd=tmp_path)
    assert proc.returncode == 1 and "3 of 4 checks passed" in proc.stdout, proc.stdout + proc.stderr
    checks = {(c["framework"], c["model"]): c for c in json.loads((tmp_path / "runs/verify/verify.json").read_text())}
    assert checks[("no_bert", "bert")]["problems"] == ["skipped: Unsupported: no_bert builds no text model"]
    assert checks[("no_bert", "mlp")]["status"] == "ok" and checks[("pytorch", "bert")]["status"] == "ok"
    # a process a framework, not a model: one log each
    assert len(list((tmp_path / "runs/verify/verify/logs").glob("*.ndjson"))) == 2


@pytest.mark.e2e
@pytest.mark.usefixtures("frameworks")
def test_verify_fails_a_data_parallel_step_that_does_not_all_reduce(tmp_path) -> None:
    """A DDP forward that bypasses the wrapper (each rank steps on its own slice's gradient): the
    one-device check passes, the data-parallel one fails on all three counts; the real worker passes."""
    (tmp_path / "s.yaml").write_text(
        yaml.safe_dump(
            suite_dict(
                frameworks=["pytorch", "broken_ddp"], models=["mlp"], workers={"broken_ddp": "tests.broken_ddp_worker"}
            )
        )
    )
    proc = cli("verify", "--config", "s.yaml", cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "3 of 4 checks passed" in proc.stdout
    checks = {(c["framework"], c["device"]): c for c in json.loads((tmp_path / "runs/verify/verify.json").read_text())}
    good, bad = checks[("pytorch", "cpu:0,1")], checks[("broken_ddp", "cpu:0,1")]
    assert good["status"] == "ok" and good["replica_divergence"] == 0.0 and good["loss_rel_diff"] <= 1e-5
    assert checks[("broken_ddp", "cpu")]["status"] == "ok"  # on one device the bug does nothing
    assert bad["status"] == "mismatch" and bad["replica_divergence"] > 1e-4, bad
    assert any("replicas' parameters differ" in p for p in bad["problems"])
    assert any("own optimizer on cpu:0,1 differ from one device" in p for p in bad["problems"])


def test_a_data_parallel_run_is_checked_against_its_own_one_device_run() -> None:
    from mlbench.tasks.verify import compare_data_parallel

    one = {"losses": [2.0, 1.9, 1.8], "recipe_losses": [2.0, 1.5, 1.2], "num_parameters": 10}
    same = {**one, "losses": [2.0, 1.9, 1.8000001], "replica_divergence": 0.0}
    assert compare_data_parallel("mlp", "jax", "cpu:0,1", same, one).status == "ok"
    drift = compare_data_parallel("mlp", "jax", "cpu:0,1", {**same, "replica_divergence": 0.01}, one)
    assert drift.status == "mismatch" and "replicas' parameters differ after 3 steps" in drift.problems[0]
    silent = compare_data_parallel("mlp", "jax", "cpu:0,1", {**one}, one)  # no divergence reported: not a pass
    assert silent.status == "mismatch" and "did not report" in silent.problems[0]
    verdict = verdicts([Check("mlp", "jax", "jax", "ok"), drift])
    assert verdict["mlp"][0] is False and verdict["mlp"][1].startswith("jax on cpu:0,1: replicas")


def _report(n_params=10, shapes=None, losses=(1.0, 0.9), fp=None):
    return {
        "num_parameters": n_params,
        "expected_parameters": 10,
        "shapes": shapes or {"a.weight": [2, 5]},
        "roundtrip_max_abs": 0.0,
        "roundtrip_worst": None,
        "losses": list(losses),
        "update_fingerprint": fp or {"a.weight": [1.0, 0.5]},
    }


def test_compare_flags_each_kind_of_difference() -> None:
    ref, arrays = _report(), {"logits": np.ones((2, 3)), "act:a": np.ones((2, 3))}
    ok = compare("m", "x", "ref", _report(), ref, dict(arrays), arrays, ["a"])
    assert ok.status == "ok" and ok.problems == []
    bad_shape = compare("m", "x", "ref", _report(shapes={"a.weight": [2, 6]}), ref, arrays, arrays, ["a"])
    assert bad_shape.structure == "a.weight" and "layer a.weight: shape [2, 6]" in bad_shape.problems[0]
    off = {"logits": np.ones((2, 3)) * 1.001, "act:a": np.ones((2, 3)) * 1.001}
    bad_math = compare("m", "x", "ref", _report(), ref, off, arrays, ["a"])
    assert bad_math.first_diverging_module == "a" and any("logits differ" in p for p in bad_math.problems)
    bad_loss = compare("m", "x", "ref", _report(losses=(1.0, 0.95)), ref, arrays, arrays, ["a"])
    assert any("SGD losses differ" in p for p in bad_loss.problems)
    bad_update = compare("m", "x", "ref", _report(fp={"a.weight": [1.1, 0.5]}), ref, arrays, arrays, ["a"])
    assert any("layer a.weight: first SGD update differs" in p for p in bad_update.problems)


def test_verdicts_per_model() -> None:
    checks = [
        Check("mlp", "pytorch", "pytorch", "ok"),
        Check("mlp", "jax", "pytorch", "ok"),
        Check("bert", "pytorch", "pytorch", "ok"),
        Check("bert", "jax", "pytorch", "mismatch", problems=["layer x"]),
    ]
    assert verdicts(checks) == {"mlp": (True, "2 frameworks agree"), "bert": (False, "jax: layer x")}


def test_verify_turns_dropout_off_and_uses_plain_sgd() -> None:
    o = verify_overrides("bert", {"layers": 2})
    assert o["dropout"] == 0.0 and o["layers"] == 2 and o["optimizer"]["name"] == "sgd"
    assert "dropout" not in verify_overrides("mlp", None)
