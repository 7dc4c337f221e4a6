"""The Ray executor: each unit is a Ray task on some node of a cluster the user already runs.

The task runs the same `run_here` (so runner.run_cell) on its node as the local executor does on
this machine: isolation, monitoring, timeouts and kills stay node-local. It first makes the run's
data from the seed and checks it against the head's checksum, then streams the worker's events
back as they come (a streaming generator, not Ray's log forwarding), and finally the outcome with
the node's environment record and the cell's logs. The head stores everything.

The cluster is the one `RAY_ADDRESS` or the suite's `ray.address` names; with none, mlbench starts
a local Ray instance for the run (loopback-reachable only where the machine has no other address)
and stops it at the end; a later run reaps what a killed run left of it (the journal records it).

Module named after its role, not `ray.py`: that would shadow the library.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil

from mlbench.cells import Unit
from mlbench.executors.base import (
    ClusterLost,
    Event,
    Executor,
    ExecutorUnavailable,
    Pool,
    Report,
    Settings,
    Started,
    dataset_checksum,
    run_here,
    skip_outcome,
)
from mlbench.process import environment, runner
from mlbench.process.gpus import gpu_indices
from mlbench.runfolder import RunFolder

INSTALL_HINT = "executor ray needs Ray on this machine: pip install 'mlbench[ray]' (or make venv EXTRAS=...,ray)"
KILL_WAIT_S = 30.0  # for the node to confirm it killed a cancelled cell's worker
PROBE_EVERY_S = 2.0  # how often the head checks that the cluster's GCS still answers
LOST_AFTER_S = 10.0  # no answer for this long: the cluster is lost (Ray itself ends the driver at 60 s)
LOG_LIMIT = 16 << 20  # bytes of a cell's logs sent back to the head
CAPACITY_EVERY_S = 2.0  # how often the cluster's CPUs are counted again (a node that joins adds its own)


def import_ray() -> Any:
    """The ray module, or ExecutorUnavailable saying which extra to install."""
    try:
        import ray
    except ImportError:
        raise ExecutorUnavailable(INSTALL_HINT) from None
    return ray


# --- on the node ---------------------------------------------------------------------------------


def node_run_dir(run_name: str, root: str | None) -> Path:
    """Where a node keeps a run's data, logs and compile caches (never the head's folder)."""
    return Path(root or tempfile.gettempdir()) / "mlbench-ray" / run_name


def _logs(run_dir: Path, unit_id: str) -> dict[str, bytes]:
    out = {}
    for path in (RunFolder(run_dir).events_log(unit_id), RunFolder(run_dir).stderr_log(unit_id)):
        if path.is_file():
            with open(path, "rb") as f:
                out[path.name] = f.read(LOG_LIMIT)
    return out


def _failed(reason: str) -> runner.Outcome:
    out = skip_outcome(reason)
    out.status = "failed"
    return out


def _data_problem(unit: Unit, run_dir: Path, head_checksum: str | None) -> str | None:
    """Why this node's copy of the cell's data is not the head's (None: it is the same)."""
    if head_checksum is None:
        return None
    try:
        mine = dataset_checksum(unit.cell, RunFolder(run_dir).data)
    except Exception as exc:  # a missing cifar10 folder on this node, a full disk
        return f"{type(exc).__name__}: {exc}"
    if mine != head_checksum:
        return f"checksum {mine[:12]}, the head's {head_checksum[:12]} (another numpy or generator?)"
    return None


