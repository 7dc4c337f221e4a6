"""Peak FLOP/s per device and precision, measured by a calibration cell in every framework: chains
of dependent matmuls on random normal data, sustained for at least a second (a short burst on
low-entropy data, such as matrices of ones, runs at boost clocks no training step keeps), the median
run counts, and the highest framework sets the peak that MFU is measured against. An MFU above 1
means the peak was measured too low: it is refused (stored as missing), and the report says so.

MFU here is achieved training FLOP/s (throughput x the spec's FLOPs per sample) over that measured
peak: a figure of this machine, not of a datasheet. The calibration cells run through the run's
executor with the suite's threads, like every cell, once on each host that runs cells (each Ray node
too): a row's MFU is over the peak of the host that ran it, and missing where that host has none.
A data-parallel cell's peak is its GPU count times one GPU's; CPU replicas share one CPU's peak.
"""

from __future__ import annotations

import contextlib
import json
import socket
from pathlib import Path
from typing import Any

from mlbench.cells import Cell, Unit
from mlbench.config import Suite
from mlbench.executors import Executor, Finished
from mlbench.process.runner import Outcome
from mlbench.results import store
from mlbench.runfolder import RunFolder
from workers.common.cellspec import CellSpec
from workers.common.devices import Device

SIZE = {"cpu": 1024, "cuda": 8192}  # matmul size n: 2 GFLOP on a CPU, 1.1 TFLOP on a GPU
BUDGET_S = 3.0
MFU_CEILING = 1.0
HISTORY = "calibration-history.jsonl"  # beside the run folders: every peak measured under this runs root


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


def run(suite: Suite, cells: list[Cell], run_dir: Path, executor: Executor) -> list[dict[str, Any]]:
    """Calibrate every (framework, device, precision) of `cells` not calibrated in this run yet, through
    the run's executor like every cell (the suite's threads and limits), once on each host it runs cells on."""
    entries = load(run_dir)
    done = {(e.get("hostname"), e["framework"], e["device"], e["precision"]) for e in entries}
    # a data-parallel device is calibrated on one of its devices (see `peak_of`)
    wanted = dict.fromkeys((c.framework, str(Device.parse(c.device).single()), c.precision) for c in cells)
    hosts = executor.hosts()
    todo = [Unit(calibration_cell(suite, *key)) for key in wanted if any((h, *key) not in done for h in hosts)]
    if not todo:
        return entries
    with contextlib.closing(executor.on_each_host(todo)) as reports:
        for report in reports:
            if not isinstance(report, Finished):
                continue
            out, cell = report.outcome, report.unit.cell
            host = (out.host or {}).get("hostname") or socket.gethostname()
            if (host, cell.framework, cell.device, cell.precision) in done:
                continue  # calibrated there earlier in this run (a resumed run keeps its peaks)
            entries.append(remember(entry(cell, out, host), run_dir))
    store.atomic_write(
        RunFolder(run_dir).calibration, lambda p: p.write_text(json.dumps(entries, indent=1), encoding="utf-8")
    )
    return entries


def entry(cell: Cell, out: Outcome, host: str) -> dict[str, Any]:
    """calibration.json's record of one calibration cell's run on one host."""
    event = next((e for e in out.events if e["event"] == "calibration"), {})
    return {
        "cell_id": cell.cell_id,  # its worker's log: logs/<cell_id>.ndjson
        "framework": cell.framework,
        "device": cell.device,
        "precision": cell.precision,
        "hostname": host,
        "executor": out.executor,
        "threads": cell.spec.threads,
        "status": out.status,
        "reason": out.reason,
        "n": event.get("n"),
        "reps": event.get("reps"),
        "runs": event.get("runs"),
        "sustained_s": event.get("sustained_s"),
        "peak_tflops": event.get("peak_tflops"),  # the median run
        "best_tflops": event.get("best_tflops"),
        "worst_tflops": event.get("worst_tflops"),
        "cpu_other_pct": (out.monitor or {}).get("cpu_other_pct"),  # a peak measured under load is low
    }


