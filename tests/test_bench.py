"""The fidelity benchmark's statistics, and its in-process comparison on a real framework."""

from __future__ import annotations

import collections
import json
import math
from pathlib import Path

import pytest

from bench import fidelity


def test_paired_estimate_two_pairs_hand_computed() -> None:
    # logs +0.1 and -0.1: mean 0, sd 0.1*sqrt(2); t(0.975, 1 df) = 12.7062; half = 12.7062 * 0.1 = 1.27062
    r = fidelity.paired_estimate([math.exp(0.1), math.exp(-0.1)])
    assert r["pairs"] == 2
    assert r["geometric_mean"] == pytest.approx(1.0)
    assert r["ci95"][0] == pytest.approx(math.exp(-1.27062), rel=1e-4)
    assert r["ci95"][1] == pytest.approx(math.exp(1.27062), rel=1e-4)
    assert r["verdict"] == "not resolved"


def test_paired_estimate_verdicts() -> None:
    assert fidelity.paired_estimate([1.0, 1.0, 1.0])["verdict"] == "at least 0.97"
    assert fidelity.paired_estimate([0.9, 0.91, 0.9])["verdict"] == "below 0.97"
    one = fidelity.paired_estimate([0.95])
    assert one["ci95"] == [None, None] and one["verdict"] == "one pair: no interval"


def test_summarize_pairs_rounds_in_order() -> None:
    hand = {("jax", "mlp"): [100.0, 200.0]}
    ours = {
        ("jax", "mlp"): [
            {
                "samples_per_second": s,
                "overhead_s": 0.01,
                "run_overhead_s": 1.0,
                "orchestrator_max_rss_mb": 200.0,
                "orchestrator_cpu_pct": cpu,
            }
            for s, cpu in ((90.0, 1.0), (220.0, 2.0))
        ]
    }
    (r,) = fidelity.summarize(hand, ours)
    assert r["orchestrator_cpu_pct"] == pytest.approx(1.5)
    for run in ours[("jax", "mlp")]:  # a run from before the orchestrator's CPU was measured
        run["orchestrator_cpu_pct"] = None
    assert fidelity.summarize(hand, ours)[0]["orchestrator_cpu_pct"] is None
    assert r["paired_ratios"] == pytest.approx([0.9, 1.1])
    assert r["geometric_mean"] == pytest.approx(math.sqrt(0.9 * 1.1))
    assert r["ratio_of_medians"] == pytest.approx(155.0 / 150.0)
    assert r["same_steps"] is None  # runs that did not keep it
    assert fidelity.pooled([r])["same_steps"] is None
    for run, same in zip(ours[("jax", "mlp")], (85.0, 210.0)):  # over the hand-written loop's steps
        run["same_steps_sps"] = same
    r = fidelity.summarize(hand, ours)[0]
    assert r["same_steps"]["paired_ratios"] == pytest.approx([0.85, 1.05])
    assert r["same_steps"]["geometric_mean"] == pytest.approx(math.sqrt(0.85 * 1.05))
    assert fidelity.pooled([r])["same_steps"]["geometric_mean"] == pytest.approx(math.sqrt(0.85 * 1.05))


def _saved(path, hand, ours, same=None, **settings):
    """A file as `bench.fidelity` writes it, from one case's rounds."""
    runs = [
        {"samples_per_second": s, "overhead_s": 0.01, "run_overhead_s": 1.0, "orchestrator_max_rss_mb": 200.0}
        for s in ours
    ]
    for run, x in zip(runs, same or []):
        run["same_steps_sps"] = x
    cases = fidelity.summarize({("pytorch", "mlp"): hand}, {("pytorch", "mlp"): runs})
    path.write_text(json.dumps({**settings, "cases": cases, "overall": {}, "inprocess": []}))
    return path


