"""The report's conclusions from hand-made result sets: recommendations follow the numbers, Pareto
fronts, speed-ups, empty charts explained, worker text escaped; and `compare`'s statistics."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import pytest

from mlbench.analysis import compare, evidence, recommend
from mlbench.present import charts, comparison, content, report
from mlbench.results import schema
from workers.common.stats import t_interval


def warnings(rows: list[dict]) -> list[str]:
    """The warnings both outputs print for these rows."""
    return content.gather(rows, {}, {}, charts_too=False).warnings


def row(framework: str, model: str = "mlp", sps: float = 1000.0, spread: float = 0.01, **kw) -> dict:
    """A result row as the store makes it: every column present, null unless given. By default a cell of
    five runs (between-run intervals, ci_kind runs); `runs=1` makes it a single run."""
    r = dict.fromkeys(schema.SCHEMA.names)
    rng = np.random.default_rng(zlib.crc32(f"{framework} {model} {sps}".encode()))  # same data every run
    lat = kw.pop("latency_ms", 1.0)
    runs = kw.pop("runs", 5)
    r.update(
        framework=framework,
        model_name=model,
        device="cpu",
        precision="fp32",
        batch_size=32,
        status="ok",
        samples_per_second=sps,
        samples_per_second_ci_low=sps * (1 - spread),
        samples_per_second_ci_high=sps * (1 + spread),
        inference_b1_times_ms=list(lat * (1 + 0.01 * rng.standard_normal(200))),
        inference_b1_latency_p50_ms=lat,
        repeat_b1_latency_p50_ms=list(lat * (1 + 0.01 * rng.standard_normal(runs))) if runs > 1 else [lat],
        ci_kind="runs" if runs > 1 else "within_run",
        repeats=runs,
        peak_memory_mb=500.0,
        final_val_accuracy=0.9,
        val_samples=1000,
        train_samples=320,
        epochs=1,
        epochs_detail=[{"epoch": 0, "train_loss": 1.0, "val_accuracy": 0.9}],
        spec_json=json.dumps({"framework": framework, "model": model}),
        cell_id=f"{framework}-{model}",
    )
    r.update(kw)
    return r


def headline_of(rows: list[dict], criterion: str) -> recommend.Recommendation:
    return next(r for r in recommend.recommendations(rows) if r.criterion == criterion)


def test_recommendations_follow_the_numbers() -> None:
    a = [row("pytorch", sps=1000), row("jax", sps=1500), row("tensorflow", sps=900)]
    b = [row("pytorch", sps=2000), row("jax", sps=1500), row("tensorflow", sps=900)]
    ra, rb = headline_of(a, "train_throughput"), headline_of(b, "train_throughput")
    assert ra.clear and ra.winner.row["framework"] == "jax" and ra.runner_up.row["framework"] == "pytorch"
    assert rb.clear and rb.winner.row["framework"] == "pytorch" and "is 1.33x jax" in rb.verdict
    assert "beyond the between-run uncertainty: 1.3" in rb.verdict  # the ratio's own interval
    # the HTML headline says the same
    assert "jax fp32 bs32" in report.headline(recommend.recommendations(a)).split("clear winner")[1][:200]
    assert "pytorch fp32 bs32" in report.headline(recommend.recommendations(b)).split("clear winner")[1][:200]


def test_overlapping_intervals_are_no_clear_winner() -> None:
    rows = [row("pytorch", sps=1000, spread=0.05), row("jax", sps=1040, spread=0.05)]
    rec = headline_of(rows, "train_throughput")
    assert (
        not rec.clear and rec.verdict.startswith("cannot order") and "within the between-run uncertainty" in rec.verdict
    )
    assert "cannot order" in report.headline(recommend.recommendations(rows))
    # separated intervals but a gap not worth reporting: 400,000 against 399,000 samples/s
    close = [row("pytorch", sps=400_000, spread=0.0001), row("jax", sps=399_000, spread=0.0001)]
    rec = headline_of(close, "train_throughput")
    assert not rec.clear and "not clearly the 5% worth reporting" in rec.verdict


def _tell_runs(a: np.ndarray, b: np.ndarray) -> evidence.Told:
    """`tell` on two cells' between-run figures as the store makes them: the mean and its t-interval."""
    better, worse = (a, b) if a.mean() >= b.mean() else (b, a)
    return evidence.tell(
        better.mean(), worse.mean(), (t_interval(better), t_interval(worse)), ("runs", "runs"), "throughput",
        runs=(len(better), len(worse)),
    )  # fmt: skip


