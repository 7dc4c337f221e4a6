"""Entry point: stdout is protected and XLA's flags set before jax is imported."""

import os
import sys

from workers.common import threads
from workers.common.cli import main
from workers.common.devices import Device
from workers.common.registry import backend_class


def _cpu_replicas(n: int, threads: int | None) -> None:
    """`cpu:0,1`: n XLA:CPU devices, and a client thread pool that can hold every replica's program at
    once; both read when jax starts. XLA:CPU runs each device's program on its client pool, sized by
    the NPROC variable (else the core count), and a replica waiting in the all-reduce holds its
    thread until every replica arrives. Measured (2 cores, dependent sharded steps queued back to
    back): a pool of 2 deadlocks 2 replicas and a pool of 4 deadlocks 4 (XLA aborts the process after
    40 s in the rendezvous); a pool of 2n ran both. Single-device cells are left as they were."""
    flag = f"--xla_force_host_platform_device_count={n}"
    existing = os.environ.get("XLA_FLAGS", "")
    os.environ["XLA_FLAGS"] = existing if flag in existing.split() else f"{flag} {existing}".strip()
    pool = max(int(os.environ.get("NPROC") or 0), threads or os.cpu_count() or 1, 2 * n)
    os.environ["NPROC"] = str(pool)


def _load(cell):
    if cell.get("threads"):  # XLA:CPU sizes its intra-op pool from this flag, read at import
        os.environ["XLA_FLAGS"] = threads.xla_flags(cell["threads"], os.environ.get("XLA_FLAGS"))
    device = Device.parse(cell["device"])
    if device.kind == "cpu" and device.data_parallel:
        _cpu_replicas(device.count, cell.get("threads"))
    return backend_class("jax")(cell)


if __name__ == "__main__":
    sys.exit(main("jax", _load))
