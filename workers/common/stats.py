"""Summary statistics of raw timing samples (framework-free; used by workers and the orchestrator)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

NOISE_CV = 0.10  # robust coefficient of variation (MAD / median) above which samples are too noisy to rank on
OUTLIER_Z = 3.5  # modified Z-score (Iglewicz and Hoaglin) above which a sample is an outlier
MAX_WARMUP_SHARE = 0.25  # steady-state detection drops at most this share of the steps after the configured warm-up
BLOCKS = 10  # contiguous blocks of a timed window for its batch-means interval


def percentiles_ms(samples_s: Sequence[float]) -> dict[str, float | None]:
    """Mean, p50, p95 and p99 in milliseconds of samples given in seconds (None when empty)."""
    if len(samples_s) == 0:
        return {"mean_ms": None, "p50_ms": None, "p95_ms": None, "p99_ms": None}
    a = np.asarray(samples_s, dtype=np.float64) * 1e3
    p50, p95, p99 = np.percentile(a, [50, 95, 99])
    return {"mean_ms": float(a.mean()), "p50_ms": float(p50), "p95_ms": float(p95), "p99_ms": float(p99)}


def median_ci(samples: Sequence[float], confidence: float = 0.95) -> tuple[float | None, float | None]:
    """Distribution-free confidence interval of the median: order statistics from the binomial(n, 1/2)."""
    return quantile_ci(samples, 0.5, confidence)


def quantile_ci(samples: Sequence[float], q: float, confidence: float = 0.95) -> tuple[float | None, float | None]:
    """Distribution-free confidence interval of the q-quantile (p95: q=0.95) from order statistics.

    The number of samples below the true quantile is Binomial(n, q); the bounds are the order
    statistics whose tails each hold at most (1 - confidence) / 2 of it. A bound is None where n is
    too small for it (a p99 needs several hundred samples before its upper bound exists).
    """
    n = len(samples)
    if n == 0 or not 0.0 < q < 1.0:
        return None, None
    a = np.sort(np.asarray(samples, dtype=np.float64))
    alpha = (1.0 - confidence) / 2.0
    k = np.arange(n + 1)
    log_pmf = np.array([math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) for i in k])
    log_pmf += k * math.log(q) + (n - k) * math.log1p(-q)
    cdf = np.cumsum(np.exp(log_pmf))
    below = np.nonzero(cdf <= alpha)[0]  # lower bound a[j]: P(B <= j) <= alpha
    above = np.nonzero(1.0 - cdf[:n] <= alpha)[0]  # upper bound a[j]: P(B > j) <= alpha
    lo = float(a[below[-1]]) if len(below) and below[-1] < n else None
    hi = float(a[above[0]]) if len(above) else None
    return lo, hi


def t_quantile(confidence: float, df: int) -> float:
    """The two-sided Student t quantile for `confidence` at `df` degrees of freedom."""
    from scipy import stats as sps  # here: a worker never needs it

    return float(sps.t.ppf(0.5 + confidence / 2.0, df))


def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float | None, float | None]:
    """The t-interval of the mean of independent values (one a process): None with fewer than two."""
    a = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if len(a) < 2:
        return None, None
    half = t_quantile(confidence, len(a) - 1) * float(a.std(ddof=1)) / math.sqrt(len(a))
    return float(a.mean() - half), float(a.mean() + half)


def throughput_ci(
    step_s: Sequence[float], batch_size: int, confidence: float = 0.95, blocks: int = BLOCKS
) -> tuple[float | None, float | None]:
    """Within-run interval of the steady throughput batch_size / mean(step), by batch means: the timed
    window cut into up to `blocks` contiguous blocks of at least 3 steps (2 in a window of 6-8), a
    t-interval on the blocks' mean step, mapped to throughput. Consecutive steps are correlated (lag-1 0.7 in a ResNet), which
    an i.i.d. bootstrap of the steps ignores; blocks keep it inside them. It says nothing of a rerun:
    another process lands elsewhere (the between-run interval of repeats covers that). None under 6 steps."""
    a = np.asarray(step_s, dtype=np.float64)
    if len(a) < 6 or a.sum() <= 0:
        return None, None
    k = min(blocks, len(a) // 3) if len(a) >= 9 else 3
    size = len(a) // k
    means = a[: k * size].reshape(k, size).mean(axis=1)
    half = t_quantile(confidence, k - 1) * float(means.std(ddof=1)) / math.sqrt(k)
    mean = float(a.mean())  # the figure's own mean step
    lo_step, hi_step = max(mean - half, 1e-12), mean + half
    return float(batch_size / hi_step), float(batch_size / lo_step)


def robust_cv(samples: Sequence[float]) -> float | None:
    """Dispersion one outlier cannot dominate: 1.4826 x MAD over the median (the SD's estimator under
    normality); None with fewer than three samples."""
    a = np.asarray(samples, dtype=np.float64)
    if len(a) < 3:
        return None
    med = float(np.median(a))
    return 1.4826 * float(np.median(np.abs(a - med))) / med if med > 0 else None


def outliers(samples: Sequence[float]) -> list[bool]:
    """Outlier flags by modified Z-score on the median absolute deviation."""
    a = np.asarray(samples, dtype=np.float64)
    if len(a) < 3:
        return [False] * len(a)
    med = np.median(a)
    mad = np.median(np.abs(a - med))
    if mad == 0:
        return [bool(x != med) for x in a]  # any departure from a constant is an outlier
    z = 0.6745 * (a - med) / mad
    return [bool(abs(v) > OUTLIER_Z) for v in z]


def summarize(samples: Sequence[float]) -> dict[str, float | int | bool | None]:
    """Median, mean, min, max, standard deviation, CV, robust CV, 95% CI of the median, outliers, and
    the noise flag (from the robust CV: one isolated pause does not make a steady cell noisy; the
    outlier count says it is there)."""
    n = len(samples)
    if n == 0:
        return {
            "n": 0,
            "median": None,
            "mean": None,
            "min": None,
            "max": None,
            "std": None,
            "cv": None,
            "robust_cv": None,
            "ci_low": None,
            "ci_high": None,
            "outliers": 0,
            "noisy": None,
        }
    a = np.asarray(samples, dtype=np.float64)
    mean = float(a.mean())
    std = float(a.std(ddof=1)) if n > 1 else None
    cv = (std / mean) if (std is not None and mean > 0) else None
    rcv = robust_cv(a)
    lo, hi = median_ci(a)
    return {
        "n": n,
        "median": float(np.median(a)),
        "mean": mean,
        "min": float(a.min()),
        "max": float(a.max()),
        "std": std,
        "cv": cv,
        "robust_cv": rcv,
        "ci_low": lo,
        "ci_high": hi,
        "outliers": int(sum(outliers(a))),
        "noisy": (rcv > NOISE_CV) if rcv is not None else None,
    }


def steady_state(samples: Sequence[float], min_start: int = 0, min_tail: int = 5) -> tuple[int, bool]:
    """Where the steady state starts in the samples, and whether the cap cut the warm-up short.

    The reference is the median of the second half; the steady state starts at the first index (not
    before `min_start`) from which three consecutive samples are no slower than it by more than
    max(4 robust standard deviations, 5% of the median). One-sided: only a slow prefix is warm-up (a
    fast stretch is not dropped). Capped: at most MAX_WARMUP_SHARE of the steps after `min_start` are
    dropped (the second value says the cap held), so steps that settle late stay in the window and show
    as noise. Samples that never settle, or too few to tell: `min_start`.
    """
    n = len(samples)
    if n - min_start < 2 * min_tail:
        return min_start, False
    a = np.asarray(samples, dtype=np.float64)
    tail = a[n // 2 :]
    med = float(np.median(tail))
    threshold = max(4 * 1.4826 * float(np.median(np.abs(tail - med))), 0.05 * med)
    cap = min_start + int(MAX_WARMUP_SHARE * (n - min_start))
    for i in range(min_start, n - min_tail + 1):
        if np.all(a[i : i + 3] - med <= threshold):
            return (i, False) if i <= cap else (cap, True)
    return min_start, False


def steady_state_start(samples: Sequence[float], min_start: int = 0, min_tail: int = 5) -> int:
    """Index of the first sample of the steady state (see `steady_state`)."""
    return steady_state(samples, min_start, min_tail)[0]


def steady_throughput(warmup_s: Sequence[float], step_s: Sequence[float], batch_size: int) -> dict[str, object]:
    """Split step samples into warm-up and steady state (from the samples, never before the configured
    warm-up) and the steady throughput: timed samples over the timed wall time. Every step's wall time
    includes preparing its batch and evaluation lies outside the steps, so their sum is the window."""
    every = [float(x) for x in (*warmup_s, *step_s)]
    start, capped = steady_state(every, min_start=len(warmup_s))
    timed = every[start:]
    return {
        "start": start,
        "dropped": start - len(warmup_s),  # steps after the configured warm-up taken as warm-up
        "capped": capped,
        "warmup": every[:start],
        "timed": timed,
        "samples_per_second": batch_size * len(timed) / sum(timed) if timed and sum(timed) > 0 else None,
    }