def test_the_ratios_interval_calls_a_1_3x_gap_and_no_twin_on_a_noisy_machine() -> None:
    """Five runs a cell at a run-to-run CV of 10% (a noisy run of this 2-core VM): the ratio's 95% interval
    calls a 1.3x gap far more often than asking two 95% intervals not to overlap (a test near 99.5%,
    which missed the planted 1.3x in CI), and calls twins (A/A) almost never: the interval must clear 5%."""
    rng = np.random.default_rng(7)
    twins = [_tell_runs(*(1000 * (1 + 0.1 * rng.standard_normal((2, 5))))).clear for _ in range(2000)]
    assert sum(twins) / len(twins) < 0.01
    called, apart = 0, 0
    for _ in range(2000):
        a, b = 1000 * (1 + 0.1 * rng.standard_normal(5)), 1000 / 1.3 * (1 + 0.1 * rng.standard_normal(5))
        called += _tell_runs(a, b).clear
        apart += t_interval(a)[0] > t_interval(b)[1]
    assert called / 2000 > 0.8 and called > apart * 1.2, (called, apart)
    # the figures it gives: the gap's interval, in the verdict's words
    told = _tell_runs(np.array([1000.0, 1100, 950, 1050, 900]), np.array([760.0, 800, 740, 790, 770]))
    assert told.clear and told.why.startswith("beyond the between-run uncertainty: 1.") and "at 95%" in told.why


def test_the_bounds_beside_a_throughput_verdict_are_the_interval_it_read() -> None:
    """Speed-ups and the data tax print the ratio's bounds: between runs the ratio's own 95% interval (the
    one `tell` decides by, so a clear gap never sits beside bounds that include no difference); a single
    run's crossed within-run intervals otherwise."""
    a, b = row("pytorch", sps=1300, spread=0.139), row("jax", sps=1000, spread=0.139)
    said, (low, high) = evidence.tell_throughput(a, b), evidence.throughput_ratio_bounds(a, b)
    assert said.clear and 1.05 < low < 1.3 < high and f"{low:.2f}x to {high:.2f}x at 95%" in said.why
    assert (a["samples_per_second_ci_low"] / b["samples_per_second_ci_high"]) < 1  # crossing them would not
    one, other = row("pytorch", sps=1300, runs=1), row("jax", sps=1000, runs=1)
    assert evidence.throughput_ratio_bounds(one, other) == pytest.approx((1287 / 1010, 1313 / 990))


def test_single_runs_are_told_apart_only_beyond_what_a_rerun_moves() -> None:
    """One process's interval says nothing of the next: between single runs only a gap beyond the measured
    single-run floor (45%) is a verdict, however narrow the within-run intervals."""
    rows = [row("pytorch", sps=1300, runs=1), row("jax", sps=1000, runs=1)]
    rec = headline_of(rows, "train_throughput")
    assert not rec.clear and "single runs: 30% apart, under the 45%" in rec.verdict
    rows = [row("pytorch", sps=2000, runs=1), row("jax", sps=1000, runs=1)]
    assert headline_of(rows, "train_throughput").clear  # 2x from one run each
    mixed = [row("pytorch", sps=1300), row("jax", sps=1000, runs=1)]  # one side a single run: its floor
    assert "a single run: 30% apart" in headline_of(mixed, "train_throughput").verdict


