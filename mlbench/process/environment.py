"""The environment record: what machine and software a cell ran on (no framework is imported)."""

from __future__ import annotations

import os
import platform
import socket
import sys
from importlib import metadata
from typing import Any

import psutil

from mlbench import __version__
from mlbench.process.gpus import NVML, gpu_indices, pynvml
from workers.common import registry

ENV_FLAGS = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "TF_NUM_INTRAOP_THREADS",
    "XLA_PYTHON_CLIENT_PREALLOCATE",
    "XLA_PYTHON_CLIENT_MEM_FRACTION",
    "XLA_FLAGS",
    "TF_FORCE_GPU_ALLOW_GROWTH",
    "TF_XLA_FLAGS",
    "PYTORCH_CUDA_ALLOC_CONF",
    "CUDA_VISIBLE_DEVICES",
    "TORCHINDUCTOR_CACHE_DIR",
    "JAX_COMPILATION_CACHE_DIR",
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
    "OPENBLAS_CORETYPE",
    "CUDA_DEVICE_ORDER",
    "JAX_PLATFORMS",
    "GLIBC_TUNABLES",  # malloc: steady sets it
    "LD_PRELOAD",  # a malloc put in by hand (jemalloc, tcmalloc)
)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def installed_version(*packages: str) -> str | None:
    """Version of the first installed distribution among `packages`, read from its metadata (nothing
    is imported)."""
    for package in packages:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return None


def gpus() -> list[dict[str, Any]]:
    """Every NVIDIA GPU NVML sees (empty without a driver)."""
    if not NVML.available():
        return []
    out = []
    for i in range(pynvml.nvmlDeviceGetCount()):
        h = pynvml.nvmlDeviceGetHandleByIndex(i)
        name = pynvml.nvmlDeviceGetName(h)
        out.append(
            {
                "index": i,
                "name": name.decode() if isinstance(name, bytes) else name,
                "memory_total_bytes": pynvml.nvmlDeviceGetMemoryInfo(h).total,
            }
        )
    return out


def capture() -> dict[str, Any]:
    """The machine-level record stored with every cell."""
    driver = cuda_driver = None
    if NVML.available():
        d = pynvml.nvmlSystemGetDriverVersion()
        driver = d.decode() if isinstance(d, bytes) else d
        v = pynvml.nvmlSystemGetCudaDriverVersion()
        cuda_driver = f"{v // 1000}.{(v % 1000) // 10}"
    return {
        "mlbench_version": __version__,
        "python_version": sys.version.split()[0],
        "python_executable": sys.executable,
        "os": f"{platform.system()} {platform.release()}",
        "cpu_model": cpu_model(),
        "cpu_count_logical": psutil.cpu_count(logical=True),
        "cpu_count_physical": psutil.cpu_count(logical=False),
        "memory_total_gb": psutil.virtual_memory().total / 2**30,
        "hostname": socket.gethostname(),
        "gpus": gpus(),
        "gpu_driver": driver,
        "cuda_driver_version": cuda_driver,
        "nvml_error": None if NVML.available() else NVML.error,
        "frameworks": {fw: installed_version(*f.distributions) for fw, f in registry.FRAMEWORKS.items()},
        "pid": os.getpid(),
    }


def gpu_model(env: dict[str, Any], device: str) -> str | None:
    names = {g["index"]: g["name"] for g in env.get("gpus", [])}
    chosen = [names.get(i, f"GPU {i} (not seen by NVML)") for i in gpu_indices(device)]
    return ", ".join(chosen) or None
