"""Entry point: stdout is protected before torch is imported (the backend imports it lazily)."""

import sys

from workers.common.cli import main
from workers.common.registry import backend_class


def _load(cell):
    return backend_class("pytorch")(cell)


if __name__ == "__main__":
    sys.exit(main("pytorch", _load))
