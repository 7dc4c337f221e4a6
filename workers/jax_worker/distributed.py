"""What data parallel adds to the JAX worker: the host's CPU replicas (XLA flags, set by the entry point
before jax is imported, so this module imports jax only inside its functions), the devices of the
mesh the sharded step runs on, what the `hello` event says of the replicas, and how far the replicas'
copies drifted apart (verify). The sharded step itself is the backend's jit over the mesh."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from workers.common.devices import Device
from workers.common.harness import DeviceMissing, Unsupported


def cpu_replicas(n: int, threads: int | None) -> None:
    """`cpu:0,1`: n XLA:CPU devices, and a client thread pool that can hold every replica's program at
    once; both read when jax starts. XLA:CPU runs each device's program on its client pool, sized by
    the NPROC variable (else the core count), and a replica waiting in the all-reduce holds its
    thread until every replica arrives: a pool of n deadlocked n replicas, 2n ran them (docs/findings.md).
    Single-device cells are left as they were."""
    flag = f"--xla_force_host_platform_device_count={n}"
    existing = os.environ.get("XLA_FLAGS", "")
    os.environ["XLA_FLAGS"] = existing if flag in existing.split() else f"{flag} {existing}".strip()
    pool = max(int(os.environ.get("NPROC") or 0), threads or os.cpu_count() or 1, 2 * n)
    os.environ["NPROC"] = str(pool)


def replica_devices(device: Device, cell: dict[str, Any]) -> list[Any]:
    """The jax devices a data-parallel cell's mesh spans, as the worker sees them."""
    import jax

    if cell.get("batchnorm") != "sync":
        # the sharded jit takes BatchNorm's statistics over the global batch, whatever is asked:
        # per-replica statistics would need a shard_map'd step, a different program
        raise Unsupported(
            f"batchnorm {cell.get('batchnorm')!r}: the JAX worker's data-parallel step synchronises "
            "BatchNorm over the global batch (batchnorm: sync)"
        )
    n = device.count
    if device.kind == "cuda":
        try:
            gpus = jax.devices("gpu")
        except RuntimeError:
            gpus = []
        if len(gpus) < n:
            raise DeviceMissing(str(device), f"jax {jax.__version__}", f"{len(gpus)} GPU(s)")
        return gpus[:n]  # CUDA_VISIBLE_DEVICES holds just the cell's GPUs
    devices = jax.devices("cpu")[:n]
    if len(devices) < n:
        # the entry point forces the host device count before jax is imported; a backend made in a
        # process that imported jax first sees one CPU device
        raise Unsupported(
            f"{device} needs {n} XLA CPU devices but jax sees {len(devices)}: "
            f"XLA_FLAGS must hold --xla_force_host_platform_device_count={n} before jax is imported"
        )
    return devices


def data_parallel_info(backend: Any) -> dict[str, Any] | None:
    """What the cell's `hello` event says of its replicas (None: one device)."""
    if backend.mesh is None:
        return None
    cpu = backend.device.platform == "cpu"
    threads = backend.cell.get("threads")
    return {
        "replicas": backend.replicas,
        "devices": [str(d) for d in backend.devices],
        # what the compiled step does (its HLO holds all-reduce ops over the mesh's devices): NCCL
        # on GPUs, XLA:CPU's in-process collectives between the host devices
        "collective": "XLA all-reduce (GSPMD)" + (" in-process (XLA:CPU)" if cpu else " over NCCL"),
        "batchnorm": "sync (the global batch's statistics: the sharded step computes them as one device does)",
        "threads": (
            f"one XLA:CPU intra-op pool of {threads or 'default'} thread(s), shared by the {backend.replicas} "
            f"host devices; their programs run side by side on XLA's client pool of NPROC="
            f"{os.environ.get('NPROC')} threads"
            if cpu
            else "one host process drives every GPU"
        ),
    }


def replica_divergence(trees: Any) -> float:
    """The largest absolute difference between two replicas' copies of any leaf of `trees` (parameters,
    BatchNorm statistics): each replica's own buffer (`addressable_shards`), not the replicated view,
    which reads one of them, so replicas an all-reduce failed to keep in lockstep show."""
    import jax

    worst = 0.0
    for leaf in jax.tree_util.tree_leaves(trees):
        copies = [np.asarray(shard.data, dtype=np.float64) for shard in leaf.addressable_shards]
        for other in copies[1:]:
            worst = max(worst, float(np.max(np.abs(other - copies[0]), initial=0.0)))
    return worst