def test_a_noisy_single_run_needs_a_wider_gap() -> None:
    """A single run whose steps spread needs a gap widened by twice its robust CV, and the verdict says so;
    a quiet single run needs the plain floor; with between-run intervals the spread is in them already."""
    noisy = row("pytorch", sps=3000, noisy=True, runs=1, step_time_robust_cv=0.3)
    rec = headline_of([noisy, row("jax", sps=1000), row("tensorflow", sps=1900)], "train_throughput")
    assert (
        not rec.clear and "58% apart, under the 105% a rerun of a run this noisy (robust CV 30%) moves" in rec.verdict
    )
    assert "jax fp32 bs32 behind tensorflow fp32 bs32 by 1.90x" in rec.verdict  # the others are still ordered
    rec = headline_of([noisy, row("jax", sps=1000)], "train_throughput")  # 3x clears even that
    assert rec.clear and rec.winner.row["framework"] == "pytorch" and "beyond the 105%" in rec.verdict
    quiet = row("pytorch", sps=3000, runs=1, step_time_robust_cv=0.05)  # under the noise line: the plain 45%
    rec = headline_of([quiet, row("tensorflow", sps=1900)], "train_throughput")
    assert rec.clear and "beyond the 45% a rerun of the same code moves" in rec.verdict
    assert headline_of([row("pytorch", sps=3000, noisy=True), row("jax", sps=1000)], "train_throughput").clear
    # nor one timed while other processes kept the CPU busy, and the report says so
    rows = [row("pytorch", sps=2000, cpu_other_pct=90.0), row("jax", sps=1000, cpu_other_pct=3.0)]
    rec = headline_of(rows, "train_throughput")
    assert not rec.clear and "only jax" in rec.verdict and "other processes used 90% of a core" in rec.verdict
    assert any("other processes used more than 25% of a core (up to 90%)" in w for w in warnings(rows))
    assert not any("other processes" in w for w in warnings([row("jax", cpu_other_pct=3.0)]))


def test_cells_that_page_fault_every_step_are_named_in_the_warnings() -> None:
    rows = [row("pytorch", page_faults_per_step=54357.8), row("jax", page_faults_per_step=830.9)]
    said = [w for w in warnings(rows) if "page-faulted" in w]
    assert said == [
        "1 cell(s) page-faulted more than 5,000 pages a training step (up to 54,358): memory given back to the "
        "kernel and mapped in again every step, a cost inside their step times that the allocator's settings "
        "decide (see `malloc` in docs/measurement.md)."
    ]
    assert not any("page-faulted" in w for w in warnings([row("jax", page_faults_per_step=830.9), row("tf")]))


def test_latency_memory_and_accuracy_criteria() -> None:
    rows = [
        row("pytorch", latency_ms=2.0, peak_memory_mb=1000.0, final_val_accuracy=0.80),
        row("jax", latency_ms=1.0, peak_memory_mb=980.0, final_val_accuracy=0.95),
    ]
    lat = headline_of(rows, "inference_latency")
    assert lat.clear and lat.winner.row["framework"] == "jax" and lat.winner.low < 1.0 < lat.winner.high
    assert lat.winner.label == "jax fp32" and lat.winner.kind == "runs"  # one workload: no training batch in it
    mem = headline_of(rows, "memory")  # 2% apart: inside what a rerun moves it
    assert not mem.clear and mem.winner.row["framework"] == "jax" and "under the 5%" in mem.verdict
    rows[0]["peak_memory_mb"] = 2000.0
    assert headline_of(rows, "memory").clear
    acc = headline_of(rows, "accuracy")  # 95% vs 80% of 1000 samples: Wilson intervals far apart
    assert acc.clear and acc.winner.row["framework"] == "jax" and acc.winner.value == pytest.approx(95.0)


