"""Entry point: stdout is protected and XLA's flags set before jax is imported."""

import os
import sys

from workers.common import threads
from workers.common.cli import main
from workers.common.harness import import_backend


def _load(cell):
    if cell.get("threads"):  # XLA:CPU sizes its intra-op pool from this flag, read at import
        os.environ["XLA_FLAGS"] = threads.xla_flags(cell["threads"], os.environ.get("XLA_FLAGS"))
    return import_backend("workers.jax_worker.backend", "JaxBackend")(cell)


if __name__ == "__main__":
    sys.exit(main("jax", _load))
