"""A Ray cluster of several nodes on this machine, for tests: a head with no CPUs (the driver's) and N
worker nodes of one CPU each, every one its own raylet (Ray's own `cluster_utils`), then the given
commands run one after the other with RAY_ADDRESS set to it; the cluster is shut down at the end.

    python -m tests.ray_nodes WORKDIR N CMD... [--then CMD...]

Run it under the loopback-only network namespace (tests/conftest.py, `loopback_only_prefix`), so every
node listens on 127.0.0.1 alone. It writes WORKDIR/cluster.json ({"address", "nodes": {node_id: raylet
pid}, "pids": every Ray process it started}) and keeps it current; a file WORKDIR/add-node asks it to
add one more node (it deletes the file once the node is up). Each command's stdout and stderr go to
WORKDIR/run<k>.out and .err. Exits with the last command's code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

# a lost node is declared dead after three missed one-second health checks (Ray's defaults wait longer)
SYSTEM_CONFIG = {
    "health_check_initial_delay_ms": 0,
    "health_check_period_ms": 1000,
    "health_check_failure_threshold": 3,
}


def _pids(node) -> list[int]:
    return [info.process.pid for infos in node.all_processes.values() for info in infos if info.process]


def main(argv: list[str]) -> int:
    from ray.cluster_utils import Cluster

    workdir, n = Path(argv[0]), int(argv[1])
    commands, current = [], []
    for arg in argv[2:]:
        if arg == "--then":
            commands.append(current)
            current = []
        else:
            current.append(arg)
    commands.append(current)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 0, "include_dashboard": False, "_system_config": SYSTEM_CONFIG},
    )
    nodes = {}
    pids = set(_pids(cluster.head_node))

    def add() -> None:
        node = cluster.add_node(num_cpus=1)
        nodes[node.node_id] = node.all_processes["raylet"][0].process.pid
        pids.update(_pids(node))
        tmp = workdir / ".cluster.json.tmp"
        tmp.write_text(json.dumps({"address": cluster.address, "nodes": nodes, "pids": sorted(pids)}))
        tmp.replace(workdir / "cluster.json")

    for _ in range(n):
        add()
    env = {**os.environ, "RAY_ADDRESS": cluster.address}
    codes: list[int] = []

    def run_all() -> None:
        for k, command in enumerate(commands):
            with open(workdir / f"run{k}.out", "w") as out, open(workdir / f"run{k}.err", "w") as err:
                codes.append(subprocess.run(command, env=env, stdout=out, stderr=err, timeout=300).returncode)

    runner = threading.Thread(target=run_all, daemon=True)
    runner.start()
    try:
        while runner.is_alive():  # Ray's cluster_utils is driven from this (the main) thread
            if (workdir / "add-node").exists():
                add()
                (workdir / "add-node").unlink()
            runner.join(0.2)
    finally:
        cluster.shutdown()
    return codes[-1] if len(codes) == len(commands) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
