"""What the worker launcher (mlbench/process/launch.py) adds to a cell's start: spawning /bin/true through
it against the fork + preexec_fn + exec it replaced, paired and interleaved (`python -m bench.launch_cost`).
Prints the median added time with a distribution-free 95% interval (order statistics of the pairs)."""

from __future__ import annotations

import argparse
import ctypes
import os
import subprocess
import time

from mlbench.process import runner

PR_SET_PDEATHSIG = 1


def _before(libc: ctypes.CDLL) -> None:
    """The launch as it was: Python between fork and exec (unsafe in a threaded process; here, none)."""
    proc = subprocess.Popen(
        ["/bin/true"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        start_new_session=True, preexec_fn=lambda: libc.prctl(PR_SET_PDEATHSIG, 9),
    )  # fmt: skip
    proc.communicate()


def _now() -> None:
    proc, _ = runner.spawn(["/bin/true"], dict(os.environ), None, 0.1)
    proc.communicate()


def median_interval(diffs: list[float]) -> tuple[float, float, float]:
    """The median and its ~95% interval: the order statistics n/2 -/+ sqrt(n) (normal approximation)."""
    d = sorted(diffs)
    n, half = len(d), round(len(d) ** 0.5)
    mid = d[n // 2] if n % 2 else (d[n // 2 - 1] + d[n // 2]) / 2
    return mid, d[max(0, n // 2 - half)], d[min(n - 1, n // 2 + half)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pairs", type=int, default=100)
    args = parser.parse_args()
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    diffs = []
    for i in range(args.pairs):
        took = {}
        for name, fn in (("before", lambda: _before(libc)), ("now", _now))[:: 1 if i % 2 else -1]:
            t0 = time.perf_counter()
            fn()
            took[name] = time.perf_counter() - t0
        diffs.append(took["now"] - took["before"])
    mid, low, high = median_interval(diffs)
    print(
        f"the launcher adds {mid * 1e3:.1f} ms a worker start [{low * 1e3:.1f}, {high * 1e3:.1f}] (median, 95%; {len(diffs)} interleaved pairs)"
    )


if __name__ == "__main__":
    main()
