"""TensorFlow/Keras 3 backend of the shared harness: a GradientTape step inside tf.function.

XLA (`jit_compile`) is used when the cell asks for its compiler. Every method that returns
numbers calls `.numpy()`, which waits for the device.

A data-parallel cell (`cuda:0,1`, `cpu:0,1`) runs under a tf.distribute.MirroredStrategy over its
devices (logical CPU devices for `cpu:N`): one process, one replica of the model per device, its
variables MirroredVariables. A step hands each replica its rows of the global batch; each replica
divides its summed loss by the GLOBAL batch, so the optimizer's all-reduce (a SUM: Keras' TFOptimizer)
yields the global mean loss's gradient, the one-device step's. Evaluation, inference, export and save
run on the first replica's copies.
"""

from __future__ import annotations

import contextlib
import glob
import os
from collections.abc import Iterator
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from tensorflow.python.framework import config as tf_config  # is_op_determinism_enabled has no public name

from workers.common import precision, profile
from workers.common.data import ALIGN
from workers.common.devices import Device
from workers.common.harness import DeviceMissing, Unsupported
from workers.common.specs import ModelSpec, OptimizerSpec
from workers.tensorflow_worker import distributed, models

DTYPES = {"fp32": "float32", "fp16": "mixed_float16", "bf16": "mixed_bfloat16"}  # as Keras mixed-precision policies


def count_correct(logits: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
    """Correct predictions, counted in float32 on the step's device: TensorFlow keeps int32 results in
    host memory on a GPU, so an int32 count would copy to the host inside every step."""
    return tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, -1), tf.cast(y, tf.int64)), tf.float32))


def host_tensor(a: np.ndarray) -> tf.Tensor:
    """A host tensor over `a`'s memory (DLPack) where `a` is writable, C-contiguous and ALIGN-byte
    aligned, as the harness's batches are; else a copy (`tf.constant`, docs/findings.md). TensorFlow
    aborts on a misaligned DLPack import, hence the check. The tensor is used within the step that receives `a`, before `a` is reused."""
    if a.flags.c_contiguous and a.flags.writeable and a.ctypes.data % ALIGN == 0 and a.size:
        return tf.experimental.dlpack.from_dlpack(a.__dlpack__())
    return tf.constant(a)


class TorchAdamW(keras.optimizers.AdamW):
    """Keras' AdamW with PyTorch's (and optax's) epsilon: added to sqrt(v_hat), not to sqrt(v).

    Keras computes m * lr * sqrt(1 - b2^t) / (1 - b1^t) / (sqrt(v) + eps), which is PyTorch's formula
    with eps scaled by sqrt(1 - b2^t) (0.03 at the first step): where gradients are tiny (embedding
    rows seen once), the two take very different steps (`mlbench verify` on BERT: docs/findings.md)."""

    def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> None:
        ops = keras.ops
        lr = ops.cast(learning_rate, variable.dtype)
        gradient = ops.cast(gradient, variable.dtype)
        local_step = ops.cast(self.iterations + 1, variable.dtype)
        beta_1_power = ops.power(ops.cast(self.beta_1, variable.dtype), local_step)
        beta_2_power = ops.power(ops.cast(self.beta_2, variable.dtype), local_step)
        m = self._momentums[self._get_variable_index(variable)]
        v = self._velocities[self._get_variable_index(variable)]
        alpha = lr * ops.sqrt(1 - beta_2_power) / (1 - beta_1_power)
        self.assign_add(m, ops.multiply(ops.subtract(gradient, m), 1 - self.beta_1))
        self.assign_add(v, ops.multiply(ops.subtract(ops.square(gradient), v), 1 - self.beta_2))
        eps = self.epsilon * ops.sqrt(1 - beta_2_power)
        self.assign_sub(variable, ops.divide(ops.multiply(m, alpha), ops.add(ops.sqrt(v), eps)))