def test_latency_reads_its_own_evidence_not_the_training_steps() -> None:
    """A training step CV says nothing of inference: two single runs 3x apart in batch-1 latency are told
    apart even where training was noisy; a single run whose own passes spread needs a wider gap."""
    rows = [
        row("pytorch", latency_ms=1.0, runs=1, noisy=True, step_time_robust_cv=0.4),
        row("jax", latency_ms=3.0, runs=1, noisy=True, step_time_robust_cv=1.4),
    ]
    lat = headline_of(rows, "inference_latency")
    assert lat.clear and lat.winner.label == "pytorch fp32"
    rows[1] = row("jax", latency_ms=2.0, runs=1)  # 2x apart: beyond the 75% a quiet pair of single runs needs
    assert headline_of(rows, "inference_latency").clear
    rows[0]["inference_b1_latency_robust_cv"] = 0.25  # its own passes spread: the gap needed grows to 125%
    lat = headline_of(rows, "inference_latency")
    assert not lat.clear and "under the 125% a rerun of a run this noisy (robust CV 25%) moves" in lat.verdict
    # each framework's cells at other batch sizes measured the same workload: pooled, one estimate each
    pooled = [row("pytorch", latency_ms=1.0, batch_size=b, runs=1) for b in (32, 64)] + [row("jax", latency_ms=1.5)]
    est = recommend.latency_estimates(pooled)
    assert [(e.label, e.runs, e.kind) for e in est] == [("pytorch fp32", 2, "runs"), ("jax fp32", 5, "runs")]


def test_peak_memory_from_a_host_rss_needs_the_rss_floor_and_says_what_dominates() -> None:
    rss = {"memory_source": "host RSS peak of the worker's tree"}
    rows = [row("pytorch", peak_memory_mb=354.0, **rss), row("jax", peak_memory_mb=374.0, **rss)]
    mem = headline_of(rows, "memory")
    assert not mem.clear and "under the 15%" in mem.verdict  # 5.6%: a rerun moves a host RSS that much
    parts = {"memory_params_mb": 4.0, "memory_grads_mb": 4.0, "memory_optimizer_mb": 8.0, "memory_activations_mb": 4.0}
    rows = [row("pytorch", peak_memory_mb=354.0, **rss, **parts), row("jax", peak_memory_mb=500.0, **rss)]
    mem = headline_of(rows, "memory")
    assert mem.clear and "mostly the runtime (libraries, allocator, data): 20 MiB is the model's" in mem.verdict


def test_one_framework_ranks_its_configurations() -> None:
    rows = [row("pytorch", sps=1000, batch_size=32), row("pytorch", sps=3000, batch_size=256)]
    rec = headline_of(rows, "train_throughput")
    assert rec.clear and rec.winner.row["batch_size"] == 256 and rec.runner_up.row["batch_size"] == 32


def test_failed_cells_never_win() -> None:
    rows = [row("pytorch", sps=1000), row("jax", sps=9000, status="failed", reason="boom")]
    assert headline_of(rows, "train_throughput").winner.row["framework"] == "pytorch"


def test_wilson_interval_hand_computed() -> None:
    lo, hi = recommend.wilson_interval(0.5, 100)  # z = 1.96: 0.5 +- 0.0960 / 1.0384
    assert lo == pytest.approx(0.4038, abs=1e-3) and hi == pytest.approx(0.5962, abs=1e-3)


def test_pareto_front() -> None:
    # maximise throughput (y), minimise latency (x)
    pts = [(1.0, 100.0), (2.0, 300.0), (3.0, 200.0), (4.0, 400.0), (2.0, 300.0)]
    assert recommend.pareto_front(pts, (False, True)) == [True, True, False, True, True]


