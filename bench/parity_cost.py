"""What computing PyTorch's arithmetic costs where a framework natively computes something else.

mlbench's models compute one function in every framework (the spec's, written in PyTorch's terms), so
where TensorFlow or JAX would by default pad, update or normalise differently, the workers write the
spec's arithmetic out. The fidelity bench's references do the same (else they would compute another
function), so its ratios cannot show what that costs. Here each such choice is timed against the
framework's native form: the same independent reference and hand-written loop (`bench.handwritten`),
once with the spec's form and once with the native one, in one process, in timed blocks in rotating
order, with a second instance of the spec's form as the control (an A/A test: how far apart two
instances of the same code fall); the case runs in several fresh processes and its interval is taken
across them, as `bench.fidelity --inprocess` does.

The ratio is the spec's form's samples/s over the native form's: below 1, parity costs that much.
PyTorch has no entry: the spec's arithmetic is PyTorch's own. The canonical initial weights are
loaded, not initialised per framework, so initialisation costs no step time anywhere.

    python -m bench.parity_cost [--choices KEY,...] [--processes 3] [--blocks 6] [--threads 1]
    python -m bench.parity_cost --report runs/bench/parity-cost.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import fidelity
from bench.handwritten import LOOPS, check_options, use_threads
from bench.inprocess import timed_blocks
from mlbench.process import runner
from workers.common import malloc as glibc_malloc


@dataclass(frozen=True)
class Choice:
    key: str
    framework: str
    model: str
    parity: frozenset[str]  # the loop options that give the spec's form (the workers')
    native: frozenset[str]  # ... and the framework's native form
    same_function: bool  # True: the native form computes the same function (only rounding differs)
    what: str


CHOICES = [
    Choice(
        "tensorflow-resnet18-padding",
        "tensorflow",
        "resnet18",
        frozenset(),
        frozenset({"same_padding"}),
        False,
        "an explicit ZeroPadding2D(1) before each 3x3 stride-2 convolution (3 of 20 in ResNet-18), where "
        "`same` pads only the bottom and right",
    ),
    Choice(
        "tensorflow-resnet18-sgd",
        "tensorflow",
        "resnet18",
        frozenset(),
        frozenset({"keras_optimizer"}),
        False,
        "PyTorch's momentum SGD (the velocity sums gradients, the decay coupled) as a Keras optimizer, against "
        "keras.optimizers.SGD",
    ),
    Choice(
        "tensorflow-mlp-adamw",
        "tensorflow",
        "mlp",
        frozenset(),
        frozenset({"keras_optimizer"}),
        False,
        "PyTorch's AdamW (epsilon after the bias correction) as a Keras optimizer, against keras.optimizers.AdamW",
    ),
    Choice(
        "tensorflow-bert-adamw",
        "tensorflow",
        "bert",
        frozenset(),
        frozenset({"keras_optimizer"}),
        False,
        "the same AdamW on BERT",
    ),
    Choice(
        "tensorflow-bert-dense-embeddings",
        "tensorflow",
        "bert",
        frozenset(),
        frozenset({"sparse_embedding_gradients"}),
        False,
        "the embedding tables' gradients made dense, so every row's moments and weights move each step as in "
        "PyTorch and optax; Keras' lazy update moves only the batch's rows",
    ),
    Choice(
        "jax-resnet18-padding",
        "jax",
        "resnet18",
        frozenset(),
        frozenset({"same_padding"}),
        False,
        "explicit (1, 1) padding on the 3x3 stride-2 convolutions, where SAME pads (0, 1)",
    ),
    Choice(
        "jax-bert-layernorm-variance",
        "jax",
        "bert",
        frozenset({"two_pass_variance"}),
        frozenset(),
        True,
        "LayerNorm's variance in two passes (the mean, then the mean squared deviation), as PyTorch computes it; "
        "Flax's default is E[x^2] - E[x]^2 in one",
    ),
]
BY_KEY = {c.key: c for c in CHOICES}
for _c in CHOICES:  # every choice names options its framework's loop has
    check_options(_c.framework, _c.parity | _c.native)


def compare(
    choice: Choice, steps: int, blocks: int, warmup_blocks: int = 1, threads: int | None = None
) -> dict[str, Any]:
    """In this process: the spec's form twice (the second the control) and the native form, `blocks`
    timed blocks of `steps` steps each after `warmup_blocks` untimed ones, in rotating order."""
    if threads:
        use_threads(choice.framework, threads)
    bs = fidelity.INPROCESS[choice.model][0]
    total = (warmup_blocks + blocks) * steps
    loop = LOOPS[choice.framework]
    forms = {"parity": choice.parity, "twin": choice.parity, "native": choice.native}
    runs = {name: loop(choice.model, bs, total, steps, options) for name, options in forms.items()}
    blocks_s = {name: (lambda run=run: run(steps)) for name, run in runs.items()}
    timed = [
        {
            "parity_s": t["parity"],
            "twin_s": t["twin"],
            "native_s": t["native"],
            "ratio": t["native"] / math.sqrt(t["parity"] * t["twin"]),  # the spec's samples/s over native's
            "control": t["parity"] / t["twin"],
        }
        for t in timed_blocks(blocks_s, blocks, warmup_blocks, ("parity", "twin", "native"))
    ]
    return {"choice": choice.key, "batch_size": bs, "steps_per_block": steps, "blocks": timed}


def estimates(processes: list[list[dict[str, float]]]) -> dict[str, Any]:
    """The ratio and the control with their intervals across processes, and what the ratio says."""
    ratio = fidelity.process_estimate([[b["ratio"] for b in g] for g in processes])
    control = fidelity.process_estimate([[b["control"] for b in g] for g in processes])
    lo, hi = ratio["ci95"]
    if lo is None:
        verdict = "no interval"
    elif hi < 1:
        verdict = f"costs {1 - ratio['geometric_mean']:.1%}"
    elif lo > 1:
        verdict = f"faster by {ratio['geometric_mean'] - 1:.1%}"
    else:
        verdict = "no cost resolved"
    return {
        "geometric_mean": ratio["geometric_mean"],
        "ci95": ratio["ci95"],
        "unit": ratio["unit"],
        "verdict": verdict,
        "control": {"geometric_mean": control["geometric_mean"], "ci95": control["ci95"]},
    }


def run(choices: list[Choice], blocks: int, processes: int, malloc: str, threads: int) -> list[dict[str, Any]]:
    """Each choice in `processes` fresh processes, the choices in turn each time (the machine's drift
    spread over them)."""
    groups: dict[str, list[list[dict[str, float]]]] = {c.key: [] for c in choices}
    for p in range(processes):
        for c in choices:
            steps = fidelity.INPROCESS[c.model][1]
            out = fidelity.run_bench_module(
                "bench.parity_cost", malloc, one=c.key, steps=steps, blocks=blocks, threads=threads
            )
            timed = json.loads(out.strip().splitlines()[-1])["blocks"]
            groups[c.key].append(timed)
            print(
                f"process {p + 1}/{processes} {c.key}: spec's form / native "
                f"{fidelity.geometric_mean([b['ratio'] for b in timed]):.3f}, "
                f"control {fidelity.geometric_mean([b['control'] for b in timed]):.3f}",
                file=sys.stderr,
                flush=True,
            )
    return [
        {
            "choice": c.key,
            "framework": c.framework,
            "model": c.model,
            "batch_size": fidelity.INPROCESS[c.model][0],
            "steps_per_block": fidelity.INPROCESS[c.model][1],
            "same_function": c.same_function,
            "what": c.what,
            "processes": groups[c.key],
            **estimates(groups[c.key]),
        }
        for c in choices
    ]


def _ci(lo: float | None, hi: float | None) -> str:
    return "-" if lo is None or hi is None else f"{lo:.3f}-{hi:.3f}"


def print_report(results: list[dict[str, Any]], malloc: str, threads: int, path: Path) -> None:
    print(
        f"\nThe spec's (PyTorch's) arithmetic against each framework's native form, in one process ({path}; "
        f"malloc {malloc}, {threads} thread(s); the interval across processes):"
    )
    print(
        "| choice | batch | processes x blocks | spec's / native | 95% CI | verdict | control (A/A) | same function |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        n = f"{len(r['processes'])} x {len(r['processes'][0])}"
        c = r["control"]
        print(
            f"| {r['choice']} | {r['batch_size']} | {n} | {r['geometric_mean']:.3f} | {_ci(*r['ci95'])} | "
            f"{r['verdict']} | {c['geometric_mean']:.3f} ({_ci(*c['ci95'])}) | {'yes' if r['same_function'] else 'no'} |"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--choices", default=",".join(BY_KEY), help=f"which, comma-separated (default all: {', '.join(BY_KEY)})"
    )
    p.add_argument("--processes", type=int, default=3, help="fresh processes per choice (the interval is across them)")
    p.add_argument("--blocks", type=int, default=6, help="timed blocks per form in each process")
    p.add_argument("--malloc", choices=list(glibc_malloc.TUNABLES), default=glibc_malloc.DEFAULT)
    p.add_argument("--threads", type=int, help="intra-op threads (default: the physical cores, as mlbench's workers)")
    p.add_argument("--out", default=str(fidelity.ROOT / "runs" / "bench" / "parity-cost.json"))
    p.add_argument("--report", metavar="PARITY_COST_JSON", help="print an earlier run's report and stop")
    p.add_argument("--one", metavar="KEY", help=argparse.SUPPRESS)  # one process's blocks, as JSON (internal)
    p.add_argument("--steps", type=int, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.report:
        saved = json.loads(Path(a.report).read_text())
        print_report(saved["choices"], saved["malloc"], saved["threads"], Path(a.report))
        return
    threads = runner.resolved_threads(a.threads)
    if a.one:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        choice = BY_KEY[a.one]
        sys.stdout.write(
            json.dumps(compare(choice, a.steps or fidelity.INPROCESS[choice.model][1], a.blocks, threads=threads))
            + "\n"
        )
        return
    unknown = [k for k in a.choices.split(",") if k not in BY_KEY]
    if unknown:
        p.error(f"--choices: unknown {unknown}; allowed: {', '.join(BY_KEY)}")
    choices = [BY_KEY[k] for k in a.choices.split(",")]
    results = run(choices, a.blocks, a.processes, a.malloc, threads)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps({"malloc": a.malloc, "threads": threads, "blocks": a.blocks, "choices": results}, indent=1)
    )
    print_report(results, a.malloc, threads, out)


if __name__ == "__main__":
    main()
