"""The TensorFlow worker with Keras' own momentum SGD instead of PyTorch's arithmetic, to prove that
`mlbench verify`'s check with the model's own optimizer sees an optimizer that keeps the learning rate
inside its momentum (v = mu v - lr g; w += v): equal to PyTorch's (v = mu v + g; w -= lr v) only while
the rate is constant. The fidelity bench found this one in the shipped worker before verify did."""

from __future__ import annotations

import sys

import keras

from workers.common.cli import main
from workers.common.registry import backend_class
from workers.tensorflow_worker import backend


def _load(cell):
    backend.TorchSGD = keras.optimizers.SGD  # make_optimizer builds TorchSGD(lr, momentum=...)
    return backend_class("tensorflow")(cell)


if __name__ == "__main__":
    sys.exit(main("tensorflow", _load))
