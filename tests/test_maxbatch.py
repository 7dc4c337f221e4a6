"""`mlbench maxbatch`: the search order and its stopping rule on fake probes (hand-computed), the
recommended batch, and real searches under a memory limit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from mlbench.config import MaxBatchConfig
from mlbench.tasks.maxbatch import Probe, confirm, search
from tests.conftest import ROOT, cli, suite_dict


def fits_up_to(limit: int, fail_at: dict[int, str] | None = None):
    asked: list[int] = []

    def probe(batch: int) -> Probe:
        asked.append(batch)
        if fail_at and batch in fail_at:
            return Probe(batch, None, "crashed", fail_at[batch])
        return Probe(batch, batch <= limit, "ok" if batch <= limit else "oom")

    return probe, asked


def test_doubling_then_bisection_to_the_resolution() -> None:
    probe, asked = fits_up_to(100)
    found = search(probe, MaxBatchConfig(start=8, resolution=0.05))
    # 8..64 fit, 128 does not; then 96 fits, 112 and 104 do not, 100 fits: 104 - 100 <= 5% of 100
    assert asked == [8, 16, 32, 64, 128, 96, 112, 104, 100]
    assert (found.status, found.max_fit, found.first_fail) == ("found", 100, 104)
    assert found.recommended(0.9, 1) == 90 and found.recommended(0.9, 4) == 88


def test_a_coarser_resolution_stops_sooner() -> None:
    probe, asked = fits_up_to(100)
    found = search(probe, MaxBatchConfig(start=8, resolution=0.5))
    # 128 - 64 is over half of 64: one bisection, then 128 - 96 is within half of 96
    assert asked == [8, 16, 32, 64, 128, 96] and (found.max_fit, found.first_fail) == (96, 128)


def test_the_cap_is_probed_and_ends_the_search() -> None:
    probe, asked = fits_up_to(10**9)
    found = search(probe, MaxBatchConfig(start=8, max_batch=100))
    assert asked == [8, 16, 32, 64, 100]
    assert (found.status, found.max_fit, found.first_fail) == ("capped", 100, None)


def test_nothing_fits() -> None:
    probe, asked = fits_up_to(4)
    found = search(probe, MaxBatchConfig(start=8))
    assert asked == [8] and (found.status, found.max_fit, found.first_fail) == ("none fits", None, 8)
    assert found.recommended(0.9, 1) is None


@pytest.mark.parametrize("where", [32, 96])  # while doubling, while bisecting
def test_a_failure_other_than_memory_ends_the_search_without_an_answer(where: int) -> None:
    probe, asked = fits_up_to(100, fail_at={where: "exited with status 1 without a result: boom"})
    found = search(probe, MaxBatchConfig(start=8))
    assert asked[-1] == where and found.status == "failed"
    assert (found.max_fit, found.first_fail) == (None, None)  # never read as "does not fit"
    assert found.reason.startswith(f"batch {where}: crashed: exited with status 1") and "boom" in found.reason


def test_a_data_parallel_search_probes_only_batches_the_devices_divide() -> None:
    probe, asked = fits_up_to(100)
    found = search(probe, MaxBatchConfig(start=7, max_batch=1001), multiple=4)
    assert all(b % 4 == 0 for b in asked) and asked[0] == 8
    assert found.max_fit == 100 and found.first_fail - found.max_fit <= 5


# --- real searches -------------------------------------------------------------------------------

SMALL = {"resnet18": {"widths": [8, 16, 32, 64]}}


@pytest.mark.e2e
def test_a_probe_that_crashes_ends_its_search_with_the_reason_not_a_batch(tmp_path: Path) -> None:
    suite = suite_dict(frameworks=["bigcrash"], workers={"bigcrash": "tests.fault_worker"}, maxbatch={"start": 16})
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(suite))
    proc = cli("maxbatch", "s.yaml", "--runs-dir", "runs", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr[-2000:]
    (row,) = pd.read_parquet(tmp_path / "runs/t/maxbatch.parquet").to_dict("records")
    assert row["status"] == "failed" and row["reason"].startswith("batch 64: crashed: killed by SIGSEGV")
    assert "before it 32 fit" in row["reason"]
    assert pd.isna(row["max_batch_size"]) and pd.isna(row["recommended_batch_size"]) and row["probes"] == 3


def test_a_found_edge_is_probed_again_and_reported_as_a_band() -> None:
    """The same batch can fit in one process and not the next: the edge is rerun, the band is what every
    probe says, and the recommended batch is run once more before it is recommended."""
    probe, _ = fits_up_to(100)
    found = search(probe, MaxBatchConfig(start=8, resolution=0.05))  # 100 fits, 104 does not
    asked: list[tuple[int, int]] = []

    def again(batch: int, repeat: int) -> Probe:  # a fresh process: 100 runs out of memory this time
        asked.append((batch, repeat))
        fits = batch < 100
        return Probe(batch, fits, "ok" if fits else "oom")

    band = confirm(found, again, margin=0.9)
    assert asked == [(100, 1), (104, 1), (86, 0)]  # the edge again, then 0.9 x 96 (the band's low end)
    assert (band.low, band.high, band.flaky) == (96, 104, [100])
    assert (band.recommended, band.confirmed) == (86, True)


def test_a_recommended_batch_that_does_not_fit_again_steps_down() -> None:
    probe, _ = fits_up_to(100)
    found = search(probe, MaxBatchConfig(start=8, resolution=0.05))
    tried: list[int] = []

    def again(batch: int, repeat: int) -> Probe:
        tried.append(batch)
        fits = batch in (100,) or batch < 80  # the edge holds; 90 does not fit in a fresh process
        return Probe(batch, fits, "ok" if fits else "oom")

    band = confirm(found, again, margin=0.9)
    assert tried == [100, 104, 90, 81, 72] and (band.low, band.high) == (100, 104)
    assert (band.recommended, band.confirmed) == (72, True)
    nothing = confirm(found, lambda b, k: Probe(b, b == 100, "oom"), margin=0.9, tries=2)
    assert (nothing.recommended, nothing.confirmed) == (None, False)  # never recommended unconfirmed


@pytest.mark.e2e
def test_a_real_search_under_a_memory_limit_resumes_and_a_run_confirms_it(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    suite = suite_dict(
        models=["resnet18"], model_overrides=SMALL, threads=2, memory_limit_mb=900,
        # 25% apart: the doubling, the bisection and the edge's band in about 8 probes (10 at 10%). From 256,
        # which always fits: the edge (512 here) fits in one process and not in the next, and a band needs a
        # batch that always did
        maxbatch={"start": 256, "resolution": 0.25, "steps": 2, "margin": 0.75},
    )  # fmt: skip
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(suite))
    probes = tmp_path / "runs" / "t" / "maxbatch"
    # killed in the middle of the search ...
    first = subprocess.Popen(
        [sys.executable, "-m", "mlbench", "maxbatch", "s.yaml", "--runs-dir", "runs"],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 240
    while len(list(probes.glob("*.parquet"))) < 2:
        assert first.poll() is None and time.monotonic() < deadline, "the search ended before the kill"
        time.sleep(0.1)
    first.send_signal(signal.SIGKILL)
    first.wait()
    stored = len(list(probes.glob("*.parquet")))
    # ... continues from its stored probes
    proc = cli("maxbatch", "s.yaml", "--runs-dir", "runs", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("(stored)") == stored
    (row,) = pd.read_parquet(tmp_path / "runs/t/maxbatch.parquet").to_dict("records")
    assert row["status"] == "found" and row["probes"] - row["probes_run"] == stored
    fit, fail = int(row["max_batch_size"]), int(row["first_failing_batch_size"])
    assert 256 <= fit < fail <= fit * 1.25 + 1 and row["confirm_probes"] >= 3
    # the band: what every probe of the edge said (the edge can move between processes)
    low = int(row["frontier_low"])
    assert low <= fit and row["recommended_confirmed"] and row["recommended_batch_size"] <= int(low * 0.75)
    assert row["memory_limit_mb"] == 900 and row["memory_limit_how"]
    probe_rows = pd.read_parquet(tmp_path / "runs/t/maxbatch_probes.parquet")
    assert set(probe_rows.status) == {"ok", "oom"} and probe_rows.peak_memory_mb.notna().all()
    assert "Largest batch that fits" in (tmp_path / "runs/t/report.html").read_text()
    # a normal run of the probe's cell under the same limit: ok at the recommended batch, oom well above the
    # first failure. Not at the edge itself: there the same cell fits in one process and not in the next
    # (tiny ResNet-18 under 900 MB: 512 ran out of memory in three searches and fit in a fourth; a run at
    # 512 went either way), which is what the margin is for (docs/maxbatch.md). 0.75, not the default 0.9:
    # under a host-memory limit a run at 460 (0.9 x 512) was OOM-killed at 984 MiB RSS where the search's
    # 512 probe had fit, peaking at 834 MiB of the cgroup's 900
    for batch, status in ((int(row["recommended_batch_size"]), "ok"), (fail * 5 // 4, "oom")):
        run = {**suite, "name": f"confirm{batch}", "batch_sizes": [batch], "warmup_steps": 1}
        run["dataset"] = {"name": "synthetic", "train_samples": batch * 3, "val_samples": batch}
        run["inference"] = {"warmup": 0, "runs": 1, "min_runs": 1, "max_s": 1.0}
        (tmp_path / "c.yaml").write_text(yaml.safe_dump(run))
        assert cli("run", "c.yaml", "--runs-dir", "runs", cwd=tmp_path).returncode == 0
        r = pd.read_parquet(tmp_path / f"runs/confirm{batch}/results.parquet").iloc[0]
        assert r.status == status, (batch, r.status, r.reason)
