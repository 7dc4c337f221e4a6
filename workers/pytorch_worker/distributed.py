"""PyTorch data parallel: one DistributedDataParallel rank per device, all inside the cell's worker.

The worker the orchestrator starts is rank 0: it opens the rendezvous (a TCPStore on the loopback
interface, on a port the kernel picks, so two cells never collide), starts ranks 1..N-1 with
`torch.multiprocessing.start_processes` (spawn: a fresh interpreter, no copied CUDA or OpenMP state)
and joins the process group itself. Every rank runs the same harness loop on the same global batches
and trains on its slice; only rank 0 writes events. The ranks stay in rank 0's process group, so the
orchestrator's monitor samples them and its kill reaches them; each asks the kernel to kill it when
rank 0 dies (PR_SET_PDEATHSIG), so a killed orchestrator (which takes rank 0 with it) leaves none.

A rank that dies ends the cell: a thread of rank 0 watches the others (torch's own
`ProcessContext.join`), and rank 0 reports the lost rank as the cause (`crashed`, or `oom` where the
rank ran out of memory) instead of the broken collective it saw; if rank 0 is stuck in a collective
that never returns (NCCL waits), the watcher ends the process itself.

BatchNorm is synchronised over the ranks (the cell's `batchnorm: sync`): on GPUs with
`torch.nn.SyncBatchNorm`; on CPUs, where SyncBatchNorm refuses to run, with `CpuSyncBatchNorm2d`
below (the same two-pass statistics over the global batch, through torch's functional all-reduce,
which is differentiable, over gloo).
"""

from __future__ import annotations

import ctypes
import datetime
import json
import os
import signal
import sys
import threading
import time
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
import torch.multiprocessing as mp
from torch import nn

from workers.common import threads as thread_settings
from workers.common.devices import Device

HOST = "127.0.0.1"  # the ranks are on one machine: the rendezvous never listens beyond loopback
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=5)
EXIT_OOM = 75  # a rank's exit status when it ran out of memory (else 1)
STUCK_GRACE_S = 10.0  # after a rank died: how long rank 0 may take to report it before the watcher does


def threads_per_rank(threads: int | None, ranks: int) -> int | None:
    """Each rank's share of the cell's intra-op threads (at least one)."""
    return None if not threads else max(1, int(threads) // ranks)


class CpuSyncBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are the global batch's, all-reduced over the process group
    (gloo), as torch.nn.SyncBatchNorm computes them on GPUs. Two passes (mean, then the centred sum of
    squares), as a one-device BatchNorm takes them; the running variance is unbiased over the global
    count. Gradients flow through the all-reduces (their backward all-reduces the gradients), so the
    ranks' gradients, averaged by DDP, are the one-device gradient. In eval mode: plain BatchNorm."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        dims = (0, 2, 3)
        xf = x.float()  # statistics in fp32, as BatchNorm takes them under autocast
        count = xf.numel() // xf.shape[1] * dist.get_world_size()  # the ranks' slices are equal
        mean = _summed(xf.sum(dims)) / count
        centred = xf - mean[None, :, None, None]
        var = _summed(centred.pow(2).sum(dims)) / count
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * (count / max(1, count - 1)), alpha=m)
        out = centred * torch.rsqrt(var + self.eps)[None, :, None, None]
        return (out * self.weight[None, :, None, None] + self.bias[None, :, None, None]).to(x.dtype)


def _summed(t: torch.Tensor) -> torch.Tensor:
    """`t` summed over the ranks; differentiable (its backward sums the gradients over the ranks)."""
    return funcol.all_reduce(t, "sum", dist.group.WORLD)


def sync_batchnorm(model: nn.Module, cuda: bool) -> nn.Module:
    """The model with every BatchNorm synchronised over the process group."""
    if cuda:
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for module in model.modules():
        if type(module) is nn.BatchNorm2d:
            module.__class__ = CpuSyncBatchNorm2d  # same parameters and buffers, synchronised forward
    return model


def _die_with_parent() -> None:
    """Linux: the kernel SIGKILLs this rank when rank 0 (its parent) dies, even by SIGKILL."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class _RankEvents:
    """A non-leading rank's event stream: events are dropped (rank 0 writes the cell's), errors and
    warnings go to stderr as text, and the last error's kind is kept for the exit status."""

    def __init__(self, rank: int) -> None:
        self.rank, self.error_kind = rank, None

    def write(self, line: str) -> None:
        event = json.loads(line)
        if event.get("event") == "error":
            self.error_kind = event.get("kind")
            sys.stderr.write(f"rank {self.rank}: {event.get('message')}\n{event.get('traceback', '')}\n")
        elif event.get("event") == "log" and event.get("level") in ("warning", "error"):
            sys.stderr.write(f"rank {self.rank}: {event.get('message')}\n")

    def flush(self) -> None:
        sys.stderr.flush()


def _rank_main(index: int, backend_class: type, cell: dict[str, Any], port: int, parent: int) -> None:
    """Rank index+1: the harness loop on this rank's device with rank 0's backend class (a worker module
    of the suite's own may subclass the built-in one), events to nowhere."""
    _die_with_parent()
    if os.getppid() != parent:  # rank 0 died before the request reached the kernel
        os._exit(1)
    from workers.common import harness
    from workers.common.events import Emitter

    rank = index + 1
    sink = _RankEvents(rank)
    status = harness.run(lambda c: backend_class(c, rank=rank, port=port), cell, Emitter(cell["cell_id"], sink))
    if status:
        sys.exit(EXIT_OOM if sink.error_kind == "oom" else status)


