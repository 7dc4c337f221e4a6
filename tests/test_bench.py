"""The fidelity benchmark's statistics, and its in-process comparison on a real framework."""

from __future__ import annotations

import collections
import json
import math

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

    from mlbench.monitor import NVML
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