def remember(e: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """The entry with the peak the same calibration measured last on this host (in any run folder under
    the same runs root), and that history extended by it: a peak that moved says MFU is not comparable
    across those runs."""
    history = run_dir.parent / HISTORY
    same = ("hostname", "framework", "device", "precision", "threads")
    earlier = None
    if history.is_file():
        for line in history.read_text(encoding="utf-8").splitlines():
            try:
                h = json.loads(line)
            except ValueError:
                continue  # a line torn by a kill
            if all(h.get(k) == e.get(k) for k in same) and h.get("peak_tflops"):
                earlier = h
    e = {
        **e,
        "earlier_peak_tflops": earlier["peak_tflops"] if earlier else None,
        "earlier_run": (earlier or {}).get("run"),
    }
    if e.get("peak_tflops"):
        with open(history, "a", encoding="utf-8") as f:
            f.write(json.dumps({**{k: e.get(k) for k in (*same, "peak_tflops")}, "run": run_dir.name}) + "\n")
    return e


def peak_entries(entries: list[dict[str, Any]]) -> dict[tuple[str | None, str, str], dict[str, Any]]:
    """(hostname, device, precision) -> the entry of the highest calibrated TFLOP/s of any framework
    (hostname None: an entry from before calibration recorded its host)."""
    out: dict[tuple[str | None, str, str], dict[str, Any]] = {}
    for e in entries:
        if e.get("peak_tflops"):
            key = (e.get("hostname"), e["device"], e["precision"])
            if key not in out or e["peak_tflops"] > out[key]["peak_tflops"]:
                out[key] = e
    return out


def peaks(entries: list[dict[str, Any]]) -> dict[tuple[str | None, str, str], float]:
    """(hostname, device, precision) -> the highest calibrated TFLOP/s of any framework."""
    return {k: e["peak_tflops"] for k, e in peak_entries(entries).items()}


def peak_of(top: dict[tuple[str | None, str, str], float], r: dict[str, Any]) -> float | None:
    """A row's peak: its device's; for data parallel over GPUs, the GPU count times the first GPU's
    (the same model of GPU assumed: the report warns on mixed hardware); CPU replicas share the CPU's cores
    and so its one peak."""
    device = Device.parse(r["device"])
    single = str(device.single())
    peak = top.get((r["hostname"], single, r["precision"])) or top.get((None, single, r["precision"]))
    return peak * device.count if peak and device.kind == "cuda" else peak


def annotate(rows: list[dict[str, Any]], entries: list[dict[str, Any]]) -> None:
    """Fill peak_tflops and mfu with its spread over the calibration's runs, and what the calibration says
    of its own trust (other load during it, the peak it measured last time), in place (null where no
    calibration of the cell's host succeeded)."""
    top = peak_entries(entries)
    scale = {
        k: {"peak": e["peak_tflops"], "best": e.get("best_tflops"), "worst": e.get("worst_tflops")}
        for k, e in top.items()
    }
    for r in rows:
        found = {
            name: peak_of({k: v[name] for k, v in scale.items() if v[name]}, r) for name in ("peak", "best", "worst")
        }
        entry = next((e for k, e in top.items() if peak_of({k: e["peak_tflops"]}, r)), {})
        r["peak_tflops"] = peak = found["peak"]
        achieved = r.get("achieved_tflops")
        mfu = (achieved / peak) if (peak and achieved is not None) else None
        r["mfu"] = mfu if mfu is None or mfu <= MFU_CEILING else None  # above 1: a peak measured too low
        r["mfu_low"] = achieved / found["best"] if r["mfu"] is not None and found["best"] else None
        r["mfu_high"] = achieved / found["worst"] if r["mfu"] is not None and found["worst"] else None
        r["calibration_other_pct"] = entry.get("cpu_other_pct") if peak else None
        r["peak_tflops_earlier"] = entry.get("earlier_peak_tflops") if peak else None
