"""JAX/Flax backend of the shared harness: a jitted train step (optax), fp32 master weights.

JAX dispatches asynchronously: `launch_step` returns once a step is queued, `step_result` waits
for it; every other method that returns numbers converts device values to host numbers, which
waits for the device, and `predict` blocks on its output.

Data parallel (`cpu:0,1`, `cuda:0,1`): one process, a `jax.sharding.Mesh` over the cell's devices
with one axis, `data`. The global batch is sharded over `data` (replica r holds rows r*B/N ..
(r+1)*B/N), the train state (parameters, BatchNorm statistics, optimizer state, loss scale) is
replicated, and the same jitted step runs on the mesh: GSPMD partitions it and inserts the
all-reduces (of the gradients, and of BatchNorm's batch sums and the loss, which are means over
the global batch in the program as written). So the step is the one-device step's mathematics:
the mean loss over the global batch, its gradient, coupled SGD decay added once to the reduced
gradient, the loss scale's overflow test on the reduced gradient, and BatchNorm statistics of the
global batch (synchronised by construction). Inference, evaluation and the verify probes run on
the first device from a single-device copy of the variables (see `_served`).
"""

from __future__ import annotations

import contextlib
import glob
import os
from collections.abc import Iterator
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from workers.common import precision, profile
from workers.common.devices import Device
from workers.common.harness import DeviceMissing, Unsupported
from workers.common.specs import ModelSpec, OptimizerSpec, input_spec, module_path
from workers.jax_worker import distributed, models

DTYPES = {"fp32": jnp.float32, "fp16": jnp.float16, "bf16": jnp.bfloat16}


def cuda_versions() -> dict[str, str | None]:
    """The CUDA runtime and cuDNN versions the CUDA plugin loaded (None without one: a CPU jaxlib).
    jax 0.10 has no public call for them; jax's own tests read this module."""
    try:
        from jax._src.lib import cuda_versions as loaded
    except ImportError:
        loaded = None
    if loaded is None:
        return {"cuda_version": None, "cudnn_version": None}
    out: dict[str, str | None] = {}
    for key, call in (("cuda_version", "cuda_runtime_get_version"), ("cudnn_version", "cudnn_get_version")):
        try:  # e.g. 12090 -> 12.9 (CUDA's major * 1000 + minor * 10), 92800 -> 9.28.0 (cuDNN's)
            v = int(getattr(loaded, call)())
            out[key] = (
                f"{v // 1000}.{v % 1000 // 10}"
                if key == "cuda_version"
                else f"{v // 10000}.{v % 10000 // 100}.{v % 100}"
            )
        except Exception:
            out[key] = None
    return out


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


