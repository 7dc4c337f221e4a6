"""The fidelity bench's independent references compute the workers' functions: on the same canonical
weights, each reference's logits equal its framework's worker's (fp32, eval mode), for every model at a
tiny size. The weights are perturbed first (norm scales and shifts, running statistics, every bias), so
a reference that maps a tensor to the wrong place cannot pass on weights that happen to be 1 or 0; and
one tensor moved by noise must fail the check, or the check could not catch anything.

Tolerance: |reference - worker| <= ATOL + RTOL * |worker|, ATOL = RTOL = 1e-5. Measured (CPU, fp32,
these perturbed weights): 0.0 for every MLP and ResNet and for TensorFlow's BERT; 3.7e-9 for the PyTorch
and Flax BERTs here, 2.2e-8 and 4.5e-8 at full size (a packed q/k/v projection, Flax's one-pass
LayerNorm variance: the same function, summed in another order), on logits of 0.06-2.3. The noise on
the probe tensor moves the logits by 1.4e-4 (BERT) to 3.2e-2 (ResNet): caught with 10x to spare. The
margin above the measured error is for other CPUs, whose kernels may sum in other orders.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from workers.common import specs
from workers.common.weights import initial_weights

pytestmark = pytest.mark.e2e  # real worker processes or framework training: not in make test-fast


ATOL = RTOL = 1e-5
# tiny specs of the bench's three models: every kind of block is there (a stride-2 stage whose width
# does not change still takes a projection shortcut), at sizes that run in well under a second
TINY = {
    "mlp": {"in_features": 20, "hidden": [16, 12], "num_classes": 5},
    "resnet18": {"widths": [4, 8, 8, 16], "image_size": 16, "num_classes": 5},
    "bert": {"vocab_size": 64, "seq_len": 16, "layers": 2, "hidden": 32, "heads": 4, "ffn": 64, "num_classes": 3},
}
BATCH = 4  # 3 crashed TensorFlow 2.21 (oneDNN's convolution filter gradient: heap corruption), the worker's model too


def tiny_spec(model: str) -> specs.ModelSpec:
    return specs.get_spec(model, TINY[model])


def perturbed_weights(spec: specs.ModelSpec, seed: int = 0) -> dict[str, np.ndarray]:
    """The canonical initial weights with every tensor a mapping could confuse made distinct."""
    rng = np.random.default_rng(seed)
    w = initial_weights(spec, 0)
    params = specs.canonical_params(spec)
    for name, p in params.items():
        leaf = name.rsplit(".", 1)[1]
        if leaf == "running_mean" or leaf == "bias":
            w[name] = rng.normal(0.0, 0.05, p.shape).astype(np.float32)
        elif leaf == "running_var" or (leaf == "weight" and p.module in ("batchnorm", "layernorm")):
            w[name] = rng.uniform(0.5, 1.5, p.shape).astype(np.float32)
    return w


def inputs(spec: specs.ModelSpec, layout: str) -> np.ndarray:
    """A batch of model inputs (images in `layout`)."""
    rng = np.random.default_rng(1)
    inp = specs.input_spec(spec)
    if inp.dtype == "int32":
        return rng.integers(0, inp.extra["vocab_size"], (BATCH, *inp.shape)).astype(np.int32)
    x = rng.normal(0.0, 1.0, (BATCH, *inp.shape)).astype(np.float32)
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1)) if x.ndim == 4 and layout == "NHWC" else x


# --- each framework: (worker logits, reference logits) on the same weights --------------------------


def torch_logits(spec: specs.ModelSpec, worker_w: dict, ref_w: dict) -> tuple[np.ndarray, np.ndarray]:
    import torch

    from bench.references import torch_models as ref
    from workers.pytorch_worker import models

    x = torch.from_numpy(inputs(spec, "NCHW"))
    x = x.long() if x.dtype == torch.int32 else x
    worker = models.build(spec)
    models.load_canonical(worker, spec, worker_w)
    reference = ref.build(spec)
    ref.load_canonical(reference, spec, ref_w)
    with torch.no_grad():
        return worker.eval()(x).numpy(), reference.eval()(x).numpy()


def keras_logits(spec: specs.ModelSpec, worker_w: dict, ref_w: dict) -> tuple[np.ndarray, np.ndarray]:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from bench.references import keras_models as ref
    from workers.tensorflow_worker import models

    x = inputs(spec, "NHWC")
    worker = models.build(spec)
    models.load_canonical(worker, spec, worker_w)
    reference = ref.build(spec)
    ref.load_canonical(reference, spec, ref_w)
    return np.asarray(worker(x, training=False)), np.asarray(reference(x, training=False))


def flax_logits(spec: specs.ModelSpec, worker_w: dict, ref_w: dict) -> tuple[np.ndarray, np.ndarray]:
    import flax
    import jax

    from bench.references import flax_models as ref
    from workers.jax_worker import models

    x = inputs(spec, "NHWC")
    worker = models.build(spec)
    like = jax.eval_shape(lambda: worker.init(jax.random.PRNGKey(0), x[:1], train=False))
    worker_vars = models.load_canonical(flax.core.unfreeze(like), spec, worker_w)
    reference = ref.build(spec)
    ref_vars = ref.load_canonical(reference, spec, ref_w, x[:1])
    return np.asarray(worker.apply(worker_vars, x, train=False)), np.asarray(reference.apply(ref_vars, x, train=False))


LOGITS = {"pytorch": torch_logits, "tensorflow": keras_logits, "jax": flax_logits}
PACKAGE = {"pytorch": "torch", "tensorflow": "tensorflow", "jax": "flax"}
# a tensor deep inside each model (its first stage's second block, BERT's last FFN), moved by noise of
# 1e-2 (not by a constant: before a LayerNorm, a constant added to a weight moves every feature alike,
# and the norm takes it out again)
PROBE = {"mlp": "layers.1.weight", "resnet18": "stages.0.1.conv2.weight", "bert": "layers.1.ffn.outer.weight"}


def max_excess(ref: np.ndarray, worker: np.ndarray) -> float:
    """How far the worst logit is outside the tolerance (<= 0: inside)."""
    return float(np.max(np.abs(ref - worker) - (ATOL + RTOL * np.abs(worker))))


@pytest.mark.parametrize("model", list(TINY))
@pytest.mark.parametrize("framework", list(LOGITS))
def test_reference_logits_equal_the_workers(framework: str, model: str) -> None:
    pytest.importorskip(PACKAGE[framework])
    spec = tiny_spec(model)
    w = perturbed_weights(spec)
    worker, ref = LOGITS[framework](spec, w, w)
    assert worker.shape == ref.shape == (BATCH, spec.num_classes)
    assert np.abs(worker).max() > 1e-2  # logits that say something
    err = np.abs(ref - worker).max()
    assert max_excess(ref, worker) <= 0, f"{framework} {model}: reference logits {err:.2e} from the worker's"
    # the check can fail: one tensor of the reference's weights moved by 1e-2 is caught
    moved = dict(w)
    probe = w[PROBE[model]]
    moved[PROBE[model]] = probe + np.random.default_rng(2).normal(0.0, 1e-2, probe.shape).astype(np.float32)
    worker, ref = LOGITS[framework](spec, w, moved)
    assert max_excess(ref, worker) > 0, f"{framework} {model}: a moved weight went unnoticed"


# --- the optimizers and schedules, written out in each reference --------------------------------

# large steps and a short schedule, so a different momentum, decay or epsilon shows within four updates:
# warm-up over 2 updates (factors 0.5, 1), then decay (1, 0.5)
TRAIN = {
    "mlp": {"optimizer": {"lr": 0.01, "weight_decay": 0.1, "schedule": "linear", "warmup": 0.5}},
    "resnet18": {"optimizer": {"lr": 0.1, "weight_decay": 0.05, "warmup": 0.5}},
}
UPDATES = 4


def train_spec(model: str) -> specs.ModelSpec:
    overrides = {**TINY[model], **TRAIN[model]}
    overrides["optimizer"] = {**TRAIN[model]["optimizer"]}
    return specs.with_total_steps(specs.get_spec(model, overrides), UPDATES)


def labels(spec: specs.ModelSpec) -> np.ndarray:
    return np.random.default_rng(3).integers(0, spec.num_classes, BATCH).astype(np.int64)


def torch_losses(spec: specs.ModelSpec, w: dict) -> list[float]:
    import torch
    import torch.nn.functional as F

    from bench.references import torch_models as ref

    net = ref.build(spec)
    ref.load_canonical(net, spec, w)
    opt, sched = ref.optimizer(net, spec.optimizer)
    x, y = torch.from_numpy(inputs(spec, "NCHW")), torch.from_numpy(labels(spec))
    losses = []
    for _ in range(UPDATES + 1):
        opt.zero_grad()
        loss = F.cross_entropy(net.train()(x), y)
        losses.append(loss.item())
        loss.backward()
        opt.step()
        sched.step()
    return losses


def keras_losses(spec: specs.ModelSpec, w: dict, opt=None, l2: float = 0.0) -> list[float]:
    """The Keras reference's losses over the updates, with the reference's optimizer or `opt` (then
    `l2`: coupled weight decay as a loss term, as the worker adds it)."""
    import keras
    import tensorflow as tf

    from bench.references import keras_models as ref

    net = ref.build(spec)
    ref.load_canonical(net, spec, w)
    opt = opt or ref.optimizer(spec.optimizer)
    x, y = tf.constant(inputs(spec, "NHWC")), tf.constant(labels(spec))
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    # in a tf.function, as the bench's loop runs it (eagerly, oneDNN's convolution filter gradient
    # aborted the process on this tiny ResNet: "could not get a native handle from a memory object")
    @tf.function
    def step() -> tf.Tensor:
        with tf.GradientTape() as tape:
            loss = loss_fn(y, net(x, training=True))
            total = loss + 0.5 * l2 * tf.add_n([tf.reduce_sum(tf.square(v)) for v in net.trainable_variables])
        opt.apply(tape.gradient(total if l2 else loss, net.trainable_variables), net.trainable_variables)
        return loss

    return [float(step()) for _ in range(UPDATES + 1)]


def flax_losses(spec: specs.ModelSpec, w: dict) -> list[float]:
    import jax
    import optax

    from bench.references import flax_models as ref

    net = ref.build(spec)
    x, y = inputs(spec, "NHWC"), labels(spec)
    variables = ref.load_canonical(net, spec, w, x[:1])
    params, stats = variables["params"], variables.get("batch_stats", {})
    tx = ref.optimizer(spec.optimizer)
    state = tx.init(params)

    def loss_fn(p, stats):
        out, upd = net.apply({"params": p, **stats}, x, train=True, mutable=list(stats))
        return optax.softmax_cross_entropy_with_integer_labels(out, y).mean(), upd

    losses = []
    for _ in range(UPDATES + 1):
        (loss, upd), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, {"batch_stats": stats} if stats else {})
        losses.append(float(loss))
        updates, state = tx.update(grads, state, params)
        params, stats = optax.apply_updates(params, updates), upd.get("batch_stats", stats)
    return losses


@pytest.mark.parametrize("model", list(TRAIN))  # AdamW, and SGD with momentum and coupled decay
@pytest.mark.parametrize("framework", ["tensorflow", "jax"])
def test_reference_optimizers_train_as_torch_optim(framework: str, model: str) -> None:
    """Four updates under the linear schedule from the same weights on the same batch: the Keras and
    optax references' losses equal the PyTorch reference's (torch.optim: the spec's definition of SGD
    and AdamW). Keras' own SGD (lr folded into the velocity) and AdamW (epsilon before the bias
    correction) would not: the losses after a changed learning rate move by far more than 1e-5."""
    pytest.importorskip("torch")
    pytest.importorskip(PACKAGE[framework])
    spec = train_spec(model)
    w = perturbed_weights(spec)
    want = torch_losses(spec, w)
    got = {"tensorflow": keras_losses, "jax": flax_losses}[framework](spec, w)
    assert want[-1] < want[0] - 1e-3  # it trained
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_reference_schedules_are_the_specs() -> None:
    """Each reference's learning rate for every update equals the spec's lr x lr_factor."""
    pytest.importorskip("torch")
    from bench.references import torch_models

    for warmup, total in ((0.1, 23), (0.5, 4), (0.1, 3)):
        opt = specs.OptimizerSpec("adamw", lr=3e-4, schedule="linear", warmup=warmup, total_steps=total)
        want = [opt.lr * opt.lr_factor(n) for n in range(total + 2)]
        lam = torch_models.lr_lambda(opt)
        assert [opt.lr * lam(n) for n in range(total + 2)] == pytest.approx(want, rel=1e-6)
        if _has("flax"):
            from bench.references import flax_models

            sched = flax_models.schedule(opt)
            assert [float(sched(n)) for n in range(total + 2)] == pytest.approx(want, rel=1e-6, abs=1e-12)
        if _has("tensorflow"):
            from bench.references import keras_models

            sched = keras_models.schedule(opt)
            assert [float(sched(n)) for n in range(total + 2)] == pytest.approx(want, rel=1e-6, abs=1e-12)


def _has(package: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(package) is not None


def test_the_tensorflow_workers_sgd_trains_as_torch_optim() -> None:
    """Keras' own SGD keeps the lr inside its velocity (v = mu v - lr g): PyTorch's momentum only while
    the lr is constant, and the ResNets' linear schedule changes it every update; the worker's TorchSGD
    is PyTorch's arithmetic (keras.optimizers.SGD fails this test: docs/findings.md)."""
    pytest.importorskip("torch")
    pytest.importorskip("tensorflow")
    from workers.tensorflow_worker.backend import make_optimizer

    spec = train_spec("resnet18")
    w = perturbed_weights(spec)
    # the reference's model (the same function as the worker's, above) with the worker's optimizer
    got = keras_losses(spec, w, make_optimizer(spec.optimizer), spec.optimizer.weight_decay)
    np.testing.assert_allclose(got, torch_losses(spec, w), rtol=1e-5, atol=1e-6)


