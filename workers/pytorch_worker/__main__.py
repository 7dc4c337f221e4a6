"""Entry point: stdout is protected before torch is imported (the backend imports it lazily)."""

import sys

from workers.common.cli import main
from workers.common.harness import import_backend


def _load(cell):
    return import_backend("workers.pytorch_worker.backend", "TorchBackend")(cell)


if __name__ == "__main__":
    sys.exit(main("pytorch", _load))
