"""The JAX worker with its data-parallel all-reduce taken out, to prove the two-replica check catches it.

The step runs under `shard_map` over the same mesh instead of the sharded jit: each replica takes the
mean loss of its own half of the batch, its own gradient and its own BatchNorm statistics, and updates
its own copy of the parameters; nothing is reduced over `data`. The outputs are declared replicated
(unchecked), as a forgotten `psum` would leave them, so the replicas drift apart while the program runs.
"""

from __future__ import annotations

import sys
from typing import Any

from workers.common.cli import main
from workers.jax_worker.__main__ import load_backend as load_jax


def _load(cell: dict[str, Any]) -> Any:
    backend = load_jax(cell)  # sets XLA's flags, then imports jax
    import jax
    from jax.sharding import PartitionSpec as P

    build = backend.build

    def build_without_all_reduce(spec: Any, weights: Any) -> None:
        build(spec, weights)
        if backend.mesh is not None:
            local = jax.shard_map(
                backend._train_step,
                mesh=backend.mesh,
                in_specs=(P(), P("data"), P("data")),
                out_specs=P(),
                check_vma=False,  # the outputs differ per replica: that is the bug
            )
            backend._train = jax.jit(local, donate_argnums=0)

    backend.build = build_without_all_reduce
    return backend


if __name__ == "__main__":
    sys.exit(main("jax", _load))