def test_pareto_front_is_the_pairwise_definition_on_points_with_ties() -> None:
    """The sweep against the definition (no other point at least as good on both axes and better on one),
    on small grids of tied values in every direction of the axes."""
    import random

    def pairwise(points, up):
        def good(a, b, u):
            return a >= b if u else a <= b

        return [
            not any(
                j != i and good(q[0], p[0], up[0]) and good(q[1], p[1], up[1]) and q != p for j, q in enumerate(points)
            )
            for i, p in enumerate(points)
        ]

    rng = random.Random(1)
    for _ in range(2000):
        pts = [(float(rng.randint(0, 4)), float(rng.randint(0, 4))) for _ in range(rng.randint(0, 12))]
        up = (rng.random() < 0.5, rng.random() < 0.5)
        assert recommend.pareto_front(pts, up) == pairwise(pts, up), (pts, up)


def test_precision_speedup_pairs_cells_that_differ_only_in_precision() -> None:
    rows = [
        row("pytorch", sps=1000),
        row("pytorch", sps=2500, precision="bf16", final_val_accuracy=0.88),
        row("jax", sps=3000, precision="bf16"),  # no fp32 jax cell: no pair
    ]
    pairs = recommend.ratios(rows, "precision", lambda p: p == "fp32")
    assert len(pairs) == 1 and pairs[0]["ratio"] == pytest.approx(2.5)
    assert pairs[0]["accuracy_delta_pts"] == pytest.approx(-2.0)


def test_charts_with_nothing_to_show_say_why() -> None:
    rows = [row("pytorch"), row("jax")]
    drawn = {c.id: c for c in (f(rows) for f in charts.ALL)}
    for cid in ("batch-scaling", "precision", "device", "scaling", "gpu", "mfu"):
        assert not drawn[cid].drawn and "class='empty'" in drawn[cid].html, cid
    assert drawn["throughput"].drawn and drawn["memory"].drawn and drawn["latency"].drawn
    failed = [row("pytorch", status="failed", reason="x")]
    assert not any(f(failed).drawn for f in charts.ALL)
    assert "no cell finished ok" in report.build_html(content.gather(failed, {"name": "t"}, {}))


def test_worker_and_config_text_is_escaped() -> None:
    evil = "<script>alert(1)</script>"
    rows = [row("pytorch"), row("jax", status="crashed", reason=evil)]
    page = report.build_html(content.gather(rows, {"name": evil}, {"hostname": evil}))
    assert evil not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    # failures come first in the cells table
    table = report.cells_table(rows)
    assert table.index("crashed") < table.index(">ok<")


def test_compare_statistics() -> None:
    rng = np.random.default_rng(0)
    base = rng.normal(0.010, 0.0002, 300)
    # repeats on both sides: the thresholds are the rank test's and the run-to-run CV's, no single-run floor
    a = row("pytorch", sps=3200.0, step_times_s=list(base), repeats=3)
    same = row("pytorch", sps=3190.0, step_times_s=list(rng.normal(0.010, 0.0002, 300)), repeats=3)
    slow = row("pytorch", sps=2000.0, step_times_s=list(base * 1.6), repeats=3)
    tiny = row("pytorch", sps=3100.0, step_times_s=list(base * 1.03), repeats=3)  # real but under 5%
    m = compare.METRICS[0]
    assert compare.compare_metric(m, a, same, 0.01, 0.05).verdict == "unchanged"
    assert compare.compare_metric(m, a, slow, 0.01, 0.05).verdict == "regression"
    assert compare.compare_metric(m, slow, a, 0.01, 0.05).verdict == "improvement"
    c = compare.compare_metric(m, a, tiny, 0.01, 0.05)
    assert c.p < 1e-6 and c.verdict == "unchanged"  # significant but too small to matter
    noisy = dict(slow, repeats_cv=0.3)  # run-to-run CV 30%: a 37% drop is inside twice that
    assert compare.compare_metric(m, a, noisy, 0.01, 0.05).verdict == "unchanged"
    # a 2x slowdown the rank test cannot confirm on six steps (an outlier in A): unconfirmed, not unchanged
    fast = [0.00271, 0.00749, 0.00232, 0.00223, 0.00217, 0.00232]  # a make quick PyTorch MLP's timed steps
    slowed = [0.00755, 0.00737, 0.00666, 0.00584, 0.00593, 0.00553]  # ... run with the 2x planted slowdown
    few = compare.compare_metric(
        m, dict(a, step_times_s=fast), dict(a, samples_per_second=1600.0, step_times_s=slowed), 0.01, 0.05
    )
    assert few.p > 0.01 and few.verdict == "unconfirmed"
    acc = compare.METRICS[-1]
    settled = dict(a, epochs_detail=[{"epoch": 0, "val_accuracy": 0.895}, {"epoch": 1, "val_accuracy": 0.9}])
    worse = dict(settled, final_val_accuracy=0.80, epochs_detail=[{"val_accuracy": 0.805}, {"val_accuracy": 0.80}])
    assert compare.compare_metric(acc, settled, worse, 0.01, 0.05).verdict == "regression"  # -10 of 1,000
    assert (
        compare.compare_metric(acc, settled, dict(settled, final_val_accuracy=0.89), 0.01, 0.05).verdict == "unchanged"
    )
    # one epoch is no learning curve: a 10-point swing is not a regression to fail a build on
    assert compare.compare_metric(acc, a, dict(a, final_val_accuracy=0.80), 0.01, 0.05).verdict == "unconfirmed"