class Group:
    """The process group of one cell, as rank `rank` sees it; rank 0 also starts and watches the others."""

    def __init__(self, cell: dict[str, Any], rank: int, port: int | None, backend_class: type) -> None:
        device = Device.parse(cell["device"])
        self.ranks, self.rank = device.count, rank
        self.cuda = device.kind == "cuda"
        self.backend_name = "nccl" if self.cuda else "gloo"
        self.context: Any = None
        self.lost: tuple[str, str] | None = None
        self._watcher: threading.Thread | None = None
        self._done = threading.Event()
        self._closing = False
        if rank == 0:
            store = dist.TCPStore(HOST, 0, self.ranks, is_master=True, wait_for_workers=False)
            self._start_ranks(cell, store.port, backend_class)
        else:
            store = dist.TCPStore(HOST, port, self.ranks, is_master=False)
        dist.init_process_group(
            self.backend_name, store=store, rank=rank, world_size=self.ranks, timeout=COLLECTIVE_TIMEOUT
        )

    def _start_ranks(self, cell: dict[str, Any], port: int, backend_class: type) -> None:
        share = threads_per_rank(cell.get("threads"), self.ranks)
        saved = dict(os.environ)
        if share:  # read by each rank's OpenMP as it starts: set for the spawn, then put back
            os.environ.update(thread_settings.env_for(share))
        try:
            self.context = mp.start_processes(
                _rank_main,
                args=(backend_class, cell, port, os.getpid()),
                nprocs=self.ranks - 1,
                join=False,
                start_method="spawn",
            )
        finally:
            os.environ.clear()
            os.environ.update(saved)
        self._watcher = threading.Thread(target=self._watch, name="rank-watcher", daemon=True)
        self._watcher.start()

    def _watch(self) -> None:
        try:
            while not self.context.join(timeout=0.5):
                pass
        except mp.ProcessExitedException as exc:
            rank = exc.error_index + 1
            if exc.exit_code == EXIT_OOM:
                self.lost = ("oom", f"rank {rank} of {self.ranks} ran out of memory (its stderr has the error)")
            elif exc.exit_code is not None and exc.exit_code < 0:
                try:
                    name = signal.Signals(-exc.exit_code).name
                except ValueError:
                    name = f"signal {-exc.exit_code}"
                self.lost = ("crashed", f"rank {rank} of {self.ranks} died: killed by {name}")
            else:
                self.lost = ("crashed", f"rank {rank} of {self.ranks} died: exited with status {exc.exit_code}")
        except mp.ProcessRaisedException as exc:
            rank = exc.error_index + 1
            last = next((ln for ln in reversed(str(exc).splitlines()) if ln.strip()), "")
            self.lost = ("crashed", f"rank {rank} of {self.ranks} died: {last[:300]}")
        finally:
            self._done.set()
        if self.lost is not None and not self._closing:
            # rank 0's own error path reports it (see lost_rank); if rank 0 is stuck in a collective that
            # never returns, the cell ends here, the cause on stderr's last line
            time.sleep(STUCK_GRACE_S)
            if not self._closing:
                sys.stderr.write(f"{self.lost[1]}\n")
                sys.stderr.flush()
                os._exit(1)

    def lost_rank(self, wait_s: float = 3.0) -> tuple[str, str] | None:
        """(kind, message) when another rank died; waits briefly, since a broken collective on rank 0 is
        usually the first sign of it."""
        if self.rank != 0 or self.context is None:
            return None
        self._done.wait(wait_s)
        return self.lost

    def divergence(self, tensors: list[torch.Tensor]) -> float:
        """Largest difference between two ranks' copies of `tensors` (all ranks call it)."""
        flat = torch.cat([t.detach().float().reshape(-1) for t in tensors])
        high, low = flat.clone(), flat.clone()
        dist.all_reduce(high, op=dist.ReduceOp.MAX)
        dist.all_reduce(low, op=dist.ReduceOp.MIN)
        return float((high - low).abs().max()) if flat.numel() else 0.0

    def close(self) -> None:
        """End of the cell: leave the group; rank 0 waits for the other ranks to exit, and kills any left."""
        self._closing = True
        if dist.is_initialized():
            dist.destroy_process_group()
        if self.context is not None:
            self._done.wait(60.0)
            for proc in self.context.processes:
                if proc.is_alive():
                    proc.kill()


def data_parallel_info(backend: Any) -> dict[str, Any] | None:
    """What the cell's `hello` event says of its replicas (None: one device)."""
    if backend.group is None:
        return None
    return {
        "replicas": backend.replicas,
        "devices": [str(Device.parse(backend.cell["device"]).replica(r)) for r in range(backend.replicas)],
        "collective": f"DistributedDataParallel over {backend.group.backend_name}",
        "batchnorm": "sync (torch.nn.SyncBatchNorm)"
        if backend.device.type == "cuda"
        else "sync (all-reduced over gloo: SyncBatchNorm refuses CPUs)",
        "threads": f"{torch.get_num_threads()} intra-op threads in each of {backend.replicas} rank processes",
    }
