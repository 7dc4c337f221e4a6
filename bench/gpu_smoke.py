"""`make gpu-smoke`: the whole GPU path of mlbench in a few minutes, on a machine with an NVIDIA GPU.

Prints the driver, MIG mode and each framework's CUDA build and devices, then runs through the
orchestrator ResNet-18 in fp32, bf16 and fp16 and BERT in fp16 in every framework installed (with
calibration), and one deliberately oversized batch per framework, and checks: every normal cell ok,
the oversized ones oom, 0 < MFU < 1, GPU utilisation, memory and energy present, energy close to
power x time, one GPU seen per cell. With two GPUs or more it also trains ResNet-18 data parallel
on `cuda:0,1` against `cuda:0` at the same per-device batch in every framework and checks: ok, two
GPUs seen, the collective named, a scaling efficiency in (0, 1.1]. Exits 1 naming what failed.
Without a GPU it says so in one line and exits 0.

    make gpu-smoke                    # with the project's venv
    make gpu-smoke PYTHON=python3     # with that interpreter and whatever frameworks it has
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
FRAMEWORKS = ("pytorch", "tensorflow", "jax")
# each framework's CUDA build and devices, in a process of its own (as a worker sees them)
PROBES = {
    "pytorch": "import torch; print(torch.__version__, 'cuda', torch.version.cuda, 'cudnn', "
    "torch.backends.cudnn.version(), [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())])",
    "tensorflow": "import tensorflow as tf; b = tf.sysconfig.get_build_info(); print(tf.__version__, 'cuda', "
    "b.get('cuda_version'), 'cudnn', b.get('cudnn_version'), tf.config.list_physical_devices('GPU'))",
    "jax": "import jax; print(jax.__version__, jax.devices())",
}
ENERGY_TOLERANCE = 0.25  # energy counter against average power x the cell's time
OVERSIZED_BATCH = 65536  # BERT fp16 at this batch needs terabytes of activations: out of memory anywhere


def say(line: str) -> None:
    print(line, flush=True)


def gpu_header() -> str | None:
    """The driver and each GPU with its MIG mode, or None without a driver."""
    from mlbench.process.monitor import NVML, pynvml

    if not NVML.available():
        return None
    lines = [f"driver {pynvml.nvmlSystemGetDriverVersion()}"]
    for i in range(pynvml.nvmlDeviceGetCount()):
        h = pynvml.nvmlDeviceGetHandleByIndex(i)
        try:
            mig = "on" if pynvml.nvmlDeviceGetMigMode(h)[0] else "off"
        except Exception:
            mig = "not supported"
        lines.append(f"GPU {i}: {pynvml.nvmlDeviceGetName(h)}, MIG {mig}")
    return "; ".join(lines)


def installed() -> list[str]:
    out = []
    for fw in FRAMEWORKS:
        proc = subprocess.run([sys.executable, "-c", PROBES[fw]], capture_output=True, text=True, timeout=300)
        text = (proc.stdout.strip() or proc.stderr.strip().splitlines()[-1:] or ["?"])[-1]
        say(f"{fw}: {text if proc.returncode == 0 else 'not usable here: ' + text}")
        if proc.returncode == 0:
            out.append(fw)
    return out


def gpu_count() -> int:
    from mlbench.process.monitor import NVML, pynvml

    return pynvml.nvmlDeviceGetCount() if NVML.available() else 0


def suites(frameworks: list[str], gpus: int = 1) -> dict[str, dict[str, Any]]:
    base = {
        "frameworks": frameworks,
        "devices": ["cuda:0"],
        "epochs": 1,
        "warmup_steps": 5,
        "inference": {"warmup": 3, "runs": 30, "min_runs": 10, "max_s": 10},
        "timeout_s": 300,
        "idle_timeout_s": 240,
    }
    two = {
        **base,
        "name": "gpu-smoke-two",
        "devices": ["cuda:0", "cuda:0,1"],
        "models": ["resnet18"],
        "precisions": ["fp32"],
        "batch_sizes": [128, 256],  # 128 a device on both: the efficiency's baseline
        "excludes": [{"device": "cuda:0", "batch_size": 256}, {"device": "cuda:0,1", "batch_size": 128}],
        "dataset": {"name": "synthetic", "train_samples": 8192, "val_samples": 512},
        "calibrate": False,
    }
    return {
        **({"two": two} if gpus >= 2 else {}),
        "normal": {
            **base,
            "name": "gpu-smoke",
            "models": ["resnet18", "bert"],
            "precisions": ["fp32", "bf16", "fp16"],
            "batch_sizes": [128],
            "excludes": [{"model": "bert", "precision": ["fp32", "bf16"]}],
            "dataset": {"name": "synthetic", "train_samples": 4096, "val_samples": 512},
            "calibrate": True,
        },
        # each framework's deterministic kernels against its defaults (the cost is an effect in RESULTS.md)
        "deterministic": {
            **base,
            "name": "gpu-smoke-deterministic",
            "models": ["resnet18"],
            "precisions": ["fp32"],
            "batch_sizes": [128],
            "deterministic": [False, True],
            "dataset": {"name": "synthetic", "train_samples": 2048, "val_samples": 256},
            "calibrate": False,
        },
        # batches from files through each framework's own loader, with page-locked buffers on the GPU,
        # placed two steps ahead (device prefetch: a side stream's copies), against the same cells fed
        # from memory: the same bytes, AU and the data tax
        "datapath": {
            **base,
            "name": "gpu-smoke-datapath",
            "models": ["resnet18"],
            "precisions": ["fp32"],
            "batch_sizes": [128],
            "dataset": {
                "name": "synthetic",
                "train_samples": 4096,
                "val_samples": 256,
                "format": ["memory", "raw"],
                "shards": 8,
            },
            "loader": {"workers": [2], "pin_memory": True, "device_prefetch": 2},
            "calibrate": False,
        },
        "oversized": {
            **base,
            "name": "gpu-smoke-oom",
            "models": ["bert"],
            "precisions": ["fp16"],
            "batch_sizes": [OVERSIZED_BATCH],
            "dataset": {"name": "synthetic", "train_samples": OVERSIZED_BATCH, "val_samples": 256},
            "calibrate": False,
        },
    }


def run(suite: dict[str, Any], folder: Path) -> list[dict[str, Any]]:
    path = folder / f"{suite['name']}.yaml"
    path.write_text(yaml.safe_dump(suite))
    subprocess.run(
        [sys.executable, "-m", "mlbench", "run", str(path), "--runs-dir", str(folder / "runs")],
        cwd=ROOT,
        check=False,
    )
    import pyarrow.parquet as pq

    results = folder / "runs" / suite["name"] / "results.parquet"
    return pq.read_table(results).to_pylist() if results.is_file() else []


# what each framework reports switched on in a deterministic cell (the row's `determinism`)
SWITCHED_ON = {
    "pytorch": "are_deterministic_algorithms_enabled()=True",
    "tensorflow": "op determinism=True",
    "jax": "--xla_gpu_deterministic_ops=true",
}


def problems(
    normal: list[dict[str, Any]],
    oversized: list[dict[str, Any]],
    two: list[dict[str, Any]] | None = None,
    deterministic: list[dict[str, Any]] | None = None,
    datapath: list[dict[str, Any]] | None = None,
) -> list[str]:
    """What is wrong with the smoke run's rows (empty: the GPU path holds)."""
    out = []
    for r in deterministic or []:
        cell = f"{r['framework']} resnet18 {'deterministic' if r.get('deterministic') else 'defaults'}"
        if r["status"] != "ok":
            out.append(f"{cell}: {r['status']} ({r['reason']})")
        elif r.get("deterministic") and SWITCHED_ON.get(r["framework"], "") not in str(r.get("determinism")):
            out.append(f"{cell}: the framework reports {r.get('determinism')!r}")
    for r in normal:
        cell = f"{r['framework']} {r['model_name']} {r['precision']}"
        if r["status"] != "ok":
            out.append(f"{cell}: {r['status']} ({r['reason']})")
            continue
        if not (r.get("mfu") is not None and 0 < r["mfu"] < 1):
            out.append(f"{cell}: MFU {r.get('mfu')} (peak {r.get('peak_tflops')} TFLOP/s)")
        for column in ("gpu_utilization_pct", "peak_memory_mb", "gpu_memory_used_peak_mb", "gpu_energy_j"):
            if r.get(column) is None:
                out.append(f"{cell}: {column} missing")
        if r.get("gpu_energy_j") and r.get("gpu_power_avg_w") and r.get("duration_s"):
            expected = r["gpu_power_avg_w"] * r["duration_s"]
            if abs(r["gpu_energy_j"] - expected) > ENERGY_TOLERANCE * expected:
                out.append(f"{cell}: energy {r['gpu_energy_j']:.0f} J, power x time {expected:.0f} J")
        seen = [d for d in json.loads(r.get("devices_seen") or "[]") if "cpu" not in str(d).lower()]
        if len(seen) != 1:
            out.append(f"{cell}: the worker saw {len(seen)} GPUs ({seen}), not the one it was given")
    for r in two or []:
        cell = f"{r['framework']} resnet18 {r['device']} bs={r['batch_size']}"
        if r["status"] != "ok":
            out.append(f"{cell}: {r['status']} ({r['reason']})")
            continue
        seen = [d for d in json.loads(r.get("devices_seen") or "[]") if "cpu" not in str(d).lower()]
        if len(seen) != r["num_devices"]:
            out.append(f"{cell}: the worker saw {len(seen)} GPUs ({seen}), not {r['num_devices']}")
        if r["num_devices"] == 2 and not r.get("collective"):
            out.append(f"{cell}: no collective recorded")
        if r["num_devices"] == 2 and not (r.get("scaling_efficiency") and 0 < r["scaling_efficiency"] <= 1.1):
            out.append(f"{cell}: scaling efficiency {r.get('scaling_efficiency')}")
    for r in datapath or []:
        cell = f"{r['framework']} resnet18 {r.get('data_format')}"
        if r["status"] != "ok":
            out.append(f"{cell}: {r['status']} ({r['reason']})")
        elif r.get("digests_agree") is not True:
            out.append(f"{cell}: its batches differ from the others' ({r.get('digest_mismatch')})")
        elif r.get("data_format") != "memory" and (
            r.get("accelerator_utilisation") is None
            or r.get("data_tax") is None
            or r.get("loader_device_prefetch") != 2
        ):
            out.append(
                f"{cell}: AU {r.get('accelerator_utilisation')}, data tax {r.get('data_tax')}, "
                f"device prefetch {r.get('loader_device_prefetch')}"
            )
    for r in oversized:
        if r["status"] != "oom":
            out.append(f"{r['framework']} bert fp16 bs={OVERSIZED_BATCH}: {r['status']}, not oom ({r['reason']})")
    return out


