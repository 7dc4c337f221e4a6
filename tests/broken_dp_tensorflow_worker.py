"""The TensorFlow worker with its data-parallel gradient all-reduce removed, to prove that `mlbench
verify`'s multi-device check catches a broken collective: every replica then applies only its own rows'
gradient to its own copy of the weights, so the replicas drift apart and the losses leave one
device's. Nothing else changes (BatchNorm statistics are still all-reduced)."""

from __future__ import annotations

import os
import sys

from workers.common.cli import main


def _load(cell):
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    from keras.src.backend.tensorflow.optimizer import TFOptimizer

    from workers.tensorflow_worker.backend import Backend

    # Keras' optimizer sums the replicas' gradients here before its update; hand them back unreduced
    TFOptimizer._all_reduce_sum_gradients = lambda self, grads_and_vars: list(grads_and_vars)
    return Backend(cell)


if __name__ == "__main__":
    sys.exit(main("tensorflow", _load))
