"""Statistics on small hand-computed samples."""

from __future__ import annotations

import math

import numpy as np
import pytest

from workers.common import stats


def test_summary_of_five_samples() -> None:
    s = stats.summarize([1.0, 2.0, 3.0, 4.0, 10.0])
    assert s["n"] == 5 and s["median"] == 3.0 and s["mean"] == 4.0 and s["min"] == 1.0 and s["max"] == 10.0
    # sample std: sqrt(((3^2 + 2^2 + 1^2 + 0 + 6^2)) / 4) = sqrt(12.5)
    assert s["std"] == pytest.approx(math.sqrt(12.5))
    assert s["cv"] == pytest.approx(math.sqrt(12.5) / 4.0)
    assert s["noisy"] is True
    assert s["ci_low"] is None  # five samples are too few for a 95% interval of the median


def test_single_sample() -> None:
    s = stats.summarize([0.25])
    assert s["n"] == 1 and s["median"] == 0.25 and s["min"] == s["max"] == 0.25
    assert s["std"] is None and s["cv"] is None and s["noisy"] is None and s["outliers"] == 0


def test_empty() -> None:
    assert stats.summarize([])["median"] is None
    assert stats.percentiles_ms([]) == {"mean_ms": None, "p50_ms": None, "p95_ms": None, "p99_ms": None}


def test_median_ci_order_statistics() -> None:
    # n = 10: P(X <= 1) = 11/1024 = 0.011 <= 0.025 < P(X <= 2) = 56/1024, so ranks 2 and 9 (1-based)
    assert stats.median_ci([float(i) for i in range(10)]) == (1.0, 8.0)
    # n = 100: the textbook ranks 40 and 61 (1-based)
    assert stats.median_ci([float(i) for i in range(100)]) == (39.0, 60.0)
    # n = 5: P(X = 0) = 1/32 = 0.031 > 0.025, no 95% interval exists
    assert stats.median_ci([1.0, 2.0, 3.0, 4.0, 5.0]) == (None, None)
    # n = 6: P(X = 0) = 1/64 = 0.016: the interval is the whole range
    assert stats.median_ci([3.0, 1.0, 2.0, 6.0, 5.0, 4.0]) == (1.0, 6.0)
    lo, hi = stats.median_ci([float(i) for i in range(5000)])  # normal approximation
    assert lo < 2499.5 < hi and hi - lo == pytest.approx(2 * 1.96 * math.sqrt(5000) / 2, abs=3)


def test_outliers_by_modified_z_score() -> None:
    # median 10, MAD 1: z(20) = 0.6745 * 10 = 6.7 > 3.5; z(12) = 1.35
    flags = stats.outliers([9.0, 10.0, 11.0, 10.0, 12.0, 20.0, 9.0])
    assert flags == [False, False, False, False, False, True, False]


def test_percentiles_in_ms() -> None:
    p = stats.percentiles_ms([0.001 * i for i in range(1, 101)])  # 1..100 ms
    assert p["mean_ms"] == pytest.approx(50.5)
    assert p["p50_ms"] == pytest.approx(50.5)
    assert p["p99_ms"] == pytest.approx(99.01)


def test_steady_samples_are_not_noisy() -> None:
    assert stats.summarize([1.0, 1.01, 0.99, 1.0, 1.02, 0.98])["noisy"] is False


def test_steady_state_is_found_in_the_samples() -> None:
    # a compile step, two slow autotuning steps, then steady around 1.0
    samples = [30.0, 3.0, 2.0, 1.0, 1.02, 0.98, 1.01, 0.99, 1.0, 1.03, 0.97, 1.0, 1.01, 0.99, 1.0]
    assert stats.steady_state_start(samples) == 3
    assert stats.steady_state_start(samples, min_start=5) == 5  # never earlier than asked
    assert stats.steady_state_start([5.0, 1.0, 1.0], min_start=1) == 1  # too few samples to tell
    steady = [1.0, 1.01, 0.99] * 5
    assert stats.steady_state_start(steady) == 0


