"""Peak FLOP/s per device and precision, measured by a calibration cell in every framework: chains
of dependent matmuls on random normal data, sustained for at least a second (a short burst on
low-entropy data, such as matrices of ones, runs at boost clocks no training step keeps), the median
run counts, and the highest framework sets the peak that MFU is measured against. An MFU above 1
means the peak was measured too low: it is refused (stored as missing), and the report says so.

MFU here is achieved training FLOP/s (throughput x the spec's FLOPs per sample) over that measured
peak: a figure of this machine, not of a datasheet. Calibration runs on the orchestrator's machine;
a cell that ran on another host (a Ray node) has no peak of its own machine, so its MFU is missing.
A data-parallel cell's peak is its GPU count times one GPU's; CPU replicas share one CPU's peak.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

from mlbench.analysis.scaling import one_device
from mlbench.cells import Cell
from mlbench.config import Suite
from mlbench.process import runner
from mlbench.results import store
from mlbench.runfolder import RunFolder
from workers.common.cellspec import CellSpec
from workers.common.devices import Device

SIZE = {"cpu": 1024, "cuda": 8192}  # matmul size n: 2 GFLOP on a CPU, 1.1 TFLOP on a GPU
BUDGET_S = 3.0
MFU_CEILING = 1.0


def calibration_cell(suite: Suite, framework: str, device: str, precision: str) -> Cell:
    n = SIZE["cuda" if device.startswith("cuda") else "cpu"]
    return Cell(
        CellSpec(
            task="calibrate",
            framework=framework,
            worker=suite.worker_module(framework),
            device=device,
            precision=precision,
            seed=suite.seed,
            threads=suite.threads,
            malloc=suite.malloc,
            compile=suite.compile,
            calibrate={"n": n, "max_s": BUDGET_S},
        )
    )


def load(run_dir: Path) -> list[dict[str, Any]]:
    path = RunFolder(run_dir).calibration
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else []


def run(suite: Suite, cells: list[Cell], run_dir: Path) -> list[dict[str, Any]]:
    """Calibrate every (framework, device, precision) of `cells` not calibrated in this run yet."""
    entries = load(run_dir)
    done = {(e["framework"], e["device"], e["precision"]) for e in entries}
    # a data-parallel device is calibrated on one of its devices (see `peak_of`)
    wanted = list(dict.fromkeys((c.framework, one_device(c.device), c.precision) for c in cells))
    for framework, device, precision in wanted:
        if (framework, device, precision) in done:
            continue
        cell = calibration_cell(suite, framework, device, precision)
        out = runner.run_cell(
            cell,
            RunFolder(run_dir).calibration_runs,
            module=suite.worker_module(framework),
            timeout_s=min(suite.timeout_s, 300),
            idle_timeout_s=min(suite.idle_timeout_s, 300),
        )
        event = next((e for e in out.events if e["event"] == "calibration"), {})
        entries.append(
            {
                "framework": framework,
                "device": device,
                "precision": precision,
                "hostname": socket.gethostname(),
                "status": out.status,
                "reason": out.reason,
                "n": event.get("n"),
                "reps": event.get("reps"),
                "runs": event.get("runs"),
                "sustained_s": event.get("sustained_s"),
                "peak_tflops": event.get("peak_tflops"),  # the median run
                "best_tflops": event.get("best_tflops"),
                "worst_tflops": event.get("worst_tflops"),
            }
        )
    store.atomic_write(
        RunFolder(run_dir).calibration, lambda p: p.write_text(json.dumps(entries, indent=1), encoding="utf-8")
    )
    return entries


def peaks(entries: list[dict[str, Any]]) -> dict[tuple[str | None, str, str], float]:
    """(hostname, device, precision) -> the highest calibrated TFLOP/s of any framework (hostname
    None: an entry from before calibration recorded its host)."""
    out: dict[tuple[str | None, str, str], float] = {}
    for e in entries:
        if e.get("peak_tflops"):
            key = (e.get("hostname"), e["device"], e["precision"])
            out[key] = max(out.get(key, 0.0), e["peak_tflops"])
    return out


def peak_of(top: dict[tuple[str | None, str, str], float], r: dict[str, Any]) -> float | None:
    """A row's peak: its device's; for data parallel over GPUs, the GPU count times the first GPU's
    (the same model of GPU assumed: the report warns on mixed hardware); CPU replicas share the CPU's cores
    and so its one peak."""
    device = Device.parse(r["device"])
    single = one_device(r["device"])
    peak = top.get((r["hostname"], single, r["precision"])) or top.get((None, single, r["precision"]))
    return peak * device.count if peak and device.kind == "cuda" else peak


def annotate(rows: list[dict[str, Any]], entries: list[dict[str, Any]]) -> None:
    """Fill peak_tflops and mfu, in place (null where no calibration of the cell's host succeeded)."""
    top = peaks(entries)
    for r in rows:
        r["peak_tflops"] = peak = peak_of(top, r)
        mfu = (r["achieved_tflops"] / peak) if (peak and r.get("achieved_tflops") is not None) else None
        r["mfu"] = mfu if mfu is None or mfu <= MFU_CEILING else None  # above 1: a peak measured too low
