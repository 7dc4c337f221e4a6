"""The three framework workers: canonical weight round trip in each, and real training cells side by side."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from mlbench.analysis import parity
from tests.conftest import ROOT
from workers.common import registry, specs
from workers.common.weights import initial_weights

TINY = {
    "resnet18": {"widths": [8, 16, 32, 64]},
    "bert": {"layers": 1, "hidden": 64, "heads": 2, "ffn": 128, "vocab_size": 512, "seq_len": 32, "dropout": 0.0},
}
CELL = {"device": "cpu", "precision": "fp32", "seed": 0, "compile": False, "threads": None}


def _class(framework: str):
    pytest.importorskip({"pytorch": "torch"}.get(framework, framework))
    return registry.backend_class(framework)


def _backend(framework: str):
    return _class(framework)(dict(CELL))


@pytest.mark.e2e
@pytest.mark.parametrize("framework", ["pytorch", "tensorflow", "jax"])
@pytest.mark.parametrize("model", ["mlp", "resnet18", "bert"])
def test_canonical_weights_round_trip_exactly(framework: str, model: str, tmp_path) -> None:
    spec = specs.get_spec(model, TINY.get(model))
    weights = initial_weights(spec, 3)
    backend = _backend(framework)
    backend.build(spec, weights)
    assert backend.num_parameters() == specs.num_parameters(spec)
    exported = backend.export()
    assert set(exported) == set(weights)
    for name, arr in weights.items():
        assert exported[name].shape == arr.shape and np.array_equal(exported[name], arr), name
    saved = backend.save(str(tmp_path / "model"))  # the native format is written and not empty
    assert (tmp_path / saved.split("/")[-1]).stat().st_size > 4 * specs.num_parameters(spec) * 0.9


@pytest.mark.e2e
@pytest.mark.parametrize("framework", ["tensorflow", "jax"])
def test_a_gpu_the_framework_cannot_see_is_a_missing_device(framework: str) -> None:
    """Not Unsupported (skipped): the orchestrator starts a GPU cell only where NVML sees the GPU."""
    from workers.common.harness import DeviceMissing

    B = _class(framework)  # skips when the framework is not installed
    try:
        B({**CELL, "device": "cuda:7"})
    except DeviceMissing as exc:
        assert "cuda:7" in str(exc)
    else:
        pytest.skip("this machine has 8 GPUs")


@pytest.mark.e2e
def test_one_real_training_cell_per_framework(shared_run) -> None:
    df = pd.read_parquet(shared_run / "results.parquet")
    df = df[df.precision == "fp32"]
    assert len(df) == 9 and set(df.status) == {"ok"}, df[["framework", "model_name", "status", "reason"]]
    for _, r in df.iterrows():
        assert r.num_parameters == specs.num_parameters(specs.get_spec(r.model_name, TINY.get(r.model_name)))
        assert r.samples_per_second > 0 and 0 < r.inference_latency_p50_ms <= r.inference_latency_p99_ms
        assert r.first_step_s > 0 and r.compile_time_s is not None and r.precision_mode == "fp32"
        assert len(r.epochs_detail) == 2
    assert df.set_index("framework").loc["tensorflow"].compiler.iloc[0].startswith("tf.function")
    assert df.set_index("framework").loc["jax"].compiler.iloc[0].startswith("XLA")


@pytest.mark.e2e
def test_same_weights_and_data_give_the_same_training_curve(shared_run) -> None:
    df = pd.read_parquet(shared_run / "results.parquet")
    df = df[df.precision == "fp32"].set_index(["model_name", "framework"])
    for model in ("mlp", "bert"):  # no dropout in either: the curves agree to float rounding
        losses = {fw: df.loc[(model, fw)].final_train_loss for fw in ("pytorch", "tensorflow", "jax")}
        assert max(losses.values()) - min(losses.values()) < 1e-3 * max(losses.values()), losses
        row = df.loc[(model, "pytorch")]
        assert row.accuracy_spread_pts <= 2.0
        # the same predictions on 64 samples: no difference seen, but 64 samples cannot prove one under 2
        # points either (the interval of a zero discordant share is +-8 points): unresolved, not different;
        # or, where these few steps left every model at a uniform guess's loss, untrained
        # or, where a curve still moved in its last epoch (two epochs of a few steps), not_converged
        members = [df.loc[(model, fw)].to_dict() | {"model_name": model} for fw in ("pytorch", "tensorflow", "jax")]
        learned = not parity.untrained(members)
        settled = all(parity.convergence(m, 2.0)[0] for m in members)
        expected = "untrained" if not learned else "unresolved" if settled else "not_converged"
        assert row.accuracy_parity_verdict == expected, (row.final_val_loss, row.accuracy_convergence)
        assert row.accuracy_diff_low_pts < 0 < row.accuracy_diff_high_pts
        assert row.accuracy_samples_needed > 64 if expected == "unresolved" else pd.isna(row.accuracy_samples_needed)
        for fw in ("pytorch", "tensorflow", "jax"):  # the per-sample record the verdict pairs on
            r = df.loc[(model, fw)]
            right = parity.correct_vector(r.val_correct_bits, r.val_samples)
            assert len(right) == 64 and right.mean() == pytest.approx(r.final_val_accuracy)
    groups = json.loads((shared_run / "parity.json").read_text())
    assert {g["model_name"] for g in groups} == {"mlp", "resnet18", "bert"}
    assert all(set(g["val_accuracy"]) == {"pytorch", "tensorflow", "jax"} for g in groups)


@pytest.mark.e2e
def test_trained_weights_move_between_frameworks_as_canonical_npz(tmp_path) -> None:
    pytest.importorskip("jax")
    import subprocess

    from tests.conftest import ROOT, by_hand
    from workers.common.weights import load_npz

    out_torch, out_jax = tmp_path / "torch.npz", tmp_path / "jax.npz"
    for module, extra in (
        ("workers.pytorch_worker", ["--weights-out", str(out_torch)]),
        ("workers.jax_worker", ["--weights-in", str(out_torch), "--weights-out", str(out_jax)]),
    ):
        proc = subprocess.run(
            by_hand(module, tmp_path / "data", *extra), cwd=ROOT, capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 0 and '"event":"result"' in proc.stdout, proc.stderr[-2000:]
    spec = specs.get_spec("mlp")
    trained, continued = load_npz(str(out_torch)), load_npz(str(out_jax))
    assert {k: v.shape for k, v in trained.items()} == {k: p.shape for k, p in specs.canonical_params(spec).items()}
    assert not np.array_equal(trained["layers.0.weight"], initial_weights(spec, 0)["layers.0.weight"])  # trained
    assert not np.array_equal(trained["layers.0.weight"], continued["layers.0.weight"])  # and trained on in JAX


@pytest.mark.e2e
def test_mfu_against_the_calibrated_peak(shared_run) -> None:
    entries = json.loads((shared_run / "calibration.json").read_text())
    assert {e["framework"] for e in entries} == {"pytorch", "tensorflow", "jax"}
    assert all(e["status"] == "ok" and e["peak_tflops"] > 0 and e["runs"] >= 3 for e in entries)
    df = pd.read_parquet(shared_run / "results.parquet")
    df = df[df.precision == "fp32"]  # the mixed-precision cells were resumed without a calibration
    peak = max(e["peak_tflops"] for e in entries)
    assert (df.peak_tflops == peak).all()
    assert ((df.mfu - df.achieved_tflops / peak).abs() < 1e-12).all() and (df.mfu > 0).all()
    assert (df.model_load_s > 0).all() and (df.inference_b1_runs >= 3).all()


@pytest.mark.e2e
def test_the_calibration_runs_on_the_cells_threads(shared_run) -> None:
    """A calibration cell starts through the executor like every cell: on the suite's threads (1 here),
    not on every core, so a one-thread cell's MFU is over a one-thread peak."""
    for e in json.loads((shared_run / "calibration.json").read_text()):
        assert e["threads"] == 1 and e["executor"] == "local" and e["hostname"], e
        hello = json.loads((shared_run / "logs" / f"{e['cell_id']}.ndjson").read_text().splitlines()[0])
        threads = hello["threads"]
        assert threads.get("intra_op") == 1 or "intra_op_parallelism_threads=1" in threads["XLA_FLAGS"], threads
        assert threads.get("OMP_NUM_THREADS", "1") == "1" and threads.get("TF_NUM_INTRAOP_THREADS", "1") == "1"


