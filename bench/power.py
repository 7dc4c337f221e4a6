"""How often the verdict rule calls a planted gap, and how often it calls twins: `python -m bench.power`.

Simulates cells whose runs spread normally at a given run-to-run CV, through the same code a run uses:
`repeats.next_repeat` (adaptive repeats, the comparing suites' settings) decides how many runs each cell
gets, and `evidence.tell` on the runs' means and t-intervals decides the verdict. Prints, per CV, the
mean runs a cell, the share of pairs 1.3x apart called (power) and the share of identical pairs (A/A)
called (false verdicts), and power with the repeats fixed at the minimum for contrast. Seconds on 2 cores.
"""

from __future__ import annotations

import argparse

import numpy as np

from bench.coverage import COMPARING
from mlbench.analysis import evidence
from mlbench.config import load_suite
from mlbench.results.repeats import next_repeat
from workers.common.stats import t_interval


def cell(rng: np.random.Generator, mean: float, cv: float, first: int, most: int, target: float) -> np.ndarray:
    """One cell's runs: `first` of them, then one more while next_repeat asks for it."""
    runs = [
        {"repeat": i, "status": "ok", "samples_per_second": mean * (1 + cv * rng.standard_normal())}
        for i in range(first)
    ]
    while (n := next_repeat(runs, target, most)) is not None:
        runs.append({"repeat": n, "status": "ok", "samples_per_second": mean * (1 + cv * rng.standard_normal())})
    return np.array([r["samples_per_second"] for r in runs])


def called(a: np.ndarray, b: np.ndarray) -> bool:
    better, worse = (a, b) if a.mean() >= b.mean() else (b, a)
    intervals = (t_interval(better), t_interval(worse))
    runs = (len(better), len(worse))
    return evidence.tell(better.mean(), worse.mean(), intervals, ("runs", "runs"), "throughput", runs=runs).clear


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=1500)
    ap.add_argument("--gap", type=float, default=1.3)
    ap.add_argument("--cvs", type=float, nargs="+", default=[0.05, 0.07, 0.10, 0.13])
    ap.add_argument("--seed", type=int, default=3)
    a = ap.parse_args(argv)
    s = load_suite(COMPARING)
    first, most, target = s.repeats, s.max_repeats or s.repeats, s.repeat_target
    rng = np.random.default_rng(a.seed)
    print(f"{COMPARING.name}: repeats {first}, max_repeats {most}, repeat_target {target}; {a.pairs} pairs a row")
    print("| run-to-run CV | runs a cell (mean) | 1.3x called | twins (A/A) called | 1.3x called, fixed |")
    print("| --- | --- | --- | --- | --- |")
    for cv in a.cvs:
        hits = twins = fixed = 0
        sizes = []
        for _ in range(a.pairs):
            x, y = cell(rng, 1000, cv, first, most, target), cell(rng, 1000 / a.gap, cv, first, most, target)
            sizes += [len(x), len(y)]
            hits += called(x, y)
            twins += called(cell(rng, 1000, cv, first, most, target), cell(rng, 1000, cv, first, most, target))
            fixed += called(
                cell(rng, 1000, cv, first, first, target), cell(rng, 1000 / a.gap, cv, first, first, target)
            )
        n = a.pairs
        print(f"| {cv:.0%} | {np.mean(sizes):.1f} | {hits / n:.1%} | {twins / n:.2%} | {fixed / n:.1%} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
