"""PyTorch backend of the shared harness: placement, precision, optimizer and the step functions."""

from __future__ import annotations

import collections
import contextlib
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from workers.common import precision, profile
from workers.common.devices import Device
from workers.common.harness import DeviceMissing, Unsupported
from workers.common.specs import ModelSpec, OptimizerSpec
from workers.pytorch_worker import distributed, models

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def make_optimizer(params: Any, opt: OptimizerSpec) -> torch.optim.Optimizer:
    """The spec's optimizer; SGD weight decay is coupled (L2 in the gradient), AdamW's decoupled."""
    if opt.name == "sgd":
        return torch.optim.SGD(params, lr=opt.lr, momentum=opt.momentum, weight_decay=opt.weight_decay)
    if opt.name == "adamw":
        return torch.optim.AdamW(
            params, lr=opt.lr, betas=(opt.beta1, opt.beta2), eps=opt.eps, weight_decay=opt.weight_decay
        )
    raise Unsupported(f"optimizer {opt.name!r} is not implemented in the PyTorch worker")


class Backend:
    """One cell's model, optimizer and steps in PyTorch."""

    framework = "pytorch"
    layout = "NCHW"

    def __init__(self, cell: dict[str, Any], rank: int = 0, port: int | None = None) -> None:
        self.cell = cell
        spec = Device.parse(cell["device"])
        self.replicas, self.rank = spec.count, rank
        if spec.data_parallel and cell.get("batchnorm") != "sync":
            raise Unsupported(f"batchnorm {cell.get('batchnorm')!r}: the PyTorch worker synchronises BatchNorm (sync)")
        device = spec.replica(rank) if spec.data_parallel else str(spec)
        if spec.kind == "cuda":
            index = rank if spec.data_parallel else spec.indices[0]  # as `device` names it
            needed = max(spec.indices) + 1 if spec.data_parallel else index + 1
            if not torch.cuda.is_available() or needed > torch.cuda.device_count():
                raise DeviceMissing(
                    cell["device"], f"PyTorch {torch.__version__}", f"{torch.cuda.device_count()} CUDA device(s)"
                )
            torch.cuda.set_device(index)  # the cell's (this rank's) device is current for every op
            # autotuning happens in the warm-up steps; deterministic kernels rule it out (it picks by timing)
            torch.backends.cudnn.benchmark = not cell.get("deterministic")
        self.device = torch.device(device)
        # CUDA kernels are queued and launch_step returns before they run; on the CPU each op runs as
        # it is called, so the step is done when launch_step returns
        self.async_steps = self.device.type == "cuda"
        cuda = self.device.type == "cuda"
        why = precision.tf32_unsupported(
            cell["precision"], cuda, torch.cuda.get_device_capability(self.device) if cuda else None
        )
        if why:
            raise Unsupported(why)
        self.matmul_precision = precision.matmul_policy(cell["precision"])
        torch.backends.fp32_precision = self.matmul_precision  # cuBLAS matmuls and cuDNN convolutions alike
        self.precision = precision.compute_dtype(cell["precision"])
        if self.precision == "bf16" and self.device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise Unsupported(f"bf16 is not supported on {torch.cuda.get_device_name(self.device)}")
        threads = distributed.threads_per_rank(cell.get("threads"), self.replicas) if spec.data_parallel else None
        if threads or cell.get("threads"):
            torch.set_num_threads(int(threads or cell["threads"]))
        torch.manual_seed(cell["seed"])
        if cell.get("deterministic"):  # deterministic kernels, or an error naming an op that has none
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.deterministic = True
        # several devices: one DDP rank per device; this process is rank 0 and starts the others
        self.group = distributed.Group(cell, rank, port, type(self)) if spec.data_parallel else None
        # fp16 needs loss scaling; bf16 has fp32's exponent range and does not
        self.scaler = torch.amp.GradScaler(
            self.device.type,
            init_scale=precision.FP16_INITIAL_SCALE,
            growth_interval=precision.FP16_GROWTH_INTERVAL,
            enabled=self.precision == "fp16",
        )
        self.training: bool | None = None
        # device prefetch (to_device): a side stream for the copies of batches placed ahead, and an event
        # after each, in the order the steps will take them
        self._copy_stream = torch.cuda.Stream(self.device) if cuda else None
        self._copied: collections.deque[torch.cuda.Event] = collections.deque()

    def info(self) -> dict[str, Any]:
        cuda = torch.cuda.is_available()
        return {
            "framework_version": torch.__version__,
            "cuda_version": torch.version.cuda,
            "cudnn_version": torch.backends.cudnn.version() if cuda else None,
            "devices": [f"cuda:{i} {torch.cuda.get_device_name(i)}" for i in range(torch.cuda.device_count())]
            or ["cpu"],
            "threads": {
                "intra_op": torch.get_num_threads(),
                "inter_op": torch.get_num_interop_threads(),
                "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
            },
            "compiler": "torch.compile (inductor)" if self.cell.get("compile") else None,
            # what the framework reports switched on, not what was asked
            "determinism": (
                f"torch.are_deterministic_algorithms_enabled()={torch.are_deterministic_algorithms_enabled()}, "
                f"cudnn.deterministic={torch.backends.cudnn.deterministic}, "
                f"cudnn.benchmark={torch.backends.cudnn.benchmark}, "
                f"CUBLAS_WORKSPACE_CONFIG={os.environ.get('CUBLAS_WORKSPACE_CONFIG')}"
            ),
            "precision_mode": {"fp32": "fp32", "fp16": "autocast fp16 + GradScaler", "bf16": "autocast bf16"}[
                self.precision
            ],
            "matmul_precision": self.matmul_precision,
            "data_parallel": distributed.data_parallel_info(self),
        }

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=DTYPES[self.precision])

    def build(self, spec: ModelSpec, weights: dict[str, np.ndarray]) -> None:
        self.spec = spec
        self.model = models.build(spec)
        models.load_canonical(self.model, spec, weights)
        self.model.to(self.device)
        # what a training step runs: the model, or its DDP wrapper, whose backward all-reduces the
        # gradients (averaged over the ranks: the global batch's mean loss, as the slices are equal)
        self.train_module: nn.Module = self.model
        if self.group is not None:
            self.model = distributed.sync_batchnorm(self.model, self.device.type == "cuda")
            self.train_module = nn.parallel.DistributedDataParallel(
                self.model,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                forward_sync_buffers=False,  # synchronised BatchNorm keeps the ranks' buffers equal (verify checks)
            )
        self.optimizer = make_optimizer(self.model.parameters(), spec.optimizer)
        # LambdaLR's factor for update n is lr_factor(n): the scheduler steps after each optimizer step
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, spec.optimizer.lr_factor)
        self.forward = torch.compile(self.model) if self.cell.get("compile") else self.model
        self.train_forward = self.forward
        if self.train_module is not self.model:
            self.train_forward = torch.compile(self.train_module) if self.cell.get("compile") else self.train_module

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)

    def _share(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """This rank's slice of a global batch (data parallel); the batch itself on one device."""
        if self.group is None:
            return x, y
        share = len(x) // self.replicas
        return x[self.rank * share : (self.rank + 1) * share], y[self.rank * share : (self.rank + 1) * share]

    def to_device(self, x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch placed ahead of its step: on a GPU copied on a side stream (from page-locked memory
        where the loader made it there), an event recorded after the copy that its step's stream waits
        for, so the copy overlaps the steps queued before it; on the CPU the tensors share the batch's
        memory (there is nothing to copy)."""
        x, y = self._share(x, y)
        if self._copy_stream is None:
            return self._inputs(x, y)  # type: ignore[return-value]
        with torch.cuda.stream(self._copy_stream):
            xb, yb = self._inputs(x, y)
            done = torch.cuda.Event()
            done.record(self._copy_stream)
        self._copied.append(done)
        return xb, yb  # type: ignore[return-value]

    def _placed(self, xb: torch.Tensor, yb: torch.Tensor) -> None:
        """A batch from to_device, about to be read by a step on the current stream: the stream waits for
        its copy alone, and the allocator keeps its memory until the step is done with it."""
        if self._copy_stream is None:
            return
        stream = torch.cuda.current_stream(self.device)
        stream.wait_event(self._copied.popleft())
        xb.record_stream(stream)
        yb.record_stream(stream)

    def _inputs(self, x: np.ndarray, y: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        xb = torch.from_numpy(x).to(self.device, non_blocking=True)
        if xb.dtype == torch.int32:
            xb = xb.long()
        yb = None if y is None else torch.from_numpy(np.asarray(y)).to(self.device, non_blocking=True).long()
        return xb, yb

    def _mode(self, training: bool) -> None:
        if self.training is not training:
            self.model.train(training)
            self.training = training

    def launch_step(self, x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.cuda.Event | None]:
        self._mode(True)
        if isinstance(x, torch.Tensor):  # placed ahead by to_device (this rank's slice already)
            xb, yb = x, y
            self._placed(xb, yb)
        else:
            xb, yb = self._inputs(*self._share(x, y))
        # the last step's gradients freed before the forward pass, as the reference loop and PyTorch's
        # AMP recipe order it, so the activations can take their memory
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            logits = self.train_forward(xb)
        loss = F.cross_entropy(logits.float(), yb)
        self.scaler.scale(loss).backward()
        if self.scaler.is_enabled():  # fp16
            before = self.scaler.get_scale()
            self.scaler.step(self.optimizer)  # skipped where the gradients are not finite
            self.scaler.update()  # ... and then the scale is halved
            # the schedule advances with the updates made, as Keras' LossScaleOptimizer and the JAX worker
            # (which keeps the optimizer state of a skipped step) do; GradScaler.step has synced already
            if self.scaler.get_scale() >= before:
                self.scheduler.step()
        else:
            self.optimizer.step()
            self.scheduler.step()
        correct = (logits.argmax(-1) == yb).sum()
        out = torch.stack([loss.detach().float(), correct.float()])
        if self.group is not None:
            # the global batch's mean loss and correct count, on every rank: the read-back below then
            # waits for all ranks' steps, so a step's time is the slowest rank's
            dist.all_reduce(out)
            out = out * torch.tensor([1.0 / self.replicas, 1.0], device=out.device)
        if self.device.type != "cuda":
            return out, None  # on the CPU the step has run by now
        # on a GPU: the two numbers copied into pinned host memory behind the step's kernels, and an
        # event after the copy, so the host can queue the next step and wait for this one alone
        # (a `.cpu()` here would wait now; one after the next step is queued would wait for both)
        host = torch.empty(2, dtype=torch.float32, pin_memory=True)
        host.copy_(out, non_blocking=True)
        done = torch.cuda.Event()
        done.record(torch.cuda.current_stream(self.device))
        return host, done

    def step_parts(self, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
        """One training step as `launch_step` runs it, timed by part with a device sync after each
        (profile.py): the batch's copy to the device, forward with the loss, backward, the update."""
        self._mode(True)
        clock = profile.PartClock(self._sync)
        xb, yb = self._inputs(x, y)
        clock.lap("data")
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            logits = self.train_forward(xb)
        loss = F.cross_entropy(logits.float(), yb)
        clock.lap("forward")
        self.scaler.scale(loss).backward()
        clock.lap("backward")
        self.scaler.step(self.optimizer)  # as optimizer.step() where the scaler is off
        self.scaler.update()
        self.scheduler.step()
        clock.lap("optimizer")
        return clock.parts

    @contextlib.contextmanager
    def trace(self, folder: str) -> Iterator[list[str]]:
        """torch.profiler over what runs inside, kept as a Chrome trace (chrome://tracing, Perfetto)."""
        activities = [torch.profiler.ProfilerActivity.CPU]
        if self.device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        files: list[str] = []
        with torch.profiler.profile(activities=activities) as prof:
            yield files
            self._sync()
        path = os.path.join(folder, "trace.json")
        prof.export_chrome_trace(path)
        files.append(path)

    def step_result(self, handle: tuple[torch.Tensor, torch.cuda.Event | None]) -> tuple[float, int]:
        out, done = handle
        if done is not None:
            done.synchronize()  # this step's copy, not the work queued after it
        return float(out[0]), int(out[1])

    @torch.inference_mode()
    def eval_step(self, x: np.ndarray, y: np.ndarray) -> tuple[float, int]:
        self._mode(False)
        xb, yb = self._inputs(x, y)
        with self._autocast():
            logits = self.forward(xb)
        loss = F.cross_entropy(logits.float(), yb, reduction="sum")
        out = torch.stack([loss.float(), (logits.argmax(-1) == yb).sum().float()]).cpu()
        return float(out[0]), int(out[1])

    @torch.inference_mode()
    def predict(self, x: np.ndarray) -> None:
        self._mode(False)
        xb, _ = self._inputs(x)
        with self._autocast():
            self.forward(xb)
        self._sync()

    @torch.inference_mode()
    def logits(self, x: np.ndarray) -> np.ndarray:
        self._mode(False)
        with self._autocast():
            return self.model(self._inputs(x)[0]).float().cpu().numpy()

    def export(self) -> dict[str, np.ndarray]:
        return models.export_canonical(self.model, self.spec)

    @torch.inference_mode()
    def activations(self, x: np.ndarray, modules: list[str]) -> dict[str, np.ndarray]:
        self._mode(False)
        found = dict(self.model.named_modules())
        out: dict[str, np.ndarray] = {}
        hooks = [
            found[name].register_forward_hook(lambda m, i, o, name=name: out.__setitem__(name, o.float().cpu().numpy()))
            for name in modules
        ]
        try:
            with self._autocast():
                self.model(self._inputs(x)[0])
        finally:
            for h in hooks:
                h.remove()
        return out

    def save(self, path: str) -> str:
        target = path + ".pt"
        torch.save(self.model.state_dict(), target)
        return target

    def load(self, path: str) -> None:
        self.model.load_state_dict(torch.load(path, map_location=self.device, weights_only=True))
        self._sync()

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def matmul(self, n: int, reps: int) -> Any:
        dtype = DTYPES.get(self.precision, torch.float32)
        gen = torch.Generator().manual_seed(self.cell["seed"])
        a = torch.randn((n, n), generator=gen).to(self.device, dtype)
        b = (torch.randn((n, n), generator=gen) / n**0.5).to(self.device, dtype)  # keeps the chain's scale

        def run() -> None:
            c = a
            for _ in range(reps):  # each product needs the last: nothing can be skipped or overlapped
                c = torch.mm(c, b)
            self._sync()

        return run

    def host_buffer(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        """A host array a batch is made in (a file-fed cell's last stage): page-locked on a CUDA device,
        so the step's copy to the device is a DMA that overlaps (`non_blocking`), else plain."""
        if self.device.type != "cuda":
            return np.empty(shape, dtype)
        return torch.empty(shape, dtype=getattr(torch, np.dtype(dtype).name), pin_memory=True).numpy()

    def memory(self) -> dict[str, Any]:
        if self.device.type != "cuda":
            return {
                "device_peak_bytes": None,
                "device_current_bytes": None,
                "allocator": "cpu (no allocator statistics)",
            }
        return {
            "device_peak_bytes": torch.cuda.max_memory_allocated(self.device),
            "device_current_bytes": torch.cuda.memory_allocated(self.device),
            "device_reserved_peak_bytes": torch.cuda.max_memory_reserved(self.device),
            "allocator": "torch.cuda caching allocator",
        }

    def replica_divergence(self) -> float:
        """The largest difference between two ranks' parameters and buffers (every rank calls it)."""
        assert self.group is not None
        return self.group.divergence(list(models.canonical_state(self.model).values()))

    def lost_rank(self) -> tuple[str, str] | None:
        return None if self.group is None else self.group.lost_rank()

    def close(self) -> None:
        if self.group is not None:
            self.group.close()

    def is_oom(self, exc: BaseException) -> bool:
        # CUDA raises OutOfMemoryError; the CPU allocator a RuntimeError saying "can't allocate memory"
        text = str(exc).lower()
        return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in text or "can't allocate memory" in text