def test_peaks_take_the_highest_framework() -> None:
    from mlbench.tasks.calibration import peaks

    entries = [
        {"framework": "a", "device": "cpu", "precision": "fp32", "peak_tflops": 0.1, "hostname": "h"},
        {"framework": "b", "device": "cpu", "precision": "fp32", "peak_tflops": 0.3, "hostname": "h"},
        {"framework": "c", "device": "cpu", "precision": "fp32", "peak_tflops": None, "hostname": "h"},
        {"framework": "a", "device": "cpu", "precision": "bf16", "peak_tflops": 0.2, "hostname": "h"},
    ]
    assert peaks(entries) == {("h", "cpu", "fp32"): 0.3, ("h", "cpu", "bf16"): 0.2}


def test_a_cell_on_another_host_has_no_mfu_against_this_hosts_peak() -> None:
    """Calibration measures the orchestrator's machine; a Ray node's cell is not divided by it."""

    from mlbench.results import schema
    from mlbench.tasks.calibration import annotate

    row = {name: None for name in schema.SCHEMA.names}
    rows = [{**row, "hostname": h, "device": "cpu", "precision": "fp32", "achieved_tflops": 0.1} for h in "hn"]
    entries = [{"framework": "a", "device": "cpu", "precision": "fp32", "peak_tflops": 0.4, "hostname": "h"}]
    annotate(rows, entries)
    out = rows
    assert out[0]["mfu"] == pytest.approx(0.25) and out[1]["mfu"] is None and out[1]["peak_tflops"] is None


