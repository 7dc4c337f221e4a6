"""Entry point: stdout is protected before torch is imported (the backend imports it lazily)."""

import sys

from workers.common.cli import main


def _load(cell):
    from workers.pytorch_worker.backend import TorchBackend

    return TorchBackend(cell)


if __name__ == "__main__":
    sys.exit(main("pytorch", _load))
