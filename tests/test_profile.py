"""Where the time and the memory go: the step-time breakdown, the memory by part, the bottleneck verdict
and the kept profiler traces, from their arithmetic on a fake clock to real cells in all three frameworks."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from mlbench.analysis import bottleneck
from mlbench.results import rows
from tests.conftest import SHARED_CELLS, cli, suite_dict
from workers.common import profile, specs

MIB = 2**20


# --- the breakdown's arithmetic, on a fake clock ---------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_parts_add_up_to_the_profiled_step_and_a_lone_forward_is_left_out(monkeypatch) -> None:
    clock = FakeClock()
    monkeypatch.setattr(profile.time, "perf_counter", clock)

    def step_parts(x, y):  # a JAX-like step: the forward timed alone, then forward+backward fused
        laps = profile.PartClock(lambda: None)
        for name, seconds in (("data", 0.001), ("forward", 0.010), ("forward_backward", 0.030), ("optimizer", 0.004)):
            clock.now += seconds
            laps.lap(name)
        clock.now += 0.002  # Python after the last part: "other"
        return profile.forward_apart(laps.parts)

    def batches():
        while True:
            clock.now += 0.0005  # taking the next host batch
            yield None, None

    out = profile.breakdown(step_parts, batches(), prepare_s=0.0015, steps=4)
    assert out["profile_steps"] == 4
    assert out["step_forward_s"] == pytest.approx(0.010) and out["step_backward_s"] == pytest.approx(0.020)
    assert out["step_optimizer_s"] == pytest.approx(0.004)
    assert out["step_data_s"] == pytest.approx(0.001 + 0.0015 + 0.0005)  # copy + preparation + next()
    assert out["step_other_s"] == pytest.approx(0.002)
    # the lone forward (10 ms) is not part of the step: the profiled step is the real one's parts
    assert out["step_profiled_s"] == pytest.approx(0.0015 + 0.0005 + 0.001 + 0.030 + 0.004 + 0.002)
    parts = sum(out[f"step_{p}_s"] for p in ("data", "forward", "backward", "optimizer", "other"))
    assert parts == pytest.approx(out["step_profiled_s"], abs=1e-12)


def test_a_feed_shorter_than_the_profile_ends_it_early(monkeypatch) -> None:
    out = profile.breakdown(
        lambda x, y: {"data": 0.0, "forward": 0.0, "backward": 0.0, "optimizer": 0.0}, [(1, 2)] * 3, 0.0, 5
    )
    assert out["profile_steps"] == 2  # the first of three is the untimed one
    assert profile.breakdown(lambda x, y: {}, [(1, 2)], 0.0, 5) == {}


# --- memory by part, computed ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "states"),
    [("mlp", 2), ("resnet18", 1), ("bert", 2)],  # AdamW: two moments; SGD with momentum: one buffer
)
def test_memory_parts_of_each_model_against_hand_computed_figures(model: str, states: int) -> None:
    spec = specs.get_spec(model)
    n = specs.num_parameters(spec)
    optimizer = specs.spec_dict(spec)["optimizer"]
    got = rows.memory_parts(n, optimizer, peak_bytes=None, base_bytes=None)
    assert got["memory_params_mb"] == pytest.approx(4 * n / MIB)  # fp32 master weights
    assert got["memory_grads_mb"] == pytest.approx(4 * n / MIB)
    assert got["memory_optimizer_mb"] == pytest.approx(states * 4 * n / MIB)
    assert got["memory_activations_mb"] is None  # no peak measured: missing, not zero


def test_memory_parts_by_hand() -> None:
    # 1,000,000 parameters: 3.815 MiB each of weights and gradients; AdamW 7.63 MiB of moments
    adamw = rows.memory_parts(1_000_000, {"name": "adamw"}, peak_bytes=100 * MIB, base_bytes=50 * MIB)
    assert adamw["memory_params_mb"] == pytest.approx(3.8147, abs=1e-4)
    assert adamw["memory_optimizer_mb"] == pytest.approx(7.6294, abs=1e-4)
    assert adamw["memory_activations_mb"] == pytest.approx(50 - 4 * 3.8147, abs=1e-3)  # peak - base - 4x params
    plain = rows.memory_parts(1_000_000, {"name": "sgd", "momentum": 0.0}, 100 * MIB, 50 * MIB)
    assert plain["memory_optimizer_mb"] == 0 and plain["memory_activations_mb"] == pytest.approx(
        50 - 2 * 3.8147, abs=1e-3
    )
    with pytest.raises(ValueError, match="lion"):
        rows.optimizer_states({"name": "lion"})


# --- the verdict rules, on constructed rows ----------------------------------------------------------


def row(**kw) -> dict:
    base = {
        "status": "ok",
        "device": "cpu",
        "step_profiled_s": 0.100,
        "step_data_s": 0.005,
        "step_other_s": 0.005,
        "mfu": 0.30,
        "gpu_utilization_train_pct": None,
        "train_flops_per_sample": 1e9,
        "per_device_batch_size": 64,
        "memory_activations_mb": 100.0,
    }
    return {**base, **kw}


@pytest.mark.parametrize(
    ("kw", "verdict", "evidence"),
    [
        ({"step_data_s": 0.040}, "input", "data 40% of the step"),
        ({"step_other_s": 0.030}, "host", "outside the parts 30%"),
        ({"device": "cuda:0", "gpu_utilization_train_pct": 35.0}, "host", "GPU busy 35%"),
        ({"mfu": 0.62}, "compute", "MFU 62%"),
        # a GPU step with 2e9 FLOP over 1000 MiB of activations (1.9 FLOP/B) at 10% MFU
        (
            {
                "device": "cuda:0",
                "gpu_utilization_train_pct": 95.0,
                "mfu": 0.10,
                "memory_activations_mb": 1000.0,
                "train_flops_per_sample": 2e9 / 64,
            },
            "memory",
            "1.9 FLOP per activation byte",
        ),
        # the same on a CPU decides nothing: its RSS cannot separate activations from the runtime
        ({"mfu": 0.10, "memory_activations_mb": 1000.0, "train_flops_per_sample": 2e9 / 64}, "none", "MFU 10%"),
        ({}, "none", "data 5%, other 5%, MFU 30%"),
        ({"mfu": None}, "none", "MFU not measured"),
    ],
)
def test_verdict_rules(kw: dict, verdict: str, evidence: str) -> None:
    got, why = bottleneck.verdict(row(**kw))
    assert got == verdict and evidence in why, why


def test_input_comes_first_and_rows_without_a_breakdown_get_no_verdict() -> None:
    assert bottleneck.verdict(row(step_data_s=0.050, mfu=0.9))[0] == "input"  # waiting for data is the cause
    assert bottleneck.verdict(row(step_profiled_s=None)) == (None, None)
    assert bottleneck.verdict(row(status="oom")) == (None, None)
    for name, t in bottleneck.THRESHOLDS.items():  # every threshold says why it is where it is
        assert t.reason and t.value > 0, name


def test_a_step_flat_in_the_batch_is_overhead_bound() -> None:
    """Twice the batch, 1.2x the step: a fixed cost per step (dispatch, Python) dominates, which no part of
    a CPU breakdown shows (it sits inside forward and backward): the batch scaling says it."""
    small = row(batch_size=32, step_time_median_s=0.010, step_profiled_s=0.010, step_data_s=0.0, step_other_s=0.0)
    got, why = bottleneck.verdict(small, scaling=(64, 0.012))
    assert got == "overhead" and "12.00 ms at batch 64 against 10.00 ms at 32" in why
    assert bottleneck.verdict(small, scaling=(64, 0.019))[0] == "none"  # it grew 90% as much as the batch
    rows = [{**small, "framework": "pytorch", "model_name": "mlp", "precision": "fp32", "hostname": "h"}]
    rows.append({**rows[0], "batch_size": 64, "step_time_median_s": 0.012})
    bottleneck.annotate(rows)
    assert rows[0]["bottleneck"] == "overhead" and rows[1]["bottleneck"] != "overhead"  # the largest: no larger


def test_a_profiled_step_that_is_another_program_gets_no_verdict() -> None:
    """Three separately jitted parts in place of one fused step: their shares do not describe the timed step."""
    got, why = bottleneck.verdict(row(step_profiled_s=0.175, step_time_median_s=0.100, step_data_s=0.09))
    assert got is None and "is not the timed step" in why


def test_compute_bound_reads_the_calibrations_spread_and_other_frameworks() -> None:
    """MFU over the calibration's best run must clear the line; and where another framework runs the same
    FLOPs clearly faster, the framework is said to matter."""
    assert bottleneck.verdict(row(mfu=0.62, mfu_low=0.45, mfu_high=0.70))[0] == "none"  # its spread crosses 50%
    got, why = bottleneck.verdict(row(mfu=0.62, mfu_low=0.55, mfu_high=0.70))
    assert got == "compute" and "(55-70% over the calibration's runs)" in why
    same = {
        "model_name": "resnet18",
        "precision": "fp32",
        "batch_size": 64,
        "hostname": "h",
        "ci_kind": "runs",
        "repeats": 5,
    }
    slow = row(framework="tensorflow", mfu=0.62, samples_per_second=30.0, **same)
    fast = row(framework="pytorch", mfu=0.3, samples_per_second=60.0, **same)
    for r, sps in ((slow, 30.0), (fast, 60.0)):
        r.update(samples_per_second_ci_low=sps * 0.98, samples_per_second_ci_high=sps * 1.02)
    bottleneck.annotate([slow, fast])
    assert slow["bottleneck"] == "compute" and "pytorch runs the same FLOPs 2.00x faster" in slow["bottleneck_evidence"]
    assert "the framework is not what holds it back" not in bottleneck.ADVICE["compute"]


# --- real cells ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def slow_run(tmp_path_factory) -> Path:
    """One PyTorch MLP cell whose batches arrive slowly (tests/slow_input_worker.py), no trace kept; the
    other tests read the shared run, every cell of which keeps its trace (`profile: true`)."""
    pytest.importorskip("torch")
    tmp = tmp_path_factory.mktemp("profile")
    suite = suite_dict(name="slow", models=["mlp"], workers={"pytorch": "tests.slow_input_worker"}, profile_steps=5)
    (tmp / "slow.yaml").write_text(yaml.safe_dump(suite))
    proc = cli("run", "slow.yaml", "--runs-dir", "runs", cwd=tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp / "runs" / "slow"


pytest_e2e = pytest.mark.e2e


@pytest_e2e
def test_every_cell_carries_its_breakdowns_and_the_parts_add_up(shared_run: Path) -> None:
    df = pd.read_parquet(shared_run / "results.parquet")
    assert len(df) == SHARED_CELLS and set(df.status) == {"ok"}, df[["framework", "model_name", "status", "reason"]]
    for _, r in df.iterrows():
        cell = f"{r.framework} {r.model_name}"
        parts = [r.step_data_s, r.step_forward_s, r.step_backward_s, r.step_optimizer_s, r.step_other_s]
        # a tiny fused step may leave backward 0: its lone forward took as long as forward+backward
        assert all(p >= 0 for p in parts) and r.step_forward_s > 0, cell
        assert sum(parts) == pytest.approx(r.step_profiled_s, rel=1e-9), cell  # the profiled step's own parts
        # how far the split step lies from the timed median is a measurement (docs/measurement.md states
        # what it was), not asserted here: one slow step of five on a busy 2-core machine moves it
        assert r.profile_steps == 5 and pd.isna(r.profile_skipped)
        assert r.memory_params_mb == pytest.approx(4 * r.num_parameters / MIB)
        assert r.memory_activations_mb >= 0
        # a verdict, or none where the profiled step is another program than the timed one (a tiny step on
        # a busy machine can land there), and then the evidence says so
        if pd.isna(r.bottleneck):
            assert r.bottleneck_evidence.startswith("the profiled step"), (cell, r.bottleneck_evidence)
        else:
            assert r.bottleneck in {"input", "host", "overhead", "memory", "compute", "none"}, cell
        assert r.bottleneck_evidence


# the slow cell's verdict compares its profiled step with its timed ones: alone on the machine (`serial`),
# as the profile and the timed steps of a cell beside another test's see different load
@pytest_e2e
@pytest.mark.serial
def test_a_starved_input_path_is_called_input_bound(slow_run: Path) -> None:
    slow = pd.read_parquet(slow_run / "results.parquet").iloc[0]
    assert slow.bottleneck == "input", slow.bottleneck_evidence
    assert slow.step_data_s > slow.step_forward_s + slow.step_backward_s  # the 20 ms sleep is in the data part
    assert pd.isna(slow.profile_trace) and not (slow_run / "profiles").exists()  # not asked: none kept
    report = (slow_run / "report.html").read_text()
    assert "id='bottlenecks'" in report and "a faster framework would not" in report  # input-bound, and what helps
    results_md = (slow_run / "RESULTS.md").read_text()
    assert "**input**" in results_md and "What would help" in results_md


@pytest_e2e
def test_a_compute_heavy_cell_is_not_input_bound(shared_run: Path) -> None:
    df = pd.read_parquet(shared_run / "results.parquet")
    assert set(df[df.model_name == "resnet18"].bottleneck) & {"input"} == set()


@pytest_e2e
def test_each_kept_trace_loads_in_the_viewer_it_is_meant_for(shared_run: Path) -> None:
    df = pd.read_parquet(shared_run / "results.parquet").set_index(["framework", "model_name"])
    for (framework, model), r in df.iterrows():
        path = shared_run / r.profile_trace
        assert path.is_file(), (framework, model, r.profile_trace)
        if framework == "pytorch":  # a Chrome trace (chrome://tracing, Perfetto)
            events = json.loads(path.read_text())["traceEvents"]
            assert any(str(e.get("name", "")).startswith("aten::") for e in events)
        elif framework == "jax":  # Perfetto's JSON trace
            assert json.loads(gzip.decompress(path.read_bytes()))["traceEvents"]
        else:  # TensorBoard's profile plugin reads this XSpace protobuf
            xplane_pb2 = pytest.importorskip("tensorflow.tsl.profiler.protobuf.xplane_pb2")
            space = xplane_pb2.XSpace()
            space.ParseFromString(path.read_bytes())
            assert sum(len(line.events) for plane in space.planes for line in plane.lines) > 0
    report = (shared_run / "report.html").read_text()
    for trace in df.profile_trace:  # the report links each cell's trace, relative to where it lies
        assert f"href='{trace}'" in report


@pytest_e2e
def test_the_report_shows_the_breakdowns(shared_run: Path) -> None:
    report = (shared_run / "report.html").read_text()
    assert "id='step-breakdown'" in report and "id='memory-breakdown'" in report
