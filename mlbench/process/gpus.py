"""Which physical GPUs a cell's `cuda:N` names on the host that runs it.

A cell's indices count in the GPUs the user gave mlbench: a CUDA_VISIBLE_DEVICES set before mlbench
started (by hand or by a scheduler) is that list, so `cuda:0` is its first entry, not physical GPU 0;
without one, every GPU of the machine. Workers get CUDA_DEVICE_ORDER=PCI_BUS_ID, so CUDA numbers
GPUs in PCI bus order as NVML and nvidia-smi do, and the monitor samples the GPUs the worker uses.
A cell whose GPUs this host does not have is skipped before any worker starts, with the reason.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping

from workers.common.devices import Device

try:  # NVIDIA's NVML bindings (package nvidia-ml-py); absent or failing on machines without a driver
    import pynvml
except ImportError:  # pragma: no cover - the package is a dependency, the library may still be missing
    pynvml = None


class NVML:
    """NVML initialised once per orchestrator; `available` says whether a driver answered."""

    _lock = threading.Lock()
    _state: bool | None = None
    error: str | None = None

    @classmethod
    def available(cls) -> bool:
        with cls._lock:
            if cls._state is None:
                try:
                    if pynvml is None:
                        raise RuntimeError("nvidia-ml-py is not installed")
                    pynvml.nvmlInit()
                    cls._state = True
                except Exception as exc:
                    cls._state, cls.error = False, str(exc) or type(exc).__name__
            return cls._state


def gpu_indices(device: str) -> list[int]:
    """Physical GPU indices of a device string ('cuda:0,1' -> [0, 1]; 'cpu' -> [])."""
    return list(Device.parse(device).gpus)


class NotHere(Exception):
    """The cell's GPUs are not on this host (the message says why)."""


def given(environ: Mapping[str, str] | None = None) -> list[str] | None:
    """The CUDA_VISIBLE_DEVICES list the user gave mlbench (indices or GPU UUIDs), or None: all GPUs."""
    value = (os.environ if environ is None else environ).get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return None
    return [x.strip() for x in value.split(",") if x.strip()]


def choose(device: str, environ: Mapping[str, str] | None = None) -> list[str]:
    """The CUDA_VISIBLE_DEVICES entries for a cell's GPUs on this host (empty for a CPU cell)."""
    indices = Device.parse(device).gpus
    mine = given(environ)
    if mine is None:
        return [str(i) for i in indices]
    beyond = [i for i in indices if i >= len(mine)]
    if beyond:
        raise NotHere(
            f"{device}: CUDA_VISIBLE_DEVICES={','.join(mine) or '(empty)'} gives mlbench {len(mine)} GPU(s), "
            f"and cuda:{beyond[0]} counts in those"
        )
    return [mine[i] for i in indices]


def nvml_index(entry: str) -> int | None:
    """NVML's index of a CUDA_VISIBLE_DEVICES entry (an index in PCI bus order, or a UUID)."""
    if entry.isdigit():
        return int(entry)
    if not NVML.available():
        return None
    try:
        return pynvml.nvmlDeviceGetIndex(pynvml.nvmlDeviceGetHandleByUUID(entry))
    except Exception:
        return None


def check_present(entries: list[str]) -> None:
    """NotHere unless NVML sees every one of these GPUs (nothing to check for a CPU cell)."""
    if not entries:
        return
    if not NVML.available():
        raise NotHere(f"no NVIDIA GPU on this host: NVML does not answer ({NVML.error})")
    count = pynvml.nvmlDeviceGetCount()
    for entry in entries:
        index = nvml_index(entry)
        if index is None or index >= count:
            raise NotHere(f"GPU {entry} is not on this host (NVML sees {count} GPU(s))")