class TorchSGD(keras.optimizers.SGD):
    """Keras' SGD with PyTorch's (and optax's) momentum: the velocity sums gradients, the step is lr
    times it (v = mu v + g; w -= lr v). Keras keeps the learning rate inside the velocity (v = mu v -
    lr g; w += v): the same only while the rate is constant, and the ResNets' linear schedule changes it
    every update (the fidelity bench's reference test found it: on a tiny ResNet at lr 0.1, losses after
    four updates 1.119 against PyTorch's 1.212)."""

    def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> None:
        ops = keras.ops
        lr = ops.cast(learning_rate, variable.dtype)
        gradient = ops.cast(gradient, variable.dtype)
        if self.momentum == 0:
            self.assign_sub(variable, ops.multiply(gradient, lr))
            return
        m = self.momentums[self._get_variable_index(variable)]
        self.assign(m, ops.add(ops.multiply(m, ops.cast(self.momentum, variable.dtype)), gradient))
        self.assign_sub(variable, ops.multiply(m, lr))


class LinearWarmupDecay(keras.optimizers.schedules.LearningRateSchedule):
    """The spec's "linear" schedule; Keras calls it with the optimizer's iterations (0 for the first update)."""

    def __init__(self, opt: OptimizerSpec) -> None:
        self.lr, self.w, self.t = opt.lr, opt.warmup_steps(), opt.total_steps

    def __call__(self, step: Any) -> Any:
        step = tf.cast(step, tf.float32)
        warm = (step + 1.0) / self.w
        decay = tf.maximum(0.0, (self.t - step) / max(1, self.t - self.w))
        return self.lr * tf.where(step < self.w, warm, decay)

    def get_config(self) -> dict[str, Any]:
        return {"lr": self.lr, "w": self.w, "t": self.t}


def learning_rate(opt: OptimizerSpec) -> float | LinearWarmupDecay:
    if opt.schedule == "constant" or opt.total_steps <= 0:
        return opt.lr
    return LinearWarmupDecay(opt)


def make_optimizer(opt: OptimizerSpec) -> keras.optimizers.Optimizer:
    """The spec's optimizer. SGD weight decay is coupled (PyTorch semantics): it is added to the loss as
    an L2 term over every trained variable (see `Backend`), not given to Keras, which decouples it."""
    lr = learning_rate(opt)
    if opt.name == "sgd":
        return TorchSGD(lr, momentum=opt.momentum)
    if opt.name == "adamw":
        return TorchAdamW(lr, weight_decay=opt.weight_decay, beta_1=opt.beta1, beta_2=opt.beta2, epsilon=opt.eps)
    raise Unsupported(f"optimizer {opt.name!r} is not implemented in the TensorFlow worker")


