"""JAX/Flax backend of the shared harness: a jitted train step (optax), fp32 master weights.

JAX dispatches asynchronously: `launch_step` returns once a step is queued, `step_result` waits
for it; every other method that returns numbers converts device values to host numbers, which
waits for the device, and `predict` blocks on its output.
"""

from __future__ import annotations

import os
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from workers.common import precision
from workers.common.harness import DeviceMissing, Unsupported
from workers.common.specs import ModelSpec, OptimizerSpec, input_spec, module_path
from workers.jax_worker import models

DTYPES = {"fp32": jnp.float32, "fp16": jnp.float16, "bf16": jnp.bfloat16}


def learning_rate(opt: OptimizerSpec) -> float | optax.Schedule:
    """The spec's lr, or its schedule: optax calls it with the count of updates made so far (0 first)."""
    if opt.schedule == "constant" or opt.total_steps <= 0:
        return opt.lr
    w, t = opt.warmup_steps(), opt.total_steps

    def schedule(count: jax.Array) -> jax.Array:
        step = count.astype(jnp.float32)
        warm = (step + 1.0) / w
        decay = jnp.maximum(0.0, (t - step) / max(1, t - w))
        return opt.lr * jnp.where(step < w, warm, decay)

    return schedule


def make_optimizer(opt: OptimizerSpec) -> optax.GradientTransformation:
    """The spec's optimizer with PyTorch's semantics: SGD decay coupled (added to the gradient), AdamW's decoupled."""
    lr = learning_rate(opt)
    if opt.name == "sgd":
        return optax.chain(optax.add_decayed_weights(opt.weight_decay), optax.sgd(lr, momentum=opt.momentum or None))
    if opt.name == "adamw":
        return optax.adamw(lr, b1=opt.beta1, b2=opt.beta2, eps=opt.eps, weight_decay=opt.weight_decay)
    raise Unsupported(f"optimizer {opt.name!r} is not implemented in the JAX worker")


@flax.struct.dataclass
class TrainState:
    params: Any
    batch_stats: Any
    opt_state: Any
    loss_scale: jax.Array  # 1.0 unless fp16
    good_steps: jax.Array
    step: jax.Array


def _capability(device: Any) -> tuple[int, int] | None:
    """A CUDA device's compute capability ("8.0" -> (8, 0)), where jaxlib reports it."""
    try:
        major, minor = str(device.compute_capability).split(".")[:2]
        return int(major), int(minor)
    except (AttributeError, ValueError):
        return None