def test_an_mfu_above_one_is_refused_and_said() -> None:
    """A cell faster than the calibrated peak means the peak was measured too low: no MFU is stored."""

    from mlbench.present import content
    from mlbench.results import schema
    from mlbench.tasks.calibration import annotate

    row = {name: None for name in schema.SCHEMA.names}
    rows = [
        {**row, "hostname": "h", "device": "cpu", "precision": "fp32", "achieved_tflops": t, "status": "ok"}
        for t in (0.3, 0.5)
    ]
    entries = [{"framework": "a", "device": "cpu", "precision": "fp32", "peak_tflops": 0.4, "hostname": "h"}]
    annotate(rows, entries)
    out = rows
    assert out[0]["mfu"] == pytest.approx(0.75) and out[1]["mfu"] is None and out[1]["peak_tflops"] == 0.4
    assert any("faster than the calibrated peak" in w for w in content.warnings(out, []))


@pytest.mark.e2e
@pytest.mark.parametrize("framework", ["pytorch", "tensorflow", "jax"])
def test_calibration_is_sustained_on_random_data_and_reports_its_spread(shared_run, framework) -> None:
    """The calibration cell runs chains of products for at least a second in all and reports the
    median run as the peak, with the best and worst beside it (the shared run's, on its one thread)."""
    import json

    from mlbench.runfolder import RunFolder

    stored = next(c for c in json.loads((shared_run / "calibration.json").read_text()) if c["framework"] == framework)
    log = (RunFolder(shared_run).logs / f"{stored['cell_id']}.ndjson").read_text()
    event = next(json.loads(x) for x in log.splitlines() if '"calibration"' in x)
    assert event["sustained_s"] >= 1.0 and event["runs"] >= 5 and event["reps"] >= 1
    assert event["worst_tflops"] <= event["peak_tflops"] <= event["best_tflops"]
    assert event["peak_tflops"] == pytest.approx(event["flops"] / event["median_s"] / 1e12)
    assert stored["peak_tflops"] == event["peak_tflops"] and stored["threads"] == 1


