"""Fidelity benchmark: mlbench's throughput against an expert's hand-written loop, and the cost of
the orchestrator itself.

For each framework and model, the same cell runs through `python -m mlbench run` and through
`bench.handwritten`, alternating which goes first, for several rounds on this machine. It prints
the ratio of the medians (mlbench samples/s over hand-written samples/s; 1.0 means mlbench's
measurement costs nothing), the orchestrator's overhead per cell (the cell's wall time through
the orchestrator minus the worker's own) and the orchestrator's peak memory.

    python -m bench.fidelity [--rounds 3] [--frameworks pytorch,jax] [--models mlp]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import yaml

ROOT = Path(__file__).resolve().parent.parent
CASES = {"mlp": (256, 300), "resnet18": (64, 15), "bert": (32, 15)}  # model: (batch size, timed steps)
# the MLP step is ~8 ms on 2 cores: 60 steps (0.5 s) left the ratio at the mercy of noise (±20% seen);
# its runs are seconds long, so it gets more rounds than the others
EXTRA_ROUNDS = {"mlp": 2}  # rounds x this
WARMUP = 3
TARGET = 0.97


def run_handwritten(framework: str, model: str) -> float:
    bs, steps = CASES[model]
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.handwritten",
            "--framework",
            framework,
            "--model",
            model,
            "--batch-size",
            str(bs),
            "--warmup",
            str(WARMUP),
            "--steps",
            str(steps),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])["samples_per_second"]


def run_mlbench(framework: str, model: str, runs_dir: Path) -> dict[str, float]:
    bs, steps = CASES[model]
    name = f"fidelity-{framework}-{model}"
    suite = {
        "name": name,
        "frameworks": [framework],
        "models": [model],
        "batch_sizes": [bs],
        "epochs": 1,
        "dataset": {"name": "synthetic", "train_samples": bs * (WARMUP + steps), "val_samples": bs},
        "warmup_steps": WARMUP,
        "inference": {"warmup": 1, "runs": 3, "min_runs": 1, "max_s": 1},
        "calibrate": False,
    }
    path = runs_dir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(suite))
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "mlbench", "run", str(path), "--runs-dir", str(runs_dir)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    wall = time.perf_counter() - t0
    sps = pq.read_table(runs_dir / name / "results.parquet", columns=["samples_per_second"]).column(0)[0].as_py()
    journal = [json.loads(line) for line in (runs_dir / name / "journal.ndjson").read_text().splitlines()]
    cell = [e for e in journal if e["action"] == "cell"][-1]
    end = [e for e in journal if e["action"] == "end"][-1]
    return {
        "samples_per_second": sps,
        "overhead_s": cell["orchestrator_overhead_s"],
        # the whole command less the worker: Python and imports, config, environment record, exports
        # and the report; paid once per run, however many cells it has
        "run_overhead_s": wall - cell["worker_wall_s"],
        "orchestrator_max_rss_mb": end["orchestrator_max_rss_mb"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--frameworks", default="pytorch,tensorflow,jax")
    p.add_argument("--models", default=",".join(CASES))
    p.add_argument("--runs-dir", default=str(ROOT / "runs" / "bench"))
    a = p.parse_args()
    runs_dir = Path(a.runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True)
    cases = [(fw, m) for fw in a.frameworks.split(",") for m in a.models.split(",")]
    hand: dict[tuple[str, str], list[float]] = {c: [] for c in cases}
    ours: dict[tuple[str, str], list[dict[str, float]]] = {c: [] for c in cases}
    for r in range(a.rounds * max(EXTRA_ROUNDS.values())):
        # interleaved: every case once per round, the order of the pair alternating
        for case in [c for c in cases if r < a.rounds * EXTRA_ROUNDS.get(c[1], 1)]:
            for which in ("hand", "mlbench") if r % 2 == 0 else ("mlbench", "hand"):
                if which == "hand":
                    hand[case].append(run_handwritten(*case))
                else:
                    ours[case].append(run_mlbench(*case, runs_dir))
            print(
                f"round {r + 1} {case[0]} {case[1]}: hand {hand[case][-1]:.1f}, "
                f"mlbench {ours[case][-1]['samples_per_second']:.1f} samples/s",
                file=sys.stderr,
                flush=True,
            )
    results = []
    print(
        f"\n{'framework':<11} {'model':<9} {'batch':>5} {'rounds':>6} {'hand s/s':>10} {'mlbench s/s':>12} "
        f"{'ratio':>6} {'paired ratios':>13} {'overhead s':>10} {'run s':>6} {'orch. MiB':>9}"
    )
    for (fw, model), h in hand.items():
        o = ours[(fw, model)]
        ratio = statistics.median(x["samples_per_second"] for x in o) / statistics.median(h)
        # each round's pair ran back to back: their ratio cancels the machine's slow drift, and the
        # range of those ratios is the spread the verdict has to be read against
        paired = [x["samples_per_second"] / y for x, y in zip(o, h)]
        overhead = statistics.median(x["overhead_s"] for x in o)
        run_overhead = statistics.median(x["run_overhead_s"] for x in o)
        rss = max(x["orchestrator_max_rss_mb"] for x in o)
        results.append(
            {
                "framework": fw,
                "model": model,
                "batch_size": CASES[model][0],
                "handwritten": h,
                "mlbench": [x["samples_per_second"] for x in o],
                "ratio": ratio,
                "paired_ratios": paired,
                "overhead_s": overhead,
                "run_overhead_s": run_overhead,
                "orchestrator_max_rss_mb": rss,
            }
        )
        flag = "" if ratio >= TARGET else "  < 0.97"
        print(
            f"{fw:<11} {model:<9} {CASES[model][0]:>5} {len(h):>6} {statistics.median(h):>10.1f} "
            f"{statistics.median(x['samples_per_second'] for x in o):>12.1f} {ratio:>6.3f} "
            f"{min(paired):>6.3f}-{max(paired):<6.3f} {overhead:>10.3f} {run_overhead:>6.2f} {rss:>9.0f}{flag}"
        )
    # every case's back-to-back pairs together: the geometric mean of their ratios, with a seeded
    # bootstrap interval; what the rounds can say about mlbench's cost over all cases
    logs = np.log([p for r in results for p in r["paired_ratios"]])
    rng = np.random.default_rng(0)
    boot = np.exp(rng.choice(logs, (10_000, len(logs))).mean(axis=1))
    overall = {
        "paired_ratios": len(logs),
        "geometric_mean": float(np.exp(logs.mean())),
        "ci95": [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))],
    }
    print(
        f"\nall cases: geometric mean of the {len(logs)} paired ratios {overall['geometric_mean']:.3f} "
        f"(95% CI {overall['ci95'][0]:.3f}-{overall['ci95'][1]:.3f})"
    )
    (runs_dir / "fidelity.json").write_text(json.dumps({"cases": results, "overall": overall}, indent=1))
    print(
        f"\nratio: median mlbench over median hand-written; paired ratios: lowest and highest of the rounds' "
        f"back-to-back pairs;\noverhead: median per cell (a cell's wall time through the orchestrator less the worker's); "
        f"run s: the whole command less the worker (start-up, exports, report: once per run);\ndetails in {runs_dir / 'fidelity.json'}"
    )


if __name__ == "__main__":
    main()