def test_report_pools_the_pairs_of_several_files_run_alike(tmp_path) -> None:
    a = _saved(tmp_path / "a.json", [100.0, 100.0], [90.0, 100.0], [88.0, 100.0], malloc="steady", threads=1)
    b = _saved(tmp_path / "b.json", [200.0], [220.0], [210.0], malloc="steady", threads=1)
    results, inproc, malloc, threads = fidelity.load_reports([a, b])
    (r,) = results
    assert (malloc, threads, inproc) == ("steady", 1, [])
    assert r["pairs"] == 3 and r["paired_ratios"] == pytest.approx([0.9, 1.0, 1.1])
    assert r["geometric_mean"] == pytest.approx((0.9 * 1.0 * 1.1) ** (1 / 3))
    assert r["same_steps"]["paired_ratios"] == pytest.approx([0.88, 1.0, 1.05])
    # one file read back gives what its run printed, same steps included
    (alone,) = fidelity.load_reports([a])[0]
    assert alone["paired_ratios"] == pytest.approx([0.9, 1.0]) and alone["same_steps"]["pairs"] == 2
    # a file without same steps (older runs): the pooled same-steps figure is left out, not made up
    c = _saved(tmp_path / "c.json", [100.0], [95.0], malloc="steady", threads=1)
    assert fidelity.load_reports([a, c])[0][0]["same_steps"] is None
    # runs under different settings do not pool
    d = _saved(tmp_path / "d.json", [100.0], [95.0], malloc="steady", threads=2)
    with pytest.raises(SystemExit, match="threads"):
        fidelity.load_reports([a, d])


def test_process_estimate_interval_is_across_processes() -> None:
    # two processes whose blocks agree within each but not between them: the blocks alone would
    # give a tight interval; across the processes (logs +0.1, -0.1; t(0.975, 1 df) = 12.7062) a wide one
    r = fidelity.process_estimate([[math.exp(0.1)] * 4, [math.exp(-0.1)] * 4])
    assert r["unit"] == "processes" and r["pairs"] == 2
    assert r["geometric_mean"] == pytest.approx(1.0)
    assert r["ci95"][0] == pytest.approx(math.exp(-1.27062), rel=1e-4)
    assert r["verdict"] == "not resolved"
    one = fidelity.process_estimate([[0.9, 0.91, 0.9]])  # one process: from its blocks
    assert one["unit"] == "blocks" and one["pairs"] == 3 and one["verdict"] == "below 0.97"


def test_inprocess_estimates_with_and_without_control() -> None:
    blocks = [{"ratio": 0.98, "control": 1.02}, {"ratio": 1.0, "control": 1.0}]
    r = fidelity.inprocess_estimates({"processes": [blocks, blocks]})
    assert r["geometric_mean"] == pytest.approx(math.sqrt(0.98))
    assert r["control"]["geometric_mean"] == pytest.approx(math.sqrt(1.02))
    assert r["blocks_per_process"] == 2
    old = fidelity.inprocess_estimates({"processes": [[{"ratio": 0.98}, {"ratio": 1.0}]]})  # a file from before
    assert old["control"] is None and old["unit"] == "blocks"
    # with both hand-written instances' times, the ratio is against their geometric mean (files that
    # kept hand/harness as "ratio" are read the same way)
    timed = {"hand_s": 1.0, "twin_s": 1.21, "harness_s": 1.2, "ratio": 1 / 1.2, "control": 1 / 1.21}
    assert fidelity.block_ratio(timed) == pytest.approx(1.1 / 1.2)


def test_inprocess_block_orders_are_balanced() -> None:
    from bench import inprocess  # imports no framework at module level

    # in three blocks every loop runs first, second and third once; in six, right after each other
    # loop twice (no loop always inherits another's cache or heap)
    for pos in range(3):
        assert {inprocess.ORDERS[b][pos] for b in range(3)} == {"hand", "twin", "harness"}
    follows = collections.Counter((o[i], o[i + 1]) for o in inprocess.ORDERS for i in range(2))
    assert len(follows) == 6 and set(follows.values()) == {2}


@pytest.mark.e2e
def test_inprocess_comparison_runs_the_three_loops() -> None:
    pytest.importorskip("torch")
    from bench import inprocess

    out = inprocess.compare("pytorch", "mlp", bs=32, steps=3, blocks=3)
    assert len(out["blocks"]) == 3
    for b in out["blocks"]:
        assert b["hand_s"] > 0 and b["twin_s"] > 0 and b["harness_s"] > 0
        assert b["ratio"] == pytest.approx(math.sqrt(b["hand_s"] * b["twin_s"]) / b["harness_s"])
        assert fidelity.block_ratio(b) == pytest.approx(b["ratio"])
        assert b["control"] == pytest.approx(b["hand_s"] / b["twin_s"])


