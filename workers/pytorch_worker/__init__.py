"""PyTorch worker: `python -m workers.pytorch_worker --cell JSON` (or flags, by hand)."""
