"""Independent reference implementations of mlbench's models, one module per framework.

Written apart from `workers/`, the way each framework's own examples write these models:
`torch_models` as torchvision and PyTorch's `nn` modules do, `keras_models` with Keras layers (the
layout of `keras.applications` and the keras.io Transformer example), `flax_models` as the Flax
examples write a linen ResNet and a Transformer. Each takes only the framework-free inputs from
`workers.common` (the spec's sizes, the canonical initial weights, the data), maps the canonical
weight names onto its own parameters with its own code, and writes out the spec's optimizer and
learning-rate schedule in the framework's usual way. Nothing here imports a worker: a slow model in
a worker then shows as a ratio below 1 in `bench.fidelity`, where a loop built on the worker's own
model could only ever measure the harness. `tests/test_references.py` checks that each reference
computes the worker's logits from the same weights, so the two cannot drift apart.

Each module has the same surface: `build(spec)`, `load_canonical(model, spec, weights)`, and the
optimizer (`optimizer(...)`), plus what its framework's loop needs.
"""
