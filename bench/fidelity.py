"""Fidelity benchmark: mlbench's throughput against independent references and outside tools, and
the cost of the orchestrator itself.

For each framework and model, the same cell runs through `python -m mlbench run` and through
`bench.handwritten` (an expert's loop over the framework's independent reference model,
`bench.references`), in rotating order, for several rounds on this machine; for PyTorch, the same
rounds also time the reference with PyTorch's own `torch.utils.benchmark.Timer` (a training step,
inference at batch 1 and at the cell's batch) and, for BERT, train Hugging Face's BERT of the same size
(`bench.peers`). It prints the geometric mean of the rounds' paired ratios (mlbench samples/s over the
reference's; 1.0 means the worker's model and mlbench's measurement cost nothing against an
independent implementation) with its 95% interval and a verdict against the target, the same for each
peer, the pooled ratio per framework, the orchestrator's overhead per cell (the cell's wall time
through the orchestrator minus the worker's own) and the orchestrator's peak memory. `--profile`
traces one case's worker and reference steps with the framework's profiler and lists the operations
each step's time goes to (`bench.step_profile`). With `--inprocess` it also runs
`bench.inprocess`: the harness's loop against the hand-written one in one process, in alternating
blocks, which isolates the cost of the measurement code from process-to-process noise, in several
processes, beside a control (the hand-written loop against a second instance of itself).

    python -m bench.fidelity [--rounds 3] [--frameworks pytorch,jax] [--models mlp] [--inprocess]
        [--processes 3] [--blocks 8] [--threads 1] [--no-peers] [--profile] [--mlbench-tree DIR]
    python -m bench.fidelity --report runs/bench/fidelity.json [more.json]  # earlier runs, pooled
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import scipy.stats
import yaml

from mlbench.process import runner
from mlbench.runfolder import RunFolder
from workers.common import malloc as glibc_malloc

ROOT = Path(__file__).resolve().parent.parent
CASES = {"mlp": (256, 300), "resnet18": (64, 15), "bert": (32, 15)}  # model: (batch size, timed steps)
# the MLP step is ~8 ms on 2 cores: 60 steps (0.5 s) left the ratio at the mercy of noise (±20% seen);
# its runs are seconds long, so it gets more rounds than the others. A longer window does not help:
# at 1200 steps (8 pairs each) PyTorch's and TensorFlow's pairs spread as widely as at 300 (sd of the
# log ratios 0.19 and 0.16 against 0.14 and 0.11; ...-mlp-1200-steps.json). The speed of two-thread
# work on this VM moves in phases of seconds to a minute (bench/README.md, "Read the intervals"), longer than
# either window; one thread does not feel them
EXTRA_ROUNDS = {"mlp": 2}  # rounds x this
WARMUP = 3
TARGET = 0.97
# in one process (`--inprocess`): model: (batch size, steps per timed block), blocks of a few seconds
INPROCESS = {"mlp": (256, 150), "resnet18": (64, 3), "bert": (32, 4)}
Case = tuple[str, str]
# what the hand-written side of a file's pairs ran: the independent references (`bench.references`)
# since #23; before, loops over the workers' own models and optimizer builders (a file without the key)
REFERENCE = "independent"
# the fidelity cells' inference settings: enough runs for a median to set beside the Timer peer's
INFERENCE = {"warmup": 3, "runs": 30, "min_runs": 5, "max_s": 2}


# the bench compares CPU loops: on a GPU host, TensorFlow and JAX would otherwise place the hand-written
# loops on the GPU while mlbench's CPU cells see none, and the ratio would compare devices
CPU_ONLY = {"CUDA_VISIBLE_DEVICES": "", "JAX_PLATFORMS": "cpu"}


def process_env(malloc: str) -> dict[str, str]:
    """The environment of a hand-written loop's process: glibc's malloc set as `malloc: <malloc>` sets
    it for mlbench's workers, so the ratio compares the loops alone; no GPU visible."""
    return {**os.environ, **glibc_malloc.env_for(malloc, os.environ), **CPU_ONLY}