def test_compare_without_raw_samples_uses_the_change_alone() -> None:
    m = compare.METRICS[0]
    a, b = row("pytorch", sps=3000.0, step_times_s=[]), row("pytorch", sps=1500.0, step_times_s=[])
    c = compare.compare_metric(m, a, b, 0.01, 0.05)
    assert c.p is None and c.verdict == "regression"


def test_compare_text_prints_user_text_verbatim(tmp_path) -> None:
    cmp = compare.Comparison(tmp_path / "[/x]", tmp_path / "b", [], [], ["pytorch [bold]mlp"], {"os": ("[/a]", "b")})
    out = comparison.text(cmp)
    assert "[/x]" in out and "only in B: pytorch [bold]mlp" in out and "'[/a]' in A" in out


def test_a_host_rss_change_between_single_runs_needs_the_rss_floor() -> None:
    mem = next(m for m in compare.METRICS if m.column == "peak_memory_mb")
    rss = {"memory_source": "peak and avg: host RSS of the worker's process tree"}
    a = row("tensorflow", peak_memory_mb=1380.0, runs=1, **rss)
    assert compare.compare_metric(mem, a, dict(a, peak_memory_mb=1467.0), 0.01, 0.05).verdict == "unconfirmed"
    assert compare.compare_metric(mem, a, dict(a, peak_memory_mb=1700.0), 0.01, 0.05).verdict == "regression"
    repeated = dict(a, repeats=3)
    assert compare.compare_metric(mem, repeated, dict(repeated, peak_memory_mb=1467.0), 0.01, 0.05).verdict == (
        "regression"
    )
    gpu = row("pytorch", peak_memory_mb=1380.0, memory_source="allocator")
    assert compare.compare_metric(mem, gpu, dict(gpu, peak_memory_mb=1467.0), 0.01, 0.05).verdict == "regression"


def test_memory_is_compared_only_where_measured_the_same_way() -> None:
    rows = [
        row("pytorch", peak_memory_mb=100.0, memory_source="allocator"),
        row("jax", peak_memory_mb=900.0, memory_source="allocator"),
        row("tensorflow", peak_memory_mb=10.0, memory_source="device in use"),
    ]
    rec = headline_of(rows, "memory")
    assert rec.winner.row["framework"] == "pytorch" and "only cells whose memory is 'allocator'" in rec.note