class Backend:
    """One cell's model, optimizer and jitted steps in JAX/Flax."""

    framework = "jax"
    layout = "NHWC"
    async_steps = True  # dispatch is asynchronous on every device, the CPU included

    def __init__(self, cell: dict[str, Any]) -> None:
        self.cell = cell
        device = cell["device"]
        parsed = Device.parse(device)
        self.replicas, self.rank = parsed.count, 0  # one process drives every replica: it always leads
        self.mesh: Mesh | None = None
        if parsed.data_parallel:
            self._mesh(parsed)
        elif parsed.kind == "cuda":
            try:
                gpus = jax.devices("gpu")
            except RuntimeError:
                gpus = []
            index = parsed.indices[0]
            if index >= len(gpus):
                raise DeviceMissing(device, f"jax {jax.__version__}", f"{len(gpus)} GPU(s)")
            self.device = gpus[index]
        elif parsed.kind == "cpu":  # `cpu` (and `cpu:0`, the same device)
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

    def _mesh(self, device: Device) -> None:
        """The data-parallel mesh over the cell's devices; `self.device`, the first, serves inference."""
        self.devices = distributed.replica_devices(device, self.cell)
        self.device = self.devices[0]
        self.mesh = Mesh(np.array(self.devices), ("data",))
        self.batch_sharding = NamedSharding(self.mesh, P("data"))  # rows split over the replicas
        self.replicated = NamedSharding(self.mesh, P())  # a full copy on every replica
        self._served_state: TrainState | None = None

    def info(self) -> dict[str, Any]:
        import jaxlib

        return {
            "framework_version": f"jax {jax.__version__}, jaxlib {jaxlib.__version__}, flax {flax.__version__}, optax {optax.__version__}",
            **cuda_versions(),
            "devices": [str(d) for d in jax.devices()],
            "threads": {"XLA_FLAGS": os.environ.get("XLA_FLAGS"), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")},
            "compiler": "XLA (jax.jit, always on)",
            # XLA's CPU kernels are deterministic already; on a GPU the flag picks deterministic ones
            "determinism": f"XLA_FLAGS={os.environ.get('XLA_FLAGS')}",
            "precision_mode": {
                "fp32": "fp32",
                "fp16": "fp16 compute, fp32 params, dynamic loss scaling",
                "bf16": "bf16 compute, fp32 params",
            }[self.precision],
            "matmul_precision": self.matmul_precision,
            "data_parallel": distributed.data_parallel_info(self),
        }

    def build(self, spec: ModelSpec, weights: dict[str, np.ndarray]) -> None:
        self.spec = spec
        self.model = models.build(spec, dtype=self.dtype)
        inp = input_spec(spec)
        shape = inp.shape if len(inp.shape) != 3 else (inp.shape[1], inp.shape[2], inp.shape[0])  # NHWC
        dummy = jnp.zeros((1, *shape), jnp.int32 if inp.dtype == "int32" else jnp.float32)
        like = jax.eval_shape(lambda: self.model.init(jax.random.PRNGKey(0), dummy, train=False))
        variables = jax.device_put(models.load_canonical(flax.core.unfreeze(like), spec, weights), self.device)
        self.tx = make_optimizer(spec.optimizer)
        params = variables["params"]
        state = TrainState(
            params=params,
            batch_stats=variables.get("batch_stats", {}),
            opt_state=self.tx.init(params),
            loss_scale=jnp.asarray(precision.FP16_INITIAL_SCALE if self.precision == "fp16" else 1.0, jnp.float32),
            good_steps=jnp.asarray(0, jnp.int32),
            step=jnp.asarray(0, jnp.int32),
        )
        self._eval = jax.jit(self._eval_step)
        self._predict = jax.jit(self._predict_step)
        if self.mesh is None:
            # every leaf committed to the device, as the step's outputs will be: an uncommitted scalar
            # (jnp.asarray, optax's counters) made the second step compile the whole step again
            self.state = jax.device_put(state, self.device)
            self._train = jax.jit(self._train_step, donate_argnums=0)
            return
        # every leaf of the state replicated (a full copy on each device), the batch split by rows; the
        # outputs pinned replicated too, so the next step's input needs no resharding and the loss and
        # correct count are the global batch's on every device
        self.state = jax.device_put(state, self.replicated)
        self._served_state = None
        self._train = jax.jit(
            self._train_step,
            donate_argnums=0,
            in_shardings=(self.replicated, self.batch_sharding, self.batch_sharding),
            out_shardings=self.replicated,
        )

    def _variables(self, state: TrainState) -> dict[str, Any]:
        return {"params": state.params, **({"batch_stats": state.batch_stats} if state.batch_stats else {})}

    def _loss_fn(self, state: TrainState, x: jax.Array, y: jax.Array) -> Any:
        """The step's loss as a function of the parameters: (scaled loss, (loss, logits, BN updates))."""
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

        return loss_fn

    def _gradients(self, state: TrainState, x: jax.Array, y: jax.Array) -> tuple[Any, Any]:
        return jax.grad(self._loss_fn(state, x, y), has_aux=True)(state.params)

    def _update(self, state: TrainState, grads: Any, updates: Any) -> TrainState:
        """The optimizer's update, with dynamic loss scaling in fp16 (skip the step and halve on overflow)."""
        has_bn = bool(state.batch_stats)
        if self.precision == "fp16":
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
        return TrainState(
            params=keep(new_params, state.params),
            batch_stats=keep(updates["batch_stats"], state.batch_stats) if has_bn else state.batch_stats,
            opt_state=keep(opt_state, state.opt_state),
            loss_scale=scale,
            good_steps=jnp.where(grow, 0, good),
            step=state.step + 1,
        )

    def _train_step(self, state: TrainState, x: jax.Array, y: jax.Array) -> tuple[TrainState, jax.Array, jax.Array]:
        grads, (loss, logits, updates) = self._gradients(state, x, y)
        correct = (jnp.argmax(logits, -1) == y).sum()
        return self._update(state, grads, updates), loss, correct

    @contextlib.contextmanager
    def trace(self, folder: str) -> Iterator[list[str]]:
        """jax.profiler over what runs inside: TensorBoard's profile plugin files and a Perfetto trace
        (`perfetto_trace.json.gz`, ui.perfetto.dev), under plugins/profile/<run>/."""
        files: list[str] = []
        with jax.profiler.trace(folder, create_perfetto_trace=True):
            yield files
        files.extend(sorted(glob.glob(os.path.join(folder, "plugins", "profile", "*", "perfetto_trace.json.gz"))))

    def step_parts(self, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
        """One training step split where `_train_step` composes it, each part jitted apart and waited
        for (workers/common/profile.py): the parts lose the fusion of the whole step."""
        if not hasattr(self, "_parts"):
            self._parts = (
                jax.jit(lambda s, x, y: self._loss_fn(s, x, y)(s.params)[0]),
                jax.jit(self._gradients),
                jax.jit(self._update, donate_argnums=0),
            )
        forward, gradients, update = self._parts
        clock = profile.PartClock(lambda: None)  # each part waited for below
        xd, yd = jax.block_until_ready((jax.device_put(x, self.device), jax.device_put(y, self.device)))
        clock.lap("data")
        forward(self.state, xd, yd).block_until_ready()
        clock.lap("forward")
        grads, (_, _, updates) = jax.block_until_ready(gradients(self.state, xd, yd))
        clock.lap("forward_backward")
        self.state = jax.block_until_ready(update(self.state, grads, updates))
        clock.lap("optimizer")
        return profile.forward_apart(clock.parts)

    def _eval_step(self, state: TrainState, x: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
        logits = self.model.apply(self._variables(state), x, train=False).astype(jnp.float32)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).sum()
        return loss, (jnp.argmax(logits, -1) == y).sum()

    def _predict_step(self, state: TrainState, x: jax.Array) -> jax.Array:
        return self.model.apply(self._variables(state), x, train=False)

    def num_parameters(self) -> int:
        return sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(self.state.params))

    def _served(self) -> TrainState:
        """The state inference, evaluation and the verify probes read: on one device `self.state`; data
        parallel, a single-device copy of the current variables on the first device, made once after each
        run of training steps. The replicated state cannot serve: a jit over it runs on every device of
        the mesh (batch 1 does not split over two), and a view of its first shard dies with the buffer
        the next step donates (docs/findings.md), hence a copy."""
        if self.mesh is None:
            return self.state
        if self._served_state is None:
            variables = {"params": self.state.params, "batch_stats": self.state.batch_stats}
            copy = jax.device_put(variables, self.device, may_alias=False)
            self._served_state = TrainState(
                params=copy["params"],
                batch_stats=copy["batch_stats"],
                # inference reads only the variables; the rest stays on the mesh (a jit given arrays on
                # the mesh and on one device together would refuse them)
                opt_state=None,
                loss_scale=None,
                good_steps=None,
                step=None,
            )
        return self._served_state

    def replica_divergence(self) -> float:
        if self.mesh is None:
            return 0.0
        return distributed.replica_divergence((self.state.params, self.state.batch_stats))

    def _put(self, a: np.ndarray) -> jax.Array | np.ndarray:
        # on the default device a host batch goes straight into the jitted call, which places it through
        # its C++ path (zero-copy on the CPU when aligned), cheaper than `jax.device_put`'s Python
        # (docs/findings.md). Elsewhere (a second GPU), placed explicitly.
        return a if self._default_device else jax.device_put(a, self.device)

    def _put_global(self, a: np.ndarray) -> jax.Array | np.ndarray:
        # data parallel: the host batch goes into the jitted step as it is, which splits it by its
        # in_shardings (rows r*B/N .. (r+1)*B/N to replica r), cheaper than an explicit put first.
        # Where the first device is not the default one (a GPU mesh that does not start at device 0)
        # the batch is placed explicitly.
        return a if self._default_device else jax.device_put(a, self.batch_sharding)

    def to_device(self, x: np.ndarray, y: np.ndarray) -> tuple[jax.Array, jax.Array]:
        """A batch placed ahead of its step by `jax.device_put` (asynchronous: it returns once the copy is
        queued), split over the replicas by the step's batch sharding in a data-parallel cell; the jitted
        step takes the placed arrays as they are."""
        if len(y) % self.replicas:
            raise ValueError(f"a global batch of {len(y)} does not split over {self.replicas} replicas")
        where = self.device if self.mesh is None else self.batch_sharding
        return jax.device_put(x, where), jax.device_put(y, where)

    def launch_step(self, x: np.ndarray, y: np.ndarray) -> tuple[jax.Array, jax.Array]:
        # returns once the step is dispatched; the next one can be queued behind it
        if self.mesh is None:
            self.state, loss, correct = self._train(self.state, self._put(x), self._put(y))
            return loss, correct
        if len(y) % self.replicas:
            raise ValueError(f"a global batch of {len(y)} does not split over {self.replicas} replicas")
        self._served_state = None  # the served copy is stale from this step on
        self.state, loss, correct = self._train(self.state, self._put_global(x), self._put_global(y))
        return loss, correct

    def step_result(self, handle: tuple[jax.Array, jax.Array]) -> tuple[float, int]:
        # waits for that step; np.asarray is the cheapest read (docs/findings.md)
        loss, correct = handle
        if self.mesh is not None:
            # a replicated output reads back from one device; waiting on every replica's copy first
            # means every replica's step has finished (each device's outputs are ready when its whole
            # program is), so no clock is read while another device still updates its parameters
            jax.block_until_ready(loss)
        return float(np.asarray(loss)), int(np.asarray(correct))

    def eval_step(self, x: np.ndarray, y: np.ndarray) -> tuple[float, int]:
        loss, correct = self._eval(self._served(), self._put(x), self._put(y))
        return float(np.asarray(loss)), int(np.asarray(correct))

    def predict(self, x: np.ndarray) -> None:
        self._predict(self._served(), self._put(x)).block_until_ready()

    def logits(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self._predict(self._served(), self._put(x)), dtype=np.float32)

    def activations(self, x: np.ndarray, modules: list[str]) -> dict[str, np.ndarray]:
        # one jitted call: op by op, each of a ResNet's ~100 operations was compiled on its own (seconds)
        capture = jax.jit(
            lambda variables, x: self.model.apply(
                variables, x, train=False, capture_intermediates=True, mutable=["intermediates"]
            )[1]
        )
        state = capture(self._variables(self._served()), self._put(x))
        flat = models._flat(flax.core.unfreeze(state["intermediates"]))
        out = {}
        for name in modules:
            key = (*module_path(name), "__call__")
            if key in flat:
                out[name] = np.asarray(flat[key][0] if isinstance(flat[key], tuple) else flat[key], dtype=np.float32)
        return out

    def export(self) -> dict[str, np.ndarray]:
        return models.export_canonical(flax.core.unfreeze(self._variables(self._served())), self.spec)

    def save(self, path: str) -> str:
        target = path + ".msgpack"
        with open(target, "wb") as f:
            f.write(flax.serialization.to_bytes(self._variables(self._served())))
        return target

    def load(self, path: str) -> None:
        with open(path, "rb") as f:
            variables = flax.serialization.from_bytes(self._variables(self.state), f.read())
        # read back to host arrays: placed on the cell's device and waited for, as the other frameworks' loads
        # data parallel: onto every replica (the state trains on), the first device's copy made anew
        variables = jax.block_until_ready(
            jax.device_put(variables, self.device if self.mesh is None else self.replicated)
        )
        self.state = self.state.replace(params=variables["params"], batch_stats=variables.get("batch_stats", {}))
        if self.mesh is not None:
            self._served_state = None

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
            # the BFC allocator's pool at its largest (None where this jaxlib does not report it)
            "device_reserved_peak_bytes": stats.get("peak_pool_bytes"),
            "allocator": "XLA BFC allocator (no preallocation)",
        }

    def is_oom(self, exc: BaseException) -> bool:
        return "RESOURCE_EXHAUSTED" in str(exc) or "out of memory" in str(exc).lower()
