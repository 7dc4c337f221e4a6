"""Interleaved repeats: stored per run, resumed per run, combined in the results."""

from __future__ import annotations

import pandas as pd
import pytest
import yaml

from mlbench.cells import expand, units
from mlbench.config import parse_suite
from mlbench.results import schema
from mlbench.results.repeats import combine_one, next_repeat
from tests.conftest import cli, fault_suite, suite_dict


def test_units_interleave_the_grid() -> None:
    cells = expand(parse_suite(suite_dict(models=["mlp", "bert"])))
    order = [(u.cell.model, u.repeat) for u in units(cells, 3)]
    assert order == [("mlp", 0), ("bert", 0), ("mlp", 1), ("bert", 1), ("mlp", 2), ("bert", 2)]
    assert units(cells, 2)[0].unit_id == cells[0].cell_id and units(cells, 2)[2].unit_id == f"{cells[0].cell_id}.r1"


def _run(repeat: int, sps: float, steps: list[float], status: str = "ok") -> dict:
    r = {name: None for name in schema.FLAT} | {name: [] for name in schema.NESTED}
    r.update(
        noisy=False,
        cell_id="c",
        repeat=repeat,
        status=status,
        reason="" if status == "ok" else "boom",
        batch_size=10,
        samples_per_second=sps,
        step_times_s=steps,
        inference_times_ms=[1.0, 2.0],
        peak_memory_mb=100.0 + repeat,
    )
    return r


def test_combine_pools_the_runs_steps() -> None:
    row = combine_one([_run(1, 110.0, [0.09] * 6), _run(0, 100.0, [0.1] * 6), _run(2, 90.0, [0.11] * 6)])
    # the figure is the runs' mean, its interval the t-interval across the three runs (independent
    # processes): 100 +- t(0.975, 2) x 10 / sqrt(3) = 100 +- 24.84; the steps' statistics are pooled
    assert row["repeats"] == 3 and row["samples_per_second"] == pytest.approx(100.0)
    assert row["samples_per_second_ci_low"] == pytest.approx(75.16, abs=0.01)
    assert row["samples_per_second_ci_high"] == pytest.approx(124.84, abs=0.01) and row["ci_kind"] == "runs"
    assert row["repeat_samples_per_second"] == [100.0, 110.0, 90.0]  # in repeat order
    assert row["repeats_cv"] == pytest.approx(10.0 / 100.0)  # stdev(100, 110, 90) = 10
    assert row["steps_timed"] == 18 and row["step_time_median_s"] == pytest.approx(0.1)
    assert row["inference_runs"] == 6 and row["peak_memory_mb"] == 102.0
    assert row["noisy"] is False  # CV exactly 10% is not above the 10% line
    assert row["accelerator_utilisation_ci_low"] is None  # no AU measured, no interval


def test_au_is_the_runs_mean_with_their_t_interval() -> None:
    runs = [_run(k, 100.0, [0.1] * 6) | {"accelerator_utilisation": au} for k, au in enumerate([0.90, 0.92, 0.94])]
    row = combine_one(runs)
    # 0.92 +- t(0.975, 2) x 0.02 / sqrt(3) = 0.92 +- 0.0497: what a rerun gives, which au_pass reads
    assert row["accelerator_utilisation"] == pytest.approx(0.92)
    assert row["accelerator_utilisation_ci_low"] == pytest.approx(0.8703, abs=1e-4)
    assert row["accelerator_utilisation_ci_high"] == pytest.approx(0.9697, abs=1e-4)


def test_a_failed_repeat_marks_the_cell() -> None:
    row = combine_one([_run(0, 100.0, [0.1] * 6), _run(1, 0.0, [], status="crashed")])
    assert row["status"] == "crashed" and row["reason"] == "repeat 2 of 2: boom"
    assert row["samples_per_second"] == pytest.approx(100.0) and row["repeats"] == 2


@pytest.mark.e2e
def test_repeats_are_stored_resumed_and_combined(tmp_path) -> None:
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(fault_suite("fine", repeats=2)))
    assert cli("run", "s.yaml", "--runs-dir", "runs", cwd=tmp_path).returncode == 0
    cells = sorted(p.name for p in (tmp_path / "runs" / "t" / "cells").glob("*.parquet"))
    assert len(cells) == 2 and cells[1].endswith(".r1.parquet")
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(fault_suite("fine", repeats=3)))
    proc = cli("run", "s.yaml", "--runs-dir", "runs", "--resume", cwd=tmp_path)
    assert proc.returncode == 0 and "1 ok (2 already stored)" in proc.stdout, proc.stdout + proc.stderr
    df = pd.read_parquet(tmp_path / "runs" / "t" / "results.parquet")
    assert len(df) == 1 and df.repeats[0] == 3 and len(df.repeat_samples_per_second[0]) == 3
    assert len(pd.read_parquet(tmp_path / "runs" / "t" / "repeats.parquet")) == 3


