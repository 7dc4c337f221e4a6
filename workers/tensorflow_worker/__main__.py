"""Entry point: stdout is protected and TensorFlow's environment set before it is imported."""

import os
import sys

from workers.common.cli import main
from workers.common.harness import import_backend


def _load(cell):
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    return import_backend("workers.tensorflow_worker.backend", "TFBackend")(cell)


if __name__ == "__main__":
    sys.exit(main("tensorflow", _load))
