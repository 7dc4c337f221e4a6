"""Do the printed intervals cover a rerun? `python -m bench.coverage` (part of `make bench`).

Runs the same few cells in several independent rounds (each a whole `mlbench run`, with the repeats a
comparing suite gives every cell), then asks, for every ordered pair of rounds (first, rerun): does the
rerun's figure fall inside the interval the first round printed? For throughput and batch-1 latency
p50, and, for contrast, for the within-run interval of each round's first process alone (what a
single run prints). A correct 95% interval of a mean covers a same-size rerun's mean about 83% of the
time; the comparing suites must reach 80%. Writes bench/results/coverage-<date>-<label>.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from bench import ROOT, run_suite
from mlbench.config import load_suite

COMPARING = ROOT / "configs" / "benchmark_config.yaml"
TARGET = 0.80
SMALL = {"resnet18": {"widths": [16, 32, 64, 128]}}  # a quarter of the channels: seconds a cell on 2 cores


def suite(repeats: int, frameworks: list[str], models: list[str], threads: int | None) -> dict:
    return {
        "name": "coverage",
        "frameworks": frameworks,
        "models": models,
        "batch_sizes": [32],
        "epochs": 1,
        "repeats": repeats,
        "model_overrides": {m: SMALL[m] for m in models if m in SMALL},
        "dataset": {"name": "synthetic", "train_samples": 32 * 40, "val_samples": 64},
        "warmup_steps": 5,
        "inference": {"warmup": 5, "runs": 60, "min_runs": 20, "max_s": 10},
        "calibrate": False,
        "profile_steps": 0,
        "threads": threads,
    }


def run_round(folder: Path, spec: dict, name: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One independent round: a whole `mlbench run` into runs/<name>; its combined rows, and its first
    process's own rows (what a single run of the cell would have printed)."""
    run = run_suite(folder, {**spec, "name": name})
    each = pd.read_parquet(run / "repeats.parquet") if (run / "repeats.parquet").is_file() else None
    combined = pd.read_parquet(run / "results.parquet")
    return combined, (each[each.repeat == 0] if each is not None else combined)


FIGURES = {  # figure -> its interval's columns
    "samples_per_second": ("samples_per_second_ci_low", "samples_per_second_ci_high"),
    "inference_b1_latency_p50_ms": ("inference_b1_latency_p50_ci_low_ms", "inference_b1_latency_p50_ci_high_ms"),
}


def coverage(rounds: list[pd.DataFrame]) -> dict:
    """For each figure: how often a rerun's figure fell inside the first round's interval, per cell and
    pooled, over every ordered pair of rounds."""
    out: dict = {}
    for figure, (lo_col, hi_col) in FIGURES.items():
        per_cell: dict[str, dict] = {}
        hits = total = 0
        for a, b in itertools.permutations(range(len(rounds)), 2):
            ra, rb = rounds[a].set_index("cell_id"), rounds[b].set_index("cell_id")
            for cell in ra.index.intersection(rb.index):
                lo, hi, again = ra.at[cell, lo_col], ra.at[cell, hi_col], rb.at[cell, figure]
                if pd.isna(lo) or pd.isna(hi) or pd.isna(again):
                    continue
                inside = bool(lo <= again <= hi)
                key = f"{ra.at[cell, 'framework']} {ra.at[cell, 'model_name']}"
                c = per_cell.setdefault(key, {"pairs": 0, "inside": 0, "interval_width": []})
                c["pairs"] += 1
                c["inside"] += inside
                c["interval_width"].append(float((hi - lo) / ra.at[cell, figure]))
                hits, total = hits + inside, total + 1
        for c in per_cell.values():
            c["coverage"] = c["inside"] / c["pairs"] if c["pairs"] else None
            c["median_relative_width"] = float(pd.Series(c.pop("interval_width")).median())
        out[figure] = {"pairs": total, "inside": hits, "coverage": hits / total if total else None, "cells": per_cell}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=4, help="independent runs of the same cells (4: 12 pairs)")
    ap.add_argument("--repeats", type=int, default=None, help="processes a cell per round [the comparing suites']")
    ap.add_argument("--frameworks", nargs="+", default=["pytorch", "jax"])
    ap.add_argument("--models", nargs="+", default=["mlp", "resnet18"])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--label", default="cpu")
    a = ap.parse_args(argv)
    comparing = load_suite(COMPARING)
    repeats = a.repeats or comparing.repeats
    spec = suite(repeats, a.frameworks, a.models, a.threads)
    if a.repeats is None and comparing.max_repeats:  # the comparing suites' adaptive repeats too
        spec.update(max_repeats=comparing.max_repeats, repeat_target=comparing.repeat_target)
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="mlbench-coverage-") as tmp:
        rounds, single = [], []
        for i in range(a.rounds):
            t0 = time.time()
            combined, first = run_round(Path(tmp), spec, f"round{i}")
            rounds.append(combined)
            single.append(first)
            print(f"round {i + 1}/{a.rounds}: {time.time() - t0:.0f} s", flush=True)
    found = {
        "command": " ".join([sys.executable, "-m", "bench.coverage", *(argv if argv is not None else sys.argv[1:])]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "suite": spec,
        "wall_s": round(time.time() - started, 1),
        "target": TARGET,
        "between_runs": coverage(rounds),
        "single_run": coverage(single),
    }
    runs = f"{repeats}-{spec['max_repeats']}" if spec.get("max_repeats") else str(repeats)  # adaptive: a range
    print_report(found, runs)
    out = ROOT / "bench" / "results" / f"coverage-{time.strftime('%Y-%m-%d')}-{a.label}-{runs}runs.json"
    out.write_text(json.dumps(found, indent=1))
    print(f"written: {out.relative_to(ROOT)}")
    return 0 if all((f["coverage"] or 0) >= TARGET for f in found["between_runs"].values()) else 1


def print_report(found: dict, repeats: int | str) -> None:
    for kind, title in (
        ("between_runs", f"between-run intervals ({repeats} processes a cell)"),
        ("single_run", "one run's within-run interval"),
    ):
        print(f"\n{title}: how often a rerun's figure fell inside the first round's interval (target {TARGET:.0%})")
        for figure, f in found[kind].items():
            cov = f["coverage"]
            print(f"  {figure}: {f['inside']}/{f['pairs']} = {cov:.0%}" if cov is not None else f"  {figure}: no pairs")
            for cell, c in f["cells"].items():
                print(
                    f"    {cell}: {c['inside']}/{c['pairs']} (interval {c['median_relative_width']:.1%} of the figure)"
                )


if __name__ == "__main__":
    raise SystemExit(main())