# --- the native forms `bench.parity_cost` times against the spec's ------------------------------


def test_the_native_forms_parity_cost_times_compute_another_function() -> None:
    """What `bench.parity_cost` weighs: each native form it times is not the spec's function (else the
    workers could simply use it): `same` padding at stride 2 moves the ResNets' logits, Keras' own SGD
    its losses under the changing rate; and Flax's two-pass LayerNorm variance (the JAX worker's form)
    is the same function as the reference's one-pass, within the logits' tolerance."""
    pytest.importorskip("torch")
    spec = tiny_spec("resnet18")
    w = perturbed_weights(spec)
    if _has("tensorflow"):
        from bench.references import keras_models
        from workers.tensorflow_worker import models

        x = inputs(spec, "NHWC")
        worker = models.build(spec)
        models.load_canonical(worker, spec, w)
        native = keras_models.build(spec, same_padding=True)
        keras_models.load_canonical(native, spec, w)
        assert max_excess(np.asarray(native(x, training=False)), np.asarray(worker(x, training=False))) > 0
        tspec = train_spec("resnet18")
        tw = perturbed_weights(tspec)
        keras_sgd = keras_models.optimizer(tspec.optimizer, keras_own=True)
        assert type(keras_sgd).__module__.startswith("keras")
        got, want = keras_losses(tspec, tw, keras_sgd), torch_losses(tspec, tw)
        assert not np.allclose(got, want, rtol=1e-5, atol=1e-6)
    if _has("flax"):
        import flax
        import jax

        from bench.references import flax_models
        from workers.jax_worker import models as jax_models

        x = inputs(spec, "NHWC")
        worker = jax_models.build(spec)
        like = jax.eval_shape(lambda: worker.init(jax.random.PRNGKey(0), x[:1], train=False))
        want = np.asarray(worker.apply(jax_models.load_canonical(flax.core.unfreeze(like), spec, w), x, train=False))
        native = flax_models.build(spec, same_padding=True)
        got = np.asarray(native.apply(flax_models.load_canonical(native, spec, w, x[:1]), x, train=False))
        assert max_excess(got, want) > 0
        bspec = tiny_spec("bert")
        bw = perturbed_weights(bspec)
        tokens = inputs(bspec, "NHWC")
        worker = jax_models.build(bspec)
        like = jax.eval_shape(lambda: worker.init(jax.random.PRNGKey(0), tokens[:1], train=False))
        want = np.asarray(
            worker.apply(jax_models.load_canonical(flax.core.unfreeze(like), bspec, bw), tokens, train=False)
        )
        two_pass = flax_models.build(bspec, fast_variance=False)
        got = np.asarray(
            two_pass.apply(flax_models.load_canonical(two_pass, bspec, bw, tokens[:1]), tokens, train=False)
        )
        assert max_excess(got, want) <= 0
