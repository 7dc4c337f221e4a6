"""Entry point: stdout is protected and TensorFlow's environment set before it is imported."""

import os
import sys

from workers.common.cli import main
from workers.common.registry import backend_class


def load_backend(cell):
    """The cell's Backend, with Keras on TensorFlow and its C++ logging quiet, set before the import."""
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    return backend_class("tensorflow")(cell)


if __name__ == "__main__":
    sys.exit(main("tensorflow", load_backend))
