"""mlbench: train and measure identical models across PyTorch, TensorFlow and JAX/Flax.

The orchestrator package never imports a framework; each benchmark cell runs as a fresh
worker subprocess (see `workers/`).
"""

__version__ = "0.5.1"
