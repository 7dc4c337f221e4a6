"""Intra-op thread settings (the suite key `threads`), one definition for the orchestrator, the
workers and the fidelity bench's hand-written loops, so a thread count means the same everywhere.

The variables are read once, when a library starts: OpenMP's pool (PyTorch's intra-op pool, oneDNN),
MKL's and OpenBLAS's, and TensorFlow's intra-op pool. XLA:CPU sizes its pool from XLA_FLAGS, read
when jax is imported. Each framework's own call (`torch.set_num_threads`,
`tf.config.threading.set_intra_op_parallelism_threads`) is made by its backend as well.
"""

from __future__ import annotations

ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TF_NUM_INTRAOP_THREADS")


def env_for(n: int) -> dict[str, str]:
    """The variables that give every library `n` intra-op threads."""
    return {var: str(int(n)) for var in ENV_VARS}


def xla_flags(n: int, existing: str | None) -> str:
    """XLA_FLAGS with XLA:CPU's intra-op pool set to `n` threads, after the user's own flags (once:
    flags that already end with it are returned as they are)."""
    flag = f"--xla_cpu_multi_thread_eigen=true intra_op_parallelism_threads={int(n)}"
    existing = (existing or "").strip()
    return existing if existing.endswith(flag) else (existing + " " + flag).strip()