class Backend:
    """One cell's model, optimizer and compiled steps in TensorFlow/Keras."""

    framework = "tensorflow"
    layout = "NHWC"  # TensorFlow's CPU convolutions support only NHWC

    def __init__(self, cell: dict[str, Any]) -> None:
        self.cell = cell
        device = cell["device"]
        try:
            parsed = Device.parse(device)
        except ValueError:
            raise Unsupported(f"device {device!r} is not supported by the TensorFlow worker") from None
        self.replicas, self.rank = parsed.count, 0  # one process: it always leads
        if parsed.data_parallel and cell.get("batchnorm") != "sync":
            raise Unsupported(
                f"batchnorm {cell.get('batchnorm')!r}: the TensorFlow worker's data-parallel cells take BatchNorm's "
                "statistics over the global batch only (batchnorm: sync)"
            )
        if parsed.data_parallel and parsed.kind == "cpu":
            distributed.cpu_replicas(parsed.count)  # before any other TensorFlow call
        gpus = tf.config.list_physical_devices("GPU") if parsed.kind == "cuda" else []
        if parsed.kind == "cuda":
            if max(parsed.indices) >= len(gpus):
                raise DeviceMissing(device, f"TensorFlow {tf.__version__}", f"{len(gpus)} GPU(s)")
            self.devices = [f"/GPU:{i}" for i in parsed.indices]
        else:
            self.devices = [f"/CPU:{i}" for i in range(parsed.count)]
        index = parsed.indices[0] if parsed.kind == "cuda" else 0
        self.device = self.devices[0]  # one device's work (evaluation, inference, matmul): the first replica's
        # Several devices: MirroredStrategy, its default all-reduce (NCCL between GPUs; between logical
        # CPUs, which NCCL cannot serve, a reduction on one device and a broadcast). One device: no
        # strategy, the plain single-device code paths.
        if cell.get("threads"):  # before the strategy starts the runtime
            tf.config.threading.set_intra_op_parallelism_threads(int(cell["threads"]))
        if parsed.data_parallel and cell.get("compile") and parsed.kind == "cpu":
            # MirroredStrategy compiles its all-reduce into XLA only between GPUs (its no-merge_call
            # path); between CPU devices the merge_call cannot be compiled
            raise Unsupported("XLA (compile) with MirroredStrategy needs GPUs; cpu:N replicas run without it")
        self.strategy = tf.distribute.MirroredStrategy(self.devices) if parsed.data_parallel else None
        gpu = self.device.startswith("/GPU")
        capability = tf.config.experimental.get_device_details(gpus[index]).get("compute_capability") if gpu else None
        why = precision.tf32_unsupported(cell["precision"], gpu, capability)
        if why:
            raise Unsupported(why)
        self.matmul_precision = precision.matmul_policy(cell["precision"])
        tf.config.experimental.enable_tensor_float_32_execution(self.matmul_precision == "tf32")
        self.precision = precision.compute_dtype(cell["precision"])
        keras.mixed_precision.set_global_policy(DTYPES[self.precision])
        keras.utils.set_random_seed(cell["seed"])  # dropout masks
        if cell.get("deterministic"):  # deterministic kernels, or an error naming an op that has none
            tf.config.experimental.enable_op_determinism()
        self.jit = bool(cell.get("compile"))
        # a GPU step's kernels are queued on the device's stream and its outputs returned before they
        # are computed; on the CPU the function returns once it has run (see `launch_step`)
        self.async_steps = self.device.startswith("/GPU")

    def _scope(self) -> Any:
        """Where variables are made and assigned: the strategy's scope (every replica's copy), or the device."""
        return self.strategy.scope() if self.strategy is not None else tf.device(self.device)

    def info(self) -> dict[str, Any]:
        build = tf.sysconfig.get_build_info()
        return {
            "framework_version": f"tensorflow {tf.__version__}, keras {keras.__version__}",
            "cuda_version": build.get("cuda_version"),
            "cudnn_version": build.get("cudnn_version"),
            "devices": [d.name for d in tf.config.list_logical_devices()],
            "threads": {
                "intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
                "inter_op": tf.config.threading.get_inter_op_parallelism_threads(),
                "TF_NUM_INTRAOP_THREADS": os.environ.get("TF_NUM_INTRAOP_THREADS"),
            },
            "compiler": "XLA (tf.function jit_compile=True)" if self.jit else "tf.function graph (no XLA)",
            # what the framework reports switched on, not what was asked
            "determinism": f"op determinism={tf_config.is_op_determinism_enabled()}, XLA_FLAGS={os.environ.get('XLA_FLAGS')}",
            "precision_mode": {
                "fp32": "fp32",
                "fp16": "Keras mixed_float16 + LossScaleOptimizer",
                "bf16": "Keras mixed_bfloat16",
            }[self.precision],
            "matmul_precision": self.matmul_precision,
            "data_parallel": distributed.data_parallel_info(self),
        }

    def build(self, spec: ModelSpec, weights: dict[str, np.ndarray]) -> None:
        self.spec = spec
        # under a strategy's scope every variable (the model's, the optimizer's) is a MirroredVariable
        # with a copy per replica, and the Keras optimizer takes the strategy for its all-reduce
        with self._scope():
            self.model = models.build(spec, sync_bn=self.strategy is not None)
            models.load_canonical(self.model, spec, weights)
            opt = make_optimizer(spec.optimizer)
            self.optimizer = (
                keras.mixed_precision.LossScaleOptimizer(
                    opt,
                    initial_scale=precision.FP16_INITIAL_SCALE,
                    dynamic_growth_steps=precision.FP16_GROWTH_INTERVAL,
                )
                if self.precision == "fp16"
                else opt
            )
            self.optimizer.build(self.model.trainable_variables)
        self.l2 = spec.optimizer.weight_decay if spec.optimizer.name == "sgd" else 0.0
        if self.strategy is None:
            self._train = tf.function(self._train_step, jit_compile=self.jit, reduce_retracing=True)
        else:
            # XLA, where asked (GPUs only, see __init__), compiles each replica's step: MirroredStrategy then
            # all-reduces with compiled collectives, without merge_call
            replica_step = tf.function(self._replica_step, jit_compile=True) if self.jit else self._replica_step
            self._train = tf.function(lambda x, y: self._mirrored_step(replica_step, x, y), reduce_retracing=True)
        self._eval = tf.function(self._eval_step, jit_compile=self.jit, reduce_retracing=True)
        self._predict = tf.function(
            lambda x: self.model(x, training=False), jit_compile=self.jit, reduce_retracing=True
        )

    def _forward(self, x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """The training forward pass and its loss: (mean loss, the scaled loss to differentiate, logits)."""
        logits = tf.cast(self.model(x, training=True), tf.float32)
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits))
        total = loss
        if self.l2:  # coupled weight decay: d/dw (wd/2 * |w|^2) = wd * w, as PyTorch's SGD adds
            total = loss + 0.5 * self.l2 * tf.add_n(
                [tf.reduce_sum(tf.square(tf.cast(v, tf.float32))) for v in self.model.trainable_variables]
            )
        return loss, self.optimizer.scale_loss(total), logits

    def _gradients(self, x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, list[tf.Tensor]]:
        with tf.GradientTape() as tape:
            loss, scaled, logits = self._forward(x, y)
        grads = tape.gradient(scaled, self.model.trainable_variables)
        # embedding gradients arrive as IndexedSlices, which Keras applies lazily (only the rows in the
        # batch move); PyTorch and optax update every row's moments and weights: make them dense
        return loss, logits, [tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g for g in grads]

    def _train_step(self, x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        loss, logits, grads = self._gradients(x, y)
        # a LossScaleOptimizer unscales and skips non-finite steps
        self.optimizer.apply(grads, self.model.trainable_variables)
        return loss, count_correct(logits, y)

    def _sync(self) -> None:
        if self.device.startswith("/GPU"):  # on the CPU a function's call returns when it has run
            tf.test.experimental.sync_devices()

    @contextlib.contextmanager
    def trace(self, folder: str) -> Iterator[list[str]]:
        """TensorFlow's profiler over what runs inside, for TensorBoard's profile plugin
        (`tensorboard --logdir FOLDER`): an XSpace protobuf under plugins/profile/<run>/."""
        files: list[str] = []
        tf.profiler.experimental.start(folder)
        try:
            yield files
            self._sync()
        finally:
            tf.profiler.experimental.stop()
        files.extend(sorted(glob.glob(os.path.join(folder, "plugins", "profile", "*", "*.xplane.pb"))))

    def step_parts(self, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
        """One training step split where `_train_step` composes it, timed by part with a device sync
        after each (workers/common/profile.py): each part a function of its own (XLA where the cell
        compiles), so the parts lose the fusion of the whole step."""
        if not hasattr(self, "_parts"):
            fn = lambda f: tf.function(f, jit_compile=self.jit, reduce_retracing=True)  # noqa: E731
            self._parts = (
                fn(lambda x, y: self._forward(x, y)[1]),
                fn(lambda x, y: self._gradients(x, y)[2]),
                fn(lambda grads: self.optimizer.apply(grads, self.model.trainable_variables)),
            )
        forward, gradients, apply = self._parts
        clock = profile.PartClock(self._sync)
        with tf.device(self.device):
            xd, yd = tf.identity(host_tensor(x)), tf.identity(host_tensor(y))
            clock.lap("data")
            forward(xd, yd)
            clock.lap("forward")
            grads = gradients(xd, yd)
            clock.lap("forward_backward")
            apply(grads)
            clock.lap("optimizer")
        return profile.forward_apart(clock.parts)

    def _replica_step(self, x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """One replica's share of a data-parallel step (its rows of the global batch), in replica context.

        The optimizer all-reduces the gradients as a SUM (Keras' TFOptimizer._all_reduce_sum_gradients)
        before its update, which each replica then applies to its own copies. So each replica's loss is
        its rows' summed loss over the GLOBAL batch size (tf.nn.compute_average_loss), and the summed
        gradients are the global mean loss's, the one-device step's. The coupled L2 term is every
        replica's over the same weights: divided by the replica count, its summed gradient is wd * w
        once, not N times."""
        variables = self.model.trainable_variables
        ctx = tf.distribute.get_replica_context()
        with tf.GradientTape() as tape:
            logits = tf.cast(self.model(x, training=True), tf.float32)
            loss = tf.nn.compute_average_loss(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits))
            total = loss
            if self.l2:
                total = loss + 0.5 * self.l2 / self.replicas * tf.add_n(
                    [tf.reduce_sum(tf.square(tf.cast(v, tf.float32))) for v in variables]
                )
            scaled = self.optimizer.scale_loss(total)
        grads = tape.gradient(scaled, variables)
        grads = [tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g for g in grads]
        if self.precision == "fp16":
            # Keras' LossScaleOptimizer decides on the FIRST replica's local (not yet all-reduced)
            # gradients whether the step is finite: an overflow on another replica alone would be
            # all-reduced into every weight (and, without merge_call, the replicas would take different
            # branches around the all-reduce). A one-device step skips when the global gradient is not
            # finite: every replica's gradients are made non-finite when any replica's is.
            bad = ctx.all_reduce(
                tf.distribute.ReduceOp.SUM, tf.cast(tf.logical_not(self.optimizer.check_finite(grads)), tf.float32)
            )
            poison = tf.where(bad > 0, float("nan"), 0.0)
            grads = [g + tf.cast(poison, g.dtype) for g in grads]
        self.optimizer.apply(grads, variables)
        # the step's figures leave each device only after its update: a variable read is ordered after
        # the variable's update (automatic control dependencies), so the host's read of the reduced
        # loss waits for every replica's whole step, not its forward pass alone
        with tf.control_dependencies([v.value.read_value() for v in variables]):
            return tf.identity(loss), count_correct(logits, y)

    def _mirrored_step(self, replica_step: Any, x: Any, y: Any) -> tuple[tf.Tensor, tf.Tensor]:
        """A data-parallel step: every replica's `replica_step` on its rows; the global mean loss (the
        replicas' losses are already over the global batch: summed) and the global correct count."""
        loss, correct = self.strategy.run(replica_step, args=(x, y))
        total = tf.distribute.ReduceOp.SUM
        return self.strategy.reduce(total, loss, axis=None), self.strategy.reduce(total, correct, axis=None)

    def _eval_step(self, x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        logits = tf.cast(self.model(x, training=False), tf.float32)
        loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits))
        return loss, count_correct(logits, y)

    def num_parameters(self) -> int:
        return int(sum(np.prod(v.shape) for v in self.model.trainable_variables))

    def to_device(self, x: np.ndarray, y: np.ndarray) -> tuple[Any, Any]:
        """A batch placed ahead of its step: copied under the step's device scope (eager TensorFlow queues
        a GPU copy and returns), or split into per-replica values on each replica's device in a
        data-parallel cell; on the CPU a tensor over the batch's memory."""

        if self.strategy is not None:
            return tuple(distributed.split_batch(self.strategy, a, host_tensor, place=True) for a in (x, y))
        with tf.device(self.device):
            return tf.identity(host_tensor(x)), tf.identity(host_tensor(y))

    def launch_step(self, x: np.ndarray, y: np.ndarray) -> tuple[tf.Tensor, tf.Tensor]:
        if not isinstance(x, np.ndarray):  # placed ahead by to_device
            if self.strategy is not None:
                return self._train(x, y)
            with tf.device(self.device):
                return self._train(x, y)
        if self.strategy is not None:
            return self._train(
                distributed.split_batch(self.strategy, x, host_tensor),
                distributed.split_batch(self.strategy, y, host_tensor),
            )
        # eager TensorFlow returns a GPU op's outputs before they are computed; on the CPU, after
        with tf.device(self.device):
            return self._train(host_tensor(x), host_tensor(y))

    def step_result(self, handle: tuple[tf.Tensor, tf.Tensor]) -> tuple[float, int]:
        loss, correct = handle
        return float(loss.numpy()), round(float(correct.numpy()))  # waits for the step

    def eval_step(self, x: np.ndarray, y: np.ndarray) -> tuple[float, int]:
        with tf.device(self.device):
            loss, correct = self._eval(host_tensor(x), host_tensor(y))
        return float(loss.numpy()), round(float(correct.numpy()))

    def predict(self, x: np.ndarray) -> None:
        with tf.device(self.device):
            out = self._predict(host_tensor(x))
        out.numpy()  # waits for the device (the copy of a (B, classes) result is negligible)

    def logits(self, x: np.ndarray) -> np.ndarray:
        with tf.device(self.device):
            return np.asarray(self._predict(tf.constant(x)).numpy(), dtype=np.float32)

    def activations(self, x: np.ndarray, modules: list[str]) -> dict[str, np.ndarray]:
        probe = keras.Model(self.model.inputs, [self.model.get_layer(m).output for m in modules])
        with tf.device(self.device):
            outs = probe(tf.constant(x), training=False)
        return {m: np.asarray(keras.ops.convert_to_numpy(o), dtype=np.float32) for m, o in zip(modules, outs)}

    def export(self) -> dict[str, np.ndarray]:
        return models.export_canonical(self.model, self.spec)

    def save(self, path: str) -> str:
        target = path + ".weights.h5"
        self.model.save_weights(target)
        return target

    def load(self, path: str) -> None:
        with self._scope():  # every replica's copy
            self.model.load_weights(path)
        # the assignments are queued on a GPU; the last variable read back waits for them all, in order
        self.model.weights[-1].numpy()

    def matmul(self, n: int, reps: int) -> Any:
        dtype = {"fp32": tf.float32, "fp16": tf.float16, "bf16": tf.bfloat16}[self.precision]
        seed = self.cell["seed"]
        with tf.device(self.device):
            a = tf.cast(tf.random.stateless_normal((n, n), seed=[seed, 0]), dtype)
            b = tf.cast(tf.random.stateless_normal((n, n), seed=[seed, 1]) / n**0.5, dtype)  # keeps the chain's scale

        @tf.function(jit_compile=self.jit)
        def chain(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
            # each product needs the last: nothing can be skipped or overlapped
            return tf.while_loop(lambda i, c: i < reps, lambda i, c: (i + 1, tf.matmul(c, b)), (tf.constant(0), a))[1]

        def run() -> None:
            with tf.device(self.device):
                out = chain(a, b)
            out[0, 0].numpy()  # waits for the whole chain without copying it

        run()  # trace outside the timing
        return run

    def memory(self) -> dict[str, Any]:
        if not self.device.startswith("/GPU"):
            return {
                "device_peak_bytes": None,
                "device_current_bytes": None,
                "allocator": "cpu (no allocator statistics)",
            }
        info = tf.config.experimental.get_memory_info(self.device.strip("/"))
        return {
            "device_peak_bytes": info["peak"],
            "device_current_bytes": info["current"],
            "allocator": "TensorFlow BFC allocator (memory growth)",
        }

    def replica_divergence(self) -> float:
        return distributed.replica_divergence(self.model)

    def is_oom(self, exc: BaseException) -> bool:
        return isinstance(exc, tf.errors.ResourceExhaustedError) or "out of memory" in str(exc).lower()