class JaxBackend:
    """One cell's model, optimizer and jitted steps in JAX/Flax."""

    framework = "jax"
    layout = "NHWC"
    async_steps = True  # dispatch is asynchronous on every device, the CPU included

    def __init__(self, cell: dict[str, Any]) -> None:
        self.cell = cell
        device = cell["device"]
        if "," in device:
            raise Unsupported("multi-GPU data parallel is not implemented in the JAX worker yet")
        if device.startswith("cuda"):
            try:
                gpus = jax.devices("gpu")
            except RuntimeError:
                gpus = []
            index = int(device.split(":")[1])
            if index >= len(gpus):
                raise DeviceMissing(device, f"jax {jax.__version__}", f"{len(gpus)} GPU(s)")
            self.device = gpus[index]
        elif device == "cpu":
            self.device = jax.devices("cpu")[0]
        else:
            raise Unsupported(f"device {device!r} is not supported by the JAX worker")
        self._default_device = self.device == jax.devices()[0]
        gpu = self.device.platform == "gpu"
        why = precision.tf32_unsupported(cell["precision"], gpu, _capability(self.device) if gpu else None)
        if why:
            raise Unsupported(why)
        self.matmul_precision = precision.matmul_policy(cell["precision"])
        # every jitted function's f32 dots and convolutions: true fp32, or TF32 for a tf32 cell
        jax.config.update(
            "jax_default_matmul_precision", "tensorfloat32" if self.matmul_precision == "tf32" else "highest"
        )
        self.precision = precision.compute_dtype(cell["precision"])
        self.dtype = DTYPES[self.precision]
        self.rng = jax.random.PRNGKey(cell["seed"])

    def info(self) -> dict[str, Any]:
        import jaxlib

        return {
            "framework_version": f"jax {jax.__version__}, jaxlib {jaxlib.__version__}, flax {flax.__version__}, optax {optax.__version__}",
            "cuda_version": None,
            "cudnn_version": None,
            "devices": [str(d) for d in jax.devices()],
            "threads": {"XLA_FLAGS": os.environ.get("XLA_FLAGS"), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")},
            "compiler": "XLA (jax.jit, always on)",
            "precision_mode": {
                "fp32": "fp32",
                "fp16": "fp16 compute, fp32 params, dynamic loss scaling",
                "bf16": "bf16 compute, fp32 params",
            }[self.precision],
            "matmul_precision": self.matmul_precision,
        }

    def build(self, spec: ModelSpec, weights: dict[str, np.ndarray]) -> None:
        self.spec = spec
        self.model = models.build(spec, self.dtype)
        inp = input_spec(spec)
        shape = inp.shape if len(inp.shape) != 3 else (inp.shape[1], inp.shape[2], inp.shape[0])  # NHWC
        dummy = jnp.zeros((1, *shape), jnp.int32 if inp.dtype == "int32" else jnp.float32)
        like = jax.eval_shape(lambda: self.model.init(jax.random.PRNGKey(0), dummy, train=False))
        variables = jax.device_put(models.from_canonical(spec, weights, flax.core.unfreeze(like)), self.device)
        self.tx = make_optimizer(spec.optimizer)
        params = variables["params"]
        self.state = TrainState(
            params=params,
            batch_stats=variables.get("batch_stats", {}),
            opt_state=self.tx.init(params),
            loss_scale=jnp.asarray(precision.FP16_INITIAL_SCALE if self.precision == "fp16" else 1.0, jnp.float32),
            good_steps=jnp.asarray(0, jnp.int32),
            step=jnp.asarray(0, jnp.int32),
        )
        self._train = jax.jit(self._train_step, donate_argnums=0)
        self._eval = jax.jit(self._eval_step)
        self._predict = jax.jit(self._predict_step)

    def _variables(self, state: TrainState) -> dict[str, Any]:
        return {"params": state.params, **({"batch_stats": state.batch_stats} if state.batch_stats else {})}

    def _train_step(self, state: TrainState, x: jax.Array, y: jax.Array) -> tuple[TrainState, jax.Array, jax.Array]:
        rng = jax.random.fold_in(self.rng, state.step)
        has_bn = bool(state.batch_stats)
        # loss scaling only in fp16: elsewhere the scale is 1 and unscaling would be a wasted pass over
        # every gradient (XLA cannot fold a traced 1.0 away)
        scaled = self.precision == "fp16"

        def loss_fn(params: Any) -> tuple[jax.Array, tuple[jax.Array, jax.Array, Any]]:
            variables = {"params": params, **({"batch_stats": state.batch_stats} if has_bn else {})}
            logits, updates = self.model.apply(
                variables, x, train=True, rngs={"dropout": rng}, mutable=["batch_stats"] if has_bn else []
            )
            logits = logits.astype(jnp.float32)
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
            return (loss * state.loss_scale if scaled else loss), (loss, logits, updates)

        grads, (loss, logits, updates) = jax.grad(loss_fn, has_aux=True)(state.params)
        if scaled:  # dynamic loss scaling: skip the step and halve on overflow
            grads = jax.tree_util.tree_map(lambda g: g / state.loss_scale, grads)
            finite = jnp.all(jnp.asarray([jnp.all(jnp.isfinite(g)) for g in jax.tree_util.tree_leaves(grads)]))
        else:
            finite = jnp.asarray(True)
        upd, opt_state = self.tx.update(grads, state.opt_state, state.params)
        new_params = optax.apply_updates(state.params, upd)
        keep = lambda new, old: jax.tree_util.tree_map(lambda a, b: jnp.where(finite, a, b), new, old)  # noqa: E731
        good = jnp.where(finite, state.good_steps + 1, 0)
        grow = good >= precision.FP16_GROWTH_INTERVAL
        scale = jnp.where(finite, jnp.where(grow, state.loss_scale * 2.0, state.loss_scale), state.loss_scale / 2.0)
        new_state = TrainState(
            params=keep(new_params, state.params),
            batch_stats=keep(updates["batch_stats"], state.batch_stats) if has_bn else state.batch_stats,
            opt_state=keep(opt_state, state.opt_state),
            loss_scale=scale,
            good_steps=jnp.where(grow, 0, good),
            step=state.step + 1,
        )
        correct = (jnp.argmax(logits, -1) == y).sum()
        return new_state, loss, correct

    def _eval_step(self, state: TrainState, x: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
        logits = self.model.apply(self._variables(state), x, train=False).astype(jnp.float32)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).sum()
        return loss, (jnp.argmax(logits, -1) == y).sum()

    def _predict_step(self, state: TrainState, x: jax.Array) -> jax.Array:
        return self.model.apply(self._variables(state), x, train=False)

    def num_parameters(self) -> int:
        return sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(self.state.params))

    def _put(self, a: np.ndarray) -> jax.Array | np.ndarray:
        # on the default device a host batch goes straight into the jitted call, which places it through
        # its C++ path (zero-copy on the CPU when aligned); `jax.device_put` costs ~0.14 ms of Python a
        # call on a slow CPU, twice a step (0.3-0.5 ms of the MLP's 7 ms step on 2 cores, measured), and
        # weighs more on a GPU step or a batch-1 inference. Elsewhere (a second GPU), placed explicitly.
        return a if self._default_device else jax.device_put(a, self.device)

    def launch_step(self, x: np.ndarray, y: np.ndarray) -> tuple[jax.Array, jax.Array]:
        # returns once the step is dispatched; the next one can be queued behind it
        self.state, loss, correct = self._train(self.state, self._put(x), self._put(y))
        return loss, correct

    def step_result(self, handle: tuple[jax.Array, jax.Array]) -> tuple[float, int]:
        # waits for that step. np.asarray is the cheap read: ~50 us a step against 170-200 for
        # float()/int() on the arrays and ~250 for jax.device_get (MLP on 2 CPU cores, measured)
        loss, correct = handle
        return float(np.asarray(loss)), int(np.asarray(correct))

    def eval_step(self, x: np.ndarray, y: np.ndarray) -> tuple[float, int]:
        loss, correct = self._eval(self.state, self._put(x), self._put(y))
        return float(np.asarray(loss)), int(np.asarray(correct))

    def predict(self, x: np.ndarray) -> None:
        self._predict(self.state, self._put(x)).block_until_ready()

    def logits(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self._predict(self.state, self._put(x)), dtype=np.float32)

    def activations(self, x: np.ndarray, modules: list[str]) -> dict[str, np.ndarray]:
        _, state = self.model.apply(
            self._variables(self.state),
            self._put(x),
            train=False,
            capture_intermediates=True,
            mutable=["intermediates"],
        )
        flat = models._flat(flax.core.unfreeze(state["intermediates"]))
        out = {}
        for name in modules:
            key = (*module_path(name), "__call__")
            if key in flat:
                out[name] = np.asarray(flat[key][0] if isinstance(flat[key], tuple) else flat[key], dtype=np.float32)
        return out

    def export(self) -> dict[str, np.ndarray]:
        return models.to_canonical(self.spec, flax.core.unfreeze(self._variables(self.state)))

    def save(self, path: str) -> str:
        target = path + ".msgpack"
        with open(target, "wb") as f:
            f.write(flax.serialization.to_bytes(self._variables(self.state)))
        return target

    def load(self, path: str) -> None:
        with open(path, "rb") as f:
            variables = flax.serialization.from_bytes(self._variables(self.state), f.read())
        # read back to host arrays: placed on the cell's device and waited for, as the other frameworks' loads
        variables = jax.block_until_ready(jax.device_put(variables, self.device))
        self.state = self.state.replace(params=variables["params"], batch_stats=variables.get("batch_stats", {}))

    def matmul(self, n: int, reps: int) -> Any:
        ka, kb = jax.random.split(jax.random.PRNGKey(self.cell["seed"]))
        a = jax.device_put(jax.random.normal(ka, (n, n)).astype(self.dtype), self.device)
        b = jax.device_put((jax.random.normal(kb, (n, n)) / n**0.5).astype(self.dtype), self.device)
        # each product needs the last (one dispatch, one sync): nothing can be skipped or overlapped
        chain = jax.jit(lambda a, b: jax.lax.fori_loop(0, reps, lambda i, c: c @ b, a))
        chain(a, b).block_until_ready()  # compile outside the timing
        return lambda: chain(a, b).block_until_ready()

    def memory(self) -> dict[str, Any]:
        stats = self.device.memory_stats() if self.device.platform == "gpu" else None
        if not stats:
            return {
                "device_peak_bytes": None,
                "device_current_bytes": None,
                "allocator": f"{self.device.platform} (no allocator statistics)",
            }
        return {
            "device_peak_bytes": stats.get("peak_bytes_in_use"),
            "device_current_bytes": stats.get("bytes_in_use"),
            "allocator": "XLA BFC allocator (no preallocation)",
        }

    def is_oom(self, exc: BaseException) -> bool:
        return "RESOURCE_EXHAUSTED" in str(exc) or "out of memory" in str(exc).lower()