def test_compare_threshold_follows_each_figures_run_to_run_variation() -> None:
    rng = np.random.default_rng(2)
    lat = compare.METRICS[1]
    a = row("pytorch", inference_latency_p50_ms=1.0, inference_times_ms=list(rng.normal(1.0, 0.01, 60)), repeats=3)
    b = row("pytorch", inference_latency_p50_ms=1.5, inference_times_ms=list(rng.normal(1.5, 0.01, 60)), repeats=3)
    assert compare.compare_metric(lat, a, b, 0.01, 0.05).verdict == "regression"
    # runs of the same cell that differ by 30% (CV across repeats): a 50% change is within twice that
    noisy = compare.compare_metric(lat, dict(a, repeats_latency_cv=0.3), b, 0.01, 0.05)
    assert noisy.verdict == "unchanged" and noisy.threshold == pytest.approx(0.6)


def test_compare_latency_floor_in_milliseconds() -> None:
    """A sub-millisecond latency that moves by tens of microseconds is a large relative change no code
    made (0.10 -> 0.17 ms between two runs of the same code on a 2-core VM): `min_change_ms` leaves it
    unchanged, and still flags a change above the floor. Throughput takes no floor."""
    rng = np.random.default_rng(3)
    b1 = compare.METRICS[2]
    kw = {"repeats": 3}  # with repeats: the single-run floor (a test of its own) is not what this checks
    a = row("pytorch", inference_b1_latency_p50_ms=0.10, inference_b1_times_ms=list(rng.normal(0.10, 0.002, 60)), **kw)
    b = row("pytorch", inference_b1_latency_p50_ms=0.17, inference_b1_times_ms=list(rng.normal(0.17, 0.002, 60)), **kw)
    assert compare.compare_metric(b1, a, b, 0.01, 0.6).verdict == "regression"  # +70%, p tiny
    c = compare.compare_metric(b1, a, b, 0.01, 0.6, min_change_ms=0.2)
    assert c.verdict == "unchanged" and c.floor_ms == 0.2
    assert comparison.table_rows(compare.Comparison(Path("a"), Path("b"), [c], [], [], {}))[0][-1] == "60% and 0.2 ms"
    slow = row("pytorch", inference_b1_latency_p50_ms=0.45, inference_b1_times_ms=list(rng.normal(0.45, 0.002, 60)))
    assert compare.compare_metric(b1, a, slow, 0.01, 0.6, min_change_ms=0.2).verdict == "regression"
    thr = compare.METRICS[0]
    x = row("pytorch", sps=3200.0, step_times_s=list(rng.normal(0.010, 0.0002, 300)))
    y = row("pytorch", sps=1600.0, step_times_s=list(rng.normal(0.020, 0.0002, 300)))
    assert compare.compare_metric(thr, x, y, 0.01, 0.05, min_change_ms=1000).verdict == "regression"


def test_cells_from_several_hosts_are_grouped_and_mixed_hardware_is_warned() -> None:
    same = dict(cpu_model="Xeon", cpu_count_physical=8)
    one_kind = [row("pytorch", hostname="a", **same), row("jax", hostname="b", **same)]
    assert headline_of(one_kind, "train_throughput").hardware == ["Xeon (8 cores)"]
    assert not any("different hardware" in w for w in warnings(one_kind))  # two hosts, one kind: fine
    mixed = [row("pytorch", hostname="a", **same), row("jax", hostname="b", cpu_model="EPYC", cpu_count_physical=8)]
    rec = headline_of(mixed, "train_throughput")
    assert len(rec.hardware) == 2 and "2 kinds of hardware" in rec.note
    assert any("different hardware (mlp on cpu)" in w for w in warnings(mixed))
    assert "<h2 id='hosts'>Hosts</h2>" in report.hosts_section(mixed)
    assert report.hosts_section([row("pytorch", hostname="a"), row("jax", hostname="a")]) == ""  # one host: no section


