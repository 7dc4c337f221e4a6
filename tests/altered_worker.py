"""The PyTorch worker with one deliberate change to its MLP, to prove `mlbench verify` catches it.

The framework name picks the change (map it in a suite's `workers`):
  altered_activation: GELU instead of ReLU after the first layer (same shapes, different math);
  altered_shape: the second hidden layer one unit wider (a different structure);
  no_bert: the MLP as shipped, BERT unsupported (one model of a verify process raising).
"""

from __future__ import annotations

import itertools
import json
import sys

import torch.nn.functional as F
from torch import nn

from workers.common.cli import main
from workers.common.harness import Unsupported
from workers.pytorch_worker import models


def _gelu_forward(self, x):
    x = F.gelu(self.layers[0](x))
    for layer in self.layers[1:-1]:
        x = F.relu(layer(x))
    return self.layers[-1](x)


def _wider_init(self, spec):
    nn.Module.__init__(self)
    sizes = [spec.in_features, spec.hidden[0], spec.hidden[1] + 1, spec.num_classes]
    self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(sizes))


def _load(cell):
    if cell["framework"] == "altered_activation":
        models.MLP.forward = _gelu_forward
    elif cell["framework"] == "altered_shape":
        models.MLP.__init__ = _wider_init
    from workers.pytorch_worker.backend import Backend

    backend = Backend(cell)
    backend.framework = cell["framework"]
    if cell["framework"] == "no_bert":
        build = backend.build

        def _build(spec, weights):
            if spec.family == "tokens":
                raise Unsupported("no_bert builds no text model")
            return build(spec, weights)

        backend.build = _build
    return backend


if __name__ == "__main__":
    name = json.loads(sys.argv[sys.argv.index("--cell") + 1])["framework"]
    sys.exit(main(name, _load))
