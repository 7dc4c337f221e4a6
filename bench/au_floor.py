"""How far does a rerun move AU? `python -m bench.au_floor` (part of `make bench`).

AU (DLIO's accelerator utilisation) passes or fails `loader.au_threshold` from one run only beyond what
a rerun of the same cell moves it (mlbench/analysis/evidence.py, AU_SINGLE_RUN_FLOOR). This measures
that: file-fed cells whose AU comes from their waits (PyTorch and TensorFlow on a CPU: an MLP over npz
and TFRecord shards with 0 and 2 loader workers; DLIO's ResNet-50 workload scaled down, emulated
compute, with mlbench's 3,073-byte records and with the workload's 114,660-byte ones, 0 and 1 workers),
each run as `repeats` independent processes, interleaved across the grid. Per cell: the runs' AU and
their spread (largest minus smallest); runs that other processes loaded are left out, as the verdicts
leave them out. The floor is the largest spread. Writes bench/results/au-floor-<date>-<label>.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

from bench import ROOT, run_suite

TINY_INFERENCE = {"warmup": 1, "runs": 5, "min_runs": 2, "max_s": 1}


def suites(repeats: int) -> list[dict]:
    common = {"devices": ["cpu"], "repeats": repeats, "max_repeats": repeats, "calibrate": False, "profile_steps": 0}
    mlp = {
        "name": "au-mlp",
        "frameworks": ["pytorch", "tensorflow"],
        "models": ["mlp"],
        "batch_sizes": [64],
        "epochs": 2,
        "dataset": {
            "name": "synthetic",
            "train_samples": 4096,
            "val_samples": 256,
            "format": ["npz", "tfrecord"],
            "shards": 8,
            "order": "two_level",
        },
        "loader": {"workers": [0, 2]},
        "inference": TINY_INFERENCE,
        **common,
    }
    # DLIO's configs/workload/resnet50_h100.yaml scaled down (8 files of 128 records, batch 32, 20 ms of
    # emulated compute a step), as `mlbench import-dlio` maps it
    dlio = {
        "frameworks": ["pytorch"],
        "models": ["resnet34"],
        "batch_sizes": [32],
        "epochs": 2,
        "dataset": {
            "name": "synthetic",
            "train_samples": 1024,
            "val_samples": 256,
            "format": ["tfrecord"],
            "shards": 8,
            "order": "two_level",
        },
        "loader": {"workers": [0, 1], "emulate_compute_s": [0.02]},
        "inference": {"warmup": 0, "runs": 1, "min_runs": 1, "max_s": 1},
        **common,
    }
    sized = {**dlio, "name": "au-dlio-114660", "dataset": {**dlio["dataset"], "record_bytes": 114660}}
    return [mlp, {**dlio, "name": "au-dlio-3073"}, sized]


def measure(folder: Path, suite: dict) -> list[dict]:
    run = run_suite(folder, suite)
    from mlbench.analysis import evidence

    runs: dict[str, list[dict]] = {}
    for r in pq.read_table(run / "repeats.parquet").to_pylist():
        if r["status"] == "ok" and r["accelerator_utilisation"] is not None:
            runs.setdefault(r["cell_id"], []).append(r)
    out = []
    for rs in runs.values():
        quiet = [r for r in rs if not evidence.loaded(r)]
        au = [r["accelerator_utilisation"] for r in quiet]
        first = rs[0]
        out.append(
            {
                "suite": suite["name"],
                "cell": f"{first['framework']} {first['model_name']} {first['data_format']} "
                f"w{first['loader_workers']}" + (" emulated" if first["emulated_compute_s"] is not None else ""),
                "au": [round(a, 4) for a in au],
                "left_out_loaded": len(rs) - len(quiet),
                "spread": round(max(au) - min(au), 4) if len(au) > 1 else None,
            }
        )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5, help="processes a cell")
    ap.add_argument("--label", default="cpu")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="folder for the results file")
    a = ap.parse_args(argv)
    cells = []
    with tempfile.TemporaryDirectory(prefix="mlbench-au-") as tmp:
        for suite in suites(a.repeats):
            for c in measure(Path(tmp), suite):
                cells.append(c)
                print(json.dumps(c), flush=True)
    spreads = [c["spread"] for c in cells if c["spread"] is not None]
    found = {
        "command": " ".join([sys.executable, "-m", "bench.au_floor", *(argv if argv is not None else sys.argv[1:])]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cells": cells,
        "largest_spread": max(spreads) if spreads else None,
    }
    print(f"the largest rerun spread of AU: {found['largest_spread']}")
    out = a.out / f"au-floor-{time.strftime('%Y-%m-%d')}-{a.label}.json"
    out.write_text(json.dumps(found, indent=1))
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