def test_the_other_load_limit_scales_with_the_machine() -> None:
    small, big = (
        row("jax", cpu_other_pct=90.0, cpu_count_logical=2),
        row("jax", cpu_other_pct=90.0, cpu_count_logical=128),
    )
    assert evidence.loaded(small) and not evidence.loaded(big)  # 0.9 of a core is 0.7% of 128 cores
    assert evidence.loaded(row("jax", cpu_other_pct=700.0, cpu_count_logical=128))  # 5% of 128 cores is 640%


def test_single_runs_confirm_only_what_clears_the_floor_and_never_under_other_load() -> None:
    """Without repeats, a change under the single-run floor is unconfirmed (two runs of the same code
    differ that much on a small machine); a 2x slowdown is still a regression; a cell that ran under
    other load is never a confirmed regression."""
    rng = np.random.default_rng(4)
    base = rng.normal(0.010, 0.0002, 300)
    m, lat = compare.METRICS[0], compare.METRICS[1]
    a = row("pytorch", runs=1, sps=3200.0, step_times_s=list(base))
    drift = compare.compare_metric(m, a, row("pytorch", runs=1, sps=2240.0, step_times_s=list(base * 1.43)), 0.01, 0.05)
    assert drift.p < 1e-6 and drift.verdict == "unconfirmed"  # -30%: the rank test is sure, one run is not
    halved = compare.compare_metric(m, a, row("pytorch", runs=1, sps=1600.0, step_times_s=list(base * 2.0)), 0.01, 0.05)
    assert halved.verdict == "regression"  # a 2x slowdown
    la = row("pytorch", runs=1, inference_latency_p50_ms=1.0, inference_times_ms=list(rng.normal(1.0, 0.01, 60)))
    lb = row("pytorch", runs=1, inference_latency_p50_ms=1.6, inference_times_ms=list(rng.normal(1.6, 0.01, 60)))
    l2 = row("pytorch", runs=1, inference_latency_p50_ms=2.0, inference_times_ms=list(rng.normal(2.0, 0.01, 60)))
    assert compare.compare_metric(lat, la, lb, 0.01, 0.05).verdict == "unconfirmed"  # +60%
    assert compare.compare_metric(lat, la, l2, 0.01, 0.05).verdict == "regression"  # +100%
    busy = dict(
        row("pytorch", runs=1, sps=1600.0, step_times_s=list(base * 2.0)), cpu_other_pct=180.0, cpu_count_logical=2
    )
    assert compare.compare_metric(m, a, busy, 0.01, 0.05).verdict == "unconfirmed"


def test_a_big_grids_per_cell_charts_draw_each_models_fastest_cells_and_say_so() -> None:
    """Past DRAWN_PER_MODEL cells of a model, a chart with a mark per cell draws that model's fastest cells
    and its title says how many of how many; a chart of series (batch scaling) still reads every cell."""
    n = charts.DRAWN_PER_MODEL
    small = [row("pytorch", sps=1000.0 + i, batch_size=i + 1, cell_id=f"s{i}") for i in range(n)]
    assert all("highest training throughput" not in c.title for c in charts.figures(small))
    big = [row(fw, sps=100.0 + i, batch_size=i + 1, cell_id=f"{fw}{i}") for fw in ("pytorch", "jax") for i in range(n)]
    big += [row("pytorch", model="bert", sps=50.0, cell_id="bert")]  # a model with one cell: drawn
    kept, note = charts.drawn_cells(big)
    assert (
        len(kept) == n + 1
        and note == f"the {n} of highest training throughput of each model, {n + 1} of {2 * n + 1} cells"
    )
    assert min(r["samples_per_second"] for r in kept if r["model_name"] == "mlp") == 100.0 + n / 2  # the top half
    by_id = {c.id: c for c in charts.figures(big)}
    assert by_id["throughput"].title.endswith(f"({note})") and by_id["latency"].title.endswith(f"({note})")
    assert sum(len(t.x) for t in by_id["throughput"].figure.data) == n + 1
    assert "highest training throughput" not in by_id["batch-scaling"].title
