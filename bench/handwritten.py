"""Idiomatic hand-written training loops, one per framework, over the independent references.

Each loop trains its framework's reference model (`bench.references`: written apart from the
workers, loaded with the same canonical initial weights, checked to give the worker's logits) with
the spec's optimizer and learning-rate schedule as the reference writes them, on as many distinct
batches as the cell's steps; no harness: batches prepared up front as device arrays, no per-step host
read-back, one device sync at the end of the timed steps; JAX's state donated to its step. Nothing
here imports a worker, so a model or optimizer written slowly in a worker shows as a ratio below 1.
Prints one JSON line: {"samples_per_second": ...}.

Each loop also takes `options`, forms other than its reference's own, for `bench.parity_cost`: the
framework's native form where the reference writes the spec's (PyTorch's) arithmetic out, or the
worker's where the reference takes the native one (OPTIONS: which each framework has). The fidelity
bench's loops run without.

    python -m bench.handwritten --framework jax --model resnet18 --batch-size 64 --steps 20 [--threads 1]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from workers.common import data, threads
from workers.common.specs import get_spec, input_spec, with_total_steps
from workers.common.weights import initial_weights

# A loop set up and ready: run(n) runs its next n steps, waits for the device, returns the seconds.
Block = Callable[[int], float]

# per framework, the forms a loop can take instead of the spec's arithmetic (see `bench.parity_cost`)
OPTIONS: dict[str, dict[str, str]] = {
    "pytorch": {},
    "tensorflow": {
        "same_padding": "Keras' `same` on the 3x3 stride-2 convolutions (pads bottom and right only)",
        "keras_optimizer": "Keras' own SGD (rate inside the velocity, decoupled decay) or AdamW (epsilon before the bias correction)",
        "sparse_embedding_gradients": "the embedding's gradients left as IndexedSlices (Keras' lazy update: only the batch's rows move)",
    },
    "jax": {
        "same_padding": "Flax's SAME on the 3x3 stride-2 convolutions (pads bottom and right only)",
        "two_pass_variance": "LayerNorm's variance in two passes, as the worker and PyTorch compute it (Flax's default: one pass)",
    },
}


def check_options(framework: str, options: frozenset[str]) -> None:
    unknown = sorted(options - OPTIONS[framework].keys())
    if unknown:
        raise ValueError(f"{framework}: unknown loop option(s) {unknown}; allowed: {sorted(OPTIONS[framework])}")


def batches(model: str, batch_size: int, n: int, layout: str, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    spec = get_spec(model)
    arrays = data.make_synthetic(spec.family, input_spec(spec), batch_size * n, 8, seed)
    ds = data.Dataset(arrays["x_train"], arrays["y_train"], arrays["x_val"], arrays["y_val"], spec.family, "bench")
    if spec.family == "image" and layout == "NHWC":
        ds.x_train = np.ascontiguousarray(ds.x_train.transpose(0, 2, 3, 1))
        ds.layout = "NHWC"
    return [
        (
            ds.inputs(ds.x_train[i * batch_size : (i + 1) * batch_size]),
            ds.y_train[i * batch_size : (i + 1) * batch_size],
        )
        for i in range(n)
    ]


def blocks(step: Callable[..., Any], data_: list[tuple[Any, Any]], sync: Callable[[Any], Any]) -> Block:
    """run(n): the loop's next n steps over the batches in turn, then one sync on the last loss."""
    done = 0

    def run(n: int) -> float:
        nonlocal done
        t0 = time.perf_counter()
        for i in range(done, done + n):
            loss = step(*data_[i % len(data_)])
        sync(loss)
        done += n
        return time.perf_counter() - t0

    return run


def torch_loop(model: str, bs: int, total_steps: int, distinct: int, options: frozenset[str] = frozenset()) -> Block:
    check_options("pytorch", options)
    import torch
    import torch.nn.functional as F

    from bench.references import torch_models as ref

    spec = with_total_steps(get_spec(model), total_steps)
    net = ref.build(spec)
    ref.load_canonical(net, spec, initial_weights(spec, 0))
    opt, sched = ref.optimizer(net, spec.optimizer)  # torch.optim.SGD or AdamW, and a LambdaLR
    host = batches(model, bs, distinct, "NCHW")
    data_ = [
        (torch.from_numpy(x).long() if x.dtype == np.int32 else torch.from_numpy(x), torch.from_numpy(y).long())
        for x, y in host
    ]
    net.train()

    def step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        sched.step()
        return loss

    return blocks(step, data_, lambda loss: loss.item())  # the only sync