def test_a_cell_runs_again_only_while_its_runs_spread_wider_than_the_target() -> None:
    """Adaptive repeats read the spread alone: a cell whose runs agree stops at its repeats; one whose
    interval is wider than the target runs again, the lowest repeat not stored, up to max_repeats; a
    failed run stops it (the cell has failed)."""
    quiet = [_run(0, 100.0, []), _run(1, 101.0, [])]  # +-6.4% at t(1) = 12.7
    assert next_repeat(quiet, 0.08, 8) is None
    noisy = [_run(0, 100.0, []), _run(1, 120.0, []), _run(3, 90.0, [])]  # repeat 2 lost to a killed run
    assert next_repeat(noisy, 0.08, 8) == 2
    assert next_repeat(noisy, 0.08, 3) is None  # at most max_repeats
    assert next_repeat([*noisy[:2], _run(2, 0.0, [], status="crashed")], 0.08, 8) is None


@pytest.mark.e2e
def test_adaptive_repeats_add_runs_to_a_spread_cell_on_resume_and_keep_them(tmp_path) -> None:
    """A run stored with repeats 2, resumed with max_repeats 4: the cell whose two runs are 2x apart runs
    twice more (one round at a time), the one whose runs agree does not; a second resume runs nothing."""
    env = {"FAULT_PIDDIR": str(tmp_path)}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(fault_suite("fine", "spread", repeats=2)))
    assert cli("run", "s.yaml", "--runs-dir", "runs", cwd=tmp_path, env=env).returncode == 0
    adaptive = fault_suite("fine", "spread", repeats=2, max_repeats=4, repeat_target=0.08)
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(adaptive))
    proc = cli("run", "s.yaml", "--runs-dir", "runs", "--resume", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stderr.count("adaptive repeats: 1 cell(s) still spread wider than +-8%") == 2, proc.stderr
    df = pd.read_parquet(tmp_path / "runs" / "t" / "results.parquet").set_index("framework")
    assert df.repeats["fine"] == 2 and df.repeats["spread"] == 4
    assert sorted(df.repeat_samples_per_second["spread"]) == [8000.0, 8000.0, 16000.0, 16000.0]  # batch 16
    assert len(pd.read_parquet(tmp_path / "runs" / "t" / "repeats.parquet")) == 6
    again = cli("run", "s.yaml", "--runs-dir", "runs", "--resume", cwd=tmp_path, env=env)
    assert again.returncode == 0 and "adaptive" not in again.stderr
    assert (tmp_path / "spread.runs").read_text() == "4"


def test_a_fresh_run_drops_earlier_adaptive_runs_and_retry_failed_runs_failed_ones_again(tmp_path) -> None:
    """Runs past `repeats` belong to the run that added them: a run without --resume removes those an
    earlier run stored (its figures are its own runs alone); --resume --retry-failed runs a failed one
    again (it would fail its cell), and leaves an ok one."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mlbench.cells import Unit
    from mlbench.orchestrator import cells_to_run
    from mlbench.results import store

    suite = parse_suite(suite_dict(repeats=2, max_repeats=4))
    cells = expand(suite)
    store.cells_dir(tmp_path).mkdir(parents=True)
    for r, status in ((0, "ok"), (1, "ok"), (2, "crashed"), (3, "ok")):
        pq.write_table(pa.table({"status": [status]}), store.cell_path(tmp_path, Unit(cells[0], r).unit_id))
    todo, already = cells_to_run(suite, cells, tmp_path, resume=True, retry_failed=True)
    assert [u.repeat for u in todo] == [2] and already == 2
    todo, already = cells_to_run(suite, cells, tmp_path, resume=True, retry_failed=False)
    assert todo == [] and already == 2
    todo, already = cells_to_run(suite, cells, tmp_path, resume=False, retry_failed=False)
    assert [u.repeat for u in todo] == [0, 1] and already == 0
    assert sorted(p.name for p in store.cells_dir(tmp_path).iterdir()) == sorted(
        f"{Unit(cells[0], r).unit_id}.parquet" for r in (0, 1)
    )
