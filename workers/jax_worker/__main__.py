"""Entry point: stdout is protected and XLA's flags set before jax is imported."""

import os
import sys

from workers.common.cli import main
from workers.common.harness import import_backend


def _load(cell):
    if cell.get("threads"):  # XLA:CPU sizes its intra-op pool from this flag, read at import
        flag = f"--xla_cpu_multi_thread_eigen=true intra_op_parallelism_threads={int(cell['threads'])}"
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + flag).strip()
    return import_backend("workers.jax_worker.backend", "JaxBackend")(cell)


if __name__ == "__main__":
    sys.exit(main("jax", _load))