def tf_loop(model: str, bs: int, total_steps: int, distinct: int, options: frozenset[str] = frozenset()) -> Block:
    check_options("tensorflow", options)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf

    from bench.references import keras_models as ref

    spec = with_total_steps(get_spec(model), total_steps)
    net = ref.build(spec, same_padding="same_padding" in options)
    ref.load_canonical(net, spec, initial_weights(spec, 0))
    # PyTorch's SGD or AdamW arithmetic, as Keras optimizers (or Keras' own)
    opt = ref.optimizer(spec.optimizer, keras_own="keras_optimizer" in options)
    dense = "sparse_embedding_gradients" not in options
    opt.build(net.trainable_variables)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    data_ = [(tf.constant(x), tf.constant(y)) for x, y in batches(model, bs, distinct, "NHWC")]

    @tf.function
    def step(x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            loss = loss_fn(y, net(x, training=True))
        grads = tape.gradient(loss, net.trainable_variables)
        # dense embedding gradients: every row's moments move, as in PyTorch's AdamW (the lazy sparse
        # update Keras does by default is different math, and cheaper)
        if dense:
            grads = [tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g for g in grads]
        opt.apply(grads, net.trainable_variables)  # SGD's coupled weight decay is in its update
        return loss

    return blocks(step, data_, lambda loss: loss.numpy())


def jax_loop(model: str, bs: int, total_steps: int, distinct: int, options: frozenset[str] = frozenset()) -> Block:
    check_options("jax", options)
    import jax
    import jax.numpy as jnp
    import optax

    from bench.references import flax_models as ref

    spec = with_total_steps(get_spec(model), total_steps)
    net = ref.build(spec, same_padding="same_padding" in options, fast_variance="two_pass_variance" not in options)
    host = batches(model, bs, distinct, "NHWC")
    variables = ref.load_canonical(net, spec, initial_weights(spec, 0), jnp.asarray(host[0][0][:1]))
    params, stats = variables["params"], variables.get("batch_stats", {})
    tx = ref.optimizer(spec.optimizer)
    opt_state = tx.init(params)
    data_ = [(jnp.asarray(x), jnp.asarray(y)) for x, y in host]

    # the state's buffers donated, updated in place as the worker's step does (and an expert's: without
    # it every step allocates fresh parameters and optimizer moments; the MLP 8% slower on 2 cores);
    # the dropout key derived inside the step from a step counter carried with the state, not by an
    # eager `fold_in` on the host between steps (a dispatch of its own every step)
    @functools.partial(jax.jit, donate_argnums=(0, 1, 2, 3))
    def step(params, stats, opt_state, i, x, y):
        def loss_fn(p):
            v = {"params": p, **({"batch_stats": stats} if stats else {})}
            rngs = {"dropout": jax.random.fold_in(rng, i)}
            logits, upd = net.apply(v, x, train=True, rngs=rngs, mutable=["batch_stats"] if stats else [])
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), upd

        (loss, upd), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), upd.get("batch_stats", stats), opt_state, i + 1, loss

    rng = jax.random.PRNGKey(0)
    i = jnp.asarray(0, jnp.int32)
    done = 0

    def run(n: int) -> float:
        nonlocal params, stats, opt_state, i, done
        t0 = time.perf_counter()
        for k in range(done, done + n):
            params, stats, opt_state, i, loss = step(params, stats, opt_state, i, *data_[k % len(data_)])
        loss.block_until_ready()
        done += n
        return time.perf_counter() - t0

    return run


def use_threads(framework: str, n: int) -> None:
    """`n` intra-op threads, set as a worker of a suite with `threads: n` sets them: the libraries'
    variables and XLA's flags before the framework is imported, then the framework's own call."""
    os.environ.update(threads.env_for(n))
    if framework == "jax":
        os.environ["XLA_FLAGS"] = threads.xla_flags(n, os.environ.get("XLA_FLAGS"))
    elif framework == "pytorch":
        import torch

        torch.set_num_threads(n)
    elif framework == "tensorflow":
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(n)


def thread_settings(framework: str) -> dict[str, Any]:
    """The intra-op threads the framework runs with, as the workers report them in their hello."""
    if framework == "pytorch":
        import torch

        return {"intra_op": torch.get_num_threads(), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")}
    if framework == "tensorflow":
        import tensorflow as tf

        return {"intra_op": tf.config.threading.get_intra_op_parallelism_threads()}
    return {"XLA_FLAGS": os.environ.get("XLA_FLAGS"), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")}


LOOPS: dict[str, Callable[..., Block]] = {
    "pytorch": torch_loop,
    "tensorflow": tf_loop,
    "jax": jax_loop,
}


def throughput(framework: str, model: str, bs: int, warmup: int, steps: int) -> float:
    """Samples/s of `steps` timed steps after `warmup` untimed ones, in a fresh loop."""
    # as many distinct batches as steps, as a cell trains on: cycling a few that stay in the CPU's
    # cache flattered the loop (16 batches against 303 distinct: the MLP 8% faster in PyTorch)
    run = LOOPS[framework](model, bs, warmup + steps, warmup + steps)
    run(warmup)
    return bs * steps / run(steps)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--framework", choices=list(LOOPS), required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--batch-size", type=int, required=True)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--threads", type=int, help="intra-op threads, as a suite's `threads` (default: the framework's)")
    a = p.parse_args()
    if a.threads:
        use_threads(a.framework, a.threads)
    sps = throughput(a.framework, a.model, a.batch_size, a.warmup, a.steps)
    out = {"framework": a.framework, "model": a.model, "batch_size": a.batch_size, "samples_per_second": sps}
    print(json.dumps({**out, "threads": thread_settings(a.framework)}))


if __name__ == "__main__":
    main()
