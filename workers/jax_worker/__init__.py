"""JAX/Flax worker: `python -m workers.jax_worker --cell JSON` (or flags, by hand)."""