def run_bench_module(module: str, malloc: str, **flags: Any) -> str:
    """`python -m <module> --flag value ...` in a hand-written loop's environment; its stdout."""
    argv = [sys.executable, "-m", module]
    for flag, value in flags.items():
        argv += [f"--{flag.replace('_', '-')}", str(value)]
    return subprocess.run(argv, cwd=ROOT, env=process_env(malloc), capture_output=True, text=True, check=True).stdout


def run_handwritten(framework: str, model: str, malloc: str, threads: int) -> float:
    bs, steps = CASES[model]
    out = run_bench_module(
        "bench.handwritten",
        malloc,
        framework=framework,
        model=model,
        batch_size=bs,
        warmup=WARMUP,
        steps=steps,
        threads=threads,
    )
    return json.loads(out.strip().splitlines()[-1])["samples_per_second"]


def _tree_supports(tree: Path, key: str) -> bool:
    """Whether the mlbench checkout at `tree` knows the suite key `key` (an older one refuses unknown keys)."""
    return f"    {key}:" in (tree / "mlbench" / "config.py").read_text()


def run_mlbench(
    framework: str,
    model: str,
    runs_dir: Path,
    malloc: str,
    threads: int,
    tree: Path = ROOT,
    profile: bool = False,
) -> dict[str, Any]:
    """One cell through `python -m mlbench run` of the checkout at `tree` (this one, or another for a
    before/after measurement of a worker change); with `profile`, the cell keeps a profiler trace."""
    bs, steps = CASES[model]
    name = f"fidelity-{framework}-{model}" + ("-profile" if profile else "")
    suite: dict[str, Any] = {
        "name": name,
        "frameworks": [framework],
        "models": [model],
        "batch_sizes": [bs],
        "epochs": 1,
        "dataset": {"name": "synthetic", "train_samples": bs * (WARMUP + steps), "val_samples": bs},
        "warmup_steps": WARMUP,
        "inference": INFERENCE,
        "calibrate": False,
        "malloc": malloc,
        "threads": threads,
    }
    if _tree_supports(tree, "profile_steps"):
        # the step-time breakdown's extra steps after the timed window: only where a profile is asked for
        suite["profile_steps"] = 5 if profile else 0
        suite["profile"] = profile
    elif profile:
        raise SystemExit(f"--profile: the mlbench at {tree} keeps no profiler traces")
    path = runs_dir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(suite))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tree), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    }
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "mlbench", "run", str(path), "--runs-dir", str(runs_dir)],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    wall = time.perf_counter() - t0
    folder = RunFolder(runs_dir / name)
    figures = ["step_time_median_s", "inference_latency_p50_ms", "inference_b1_latency_p50_ms"]
    if profile:
        figures += ["profile_trace", *(f"step_{p}_s" for p in ("data", "forward", "backward", "optimizer", "other"))]
        figures += ["step_profiled_s"]
    row = pq.read_table(
        folder.results, columns=["samples_per_second", "warmup_times_s", "step_times_s", *figures]
    ).to_pylist()[0]
    # mlbench's figure starts where its step samples settle (at least WARMUP steps in); the hand-written
    # loop times every step after WARMUP. Over the same steps, the two differ only by what the
    # measurement code costs; the reported figure may also leave out slow steps the loop counts.
    every = row["warmup_times_s"] + row["step_times_s"]
    journal = [json.loads(line) for line in folder.journal.read_text().splitlines()]
    cell = [e for e in journal if e["action"] == "cell"][-1]
    end = [e for e in journal if e["action"] == "end"][-1]
    return {
        "samples_per_second": row["samples_per_second"],
        "same_steps_sps": bs * len(every[WARMUP:]) / sum(every[WARMUP:]),
        "overhead_s": cell["orchestrator_overhead_s"],
        # the whole command less the worker: Python and imports, config, environment record, exports
        # and the report; paid once per run, however many cells it has
        "run_overhead_s": wall - cell["worker_wall_s"],
        "orchestrator_max_rss_mb": end["orchestrator_max_rss_mb"],
        # the orchestrator's own CPU (monitor, event reading, progress) as a share of one core while
        # the worker ran: on a small machine the worker competes with it
        "orchestrator_cpu_pct": 100 * cell["orchestrator_cpu_s"] / cell["worker_wall_s"],
        # beside the Timer peer's figures: the worker's median training step and p50 inference latencies
        "step_time_median_s": row["step_time_median_s"],
        "inference_p50_ms": row["inference_latency_p50_ms"],
        "inference_b1_p50_ms": row["inference_b1_latency_p50_ms"],
        **({k: row[k] for k in figures[3:]} | {"run_folder": str(folder.root)} if profile else {}),
    }