def main() -> int:
    header = gpu_header()
    if header is None:
        from mlbench.process.monitor import NVML

        say(f"gpu-smoke: skipped: no NVIDIA GPU here (NVML: {NVML.error})")
        return 0
    say(header)
    frameworks = installed()
    if not frameworks:
        say("gpu-smoke: no framework with a working CUDA build is installed")
        return 1
    with tempfile.TemporaryDirectory(prefix="mlbench-gpu-smoke-") as tmp:
        gpus = gpu_count()
        runs = {name: run(suite, Path(tmp)) for name, suite in suites(frameworks, gpus).items()}
    if gpus < 2:
        say(f"gpu-smoke: {gpus} GPU here: the two-GPU data-parallel cells are not run")
    for r in (
        runs.get("two", []) + runs["normal"] + runs.get("deterministic", []) + runs["datapath"] + runs["oversized"]
    ):
        say(
            f"  {r['framework']:<10} {r['model_name']:<8} {r['device']:<8} {r['precision']:<4} bs={r['batch_size']:<6} "
            f"{r['status']:<7} {(r.get('samples_per_second') or 0):>9.0f} samples/s  MFU {r.get('mfu')}  "
            f"util {r.get('gpu_utilization_pct')}  efficiency {r.get('scaling_efficiency')}"
        )
        if r["status"] == "ok":
            say(
                f"  {'':<10} memory {r.get('memory_source')}: peak {r.get('peak_memory_mb')} MiB, allocator peak "
                f"{r.get('device_peak_allocated_mb')} MiB, outside the allocator {r.get('gpu_memory_outside_allocator_mb')} MiB"
            )
    found = problems(
        runs["normal"], runs["oversized"], runs.get("two"), runs.get("deterministic"), runs.get("datapath")
    )
    if len(runs.get("datapath", [])) != 2 * len(frameworks):  # memory and raw, per framework
        found.insert(0, f"{len(runs.get('datapath', []))} data-path cells stored, {2 * len(frameworks)} expected")
    expected = len(frameworks) * 4
    if len(runs["normal"]) != expected:
        found.insert(0, f"{len(runs['normal'])} normal cells stored, {expected} expected")
    if len(runs.get("deterministic", [])) != 2 * len(frameworks):  # with and without, per framework
        found.insert(
            0, f"{len(runs.get('deterministic', []))} deterministic cells stored, {2 * len(frameworks)} expected"
        )
    for p in found:
        say(f"FAILED: {p}")
    say(f"gpu-smoke: {'ok' if not found else f'{len(found)} problem(s)'}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
