"""Cell files, resume bookkeeping, exports and the run lock."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mlbench.results import schema, store
from tests.conftest import ROOT


def row(cell_id: str, status: str = "ok", **kw) -> dict:
    r = {name: None for name in schema.FLAT}
    r.update({name: [] for name in schema.NESTED})
    r.update(
        cell_id=cell_id,
        status=status,
        framework="pytorch",
        model_name="mlp",
        device="cpu",
        precision="fp32",
        batch_size=8,
        samples_per_second=100.0,
        step_times_s=[0.1, 0.2],
        warmup_times_s=[0.5],
        inference_times_ms=[1.0],
        epochs_detail=[{"epoch": 0, "train_loss": 1.0, "val_accuracy": 0.5}],
    )
    r.update(kw)
    return r


def test_cell_round_trip(tmp_path: Path) -> None:
    path = store.write_cell(tmp_path, row("aaa"))
    assert path == tmp_path / "cells" / "aaa.parquet"
    assert store.read_status(path) == "ok"
    table = store.read_cells(tmp_path)
    assert table.schema.equals(schema.SCHEMA, check_metadata=False)
    assert table.column("step_times_s").to_pylist() == [[0.1, 0.2]]
    assert not list((tmp_path / "cells").glob(".*tmp"))


def test_many_cells_are_read_in_compacted_blocks_in_their_order(tmp_path: Path, monkeypatch) -> None:
    """read_cells joins every COMPACT files into one contiguous block; the rows keep the asked order, a
    damaged file among them is left out."""
    monkeypatch.setattr(store, "COMPACT", 2)
    ids = [f"c{i}" for i in range(7)]
    for i, cid in enumerate(ids):
        store.write_cell(tmp_path, row(cid, batch_size=i + 1))
    store.cell_path(tmp_path, "c3").write_bytes(b"PAR1 not a parquet file")
    table = store.read_cells(tmp_path, list(reversed(ids)))
    assert table.column("cell_id").to_pylist() == ["c6", "c5", "c4", "c2", "c1", "c0"]
    assert table.column("batch_size").to_pylist() == [7, 6, 5, 3, 2, 1]
    assert table.schema.equals(schema.SCHEMA) and table.column("step_times_s")[0].as_py() == [0.1, 0.2]


def test_stored_statuses_distrust_damaged_files(tmp_path: Path) -> None:
    store.write_cell(tmp_path, row("good"))
    store.write_cell(tmp_path, row("bad", status="failed"))
    full = (tmp_path / "cells" / "good.parquet").read_bytes()
    (tmp_path / "cells" / "cut.parquet").write_bytes(full[: len(full) // 2])  # a torn write
    (tmp_path / "cells" / "empty.parquet").write_bytes(b"")
    got = store.stored_statuses(tmp_path, ["good", "bad", "cut", "empty", "absent"])
    assert got == {"good": "ok", "bad": "failed", "cut": None, "empty": None, "absent": None}
    assert sorted(store.read_cells(tmp_path).column("cell_id").to_pylist()) == ["bad", "good"]


def test_failed_write_leaves_no_file(tmp_path: Path) -> None:
    def explode(p: Path) -> None:
        p.write_bytes(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(store.StoreError, match="the disk is full"):
        store.atomic_write(tmp_path / "x.parquet", explode)
    assert list(tmp_path.iterdir()) == []


def test_unwritable_run_folder_is_a_store_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(store.StoreError, match="cannot create"):
        store.write_cell(blocker / "run", row("a"))


def test_exports_have_the_same_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store, "JSON_BLOCK", 2)  # results.json written across blocks
    for i, status in enumerate(["ok", "failed", "ok"]):
        store.write_cell(tmp_path, row(f"c{i}", status=status, reason="" if status == "ok" else "KeyError: 'x'"))
    table = store.read_cells(tmp_path, ["c2", "c0", "c1"])
    assert table.column("cell_id").to_pylist() == ["c2", "c0", "c1"]  # grid order
    store.write_exports(tmp_path, table)
    parquet = pd.read_parquet(tmp_path / "results.parquet")
    csv = pd.read_csv(tmp_path / "results.csv")
    json_ = pd.read_json(tmp_path / "results.json")
    assert list(parquet.cell_id) == list(csv.cell_id) == list(json_.cell_id) == ["c2", "c0", "c1"]
    assert set(csv.columns) == set(schema.FLAT)
    assert json_.loc[2, "reason"] == "KeyError: 'x'" and "step_times_s" not in json_.columns
    steps = pd.read_parquet(tmp_path / "steps.parquet")
    # a cell's samples together, warm-up, timed steps, inference, each indexed from 0 (inference in s)
    one = [("warmup_step", 0, 0.5), ("train_step", 0, 0.1), ("train_step", 1, 0.2), ("inference", 0, 0.001)]
    assert list(steps.itertuples(index=False, name=None)) == [(c, *s) for c in ["c2", "c0", "c1"] for s in one]
    epochs = pq.read_table(tmp_path / "epochs.parquet").to_pylist()
    assert [(e["cell_id"], e["framework"], e["epoch"], e["train_loss"], e["val_accuracy"]) for e in epochs] == [
        (c, "pytorch", 0, 1.0, 0.5) for c in ["c2", "c0", "c1"]
    ]


def test_exports_of_no_rows_keep_their_columns(tmp_path: Path) -> None:
    store.write_exports(tmp_path, schema.SCHEMA.empty_table())
    assert pd.read_json(tmp_path / "results.json").empty
    assert pq.read_table(tmp_path / "steps.parquet").schema.equals(store.STEPS)
    assert "val_accuracy" in pq.read_table(tmp_path / "epochs.parquet").column_names


@pytest.mark.e2e
def test_lock_refuses_a_second_holder_and_dies_with_its_holder(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"from pathlib import Path; from mlbench.results.store import RunLock\n"
            f"with RunLock(Path({str(tmp_path)!r})):\n print('held', flush=True)\n"
            f" import time; time.sleep(60)",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(store.RunLocked, match=f"in use by another mlbench run \\(pid {holder.pid}\\)"):
        with store.RunLock(tmp_path):
            pass
    holder.kill()
    holder.wait()
    time.sleep(0.1)
    with store.RunLock(tmp_path):  # a killed holder leaves nothing stuck
        pass


def test_docs_results_holds_the_schema_table() -> None:
    doc = (ROOT / "docs" / "results.md").read_text()
    assert schema.markdown_table() in doc, (
        "docs/results.md differs from the schema: replace its table with `python -m mlbench schema`'s output"
    )
    assert "docs/results.md" in (ROOT / "README.md").read_text()


def test_cells_written_by_an_older_schema_are_read_with_nulls(tmp_path: Path) -> None:
    store.write_cell(tmp_path, row("new"))
    old = pq.read_table(tmp_path / "cells" / "new.parquet").drop_columns(["compile_time_s", "verify_passed"])
    pq.write_table(old.set_column(0, "cell_id", pa.array(["old"])), tmp_path / "cells" / "old.parquet")
    table = store.read_cells(tmp_path, ["old", "new"])
    assert table.num_rows == 2 and table.column("compile_time_s").to_pylist() == [None, None]


def test_stored_cells_of_other_mlbench_versions_are_counted(tmp_path: Path) -> None:
    from mlbench.orchestrator import stored_versions

    assert stored_versions(tmp_path, "0.2.0") == {}  # nothing stored
    store.write_cell(tmp_path, row("new", mlbench_version="0.2.0"))
    assert stored_versions(tmp_path, "0.2.0") == {}
    store.write_cell(tmp_path, row("old1", mlbench_version="0.1.0"))
    store.write_cell(tmp_path, row("old2", mlbench_version="0.1.0"))
    store.write_cell(tmp_path, row("before", mlbench_version=None))  # a cell from before the column
    assert stored_versions(tmp_path, "0.2.0") == {"0.1.0": 2, "unknown": 1}
