"""Entry point: stdout is protected before torch is imported (the backend imports it lazily)."""

import sys

from workers.common.cli import main
from workers.common.registry import backend_class


def load_backend(cell):
    """The cell's Backend (torch is imported by the backend module, after stdout is protected)."""
    return backend_class("pytorch")(cell)


if __name__ == "__main__":
    sys.exit(main("pytorch", load_backend))