def node_task(unit: Unit, settings: Settings, head_checksum: str | None, node_root: str | None) -> Iterator[dict]:
    """The body of a unit's Ray task (a generator: Ray streams each item to the head as it is
    yielded). Items: start (host, pid, node), event, done (outcome, logs)."""
    import ray

    run_dir = node_run_dir(settings.run_name, node_root)
    host = socket.gethostname()
    node_id = ray.get_runtime_context().get_node_id()
    env = environment.capture()
    # the GPUs Ray gave this task run the cell, in place of the cell's indices (which say how many)
    gpus = [str(g) for g in ray.get_gpu_ids()] if gpu_indices(unit.cell.device) else None
    problem = _data_problem(unit, run_dir, head_checksum)
    if problem is not None:
        out = _failed(f"the data made on {host} differs from the head's: {problem}")
        out.executor, out.host = "ray", env
        yield {"kind": "done", "outcome": out, "logs": {}}
        return
    items: queue.Queue[tuple[str, Any]] = queue.Queue()
    cancel = runner.CancelToken()

    def work() -> None:
        try:
            out = run_here(
                unit,
                run_dir,
                settings,
                executor="ray",
                on_start=lambda pid: items.put(("start", pid)),
                on_event=lambda event: items.put(("event", event)),
                cancel=cancel,
                gpus=gpus,
            )
            items.put(("done", out))
        except BaseException as exc:
            items.put(("error", exc))

    thread = threading.Thread(target=work, name=f"mlbench-{unit.unit_id}", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = items.get()
            if kind == "start":
                yield {"kind": "start", "host": host, "pid": value, "node_id": node_id}
            elif kind == "event":
                yield {"kind": "event", "event": value}
            elif kind == "done":
                value.host = env
                yield {"kind": "done", "outcome": value, "logs": _logs(run_dir, unit.unit_id)}
                return
            else:
                raise value
    finally:  # cancelled (ray.cancel raises here), or the head went away: the worker dies with the task
        cancel.cancel()
        thread.join(timeout=runner.TERM_GRACE_S + runner.DUMP_WAIT_S + 5)


def kill_on_node(pgid: int, marker: str) -> bool:
    """Kill a worker's process group on this node, if that pid is still the unit's worker."""
    try:
        if not any(marker in arg for arg in psutil.Process(pgid).cmdline()):
            return False
    except psutil.Error:
        return False
    runner.kill_group(pgid)
    return True


# --- at the head -------------------------------------------------------------------------------


def _ray_session_processes() -> list[dict[str, Any]]:
    """This process's descendants right after it started a local Ray instance: the pids (with their
    start times, so a recycled pid is never taken for them) that a killed run leaves behind."""
    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            out.append({"pid": p.pid, "create_time": p.create_time(), "name": p.name()})
        except psutil.Error:
            continue
    return out


def reap_session(processes: list[dict[str, Any]], wait_s: float = 10.0) -> list[int]:
    """Kill what is left of a Ray instance a killed run started (see _ray_session_processes), and
    wait for it to be gone."""
    victims: dict[int, psutil.Process] = {}
    for entry in processes:
        try:
            p = psutil.Process(entry["pid"])
            if abs(p.create_time() - entry["create_time"]) > 0.01:
                continue  # the pid was reused
            for v in [*p.children(recursive=True), p]:
                victims[v.pid] = v
        except (psutil.Error, KeyError, TypeError):
            continue
    for v in victims.values():
        try:
            v.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(list(victims.values()), timeout=wait_s)
    return sorted(victims)


class RayExecutor(Executor):
    name = "ray"

    def __init__(
        self,
        run_dir: Path,
        settings: Settings,
        *,
        address: str | None = None,
        num_cpus: int | None = None,
        num_gpus: int | None = None,
        node_root: str | None = None,
        parallel: int | None = None,
        on_start: Callable[[Unit, int, str], None] | None = None,
        on_session: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.ray = import_ray()
        self.run_dir = run_dir
        self.settings = settings
        self.node_root = node_root
        self.on_start = on_start
        self.started_local = False
        self.address = os.environ.get("RAY_ADDRESS") or address or None
        self._connect(num_cpus, num_gpus, on_session)
        self.fixed_parallel = parallel
        self._counted_at = -math.inf
        self.parallel = self._capacity()
        self._task = self.ray.remote(max_retries=0, retry_exceptions=False)(node_task)
        self._kill = self.ray.remote(num_cpus=0, max_retries=0)(kill_on_node)
        self._checksums: dict[str, str] = {}
        self._pool: Pool | None = None
        self.lost_reason: str | None = None

    def _connect(self, num_cpus: int | None, num_gpus: int | None, on_session: Callable[..., None] | None) -> None:
        ray = self.ray
        quiet = {"log_to_driver": False, "include_dashboard": False, "logging_level": logging.WARNING}
        try:
            if self.address:
                ray.init(address=self.address, **quiet)
                return
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # a local instance reports nowhere
            before = {p.pid for p in psutil.Process().children(recursive=True)}
            ray.init(
                address="local",
                num_cpus=num_cpus or psutil.cpu_count(logical=False) or os.cpu_count(),
                num_gpus=num_gpus if num_gpus is not None else len(environment.gpus()),
                **quiet,
            )
        except Exception as exc:
            raise ClusterLost(
                f"cannot reach the Ray cluster at {self.address or 'a new local instance'}: {exc}"
            ) from None
        self.started_local = True
        self.session = {
            "address": ray.get_runtime_context().gcs_address,
            "processes": [p for p in _ray_session_processes() if p["pid"] not in before],
        }
        if on_session is not None:
            on_session(self.session)

    def close(self) -> None:
        if self.lost_reason is None and self.ray.is_initialized():
            self.ray.shutdown()
        elif self.started_local:  # a cluster that no longer answers cannot be shut down through Ray
            reap_session(self.session["processes"])

    def lost(self) -> str | None:
        return self.lost_reason

    def _watch_gcs(self, stop: threading.Event) -> None:
        """Ray ends a driver whose GCS stays unreachable (after 60 s, from C++, with no way to catch
        it): probe the GCS first, and stop the run in good order when it has gone."""
        try:
            host, port = self.ray.get_runtime_context().gcs_address.rsplit(":", 1)
        except Exception:  # Ray Client connections have no GCS address to probe
            return
        failing_since = None
        while not stop.wait(PROBE_EVERY_S):
            try:
                socket.create_connection((host, int(port)), timeout=PROBE_EVERY_S).close()
                failing_since = None
            except OSError as exc:
                failing_since = failing_since or time.monotonic()
                if time.monotonic() - failing_since >= LOST_AFTER_S:
                    self.lost_reason = (
                        f"lost the Ray cluster: its GCS at {host}:{port} has not answered for {LOST_AFTER_S:g} s "
                        f"({exc.strerror or type(exc).__name__})"
                    )
                    if self._pool is not None:
                        self._pool.grace_s = 1.0  # the tasks cannot be reached to stop them
                    # the orchestrator stops as for Ctrl-C, then says why (a real signal: it wakes a blocked wait)
                    signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
                    return

    def _capacity(self) -> int:
        """Units in flight at once: the suite's `parallel`, else the cluster's CPUs as they are now (a node
        that joins mid-run adds its own; one that is lost takes its own away), counted every few seconds."""
        if self.fixed_parallel:
            return self.fixed_parallel
        if time.monotonic() - self._counted_at >= CAPACITY_EVERY_S:
            self._counted_at = time.monotonic()
            try:
                self.parallel = max(1, int(self.ray.cluster_resources().get("CPU", 1)))
            except Exception:  # the cluster does not answer: the GCS probe says so; keep the last count
                pass
        return self.parallel

    def describe(self) -> dict[str, Any]:
        nodes = [n for n in self.ray.nodes() if n.get("Alive")]
        return {
            "executor": self.name,
            "address": self.address or "local instance",
            "nodes": [n.get("NodeManagerHostname") or n.get("NodeManagerAddress") for n in nodes],
            "parallel": self.parallel,
        }

    # each unit: resources, a task, its stream relayed -------------------------------------------

    def _resources(self, unit: Unit) -> dict[str, float]:
        return {
            "num_cpus": runner.resolved_threads(self.settings.threads),
            "num_gpus": len(gpu_indices(unit.cell.device)),
        }

    def _fitting_nodes(self, need: dict[str, float]) -> list[str]:
        """The ids of the alive nodes that could hold a unit needing `need`."""
        return [
            n["NodeID"]
            for n in self.ray.nodes()
            if n.get("Alive")
            and n.get("Resources", {}).get("CPU", 0) >= need["num_cpus"]
            and n.get("Resources", {}).get("GPU", 0) >= need["num_gpus"]
        ]

    def hosts(self) -> list[str]:
        return sorted({n.get("NodeManagerHostname") or "?" for n in self.ray.nodes() if n.get("Alive")})

    def on_each_host(self, units: list[Unit]) -> Iterator[Report]:
        """Each unit once on every alive node that could run it, pinned there (a node's calibrated peak
        is its own: MFU divides a cell's FLOP/s by the peak of the node that ran it)."""
        pinned = [Unit(u.cell, u.repeat, node) for u in units for node in self._fitting_nodes(self._resources(u))]
        return self.execute(pinned)

    def _unschedulable(self, need: dict[str, float]) -> str | None:
        """Why no alive node could ever hold the unit (Ray would queue it forever), or None."""
        if self._fitting_nodes(need):
            return None
        gpus = f" and {need['num_gpus']:g} GPU(s)" if need["num_gpus"] else ""
        return f"no node of the Ray cluster has {need['num_cpus']:g} CPU(s){gpus} (set `threads` lower, or add a node)"

    def _checksum(self, unit: Unit) -> str | None:
        spec = unit.cell.spec
        if spec.task != "train":  # a calibration reads no dataset
            return None
        key = repr((spec.dataset, spec.model, spec.model_overrides, spec.seed))
        if key not in self._checksums:
            self._checksums[key] = dataset_checksum(unit.cell, RunFolder(self.run_dir).data)
        return self._checksums[key]

    def _submit(self, unit: Unit, need: dict[str, float]) -> tuple[Any, Any]:
        options: dict[str, Any] = dict(need)
        group = None
        if unit.node is not None:  # pinned: a calibration of that node's own peak
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(unit.node, soft=False)
        elif need["num_gpus"] > 1:  # a multi-GPU cell: all its GPUs and CPUs on one node, reserved together
            from ray.util.placement_group import placement_group
            from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

            group = placement_group([{"CPU": need["num_cpus"], "GPU": need["num_gpus"]}], strategy="STRICT_PACK")
            options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=0)
        args = (unit, self.settings, self._checksum(unit), self.node_root)
        return self._task.options(**options).remote(*args), group

    def _run_one(self, unit: Unit, report: Callable[[Any], None], cancel: runner.CancelToken) -> runner.Outcome:
        ray = self.ray
        need = self._resources(unit)
        why = self._unschedulable(need)
        if why is not None:
            out = skip_outcome(why)
            out.executor = self.name
            return out
        stream, group = self._submit(unit, need)
        where: dict[str, Any] = {}
        forget = cancel.on_cancel(lambda: self._cancel(stream, where, unit))
        try:
            for ref in stream:
                item = ray.get(ref)
                if item["kind"] == "start":
                    where.update(item)
                    if self.on_start is not None:
                        self.on_start(unit, item["pid"], item["host"])
                    report(Started(unit, item["host"], item["pid"]))
                elif item["kind"] == "event":
                    report(Event(unit, item["event"]))
                else:
                    self._keep_logs(item["logs"])
                    outcome = item["outcome"]
                    outcome.ray_node = where.get("node_id")
                    return outcome
        except ray.exceptions.TaskCancelledError:
            raise runner.Interrupted(unit.unit_id) from None
        except ray.exceptions.RayError as exc:
            if cancel.cancelled:
                raise runner.Interrupted(unit.unit_id) from None
            return self._lost(unit, exc, where)
        finally:
            forget()
            if group is not None:
                from ray.util.placement_group import remove_placement_group

                remove_placement_group(group)
        return self._lost(unit, RuntimeError("its stream ended without an outcome"), where)

    def _lost(self, unit: Unit, exc: Exception, where: dict[str, Any]) -> runner.Outcome:
        """The task died under the cell (its node or Ray worker died): `crashed`, naming the node.
        A cluster that no longer answers stops the run."""
        try:
            self.ray.nodes()
        except Exception as gone:
            raise ClusterLost(f"lost the Ray cluster: {gone}") from None
        node = where.get("host") or "its node"
        if where.get("node_id"):  # nodes on one machine share a hostname: the node's id tells them apart
            node += f" (node {where['node_id'][:12]})"
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        out = skip_outcome(f"the Ray task on {node} died ({type(exc).__name__}: {first})")
        out.status, out.executor, out.ray_node = "crashed", self.name, where.get("node_id")
        return out

    def _cancel(self, stream: Any, where: dict[str, Any], unit: Unit) -> None:
        """Ray's cancel stops the task, but not the worker process tree it started: mlbench kills
        that process group on its node itself."""
        if self.lost_reason is not None:
            return  # nothing reaches the nodes; their workers die with their Ray workers
        try:
            self.ray.cancel(stream)
        except Exception:
            pass
        if "pid" not in where:
            return
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        try:
            done = self._kill.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(where["node_id"], soft=False)
            ).remote(where["pid"], unit.cell.cell_id)
            self.ray.get(done, timeout=KILL_WAIT_S)
        except Exception:
            pass  # the task's own cancel path kills it too; the node may be gone

    def _keep_logs(self, logs: dict[str, bytes]) -> None:
        folder = RunFolder(self.run_dir).logs
        folder.mkdir(parents=True, exist_ok=True)
        for name, content in logs.items():
            (folder / name).write_bytes(content)

    def execute(self, units: list[Unit]) -> Iterator[Report]:
        self._pool = Pool(self._run_one, lambda u, running: len(running) < self._capacity())
        stop = threading.Event()
        threading.Thread(target=self._watch_gcs, args=(stop,), name="mlbench-gcs-probe", daemon=True).start()
        try:
            yield from self._pool.execute(units)
        finally:
            stop.set()
