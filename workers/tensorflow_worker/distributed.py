"""What data parallel adds to the TensorFlow worker: a tf.distribute.MirroredStrategy over the cell's
devices (logical CPU devices for `cpu:N`), the global batch split into each replica's rows, what the
`hello` event says of the replicas, and how far the replicas' copies drifted apart (verify). The step
itself, each replica's share of it, is the backend's (`Backend._replica_step`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import tensorflow as tf


def split_batch(
    strategy: tf.distribute.Strategy, a: np.ndarray, to_tensor: Callable[[np.ndarray], tf.Tensor], place: bool = False
) -> Any:
    """The global batch as per-replica values: replica r gets rows r*B/N .. (r+1)*B/N, the rows a
    one-device step sees in that order. Host tensors: each replica's step copies only its own rows to
    its device, as the one-device step copies the whole batch. `place`: each replica's rows copied to
    its device now (device prefetch), not by its step."""
    n = strategy.num_replicas_in_sync
    b = len(a) // n
    devices = strategy.extended.worker_devices

    def value(ctx: tf.distribute.experimental.ValueContext) -> tf.Tensor:
        i = ctx.replica_id_in_sync_group
        rows = to_tensor(a[i * b : (i + 1) * b])
        if not place:
            return rows
        with tf.device(devices[i]):
            return tf.identity(rows)

    return strategy.experimental_distribute_values_from_function(value)


def cpu_replicas(n: int) -> None:
    """`n` logical CPU devices over the physical CPU, for a `cpu:0,1` cell's MirroredStrategy. Must run
    before TensorFlow initialises its runtime (the first op, device listing or seed): it is the
    backend's first TensorFlow call. A process that already holds `n` logical CPUs (a second backend)
    is left as it is."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(n)])
    except RuntimeError as exc:  # the runtime is up: only its existing devices can be used
        have = len(tf.config.list_logical_devices("CPU"))
        if have < n:
            raise RuntimeError(
                f"cpu:{','.join(map(str, range(n)))} needs {n} logical CPU devices, but TensorFlow was "
                f"initialised in this process with {have} before the backend could configure them ({exc})"
            ) from None


def data_parallel_info(backend: Any) -> dict[str, Any] | None:
    """What the cell's `hello` event says of its replicas (None: one device)."""
    if backend.strategy is None:
        return None
    extended = backend.strategy.extended
    # which CrossDeviceOps MirroredStrategy chose for these devices (not public API: guarded)
    ops = getattr(extended, "_cross_device_ops", None) or getattr(extended, "_inferred_cross_device_ops", None)
    gpu = backend.device.startswith("/GPU")
    return {
        "replicas": backend.replicas,
        "devices": list(extended.worker_devices),
        "collective": f"MirroredStrategy, {type(ops).__name__ if ops is not None else 'its default all-reduce'}",
        "batchnorm": "sync (mean, then squared deviation, each summed over the replicas)",
        "threads": (
            "one intra-op pool (the cell's threads) shared by the logical CPU devices: TensorFlow's CPU "
            "devices, logical or not, run their kernels on the process's one pool"
            if not gpu
            else "one intra-op pool (the cell's threads) for the replicas' host-side ops; each GPU its own streams"
        ),
    }


def replica_divergence(model: keras.Model) -> float:
    """The largest difference between two replicas' copies of any model variable (parameters and
    BatchNorm statistics), read copy by copy (`MirroredVariable.values`), not through the mirrored
    view, which reads the first replica's."""
    worst = 0.0
    for v in model.weights:
        copies = np.stack([np.asarray(c.numpy(), np.float64) for c in v.value.values])
        worst = max(worst, float(np.max(np.ptp(copies, axis=0))) if copies.size else 0.0)
    return worst