# --- outside tools as peers (bench/peers.py) --------------------------------------------------------


def peers_of(case: Case) -> list[str]:
    """The outside tools that can time a case: PyTorch's Timer on every PyTorch cell, and transformers'
    BERT beside PyTorch's BERT."""
    fw, model = case
    if fw != "pytorch":
        return []
    return ["timer", "hf-bert"] if model == "bert" else ["timer"]


def run_peer(peer: str, model: str, malloc: str, threads: int) -> dict[str, Any]:
    bs, steps = CASES[model]
    args = ["--model", model, "--batch-size", str(bs), "--threads", str(threads)]
    args += ["--warmup", str(WARMUP), "--steps", str(steps)]
    out = subprocess.run(
        [sys.executable, "-m", "bench.peers", peer, *args],
        cwd=ROOT,
        env=process_env(malloc),
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def peer_ratios(ours: dict[str, Any], peer: dict[str, Any]) -> dict[str, float]:
    """One round's ratios of mlbench's figures over an outside tool's, as speeds (above 1: mlbench's
    figure is the faster): the Timer's medians against the worker's median step and p50 latencies,
    transformers' BERT against the worker's throughput."""
    if peer["peer"].startswith("torch.utils.benchmark"):
        return {
            "timer train step": peer["train_step"]["median_s"] / ours["step_time_median_s"],
            "timer inference b1": 1e3 * peer["inference_b1"]["median_s"] / ours["inference_b1_p50_ms"],
            "timer inference": 1e3 * peer["inference"]["median_s"] / ours["inference_p50_ms"],
        }
    return {"transformers bert": ours["samples_per_second"] / peer["samples_per_second"]}


def geometric_mean(ratios: list[float]) -> float:
    return float(np.exp(np.mean(np.log(ratios))))


def paired_estimate(ratios: list[float]) -> dict[str, Any]:
    """Geometric mean of paired ratios with a Student-t 95% interval on their logarithms, and what
    it says about the target: at least, below, or not resolved by this many pairs."""
    logs = np.log(ratios)
    n = len(logs)
    mean = float(logs.mean())
    if n < 2:
        lo = hi = None
        verdict = "one pair: no interval"
    else:
        half = float(scipy.stats.t.ppf(0.975, n - 1) * logs.std(ddof=1) / np.sqrt(n))
        lo, hi = float(np.exp(mean - half)), float(np.exp(mean + half))
        verdict = f"at least {TARGET}" if lo >= TARGET else f"below {TARGET}" if hi < TARGET else "not resolved"
    return {"pairs": n, "geometric_mean": float(np.exp(mean)), "ci95": [lo, hi], "verdict": verdict}


def summarize(
    hand: dict[Case, list[float]],
    ours: dict[Case, list[dict[str, float]]],
    peers: dict[Case, dict[str, list[float]]] | None = None,
) -> list[dict[str, Any]]:
    """Per case: the paired ratios of mlbench over the reference with their estimate, the same over the
    same steps, and each peer's paired ratios (`peers`: case -> peer figure -> one ratio a round)."""
    results = []
    for (fw, model), h in hand.items():
        o = ours[(fw, model)]
        case_peers = (peers or {}).get((fw, model), {})
        cpu = [x["orchestrator_cpu_pct"] for x in o if x.get("orchestrator_cpu_pct") is not None]
        # each round's pair ran back to back: their ratio cancels the machine's slow drift, so the
        # paired ratios are what the verdict rests on; the ratio of medians is kept beside it
        paired = [x["samples_per_second"] / y for x, y in zip(o, h)]
        same = [x.get("same_steps_sps") for x in o]  # None in a file from before it was kept
        same_paired = [s / y for s, y in zip(same, h)] if None not in same else None
        results.append(
            {
                "framework": fw,
                "model": model,
                "batch_size": CASES[model][0],
                "handwritten": h,
                "mlbench": [x["samples_per_second"] for x in o],
                "ratio_of_medians": statistics.median(x["samples_per_second"] for x in o) / statistics.median(h),
                "paired_ratios": paired,
                **paired_estimate(paired),
                "same_steps": None
                if same_paired is None
                else {"mlbench": same, "paired_ratios": same_paired, **paired_estimate(same_paired)},
                "overhead_s": statistics.median(x["overhead_s"] for x in o),
                "run_overhead_s": statistics.median(x["run_overhead_s"] for x in o),
                "orchestrator_max_rss_mb": max(x["orchestrator_max_rss_mb"] for x in o),
                # None for runs made before it was measured
                "orchestrator_cpu_pct": statistics.median(cpu) if cpu else None,
                "peers": {name: {"paired_ratios": r, **paired_estimate(r)} for name, r in case_peers.items() if r},
            }
        )
    return results


def pooled(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Every case's back-to-back pairs together: the geometric mean of their ratios, with a seeded
    bootstrap interval; what the rounds can say about mlbench's cost over all cases (reported figures,
    and over the same steps where the runs kept them)."""

    def boot(ratios: list[float]) -> dict[str, Any]:
        logs = np.log(ratios)
        rng = np.random.default_rng(0)
        means = np.exp(rng.choice(logs, (10_000, len(logs))).mean(axis=1))
        return {
            "paired_ratios": len(logs),
            "geometric_mean": float(np.exp(logs.mean())),
            "ci95": [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))],
        }

    same = [r["same_steps"] for r in results]
    return {
        **boot([p for r in results for p in r["paired_ratios"]]),
        "same_steps": None if None in same else boot([p for s in same for p in s["paired_ratios"]]),
    }


def by_framework(results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each framework's pairs pooled over its models (the issue's criterion: at least TARGET per
    framework), with the bootstrap interval of `pooled` and a verdict."""
    out = {}
    for fw in dict.fromkeys(r["framework"] for r in results):
        p = pooled([r for r in results if r["framework"] == fw])
        lo, hi = p["ci95"]
        p["verdict"] = f"at least {TARGET}" if lo >= TARGET else f"below {TARGET}" if hi < TARGET else "not resolved"
        out[fw] = p
    return out


def process_estimate(per_process: list[list[float]]) -> dict[str, Any]:
    """The estimate from blocks of several processes: each process's geometric mean is one sample.

    Blocks of one process share its memory placement, which moves a loop's speed by a few percent
    for the life of the process (see `bench.inprocess`), so their spread understates the
    uncertainty; the interval is taken across processes. With one process, from its blocks."""
    if len(per_process) < 2:
        return {**paired_estimate([r for blocks in per_process for r in blocks]), "unit": "blocks"}
    means = [geometric_mean(blocks) for blocks in per_process]
    return {**paired_estimate(means), "unit": "processes"}


def block_ratio(block: dict[str, float]) -> float:
    """A block's harness ratio: samples/s over the geometric mean of both hand-written instances'
    where the block has the second (the control's), else over the one hand-written loop."""
    if "twin_s" in block:  # files written before this definition kept hand/harness as "ratio"
        return math.sqrt(block["hand_s"] * block["twin_s"]) / block["harness_s"]
    return block["ratio"]


def inprocess_estimates(res: dict[str, Any]) -> dict[str, Any]:
    """The harness's ratio and the control's (hand-written against a second instance of itself), each
    with its interval (no control in a file from before it)."""
    groups = res["processes"]
    out = {**process_estimate([[block_ratio(b) for b in g] for g in groups]), "blocks_per_process": len(groups[0])}
    if all("control" in b for g in groups for b in g):
        control = process_estimate([[b["control"] for b in g] for g in groups])
        out["control"] = {k: control[k] for k in ("geometric_mean", "ci95")}
    else:
        out["control"] = None
    return out


def run_inprocess(cases: list[Case], blocks: int, processes: int, malloc: str, threads: int) -> list[dict[str, Any]]:
    """`bench.inprocess` for each case in `processes` fresh processes, the cases in turn each time so
    the machine's drift spreads over them: the harness against the hand-written loop, and the
    hand-written loop against a second instance of itself (the control)."""
    groups: dict[Case, list[list[dict[str, float]]]] = {c: [] for c in cases}
    for p in range(processes):
        for fw, model in cases:
            bs, steps = INPROCESS[model]
            stdout = run_bench_module(
                "bench.inprocess",
                malloc,
                framework=fw,
                model=model,
                batch_size=bs,
                steps=steps,
                threads=threads,
                blocks=blocks,
            )
            timed = json.loads(stdout.strip().splitlines()[-1])["blocks"]
            groups[(fw, model)].append(timed)
            print(
                f"in one process ({p + 1}/{processes}) {fw} {model}: "
                f"{geometric_mean([block_ratio(b) for b in timed]):.3f}, "
                f"control {geometric_mean([b['control'] for b in timed]):.3f}",
                file=sys.stderr,
                flush=True,
            )
    results = []
    for (fw, model), g in groups.items():
        res = {
            "framework": fw,
            "model": model,
            "batch_size": INPROCESS[model][0],
            "steps_per_block": INPROCESS[model][1],
        }
        results.append({**res, "processes": g, **inprocess_estimates({"processes": g})})
    return results


# --- one step profiled, worker and reference (bench/step_profile.py) ----------------------------------


def run_profile(case: Case, runs_dir: Path, malloc: str, threads: int, tree: Path = ROOT) -> dict[str, Any]:
    """A case's worker step (mlbench's own `profile: true`: the cell's step-time breakdown and a trace of
    three real steps) and its reference step (`bench.step_profile`), each trace read into its top
    operations per step."""
    from bench import step_profile

    fw, model = case
    worker = run_mlbench(fw, model, runs_dir, malloc, threads, tree, profile=True)
    trace = Path(worker["run_folder"]) / worker["profile_trace"] if worker.get("profile_trace") else None
    bs = CASES[model][0]
    out = runs_dir / "profiles" / f"{fw}-{model}-reference"
    stdout = run_bench_module(
        "bench.step_profile", malloc, framework=fw, model=model, batch_size=bs, threads=threads, out=out
    )
    parts = {p: worker.get(f"step_{p}_s") for p in ("data", "forward", "backward", "optimizer", "other")}
    return {
        "framework": fw,
        "model": model,
        "batch_size": bs,
        "worker": {
            "samples_per_second": worker["samples_per_second"],
            "step_time_median_s": worker["step_time_median_s"],
            "step_parts_s": parts,
            "step_profiled_s": worker.get("step_profiled_s"),
            **(step_profile.top_ops(trace, step_profile.TRACED) if trace else {"trace": None}),
        },
        "reference": json.loads(stdout.strip().splitlines()[-1]),
    }


def print_profiles(profiles: list[dict[str, Any]]) -> None:
    for p in profiles:
        w, r = p["worker"], p["reference"]
        parts = ", ".join(f"{k} {1e3 * v:.1f}" for k, v in w["step_parts_s"].items() if v is not None)
        print(
            f"\nProfile: {p['framework']} {p['model']} (batch {p['batch_size']}): the worker's median step "
            f"{1e3 * w['step_time_median_s']:.1f} ms, its parts (ms, profiled steps): {parts or '-'}\n"
            f"  traces: worker {w.get('trace')}, reference {r.get('trace')}\n"
            f"  {'operation (self time per step, ms)':<64} {'worker':>8} {'reference':>9}"
        )
        wt, rt = dict(w.get("top_ms_per_step", [])), dict(r.get("top_ms_per_step", []))
        for name in list(dict.fromkeys([*wt, *rt])):
            a, b = wt.get(name), rt.get(name)
            print(f"  {name[:64]:<64} {'-' if a is None else f'{a:.2f}':>8} {'-' if b is None else f'{b:.2f}':>9}")
        if w.get("total_ms_per_step") is not None:
            print(f"  {'all traced events':<64} {w['total_ms_per_step']:>8.2f} {r['total_ms_per_step']:>9.2f}")


def load_reports(paths: list[Path]) -> tuple[list[dict[str, Any]], list[dict[str, Any]], str, int | None]:
    """The results of earlier runs' files, every file's pairs pooled per case (runs made under the
    same settings only), with the in-process results of each; and the settings (malloc, threads)."""
    hand: dict[Case, list[float]] = {}
    ours: dict[Case, list[dict[str, Any]]] = {}
    peers: dict[Case, dict[str, list[float]]] = {}
    inproc, settings = [], {}
    for path in paths:
        saved = json.loads(path.read_text())
        # files from before the settings: the machine's malloc; the physical cores in mlbench's workers
        # and each framework's default in the hand-written loops
        # and what the hand-written side ran: pairs against the workers' own models do not pool with
        # pairs against the independent references
        settings[path.name] = (saved.get("malloc", "system"), saved.get("threads"), saved.get("reference", "workers"))
        for c in saved["cases"]:
            case = (c["framework"], c["model"])
            for name, peer in (c.get("peers") or {}).items():
                peers.setdefault(case, {}).setdefault(name, []).extend(peer["paired_ratios"])
            same = (c.get("same_steps") or {}).get("mlbench") or [None] * len(c["mlbench"])
            hand.setdefault(case, []).extend(c["handwritten"])
            ours.setdefault(case, []).extend(
                {
                    "samples_per_second": sps,
                    "same_steps_sps": same_sps,
                    # a file keeps the medians of these; each of its rounds stands for it
                    **{k: c[k] for k in ("overhead_s", "run_overhead_s", "orchestrator_max_rss_mb")},
                    "orchestrator_cpu_pct": c.get("orchestrator_cpu_pct"),
                }
                for sps, same_sps in zip(c["mlbench"], same)
            )
        for r in saved.get("inprocess", []):
            if "processes" not in r:  # a file from before several processes: one
                r["processes"] = [r.pop("blocks")]
            inproc.append({**r, **inprocess_estimates(r)})
    if len(set(settings.values())) > 1:
        raise SystemExit(
            f"--report: pairs pool only under the same (malloc, threads, reference); these files differ: {settings}"
        )
    malloc, threads, _ = next(iter(settings.values()))
    return summarize(hand, ours, peers) if hand else [], inproc, malloc, threads


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}%"


