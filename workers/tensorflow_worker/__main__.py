"""Entry point: stdout is protected and TensorFlow's environment set before it is imported."""

import os
import sys

from workers.common.cli import main


def _load(cell):
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    from workers.tensorflow_worker.backend import TFBackend

    return TFBackend(cell)


if __name__ == "__main__":
    sys.exit(main("tensorflow", _load))
