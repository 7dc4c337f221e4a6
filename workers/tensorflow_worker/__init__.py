"""TensorFlow/Keras worker: `python -m workers.tensorflow_worker --cell JSON` (or flags, by hand)."""