def _ci(r: dict[str, Any]) -> str:
    lo, hi = r["ci95"]
    return "-" if lo is None else f"{lo:.3f}-{hi:.3f}"


def print_report(
    results: list[dict[str, Any]],
    overall: dict[str, Any],
    inproc: list[dict[str, Any]],
    paths: list[Path],
    malloc: str,
    threads: int | None,
) -> None:
    threads_ = threads or "the physical cores in mlbench's workers, each framework's default by hand"
    print(f"\nglibc malloc in every process: {malloc}; intra-op threads: {threads_}")
    if results:
        print(
            f"\nWhole runs: `python -m mlbench run` against `python -m bench.handwritten` (the independent reference), "
            f"back to back\n"
            f"{'framework':<11} {'model':<9} {'batch':>5} {'pairs':>5} {'ref s/s':>10} {'mlbench s/s':>12} "
            f"{'ratio':>6} {'95% CI':>11} {'verdict':<16} {'same steps':>10} {'95% CI':>11} {'verdict':<16} "
            f"{'overhead s':>10} {'run s':>6} {'orch. MiB':>9} {'orch. CPU':>9}"
        )
        for r in results:
            same = r.get("same_steps") or {"geometric_mean": None, "ci95": [None, None], "verdict": "-"}
            gm = "-" if same["geometric_mean"] is None else f"{same['geometric_mean']:.3f}"
            print(
                f"{r['framework']:<11} {r['model']:<9} {r['batch_size']:>5} {r['pairs']:>5} "
                f"{statistics.median(r['handwritten']):>10.1f} {statistics.median(r['mlbench']):>12.1f} "
                f"{r['geometric_mean']:>6.3f} {_ci(r):>11} {r['verdict']:<16} {gm:>10} {_ci(same):>11} "
                f"{same['verdict']:<16} {r['overhead_s']:>10.3f} {r['run_overhead_s']:>6.2f} "
                f"{r['orchestrator_max_rss_mb']:>9.0f} {_pct(r['orchestrator_cpu_pct']):>9}"
            )
        same = overall.get("same_steps")
        print(
            f"\nall cases: geometric mean of the {overall['paired_ratios']} paired ratios "
            f"{overall['geometric_mean']:.3f} (bootstrap 95% CI {overall['ci95'][0]:.3f}-{overall['ci95'][1]:.3f})"
            + (
                ""
                if same is None
                else f"; over the same steps {same['geometric_mean']:.3f} ({same['ci95'][0]:.3f}-{same['ci95'][1]:.3f})"
            )
        )
        print(f"\nper framework, every model's pairs pooled (bootstrap 95% CI), against the target {TARGET}:")
        for fw, p in by_framework(results).items():
            print(
                f"  {fw:<11} {p['paired_ratios']:>3} pairs  {p['geometric_mean']:.3f} "
                f"({p['ci95'][0]:.3f}-{p['ci95'][1]:.3f})  {p['verdict']}"
            )
        peer_rows = [(r, name, e) for r in results for name, e in (r.get("peers") or {}).items()]
        if peer_rows:
            print(
                "\nOutside tools, the same rounds: mlbench's figure over the tool's, as speeds (above 1: mlbench faster)\n"
                f"{'framework':<11} {'model':<9} {'batch':>5} {'peer':<20} {'pairs':>5} {'ratio':>6} {'95% CI':>11} "
                f"{'verdict':<16}"
            )
            for r, name, e in peer_rows:
                print(
                    f"{r['framework']:<11} {r['model']:<9} {r['batch_size']:>5} {name:<20} {e['pairs']:>5} "
                    f"{e['geometric_mean']:>6.3f} {_ci(e):>11} {e['verdict']:<16}"
                )
    if inproc:
        print(
            f"\nIn one process: the harness's training loop against the hand-written one, blocks in rotation\n"
            f"{'framework':<11} {'model':<9} {'batch':>5} {'procs':>5} {'blocks':>6} {'steps':>5} {'ratio':>6} "
            f"{'95% CI':>11} {'verdict':<16} {'control':>7} {'95% CI':>11}"
        )
        for r in inproc:
            c = r["control"]
            print(
                f"{r['framework']:<11} {r['model']:<9} {r['batch_size']:>5} {len(r['processes']):>5} "
                f"{r['blocks_per_process']:>6} {r['steps_per_block']:>5} {r['geometric_mean']:>6.3f} {_ci(r):>11} "
                f"{r['verdict']:<16} {'-' if c is None else format(c['geometric_mean'], '.3f'):>7} "
                f"{'-' if c is None else _ci(c):>11}"
            )
    print(
        "\nratio: geometric mean of the paired ratios (mlbench samples/s over the independent reference's hand-written "
        "loop, each pair run back to back), with its Student-t 95% interval;\npeers: timer = "
        "torch.utils.benchmark.Timer.blocked_autorange on the PyTorch reference (a training step against mlbench's "
        "median step; inference against its p50 latencies),\ntransformers bert = Hugging Face's BertForSequenceClassification "
        "of the spec's size trained as the hand-written loop (against mlbench's samples/s);\nsame steps: mlbench's throughput over the steps the "
        f"hand-written loop times (all after the first {WARMUP}), where the reported figure starts where the "
        f"step times settle;\nverdict: against the target {TARGET}, `not resolved` where the interval spans it "
        "(more rounds narrow it);\nin one process: against the geometric mean of the two hand-written "
        "instances, the interval across processes (each process's blocks share its memory placement);\n"
        "control: the hand-written loop against a second instance of itself, the same code (an A/A test): "
        "how far apart two runs of no change fall;\noverhead: median per cell (a cell's wall "
        "time through the orchestrator less the worker's); run s: the whole command less the worker\n(start-up, "
        "exports, report: once per run); orch. CPU: the orchestrator's own CPU time over the cell as a share of "
        f"one core while the worker ran\n(median); details in {', '.join(map(str, paths))}"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rounds", type=int, default=3, help="whole-run pairs per case (the MLP gets twice as many)")
    p.add_argument("--frameworks", default="pytorch,tensorflow,jax")
    p.add_argument("--models", default=",".join(CASES))
    p.add_argument("--runs-dir", default=str(ROOT / "runs" / "bench"))
    p.add_argument("--inprocess", action="store_true", help="also compare the harness and the hand loop in one process")
    p.add_argument("--blocks", type=int, default=8, help="timed blocks per loop in each process")
    p.add_argument("--processes", type=int, default=3, help="fresh processes per case in one-process mode")
    p.add_argument(
        "--malloc",
        choices=list(glibc_malloc.TUNABLES),
        default=glibc_malloc.DEFAULT,
        help="glibc's malloc settings in every process, mlbench's workers and the hand-written loops alike",
    )
    p.add_argument(
        "--threads",
        type=int,
        help="intra-op threads in every process, as a suite's `threads` (default: the physical cores, as mlbench's)",
    )
    p.add_argument(
        "--report",
        nargs="+",
        metavar="FIDELITY_JSON",
        help="print the report of earlier runs and stop; several files' pairs are pooled per case",
    )
    p.add_argument("--no-peers", action="store_true", help="leave out the outside tools (Timer, transformers' BERT)")
    p.add_argument(
        "--profile",
        action="store_true",
        help="after the rounds, trace each case's worker step and reference step with the framework's profiler "
        "(traces under RUNS_DIR/profiles/) and list the operations each step's time goes to",
    )
    p.add_argument(
        "--mlbench-tree",
        default=str(ROOT),
        metavar="DIR",
        help="run mlbench's side from this checkout (a git worktree of an older commit: a worker change measured "
        "before and after against the same reference)",
    )
    a = p.parse_args()
    if a.report:
        paths = [Path(x) for x in a.report]
        results, inproc, malloc, threads = load_reports(paths)
        print_report(results, pooled(results) if results else {}, inproc, paths, malloc, threads)
        return
    threads = runner.resolved_threads(a.threads)
    runs_dir = Path(a.runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True)
    cases = [(fw, m) for fw in a.frameworks.split(",") for m in a.models.split(",")]
    tree = Path(a.mlbench_tree).resolve()
    hand: dict[Case, list[float]] = {c: [] for c in cases}
    ours: dict[Case, list[dict[str, Any]]] = {c: [] for c in cases}
    peers: dict[Case, dict[str, list[float]]] = {c: {} for c in cases}
    for r in range(a.rounds * max(EXTRA_ROUNDS.values())):
        # interleaved: every case once per round; within a case the reference, mlbench and the case's
        # peers in an order rotated each round (with two: alternating), so none always runs first
        for case in [c for c in cases if r < a.rounds * EXTRA_ROUNDS.get(c[1], 1)]:
            items = ["hand", "mlbench", *([] if a.no_peers else peers_of(case))]
            done: dict[str, Any] = {}
            for which in items[r % len(items) :] + items[: r % len(items)]:
                if which == "hand":
                    done[which] = run_handwritten(*case, a.malloc, threads)
                elif which == "mlbench":
                    done[which] = run_mlbench(*case, runs_dir, a.malloc, threads, tree)
                else:
                    done[which] = run_peer(which, case[1], a.malloc, threads)
            hand[case].append(done["hand"])
            ours[case].append(done["mlbench"])
            line = f"round {r + 1} {case[0]} {case[1]}: ref {done['hand']:.1f}, mlbench {done['mlbench']['samples_per_second']:.1f} samples/s"
            for peer in items[2:]:
                for name, ratio in peer_ratios(done["mlbench"], done[peer]).items():
                    peers[case].setdefault(name, []).append(ratio)
                    line += f"; {name} {ratio:.3f}"
            print(line, file=sys.stderr, flush=True)
    results = summarize(hand, ours, peers) if a.rounds > 0 else []
    overall = pooled(results) if results else {}
    inproc = run_inprocess(cases, a.blocks, a.processes, a.malloc, threads) if a.inprocess else []
    profiles = [run_profile(case, runs_dir, a.malloc, threads, tree) for case in cases] if a.profile else []
    out = runs_dir / "fidelity.json"
    record = {
        "reference": REFERENCE,
        "mlbench_tree": str(tree),
        "malloc": a.malloc,
        "threads": threads,
        "cases": results,
        "overall": overall,
        "by_framework": by_framework(results) if results else {},
        "inprocess": inproc,
        "profiles": profiles,
    }
    out.write_text(json.dumps(record, indent=1))
    print_report(results, overall, inproc, [out], a.malloc, threads)
    print_profiles(profiles)


if __name__ == "__main__":
    main()