@pytest.mark.e2e
@pytest.mark.parametrize("framework", ["pytorch", "tensorflow", "jax"])
def test_a_handwritten_loop_runs_with_the_threads_a_suite_gives_its_workers(framework: str) -> None:
    """`--threads 1` reaches the framework as `threads: 1` reaches a worker: the loop reports it."""
    import json
    import subprocess
    import sys

    pytest.importorskip({"pytorch": "torch", "tensorflow": "tensorflow", "jax": "jax"}[framework])
    args = ["--framework", framework, "--model", "mlp", "--batch-size", "8", "--warmup", "1", "--steps", "2"]
    out = subprocess.run(
        [sys.executable, "-m", "bench.handwritten", *args, "--threads", "1"],
        cwd=fidelity.ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    line = json.loads(out.stdout.strip().splitlines()[-1])
    assert line["samples_per_second"] > 0
    threads = line["threads"]
    if framework == "jax":
        assert threads["XLA_FLAGS"].endswith("intra_op_parallelism_threads=1")
    else:
        assert threads["intra_op"] == 1


def test_the_bench_hides_gpus_from_its_hand_written_loops() -> None:
    """It compares CPU loops: on a GPU host TensorFlow and JAX would otherwise run the loops on the GPU."""
    from bench import fidelity

    env = fidelity.process_env("steady")
    assert env["CUDA_VISIBLE_DEVICES"] == "" and env["JAX_PLATFORMS"] == "cpu"


def test_gpu_smoke_without_a_gpu_says_so_in_one_line_and_exits_0() -> None:
    import subprocess
    import sys

    from mlbench.process.monitor import NVML
    from tests.conftest import ROOT

    if NVML.available():
        pytest.skip("this machine has an NVIDIA driver: make gpu-smoke runs for real")
    proc = subprocess.run([sys.executable, "-m", "bench.gpu_smoke"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.count("\n") == 1
    assert proc.stdout.startswith("gpu-smoke: skipped: no NVIDIA GPU here")


def test_gpu_smoke_names_what_failed() -> None:
    from bench import gpu_smoke

    good = {
        "framework": "jax", "model_name": "resnet18", "precision": "bf16", "status": "ok", "reason": "",
        "mfu": 0.4, "peak_tflops": 700.0, "gpu_utilization_pct": 90.0, "peak_memory_mb": 900.0,
        "gpu_memory_used_peak_mb": 1200.0, "gpu_energy_j": 1000.0, "gpu_power_avg_w": 500.0, "duration_s": 2.1,
        "devices_seen": json.dumps(["cuda:0"]),
    }  # fmt: skip
    oom = {"framework": "jax", "status": "oom", "reason": "RESOURCE_EXHAUSTED"}
    assert gpu_smoke.problems([good], [oom]) == []
    bad = gpu_smoke.problems(
        [
            {**good, "mfu": 1.3},
            {**good, "gpu_energy_j": None},
            {**good, "gpu_energy_j": 3000.0},
            {**good, "devices_seen": json.dumps(["cuda:0", "cuda:1"])},
            {**good, "status": "failed", "reason": "boom"},
        ],
        [{**oom, "status": "ok"}],
    )
    assert any("MFU 1.3" in p for p in bad) and any("gpu_energy_j missing" in p for p in bad)
    assert any("power x time 1050 J" in p for p in bad) and any("saw 2 GPUs" in p for p in bad)
    assert any("failed (boom)" in p for p in bad) and any("not oom" in p for p in bad)
    det = {"framework": "pytorch", "status": "ok", "reason": "", "deterministic": True}
    switched = {**det, "determinism": "torch.are_deterministic_algorithms_enabled()=True, cudnn.deterministic=True"}
    assert gpu_smoke.problems([good], [oom], deterministic=[switched, {**det, "deterministic": False}]) == []
    (said,) = gpu_smoke.problems([good], [oom], deterministic=[{**det, "determinism": "...=False"}])
    assert "pytorch resnet18 deterministic: the framework reports" in said


# --- independent references, outside tools, profiles ---------------------------------------------


def test_the_references_and_the_loops_never_import_a_worker() -> None:
    """The references are the workers' independent peers: they may read workers.common (the specs, the
    canonical weights, the data) but no worker's models, backends or optimizer builders."""
    import ast

    bench = fidelity.ROOT / "bench"
    files = [bench / "handwritten.py", bench / "peers.py", bench / "step_profile.py", *bench.glob("references/*.py")]
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
            bad = [n for n in names if n.startswith("workers.") and not n.startswith("workers.common")]
            assert not bad, f"{path.name} imports {bad}"


def test_peer_ratios_are_speeds_mlbench_over_the_tool() -> None:
    ours = {
        "samples_per_second": 120.0,
        "step_time_median_s": 0.5,
        "inference_p50_ms": 40.0,
        "inference_b1_p50_ms": 4.0,
    }
    timer = {
        "peer": "torch.utils.benchmark.Timer.blocked_autorange",
        "train_step": {"median_s": 0.55},  # the Timer's step is slower: mlbench 1.1x as fast
        "inference_b1": {"median_s": 0.004},
        "inference": {"median_s": 0.036},
    }
    r = fidelity.peer_ratios(ours, timer)
    assert r == pytest.approx({"timer train step": 1.1, "timer inference b1": 1.0, "timer inference": 0.9})
    hf = {"peer": "transformers.BertForSequenceClassification", "samples_per_second": 100.0}
    assert fidelity.peer_ratios(ours, hf) == pytest.approx({"transformers bert": 1.2})
    assert fidelity.peers_of(("pytorch", "bert")) == ["timer", "hf-bert"]
    assert fidelity.peers_of(("pytorch", "mlp")) == ["timer"] and fidelity.peers_of(("jax", "bert")) == []


def _runs(sps: list[float]) -> list[dict[str, float]]:
    return [
        {"samples_per_second": s, "overhead_s": 0.01, "run_overhead_s": 1.0, "orchestrator_max_rss_mb": 200.0}
        for s in sps
    ]


def test_summary_has_each_peers_estimate_and_each_framework_pooled() -> None:
    hand = {("pytorch", "mlp"): [100.0, 100.0], ("pytorch", "bert"): [10.0, 10.0], ("jax", "mlp"): [100.0, 100.0]}
    ours = {("pytorch", "mlp"): _runs([99.0, 101.0]), ("pytorch", "bert"): _runs([9.0, 9.0])}
    ours[("jax", "mlp")] = _runs([100.0, 100.0])
    peers = {("pytorch", "mlp"): {"timer train step": [1.0, 1.02]}}
    results = fidelity.summarize(hand, ours, peers)
    by_case = {(r["framework"], r["model"]): r for r in results}
    timer = by_case[("pytorch", "mlp")]["peers"]["timer train step"]
    assert timer["pairs"] == 2 and timer["geometric_mean"] == pytest.approx(math.sqrt(1.02))
    assert by_case[("jax", "mlp")]["peers"] == {}
    fw = fidelity.by_framework(results)
    # pytorch: pairs 0.99, 1.01, 0.9, 0.9 pooled; jax: 1.0, 1.0
    assert fw["pytorch"]["paired_ratios"] == 4
    assert fw["pytorch"]["geometric_mean"] == pytest.approx((0.99 * 1.01 * 0.9 * 0.9) ** 0.25)
    assert fw["jax"]["geometric_mean"] == pytest.approx(1.0) and fw["jax"]["verdict"] == "at least 0.97"


def test_report_pools_peers_and_keeps_references_apart(tmp_path) -> None:
    def saved(name: str, reference: str | None, timer: list[float]) -> Path:
        cases = fidelity.summarize(
            {("pytorch", "mlp"): [100.0] * len(timer)},
            {("pytorch", "mlp"): _runs([100.0] * len(timer))},
            {("pytorch", "mlp"): {"timer train step": timer}},
        )
        record = {"malloc": "steady", "threads": 2, "cases": cases, "overall": {}, "inprocess": []}
        if reference:
            record["reference"] = reference
        (tmp_path / name).write_text(json.dumps(record))
        return tmp_path / name

    a, b = saved("a.json", "independent", [1.0, 1.1]), saved("b.json", "independent", [0.9])
    (r,) = fidelity.load_reports([a, b])[0]
    assert r["peers"]["timer train step"]["paired_ratios"] == pytest.approx([1.0, 1.1, 0.9])
    # pairs against the workers' own models (files from before the references) do not pool with these
    old = saved("old.json", None, [1.0])
    with pytest.raises(SystemExit, match="reference"):
        fidelity.load_reports([a, old])


def test_self_times_subtract_nested_events_per_thread() -> None:
    from bench.step_profile import self_times

    # thread 1: A [0, 10) holds B [2, 5) which holds C [3, 4); D [10, 12) after; thread 2: A [0, 3)
    events = [(1, 0.0, 10.0, "A"), (1, 2.0, 3.0, "B"), (1, 3.0, 1.0, "C"), (1, 10.0, 2.0, "D"), (2, 0.0, 3.0, "A")]
    assert self_times(events) == pytest.approx({"A": 7.0 + 3.0, "B": 2.0, "C": 1.0, "D": 2.0})


def test_top_ops_of_a_chrome_trace(tmp_path) -> None:
    from bench.step_profile import top_ops

    trace = {
        "traceEvents": [
            {"ph": "X", "cat": "cpu_op", "name": "aten::linear", "pid": 1, "tid": 1, "ts": 0, "dur": 3000},
            {"ph": "X", "cat": "cpu_op", "name": "aten::addmm", "pid": 1, "tid": 1, "ts": 500, "dur": 2000},
            {"ph": "X", "cat": "python_function", "name": "forward", "pid": 1, "tid": 1, "ts": 0, "dur": 9000},
        ]
    }
    (tmp_path / "trace.json").write_text(json.dumps(trace))
    r = top_ops(tmp_path / "trace.json", steps=2)
    # Python frames are left out of a torch trace; per step: addmm 1 ms, linear's own 0.5 ms
    assert r["top_ms_per_step"] == [["aten::addmm", 1.0], ["aten::linear", 0.5]]
    assert r["total_ms_per_step"] == pytest.approx(1.5)


@pytest.mark.e2e
def test_the_pytorch_peers_time_a_step_and_inference() -> None:
    pytest.importorskip("torch")
    from bench import peers

    out = peers.timer("mlp", 8, 1, min_run_s=0.05)
    for figure in ("train_step", "inference_b1", "inference"):
        assert out[figure]["median_s"] > 0 and out[figure]["runs"] >= 1
    pytest.importorskip("transformers")
    hf = peers.hf_bert(2, warmup=1, steps=1)
    assert hf["samples_per_second"] > 0 and hf["attn_implementation"] == "sdpa"
    # the spec's sizes: the canonical count plus the token-type embedding (1 x 256) transformers always has
    from workers.common.specs import get_spec, num_parameters

    assert hf["parameters"] == num_parameters(get_spec("bert")) + 256


def test_parity_cost_choices_and_verdicts() -> None:
    from bench import parity_cost  # imports no framework at module level

    # every choice names loop options its framework has (checked at import), and differs in them
    for c in parity_cost.CHOICES:
        assert c.parity != c.native, c.key
    assert {c.framework for c in parity_cost.CHOICES} == {"tensorflow", "jax"}  # PyTorch's forms are the spec's

    def blocks(ratio: float, spread: float) -> list[dict[str, float]]:
        return [{"ratio": ratio * (1 + s), "control": 1.0 + s} for s in (-spread, 0.0, spread)]

    slow = parity_cost.estimates([blocks(0.90, 0.01), blocks(0.91, 0.01), blocks(0.89, 0.01)])
    assert slow["unit"] == "processes" and slow["ci95"][1] < 1
    assert slow["verdict"] == f"costs {1 - slow['geometric_mean']:.1%}"
    level = parity_cost.estimates([blocks(0.97, 0.01), blocks(1.03, 0.01), blocks(1.0, 0.01)])
    assert level["verdict"] == "no cost resolved"
    fast = parity_cost.estimates([blocks(1.10, 0.01), blocks(1.11, 0.01), blocks(1.09, 0.01)])
    assert fast["verdict"].startswith("faster by")


@pytest.mark.e2e
def test_parity_cost_times_the_two_forms_in_one_process() -> None:
    """One process of a choice: the spec's form, its twin and the native form in rotating blocks."""
    pytest.importorskip("tensorflow")
    import json
    import subprocess
    import sys

    args = ["--one", "tensorflow-mlp-adamw", "--steps", "2", "--blocks", "3", "--threads", "1"]
    out = subprocess.run(
        [sys.executable, "-m", "bench.parity_cost", *args],
        cwd=fidelity.ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["choice"] == "tensorflow-mlp-adamw" and len(res["blocks"]) == 3
    for b in res["blocks"]:
        assert b["parity_s"] > 0 and b["twin_s"] > 0 and b["native_s"] > 0
        assert b["ratio"] == pytest.approx(b["native_s"] / math.sqrt(b["parity_s"] * b["twin_s"]))
        assert b["control"] == pytest.approx(b["parity_s"] / b["twin_s"])


def test_coverage_counts_a_rerun_inside_the_first_rounds_interval() -> None:
    """bench/coverage.py: every ordered pair of rounds, the rerun's figure against the first's interval."""
    import pandas as pd

    from bench.coverage import coverage

    def round_(sps: float, lo: float, hi: float) -> pd.DataFrame:
        return pd.DataFrame(
            [{"cell_id": "c", "framework": "pytorch", "model_name": "mlp", "samples_per_second": sps,
              "samples_per_second_ci_low": lo, "samples_per_second_ci_high": hi,
              "inference_b1_latency_p50_ms": None, "inference_b1_latency_p50_ci_low_ms": None,
              "inference_b1_latency_p50_ci_high_ms": None}]
        )  # fmt: skip

    # round 0 [90, 110] holds 105 (round 1); round 1 [104, 106] misses 100 (round 0)
    found = coverage([round_(100.0, 90.0, 110.0), round_(105.0, 104.0, 106.0)])
    assert found["samples_per_second"]["pairs"] == 2 and found["samples_per_second"]["coverage"] == 0.5
    widths = (20 / 100, 2 / 105)  # each first round's interval over its own figure
    assert found["samples_per_second"]["cells"]["pytorch mlp"]["median_relative_width"] == pytest.approx(
        sum(widths) / 2
    )
    assert found["inference_b1_latency_p50_ms"]["pairs"] == 0  # nothing measured: no pair, not a hit


def test_the_power_simulation_calls_the_planted_gap_and_not_the_twins(capsys) -> None:
    """bench/power.py through the run's own next_repeat and evidence.tell: at a 5% spread a 1.3x gap is
    always called and twins never are; the table says how many runs a cell took."""
    from bench.power import main

    assert main(["--pairs", "60", "--cvs", "0.05"]) == 0
    row = capsys.readouterr().out.strip().splitlines()[-1].split(" | ")
    assert row[0] == "| 5%" and 5.0 <= float(row[1]) <= 8.0 and row[2] == "100.0%" and row[3] == "0.00%", row


@pytest.mark.e2e
def test_the_scale_bench_runs_grids_of_instant_cells_and_writes_its_figures(tmp_path) -> None:
    """bench/scale.py on two tiny grids: every cell a real worker process of bench/instant_worker.py, the
    figures per size written (wall per cell, the orchestrator's peak RSS, the rebuild, the report)."""
    from bench.scale import main

    main(["--sizes", "2", "3", "--out", str(tmp_path), "--no-browser", "--label", "t"])
    (found,) = [json.loads(p.read_text()) for p in tmp_path.glob("scale-*-t.json")]
    assert [r["cells"] for r in found["sizes"]] == [2, 3]
    for r in found["sizes"]:
        assert r["per_cell_s"] > 0 and 50 < r["orchestrator_rss_mb"] < 1024 and r["rebuild_s"] > 0
        assert r["report_mb"] > 0.1 and r["report_load_s"] is None