def test_quantile_ci_order_statistics() -> None:
    data = [float(i) for i in range(100)]
    # Binomial(100, 0.95): P(B <= 89) = 0.011 <= 0.025 < P(B <= 90); P(B > 99) = 0.006 <= 0.025 < P(B > 98)
    assert stats.quantile_ci(data, 0.95) == (89.0, 99.0)
    # a p99 from 100 samples has no upper bound: too few samples for it
    assert stats.quantile_ci(data, 0.99)[1] is None
    lo, hi = stats.quantile_ci([float(i) for i in range(1000)], 0.99)
    assert lo is not None and hi is not None and lo < 989.5 < hi
    assert stats.quantile_ci(data, 0.5) == stats.median_ci(data) == (39.0, 60.0)
    assert stats.quantile_ci([], 0.5) == (None, None)


def test_throughput_ci_belongs_to_the_figure() -> None:
    rng = np.random.default_rng(1)
    steps = list(rng.lognormal(np.log(0.01), 0.4, 300))  # right-skewed, like real step times
    figure = 32 * len(steps) / sum(steps)
    lo, hi = stats.throughput_ci(steps, 32)
    assert lo < figure < hi and (hi - lo) / figure < 0.15
    assert stats.throughput_ci(steps, 32) == (lo, hi)  # seeded: the same every time
    assert stats.throughput_ci([0.01] * 10, 32) == pytest.approx((3200.0, 3200.0))
    assert stats.throughput_ci([0.01], 32) == (None, None)


def test_t_interval_hand_computed() -> None:
    # mean 2, sample sd 1, n = 3: t(0.975, 2) = 4.303, half-width 4.303 / sqrt(3) = 2.484
    lo, hi = stats.t_interval([1.0, 2.0, 3.0])
    assert lo == pytest.approx(2 - 2.4843, abs=1e-3) and hi == pytest.approx(2 + 2.4843, abs=1e-3)
    assert stats.t_interval([5.0]) == (None, None) and stats.t_interval([]) == (None, None)
    assert stats.t_interval([4.0, 4.0, 4.0]) == (4.0, 4.0)


def test_the_within_run_interval_widens_for_correlated_steps() -> None:
    """Steps that drift in slow waves (as a shared machine's do) are not 300 independent draws: the batch-
    means interval is wider than an interval that takes them as independent would be."""
    rng = np.random.default_rng(2)
    wave = 0.01 * (1 + 0.1 * np.sin(np.arange(300) / 15.0))  # lag-1 correlation near 1
    steps = list(wave * rng.lognormal(0, 0.02, 300))
    lo, hi = stats.throughput_ci(steps, 32)
    figure = 32 / np.mean(steps)
    iid_half = 1.96 * np.std(steps, ddof=1) / np.sqrt(300) / np.mean(steps) * figure
    assert lo < figure < hi and (hi - lo) / 2 > 2 * iid_half


def test_robust_cv_ignores_one_pause_that_the_cv_does_not() -> None:
    steps = [1.0, 1.02, 0.98, 1.01, 0.99] * 20 + [15.0]  # one 15x pause among 101 steps
    s = stats.summarize(steps)
    assert s["cv"] > 1.0 and s["robust_cv"] < 0.05 and s["outliers"] == 1 and s["noisy"] is False
    assert stats.robust_cv([1.0, 2.0]) is None


def test_warm_up_is_a_slow_prefix_only_and_capped() -> None:
    # a fast stretch at the start is not warm-up (two-sided detection used to drop it)
    fast_first = [0.8, 0.8, 0.8, *([1.0, 1.01, 0.99] * 10)]
    assert stats.steady_state(fast_first) == (0, False)
    # slow for 12 of 40 steps: at most a quarter (10) is dropped, and the cap is said
    late = [3.0] * 12 + [1.0, 1.01, 0.99, 1.0] * 7
    assert stats.steady_state(late) == (10, True)
    out = stats.steady_throughput([5.0, 4.0], late, 32)
    assert out["start"] == 2 + 10 and out["dropped"] == 10 and out["capped"] is True
