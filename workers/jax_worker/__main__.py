"""Entry point: stdout is protected and XLA's flags set before jax is imported."""

import os
import sys

from workers.common import threads
from workers.common.cli import main
from workers.common.devices import Device
from workers.common.registry import backend_class
from workers.jax_worker import distributed  # imports no jax: the flags below must come first


def load_backend(cell):
    """The cell's Backend, XLA's thread pool and CPU replicas set before jax is imported."""
    if cell.get("threads"):  # XLA:CPU sizes its intra-op pool from this flag, read at import
        os.environ["XLA_FLAGS"] = threads.xla_flags(cell["threads"], os.environ.get("XLA_FLAGS"))
    device = Device.parse(cell["device"])
    if device.kind == "cpu" and device.data_parallel:
        distributed.cpu_replicas(device.count, cell.get("threads"))
    return backend_class("jax")(cell)


if __name__ == "__main__":
    sys.exit(main("jax", load_backend))