@pytest.mark.e2e
@pytest.mark.parametrize("framework", ["pytorch", "tensorflow", "jax"])
def test_a_gpu_the_framework_does_not_see_fails_the_cell(tmp_path, framework) -> None:
    """The orchestrator starts a GPU cell only where NVML sees its GPU; a framework that then sees none
    (a CPU build, a broken CUDA install) fails the cell with that reason instead of skipping it."""
    import json
    import os
    import subprocess

    from tests.conftest import ROOT, by_hand

    pytest.importorskip({"pytorch": "torch", "tensorflow": "tensorflow", "jax": "jax"}[framework])
    proc = subprocess.run(
        [*by_hand(f"workers.{framework}_worker", tmp_path / "data"), "--device", "cuda:0", "--malloc", "system"],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    error = next(json.loads(x) for x in proc.stdout.splitlines() if '"error"' in x)
    assert error["kind"] == "exception" and proc.returncode != 0
    assert "cuda:0 asked for" in error["message"] and "CPU-only build or a broken CUDA" in error["message"]


def test_tensorflow_counts_correct_predictions_in_a_device_dtype() -> None:
    """An int32 count would live in host memory on a GPU, a copy inside every step: it is float32."""
    tf = pytest.importorskip("tensorflow")
    import numpy as np

    from workers.tensorflow_worker.backend import count_correct

    rng = np.random.default_rng(0)
    logits, y = rng.standard_normal((64, 10)).astype(np.float32), rng.integers(0, 10, 64).astype(np.int32)
    correct = count_correct(tf.constant(logits), tf.constant(y))
    assert correct.dtype == tf.float32 and float(correct) == np.sum(logits.argmax(-1) == y)


@pytest.mark.parametrize("framework", ["pytorch", "tensorflow", "jax"])
def test_fp32_is_true_ieee_fp32_set_explicitly_and_reported(framework: str) -> None:
    """Each framework's GPU default differs (TF32 somewhere in each); every worker sets true fp32 itself."""
    backend = _backend(framework)
    assert backend.info()["matmul_precision"] == "ieee"
    if framework == "pytorch":
        import torch

        assert (
            torch.backends.cuda.matmul.fp32_precision == "ieee" and torch.backends.cudnn.conv.fp32_precision == "ieee"
        )
    elif framework == "tensorflow":
        import tensorflow as tf

        assert tf.config.experimental.tensor_float_32_execution_enabled() is False
    else:
        import jax

        assert jax.config.jax_default_matmul_precision == "highest"


@pytest.mark.parametrize("framework", ["pytorch", "tensorflow", "jax"])
def test_tf32_on_a_cpu_is_unsupported(framework: str) -> None:
    from workers.common.harness import Unsupported

    B = _class(framework)  # skips when the framework is not installed
    with pytest.raises(Unsupported, match="tf32 is a tensor-core mode of NVIDIA GPUs"):
        B({**CELL, "precision": "tf32"})


def test_tf32_needs_an_ampere_gpu() -> None:
    from workers.common import precision

    assert precision.tf32_unsupported("tf32", True, (8, 0)) is None
    assert "8.0 or later; this one is 7.0" in precision.tf32_unsupported("tf32", True, (7, 0))
    assert precision.tf32_unsupported("fp32", False, None) is None
    assert precision.compute_dtype("tf32") == "fp32" and precision.matmul_policy("bf16") == "ieee"


@pytest.mark.parametrize("framework", ["pytorch", "tensorflow", "jax"])
def test_a_native_load_gives_back_the_same_model_on_the_device(framework: str, tmp_path) -> None:
    """model_load_s times a load that is finished: in JAX the parameters are device arrays again, not
    host arrays left for the next step to copy."""
    spec = specs.get_spec("mlp")
    weights = initial_weights(spec, 3)
    backend = _backend(framework)
    backend.build(spec, weights)
    saved = backend.save(str(tmp_path / "model"))
    backend.build(spec, initial_weights(spec, 4))
    backend.load(saved)
    for name, arr in backend.export().items():
        assert np.array_equal(arr, weights[name]), name
    if framework == "jax":
        import jax

        leaves = jax.tree_util.tree_leaves(backend.state.params)
        assert all(isinstance(x, jax.Array) and x.devices() == {backend.device} for x in leaves)


@pytest.mark.parametrize("framework", ["pytorch", "tensorflow", "jax"])
def test_fp16_loss_scaling_starts_alike_in_every_framework(framework: str) -> None:
    """Keras' default first scale is 2**15, PyTorch's 2**16: all three start at the same one."""
    from workers.common.precision import FP16_INITIAL_SCALE

    backend = _class(framework)({**CELL, "precision": "fp16"})
    backend.build(specs.get_spec("mlp"), initial_weights(specs.get_spec("mlp"), 0))
    if framework == "pytorch":
        assert backend.scaler.get_scale() == FP16_INITIAL_SCALE and backend.scaler.get_growth_interval() == 2000
    elif framework == "tensorflow":
        assert float(backend.optimizer.dynamic_scale.numpy()) == FP16_INITIAL_SCALE
        assert backend.optimizer.dynamic_growth_steps == 2000
    else:
        assert float(backend.state.loss_scale) == FP16_INITIAL_SCALE


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_jax_compiles_its_training_step_once(precision: str) -> None:
    """The state a build makes lies on the device as the step's outputs do: a scalar left uncommitted
    (the step counter, the loss scale, optax's count) made the second step compile the whole step
    again, a second compile in every JAX cell and two in every model verify checks."""
    backend = _class("jax")({**CELL, "precision": precision})
    spec = specs.get_spec("mlp")
    backend.build(spec, initial_weights(spec, 0))
    x = np.random.default_rng(0).standard_normal((8, spec.in_features)).astype(np.float32)
    y = np.zeros(8, np.int32)
    for _ in range(3):
        backend.step_result(backend.launch_step(x, y))
    assert backend._train._cache_size() == 1


def _updates_made(backend) -> int:
    """The optimizer's own count of the updates it applied (what its lr schedule reads)."""
    if backend.framework == "pytorch":
        return backend.scheduler.last_epoch
    if backend.framework == "tensorflow":
        return int(backend.optimizer.iterations.numpy())
    import jax

    counts = [
        leaf for path, leaf in jax.tree_util.tree_leaves_with_path(backend.state.opt_state) if "count" in str(path)
    ]
    return int(counts[0])


@pytest.mark.e2e
@pytest.mark.parametrize("framework", ["pytorch", "tensorflow", "jax"])
def test_a_skipped_fp16_step_does_not_advance_the_schedule(framework: str) -> None:
    """Gradients that overflow fp16 skip the update and halve the scale; the learning-rate schedule
    counts updates made, in all three."""
    backend = _class(framework)({**CELL, "precision": "fp16"})
    spec = specs.get_spec("mlp")
    backend.build(spec, initial_weights(spec, 0))
    x = np.random.default_rng(0).standard_normal((8, spec.in_features)).astype(np.float32)
    y = np.zeros(8, np.int64 if framework == "pytorch" else np.int32)
    backend.step_result(backend.launch_step(x, y))
    assert _updates_made(backend) == 1
    backend.step_result(backend.launch_step(x * 1e6, y))  # past fp16's 65504: inf activations, no update
    assert _updates_made(backend) == 1, framework
    backend.step_result(backend.launch_step(x, y))
    assert _updates_made(backend) == 2


ALLOCATE_TOO_MUCH = {  # 16 TiB at once: refused at once by any allocator, nothing is touched
    "pytorch": "torch.empty(1 << 44, dtype=torch.uint8)",
    "tensorflow": "tf.zeros((1 << 44,), tf.uint8).numpy()",
    "jax": "jnp.zeros((1 << 44,), jnp.uint8).block_until_ready()",
}


@pytest.mark.e2e
@pytest.mark.parametrize("framework", ["pytorch", "tensorflow", "jax"])
def test_each_frameworks_real_out_of_memory_error_is_oom(framework: str) -> None:
    """The exception each framework really raises when an allocation fails (on the CPU here) is
    classified oom, and an ordinary error is not."""
    backend = _backend(framework)
    names = {"pytorch": {"torch": "torch"}, "tensorflow": {"tf": "tensorflow"}, "jax": {"jnp": "jax.numpy"}}[framework]
    scope = {alias: pytest.importorskip(module) for alias, module in names.items()}
    try:
        eval(ALLOCATE_TOO_MUCH[framework], scope)
    except Exception as exc:
        assert backend.is_oom(exc), f"{type(exc).__name__}: {exc}"
    else:
        pytest.skip("this machine allocated 16 TiB")
    assert not backend.is_oom(ValueError("shapes (3,) and (4,) do not match"))


@pytest.mark.e2e
def test_mixed_precision_cells_run_end_to_end_in_every_framework(shared_run) -> None:
    """bf16 and fp16 cells (fp16 with loss scaling) train, evaluate and time inference on a CPU in all
    three frameworks, and say how they ran the precision."""
    df = pd.read_parquet(shared_run / "results.parquet")
    df = df[df.precision != "fp32"]
    assert len(df) == 6 and set(df.status) == {"ok"}, df[["framework", "precision", "status", "reason"]]
    for _, r in df.iterrows():
        assert np.isfinite(r.final_train_loss) and r.samples_per_second > 0 and r.inference_latency_p50_ms > 0
        names = {"bf16": ("bf16", "bfloat16"), "fp16": ("fp16", "float16")}[r.precision]
        assert r.matmul_precision == "ieee" and any(n in r.precision_mode for n in names), r.precision_mode
    modes = df.set_index(["framework", "precision"]).precision_mode
    assert "GradScaler" in modes[("pytorch", "fp16")] and "LossScaleOptimizer" in modes[("tensorflow", "fp16")]
    assert "loss scaling" in modes[("jax", "fp16")]


def test_jax_reports_the_cuda_and_cudnn_its_plugin_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("jax")
    import types

    import jax._src.lib as jaxlib_info

    from workers.jax_worker import backend

    monkeypatch.setattr(jaxlib_info, "cuda_versions", None)  # a CPU jaxlib: missing, not invented
    assert backend.cuda_versions() == {"cuda_version": None, "cudnn_version": None}
    loaded = types.SimpleNamespace(cuda_runtime_get_version=lambda: 12090, cudnn_get_version=lambda: 92800)
    monkeypatch.setattr(jaxlib_info, "cuda_versions", loaded)
    assert backend.cuda_versions() == {"cuda_version": "12.9", "cudnn_version": "9.28.0"}


def test_the_registry_holds_every_built_in_framework() -> None:
    from mlbench.config import BUILTIN_WORKERS
    from mlbench.process import environment

    assert {name: f"workers.{name}_worker" for name in registry.FRAMEWORKS} == BUILTIN_WORKERS
    assert set(environment.capture()["frameworks"]) == set(registry.FRAMEWORKS)
    with pytest.raises(ValueError, match="unknown framework 'mxnet'"):
        registry.backend_class("mxnet")


SHAPE = {  # file -> the names every worker defines there, for the same job
    "__main__.py": {"load_backend"},
    "backend.py": {"Backend", "DTYPES"},
    "models.py": {"build", "load_canonical", "export_canonical"},
    "distributed.py": {"data_parallel_info"},
}


def test_every_worker_has_one_shape() -> None:
    """The same files, and in them the same names with the same parameters for the same job."""
    import ast

    signatures: dict[str, set[tuple[str, ...]]] = {}
    for framework in registry.FRAMEWORKS:
        folder = ROOT / "workers" / f"{framework}_worker"
        for file, names in SHAPE.items():
            tree = ast.parse((folder / file).read_text())
            defined = {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
            defined |= {
                t.id: n for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)
            }
            assert names <= set(defined), f"{folder.name}/{file} lacks {names - set(defined)}"
            for name in names:
                if isinstance(defined[name], ast.FunctionDef):
                    params = tuple(a.arg for a in defined[name].args.args)
                    signatures.setdefault(f"{file}:{name}", set()).add(params)
    differing = {k: v for k, v in signatures.items() if len(v) > 1}
    assert not differing, f"the same job with other parameters: {differing}"


def test_mfu_carries_the_calibrations_spread_and_a_moved_peak_is_said(tmp_path) -> None:
    """MFU over the best and the worst calibration run beside the median's; a peak measured again under the
    same runs root is compared with the last one, and a move of more than 25% is a warning."""
    from mlbench.present import content
    from mlbench.results import schema
    from mlbench.tasks.calibration import annotate, remember

    base = {"hostname": "h", "framework": "jax", "device": "cpu", "precision": "fp32", "threads": 1}
    first = remember({**base, "peak_tflops": 0.4}, tmp_path / "run-a")
    second = remember({**base, "peak_tflops": 0.2, "best_tflops": 0.25, "worst_tflops": 0.16}, tmp_path / "run-b")
    assert first["earlier_peak_tflops"] is None and second["earlier_peak_tflops"] == 0.4
    assert second["earlier_run"] == "run-a"
    row = {name: None for name in schema.SCHEMA.names}
    row.update(hostname="h", device="cpu", precision="fp32", achieved_tflops=0.1, status="ok", cpu_count_logical=2)
    annotate([row], [second])
    assert row["mfu"] == pytest.approx(0.5) and row["mfu_low"] == pytest.approx(0.4)
    assert row["mfu_high"] == pytest.approx(0.625) and row["peak_tflops_earlier"] == 0.4
    said = content.warnings([row], [])
    assert any("The calibrated peak moved more than 25%" in w and "0.2 against 0.4" in w for w in said), said


@pytest.mark.parametrize("framework", ["pytorch", "tensorflow", "jax"])
def test_batches_placed_ahead_train_exactly_as_batches_placed_at_their_step(framework: str) -> None:
    """loader.device_prefetch: the same batches through `to_device` two steps ahead give the same losses,
    bit for bit, as the same batches handed to each step; the batches come out of `ahead` placed (tensors
    of the framework), in order. The host buffers are reused in a ring, as the file feed reuses them,
    so a placed batch that still read its buffer after the buffer was refilled would train on other data."""
    from workers.common import harness

    spec = specs.get_spec("mlp")
    rng = np.random.default_rng(0)
    data = [
        (rng.standard_normal((16, 784)).astype(np.float32), rng.integers(0, 10, 16).astype(np.int32)) for _ in range(8)
    ]
    ring = [(np.empty_like(data[0][0]), np.empty_like(data[0][1])) for _ in range(4 + 2)]

    def feed():  # each batch written into the next buffer of the ring, as FileFeed does
        for k, (x, y) in enumerate(data):
            bx, by = ring[k % len(ring)]
            bx[...], by[...] = x, y
            yield bx, by

    losses, kinds = {}, []

    def seen(batches):
        for x, y in batches:
            kinds.append(type(x))
            yield x, y

    for depth in (0, 2):
        backend = _backend(framework)
        backend.build(spec, initial_weights(spec, 0))
        steps = harness.pipelined(backend, seen(harness.ahead(backend, feed(), depth)))
        losses[depth] = [loss for loss, _, _ in steps]
    assert losses[2] == losses[0] and len(losses[0]) == 8
    assert set(kinds[:8]) == {np.ndarray} and np.ndarray not in kinds[8:] and len(kinds) == 16
