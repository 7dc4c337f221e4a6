"""The data path (#37): one order every loader follows, shards in four formats, each framework's own
loader delivering the same bytes (across worker counts and a restart mid-epoch), bad data as one
line, a killed loader worker as `crashed`, and file-fed cells' figures in a real run."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from mlbench.cells import expand
from mlbench.config import ConfigError, parse_suite
from tests.conftest import suite_dict
from workers.common.datapath import formats, loaders, order


def _images(n: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, n).astype(np.int32)


def _reference(x: np.ndarray, y: np.ndarray, src: loaders.Source, epoch: int) -> list[str]:
    out = []
    for row in src.plan(epoch):
        xb = x[row]
        if src.augment == "crop_flip":
            xb = order.crop_flip(xb, order.crop_flip_params(src.seed, epoch, row))
        out.append(order.digest(xb, y[row]))
    return out


# --- the order and the augmentation -------------------------------------------------------------


def test_the_global_order_is_the_in_memory_feeds_order_of_every_earlier_run():
    # plan() is what BatchFeed gathers; for `global` it must be the permutation runs always used
    n, bs = 1000, 64
    old = np.random.default_rng(np.random.SeedSequence([3, 2, 0xDA7A])).permutation(n)
    want = np.sort(old[: (n // bs) * bs].reshape(n // bs, bs), axis=1)
    assert np.array_equal(order.plan(n, bs, 3, 2), want)


def test_the_two_level_order_reads_shard_after_shard_and_changes_with_the_epoch():
    n, shards = 1003, 7
    bounds = order.shard_bounds(n, shards)
    seq = order.two_level_order(n, shards, seed=1, epoch=0)
    assert sorted(seq) == list(range(n))
    shard_of = np.searchsorted(bounds, seq, side="right") - 1
    runs = [s for i, s in enumerate(shard_of) if i == 0 or s != shard_of[i - 1]]
    assert sorted(runs) == list(range(shards))  # each shard once, whole
    assert not np.array_equal(seq, order.two_level_order(n, shards, seed=1, epoch=1))


def test_crop_flip_is_exact_integer_work_with_parameters_from_the_sample_not_the_worker():
    x, _ = _images(8)
    p = order.crop_flip_params(5, 1, np.arange(8))
    assert p[:, :2].max() <= 2 * order.PAD and set(p[:, 2]) <= {0, 1}
    # the same sample's parameters whichever batch (or worker) it is in
    assert np.array_equal(order.crop_flip_params(5, 1, np.array([6]))[0], p[6])
    out = order.crop_flip(x, p)
    assert out.dtype == np.uint8 and out.shape == x.shape
    # a sample drawn with offset (PAD, PAD) and no flip is unchanged
    centre = order.crop_flip(x[:1], np.array([[order.PAD, order.PAD, 0]], np.uint8))
    assert np.array_equal(centre, x[:1])
    flipped = order.crop_flip(x[:1], np.array([[order.PAD, order.PAD, 1]], np.uint8))
    assert np.array_equal(flipped, x[:1, :, :, ::-1])
    # one changed byte changes the digest
    y = np.zeros(8, np.int32)
    x2 = x.copy()
    x2[3, 1, 2, 3] ^= 1
    assert order.digest(x, y) != order.digest(x2, y)


# --- formats and bad data ----------------------------------------------------------------------


def test_raw_images_keep_a_label_byte_only_where_every_label_fits_one(tmp_path):
    x, _ = _images(20)
    y = np.arange(20, dtype=np.int32) * 50  # up to 950: a 1000-class head
    ss = formats.write(tmp_path / "many.raw-2", "raw", x, y, 2)
    assert ss.label_dtype == "<i4" and np.array_equal(formats.Reader(ss).read(np.arange(20))[1], y)
    assert formats.write(tmp_path / "ten.raw-2", "raw", x, y % 10, 2).label_dtype == "|u1"


def test_au_where_waits_overlap_the_device_comes_from_the_memory_twin():
    from mlbench.analysis import datapath

    same = {"framework": "jax", "model_name": "mlp", "device": "cpu", "precision": "fp32", "batch_size": 64,
            "seed": 0, "data_order": "global", "status": "ok", "cell_id": "x"}  # fmt: skip
    runs = {"ci_kind": "runs", "repeats": 5}
    memory = {**same, **runs, "data_format": "memory", "step_time_median_s": 0.010, "accelerator_utilisation": 0.999,
              "samples_per_second": 6400.0, "samples_per_second_ci_low": 6390.0, "samples_per_second_ci_high": 6410.0,
              "repeat_samples_per_second": [6390.0, 6400.0, 6400.0, 6400.0, 6410.0]}  # fmt: skip
    # the loader's 8 ms wait ran while the device worked on the last step: the step took 10.2 ms, not 18
    fed = {**same, **runs, "data_format": "raw", "step_time_median_s": 0.0102, "waits_overlap_steps": True,
           "accelerator_utilisation": None, "samples_per_second": 6274.0, "samples_per_second_ci_low": 6264.0,
           "samples_per_second_ci_high": 6284.0, "repeat_samples_per_second": [6264.0, 6274.0, 6274.0, 6274.0, 6284.0]}  # fmt: skip
    alone = {**fed, "model_name": "bert"}  # no twin: no AU, rather than one from overlapping waits
    single = {**fed, "ci_kind": "within_run", "repeats": 1, "repeat_samples_per_second": None}
    rows = [memory, fed, alone]
    datapath.annotate(rows, 0.90)
    assert fed["accelerator_utilisation"] == pytest.approx(0.010 / 0.0102) and fed["au_source"] == "memory twin"
    assert fed["data_wait_share"] == pytest.approx(1 - 0.010 / 0.0102)
    # between runs, AU's interval is the throughput ratio's: wholly above 0.90, a pass
    assert 0.9 < fed["accelerator_utilisation_ci_low"] < fed["accelerator_utilisation_ci_high"] <= 1.0
    assert fed["au_pass"] is True and fed["au_pass_reason"] is None
    assert alone["accelerator_utilisation"] is None and alone["au_pass"] is None
    # one run of each: the ratio moves as far as a rerun moves throughput, which holds 0.90
    datapath.annotate([memory, single], 0.90)
    assert single["au_pass"] is None and single["au_pass_reason"].startswith("cannot tell from one run: AU 98%")


def test_au_passes_or_fails_only_beyond_what_a_rerun_moves():
    from mlbench.analysis import datapath, evidence
    from mlbench.present import content

    floor = evidence.AU_SINGLE_RUN_FLOOR

    def told(au: float, low: float | None = None, high: float | None = None, **extra) -> tuple:
        r = {"accelerator_utilisation": au, "au_source": "waits", "data_format": "npz", "status": "ok",
             "accelerator_utilisation_ci_low": low, "accelerator_utilisation_ci_high": high, **extra}  # fmt: skip
        return (*datapath.au_verdict(r, 0.90), r)

    # one run: a pass or a fail only beyond the single-run floor (what reruns of the same cells moved)
    assert told(0.90 + floor + 0.005)[:2] == (True, None)
    assert told(0.90 - floor - 0.005)[:2] == (False, None)
    ok, why, r = told(0.905)
    assert ok is None and "within the" in why and "a rerun moves AU" in why
    r["au_pass"] = ok
    assert content.data_path_cells(r)["au"] == "90% cannot tell"  # not "fail"
    # runs: the interval decides, and one that holds the threshold cannot
    assert told(0.93, 0.91, 0.95)[:2] == (True, None)
    assert told(0.87, 0.85, 0.89)[:2] == (False, None)
    ok, why, r = told(0.905, 0.88, 0.93)
    assert ok is None and why == "cannot tell: AU's 95% interval 88-93% holds the 90% threshold"
    r["au_pass"] = True
    assert content.data_path_cells(r)["au"] == "90% [88-93%] pass"
    # a cell that shared the machine with other work: no verdict at all
    ok, why, _ = told(0.99, 0.98, 1.0, cpu_other_train_pct=80.0, cpu_count_logical=2)
    assert ok is None and "other processes used 80% of a core" in why


@pytest.mark.parametrize("fmt", formats.FORMATS)
def test_each_format_reads_back_what_was_written_by_index(tmp_path, fmt):
    x, y = _images(101)
    tokens = np.random.default_rng(1).integers(0, 30000, (101, 16)).astype(np.int32)
    for name, xs in (("img", x), ("tok", tokens)):
        if fmt == "imagefolder" and name == "tok":  # images only
            continue
        codec = "png" if fmt == "imagefolder" else None  # png: lossless
        ss = formats.write(tmp_path / f"{name}.{fmt}-4", fmt, xs, y, 4, codec=codec)
        reader = formats.Reader(ss)
        idx = np.array([0, 3, 25, 26, 50, 100])
        got_x, got_y = reader.read(idx)
        assert np.array_equal(got_x, xs[idx]) and np.array_equal(got_y, y[idx])
    # raw images are CIFAR-10's binary layout: one label byte, then 3,072 pixel bytes
    if fmt == "raw":
        first = (tmp_path / "img.raw-4" / ss.files[0]).read_bytes()[:3073]
        assert first[0] == y[0] and first[1:] == x[0].tobytes()


def _rchar() -> int:
    """Bytes this process has read through read(2) and pread(2) so far (page cache or disk)."""
    return int(
        next(line for line in Path("/proc/self/io").read_text().splitlines() if line.startswith("rchar")).split()[1]
    )


@pytest.mark.parametrize("fmt", formats.BALLAST_FORMATS)
def test_records_padded_to_a_workload_size_hold_it_on_disk_and_every_read_reads_it(tmp_path, fmt):
    x, y = _images(400)
    ss = formats.write(tmp_path / f"a.{fmt}-4", fmt, x, y, 4, record=(6000, 1500))
    meta = json.loads((tmp_path / f"a.{fmt}-4" / formats.META).read_text())["records"]
    # N(6000, 1500) over 400 records: the mean within 4 standard errors
    assert abs(meta["mean_bytes"] - 6000) < 4 * 1500 / 20 and 1200 < meta["stdev_bytes"] < 1800
    # meta.json's sizes are the files' own, read back here record by record (npz, HDF5: the ballast beside
    # the sample and int32 label; TFRecord: the framed Example, from the offsets)
    sizes = []
    for s in range(ss.shards):
        if fmt == "tfrecord":
            sizes += list(np.diff(np.append(np.load(ss.path(s) + ".idx.npy"), os.path.getsize(ss.path(s)))))
        elif fmt == "npz":
            with np.load(ss.path(s)) as z:
                sizes += [3076 + len(z[n]) for n in z.files if n.startswith("pad")]
        else:
            import h5py

            with h5py.File(ss.path(s)) as f:
                sizes += list(3076 + np.diff(f["pad_offsets"][...]))
    assert len(sizes) == 400 and ss.mean_record_bytes == pytest.approx(np.mean(sizes))
    assert ss.record_stdev == pytest.approx(np.std(sizes))
    on_disk = sum(os.path.getsize(ss.path(s)) for s in range(ss.shards))
    assert on_disk >= 400 * meta["mean_bytes"]  # the ballast is in the files
    ballast = 400 * (meta["mean_bytes"] - 3076)  # beside the samples and int32 labels
    reader = formats.Reader(ss)
    # every epoch reads the ballast again: the second too, where an npz shard's samples are held in memory
    # (and HDF5 would serve a variable-length dataset from its cache)
    again = ballast + (x.nbytes if fmt != "npz" else 0)
    for epoch in range(2):
        before = _rchar()
        got_x, got_y = reader.read(np.arange(400))
        assert _rchar() - before >= again, epoch
        assert np.array_equal(got_x, x) and np.array_equal(got_y, y)
    reader.close()
    # the same request makes the same files (a second process writing the folder makes the same records)
    same = formats.write(tmp_path / f"b.{fmt}-4", fmt, x, y, 4, record=(6000, 1500))
    if fmt == "hdf5":  # (HDF5 files differ in their object headers' times)
        import h5py

        with h5py.File(ss.path(2)) as a, h5py.File(same.path(2)) as b:
            assert len(a["pad_offsets"]) == 101 and np.array_equal(a["pad"][...], b["pad"][...])
    else:
        assert Path(ss.path(1)).read_bytes() == Path(same.path(1)).read_bytes()
    with pytest.raises(ValueError, match="raw records take no ballast"):
        formats.write(tmp_path / "c.raw-1", "raw", x, y, 1, record=(6000, 0))


def test_encoded_tfrecord_records_are_padded_to_the_size_asked_after_encoding(tmp_path):
    x, y = _images(40)
    ss = formats.write(tmp_path / "j.tfrecord-1", "tfrecord", x, y, 1, codec="jpeg", image_size=64, record=(20000, 0))
    index = np.append(np.load(ss.path(0) + ".idx.npy"), os.path.getsize(ss.path(0)))
    assert all(abs(int(size) - 20000) <= 2 for size in np.diff(index))  # JPEGs of any size
    assert ss.mean_record_bytes == pytest.approx(20000, abs=2)


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text
    return text


def test_bad_shards_are_one_line_naming_the_file_and_record(tmp_path):
    x, y = _images(40)
    raw = formats.write(tmp_path / "d.raw-2", "raw", x, y, 2)
    with open(raw.path(1), "r+b") as f:  # truncated inside record 5 of shard 1
        f.truncate(5 * raw.record_bytes + 100)
    with pytest.raises(formats.DataError) as e:
        formats.Reader(raw).read(np.array([30]))
    assert raw.path(1) in _one_line(e.value) and "record 5" in str(e.value)

    tfr = formats.write(tmp_path / "d.tfrecord-2", "tfrecord", x, y, 2)
    offsets = np.load(tfr.path(0) + ".idx.npy")
    data = bytearray(Path(tfr.path(0)).read_bytes())
    data[int(offsets[3]) + 40] ^= 0xFF  # a flipped bit inside record 3
    Path(tfr.path(0)).write_bytes(bytes(data))
    with pytest.raises(formats.DataError) as e:
        formats.Reader(tfr).read(np.array([3]))
    assert f"{tfr.path(0)}: record 3" in _one_line(e.value) and "CRC" in str(e.value)
    assert not isinstance(e.value, formats.StorageUnavailable)  # bad data, not a storage that failed

    npz = formats.write(tmp_path / "d.npz-2", "npz", x, y, 2)
    os.remove(npz.path(0))
    with pytest.raises(formats.DataError) as e:
        formats.Reader(npz).read(np.array([1]))
    assert npz.path(0) in _one_line(e.value)


# --- each framework's loader --------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["torch", "tfdata", "grain"])
def test_every_loader_delivers_the_reference_batches_in_every_format(tmp_path, kind):
    x, y = _images(300)
    # every format, and those that take it with records padded to a workload's size (ballast read, discarded)
    padded = [(fmt, (5000, 1000)) for fmt in formats.BALLAST_FORMATS]
    for fmt, record in [(fmt, None) for fmt in formats.FORMATS] + padded:
        codec = "png" if fmt == "imagefolder" else None
        ss = formats.write(tmp_path / f"k.{fmt}-5-{bool(record)}", fmt, x, y, 5, codec=codec, record=record)
        src = loaders.Source(ss.folder, 32, seed=3, order="two_level", shards=5, augment="crop_flip")
        loader = loaders.make(kind, src, loaders.LoaderSpec(kind=kind, workers=0), "jax")
        got = [order.digest(a, b) for a, b in loader.epoch(1)]
        loader.close()
        assert got == _reference(x, y, src, 1), (fmt, record)


@pytest.mark.parametrize("kind", ["torch", "tfdata", "grain"])
def test_worker_counts_and_a_restart_mid_epoch_change_no_batch(tmp_path, kind):
    x, y = _images(300)
    ss = formats.write(tmp_path / "k.raw-5", "raw", x, y, 5)
    src = loaders.Source(ss.folder, 32, seed=3, order="global", shards=5, augment="crop_flip")
    want = _reference(x, y, src, 2)
    # started as in a JAX or TensorFlow worker (forkserver): this test process may hold JAX's threads
    loader = loaders.make(kind, src, loaders.LoaderSpec(kind=kind, workers=2), "jax")
    try:
        assert [order.digest(a, b) for a, b in loader.epoch(2)] == want
        assert [order.digest(a, b) for a, b in loader.epoch(2, start=5)] == want[5:]
    finally:
        loader.close()


# --- config -------------------------------------------------------------------------------------


def _suite(**over):
    base = {"name": "t", "frameworks": ["pytorch"], "models": ["mlp"], "batch_sizes": [32]}
    return parse_suite({**base, **over})


def test_formats_and_loader_workers_are_axes_and_memory_cells_keep_their_ids():
    plain = expand(_suite())
    grid = expand(_suite(dataset={"format": ["memory", "raw", "tfrecord"], "shards": 4}, loader={"workers": [0, 2]}))
    assert len(grid) == 1 + 2 * 2  # a memory cell has no loader, so it comes once
    assert grid[0].cell_id == plain[0].cell_id  # the default format stays out of the spec
    assert [c.label.split("bs32 ")[-1] for c in grid[1:3]] == ["raw/torch w0", "raw/torch w2"]
    only_raw = expand(
        _suite(dataset={"format": ["memory", "raw"]}, loader={"workers": [0, 2]}, excludes=[{"loader_workers": 2}])
    )
    assert len(only_raw) == 2
    with pytest.raises(ConfigError, match=r"dataset\.format\[0\]"):
        _suite(dataset={"format": ["parquet"]})
    with pytest.raises(ConfigError, match=r"loader\.workers"):
        _suite(loader={"workers": [-1]})


def test_record_bytes_is_in_the_spec_of_the_formats_that_take_it_and_a_one_line_error_elsewhere():
    plain = expand(_suite(dataset={"format": ["memory", "npz"]}))
    sized = expand(_suite(dataset={"format": ["memory", "npz"], "record_bytes": 114660, "record_bytes_stdev": 9}))
    assert sized[0] == plain[0]  # a memory cell reads no records: its id stays
    assert sized[1].spec.dataset["record_bytes"] == 114660 and sized[1].spec.dataset["record_bytes_stdev"] == 9
    assert sized[1].cell_id != plain[1].cell_id
    with pytest.raises(ConfigError, match=r"dataset: .*record_bytes: raw records take no ballast.*give npz, tfrecord"):
        _suite(dataset={"format": ["memory", "raw"], "record_bytes": 4096})
    with pytest.raises(ConfigError, match=r"record_bytes_stdev spreads record_bytes: give record_bytes too"):
        _suite(dataset={"format": ["npz"], "record_bytes_stdev": 10})


def test_device_prefetch_is_in_a_file_fed_cells_spec_only_where_set():
    raw = {"dataset": {"format": ["raw"]}}
    before = expand(_suite(**raw))[0]
    assert (
        "device_prefetch" not in before.spec.loader
        and expand(_suite(**raw, loader={"device_prefetch": 0}))[0] == before
    )
    ahead = expand(_suite(**raw, loader={"device_prefetch": 2}))[0]
    assert ahead.spec.loader["device_prefetch"] == 2 and ahead.cell_id != before.cell_id
    with pytest.raises(ConfigError, match=r"loader\.device_prefetch: Input should be less than or equal to 4"):
        _suite(loader={"device_prefetch": 5})


# --- end to end ---------------------------------------------------------------------------------


def _run(tmp_path: Path, **overrides) -> Path:
    from mlbench.orchestrator import run_suite

    suite = parse_suite(
        suite_dict(
            **{
                "frameworks": ["pytorch", "tensorflow", "jax"],
                "batch_sizes": [64],
                "epochs": 2,
                "inference": {"warmup": 1, "runs": 3, "min_runs": 2, "max_s": 1},
                **overrides,
            }
        )
    )
    run_suite(suite, runs_root=tmp_path)
    return tmp_path / suite.name


@pytest.mark.e2e
def test_file_fed_cells_store_the_data_path_and_train_on_the_memory_cells_batches(tmp_path):
    dataset = {
        "train_samples": 640,
        "val_samples": 128,
        "format": ["memory", "raw"],
        "shards": 4,
        "order": "two_level",
    }
    # TensorFlow's memory twin left out (its cells are the slowest to start): its file-fed cell's tax says why
    excludes = [{"framework": "tensorflow", "format": "memory"}]
    # file-fed batches placed two steps ahead of their step (device_prefetch), through each framework's to_device
    loader = {"workers": [0], "device_prefetch": 2}
    run = _run(tmp_path, name="dp", epochs=1, dataset=dataset, loader=loader, excludes=excludes)
    rows = pq.read_table(run / "results.parquet").to_pylist()
    assert [r["status"] for r in rows] == ["ok"] * 5
    digests = {tuple(r["batch_digests"]) for r in rows}
    assert len(digests) == 1 and len(next(iter(digests))) == order.DIGEST_BATCHES
    assert all(r["digests_agree"] for r in rows)
    for r in rows:
        assert 0 < r["accelerator_utilisation"] <= 1 and r["data_wait_p50_s"] >= 0
        if r["data_format"] == "raw":
            assert r["loader"] == {"pytorch": "torch", "tensorflow": "tfdata", "jax": "grain"}[r["framework"]]
            assert r["loader_samples_per_second"] > 0 and r["time_to_first_batch_s"] > 0
            assert r["loader_device_prefetch"] == 2
            if r["framework"] == "tensorflow":
                assert r["data_tax"] is None and "no memory cell" in r["data_tax_reason"]
            else:
                assert r["data_tax"] is not None and r["data_tax_low"] <= r["data_tax"] <= r["data_tax_high"]
        else:
            assert r["loader"] == "memory" and r["data_tax"] is None and r["loader_device_prefetch"] is None
    # the same batches, the same model: the file-fed twin trains to the memory cell's accuracy
    by = {(r["framework"], r["data_format"]): r for r in rows}
    for fw in ("pytorch", "jax"):
        assert abs(by[fw, "raw"]["final_val_accuracy"] - by[fw, "memory"]["final_val_accuracy"]) < 0.02
    assert "data_format" in (run / "results.csv").read_text().splitlines()[0]


@pytest.mark.e2e
def test_verify_data_names_the_first_batch_a_planted_loader_shuffles_differently(tmp_path):
    from mlbench import executors
    from mlbench.tasks import verify_data

    suite = parse_suite(
        suite_dict(
            frameworks=["pytorch", "shuffled"],
            batch_sizes=[64],
            dataset={"train_samples": 640, "val_samples": 64, "format": ["raw"], "shards": 2},
            workers={"shuffled": "tests.planted_loader_worker"},
        )
    )
    checks = verify_data.run(suite, tmp_path / "vd", executors.Settings.of(suite))
    got = {(c.framework, c.start): c for c in checks}
    assert got["pytorch", 0].status == "ok" and got["pytorch", 5].status == "ok"
    assert got["shuffled", 0].status == "mismatch" and got["shuffled", 0].first_difference == 2
    assert "batch 2 of epoch 1" in got["shuffled", 0].problem
    assert json.loads((tmp_path / "vd" / "verify-data.json").read_text())[0]["status"] == "ok"


@pytest.mark.e2e
def test_a_killed_loader_worker_crashes_the_cell_and_a_truncated_shard_fails_it_in_one_line(tmp_path, monkeypatch):
    import psutil

    from mlbench.tasks.prepare import prepare

    monkeypatch.setenv("MLBENCH_PLANTED", "kill")
    dataset = {"train_samples": 512, "val_samples": 64, "format": ["npz"], "shards": 2}
    run = _run(
        tmp_path,
        name="kill",
        frameworks=["killer"],
        dataset=dataset,
        loader={"workers": [1]},
        workers={"killer": "tests.planted_loader_worker"},
    )
    (row,) = pq.read_table(run / "results.parquet").to_pylist()
    # the planted worker SIGKILLs its DataLoader worker process at the epoch's third batch
    # (the loader's next() says "a torch DataLoader worker died: ..."; torch's SIGCHLD handler may raise the
    # same cause inside a step instead)
    assert row["status"] == "crashed" and "DataLoader worker" in row["reason"], row["reason"]
    mine = psutil.Process().children(recursive=True)
    assert not [p for p in mine if "planted_loader_worker" in " ".join(p.cmdline())]

    # read in a DataLoader worker process: torch wraps the error in that process's traceback
    bad = parse_suite(suite_dict(name="bad", dataset={**dataset, "format": ["raw"]}, loader={"workers": [1]}))
    made = prepare(expand(bad), tmp_path / "bad" / "data")
    shard = next(p.folder for p in made if p.folder.name.endswith(".raw-2")) / "train-00001-of-00002.bin"
    shard.write_bytes(shard.read_bytes()[:5000])  # record 1 of shard 1 cut short
    from mlbench.orchestrator import run_suite

    run_suite(bad, runs_root=tmp_path)
    (row,) = pq.read_table(tmp_path / "bad" / "results.parquet").to_pylist()
    assert row["status"] == "failed" and "\n" not in row["reason"]
    assert str(shard) in row["reason"] and "record 1 is the first incomplete" in row["reason"]


@pytest.mark.e2e
@pytest.mark.serial  # times a loader against the step: alone on the machine
def test_a_loader_burning_cpu_is_input_bound_and_the_advice_is_what_the_worker_sweep_measured(tmp_path):
    from mlbench.analysis.bottleneck import TF_DATA_READY_S

    # ~25 ms of CPU per batch of 64 in the loader (order.burn), against a ~5 ms MLP step
    dataset = {"train_samples": 1024, "val_samples": 64, "format": ["raw"], "shards": 2}
    run = _run(tmp_path, name="burn", frameworks=["pytorch"], dataset=dataset, loader={"workers": [0, 1], "burn": 100})
    rows = {r["loader_workers"]: r for r in pq.read_table(run / "results.parquet").to_pylist()}
    w0, w1 = rows[0], rows[1]
    assert w0["status"] == w1["status"] == "ok"
    assert w0["bottleneck"] == "input" and w0["data_wait_share"] >= 0.25
    assert w0["data_wait_p50_s"] > TF_DATA_READY_S and "above tf.data's 50 us" in w0["bottleneck_evidence"]
    # the advice quotes the sweep's own measurement of one worker, whatever it was on this machine
    assert f"1 loader worker: {w1['samples_per_second']:.0f} samples/s" in w0["bottleneck_evidence"]
    assert any(word in w0["bottleneck_evidence"] for word in ("faster", "slower", "no clear change"))
    results_md = (run / "RESULTS.md").read_text()
    assert "1 loader worker" in results_md


# --- DLIO workloads -----------------------------------------------------------------------------

RESNET50_SMALL = """
# the shape of DLIO's configs/workload/resnet50_h100.yaml, scaled down
model: {name: resnet50, type: cnn}
framework: pytorch
workflow: {generate_data: false, train: true}
dataset: {num_files_train: 4, num_samples_per_file: 32, record_length_bytes: 114660, data_folder: data/resnet50,
          format: tfrecord}
train: {computation_time: 0.02, epochs: 1}
reader: {data_loader: pytorch, read_threads: 1, computation_threads: 8, batch_size: 32, file_shuffle: seed,
         sample_shuffle: seed}
metric: {au: 0.90}
"""

UNET3D_SMALL = """
# the shape of DLIO's configs/workload/unet3d_h100.yaml, scaled down
model: {name: unet3d, type: cnn}
framework: pytorch
dataset: {format: npz, num_files_train: 16, num_samples_per_file: 1, record_length_bytes: 146600628,
          record_length_bytes_stdev: 68341808}
reader: {data_loader: pytorch, batch_size: 4, read_threads: 2, file_shuffle: seed, sample_shuffle: seed}
train: {epochs: 5, computation_time: 0.323}
checkpoint: {checkpoint_folder: checkpoints/unet3d}
"""


def test_a_dlio_workload_without_an_mlbench_model_imports_as_emulated_compute_and_names_what_did_not_map(tmp_path):
    from mlbench.tasks import dlio

    path = tmp_path / "unet3d_small.yaml"
    path.write_text(UNET3D_SMALL)
    suite, notes = dlio.import_workload(path)
    assert suite["loader"]["emulate_compute_s"] == [0.323]  # emulated only: no real step to run
    assert suite["dataset"]["format"] == ["npz"] and suite["dataset"]["shards"] == 16
    assert suite["dataset"]["train_samples"] == 16 and suite["loader"]["workers"] == [2]
    said = "\n".join(notes)
    assert "model unet3d: mlbench builds no counterpart; the cells run with emulated compute only" in said
    assert "checkpoint: no counterpart" in said and "no counterpart" not in said.split("record_length")[-1]
    # the workload's record size, with its spread: mlbench's samples padded to it on disk
    assert suite["dataset"]["record_bytes"] == 146600628 and suite["dataset"]["record_bytes_stdev"] == 68341808
    assert len(expand(parse_suite(suite))) == 1


@pytest.mark.e2e
def test_a_dlio_workload_imports_and_runs_with_real_and_emulated_compute(tmp_path):
    from mlbench.orchestrator import run_suite
    from mlbench.tasks import dlio

    path = tmp_path / "resnet50_small.yaml"
    path.write_text(RESNET50_SMALL)
    suite, notes = dlio.import_workload(path, model="resnet18")
    assert any("record_length_bytes 114660" in n for n in notes)
    assert suite["dataset"]["format"] == ["memory", "tfrecord"]  # a memory twin for the real cell's data tax
    small = {
        "threads": 1,
        "warmup_steps": 1,
        "profile_steps": 0,
        "inference": {"warmup": 1, "runs": 2, "min_runs": 1, "max_s": 1},
        "excludes": [{"format": "memory"}],  # a ResNet cell less: the data tax is tested elsewhere
    }
    run_suite(parse_suite({**suite, **small}), runs_root=tmp_path)
    rows = pq.read_table(tmp_path / suite["name"] / "results.parquet").to_pylist()
    by = {(r["data_format"], r["emulated_compute_s"]): r for r in rows}
    assert sorted(by, key=str) == sorted([("tfrecord", None), ("tfrecord", 0.02)], key=str)
    assert all(r["status"] == "ok" for r in rows)
    emulated, real = by["tfrecord", 0.02], by["tfrecord", None]
    # the emulated step is the sleep, and nothing was trained
    assert emulated["step_time_median_s"] >= 0.02 and emulated["final_val_accuracy"] is None
    assert 0 < emulated["accelerator_utilisation"] <= 1
    # one run: a pass or a fail beyond the single-run floor, else the reason it cannot tell
    assert (emulated["au_pass"] is None) == (emulated["au_pass_reason"] is not None)
    assert emulated["data_tax"] is None and "emulated compute" in emulated["data_tax_reason"]
    assert real["final_val_accuracy"] is not None and "no memory cell" in real["data_tax_reason"]
    assert emulated["batch_digests"] == real["batch_digests"] and emulated["digests_agree"] is True
    # both read the workload's 114,660-byte records (the sample and its ballast, TFRecord's framing within 2
    # bytes), the loader's MB/s counts them, and the data-path table says so
    for r in (emulated, real):
        assert abs(r["data_record_bytes"] - 114660) <= 2 and r["data_record_bytes_stdev"] < 2
        mb = r["loader_samples_per_second"] * r["data_record_bytes"] / 1e6
        assert r["loader_mb_per_second"] == pytest.approx(mb, rel=1e-6)
    assert re.search(r"tfrecord/torch w1, records 114,6\d\d B", (tmp_path / suite["name"] / "RESULTS.md").read_text())


# --- CIFAR-10 downloaded -------------------------------------------------------------------------


@pytest.fixture
def cifar_server(tmp_path):
    """A small archive of CIFAR-10's python layout served over HTTP on loopback; yields (url, md5)."""
    import hashlib
    import http.server
    import io
    import pickle
    import tarfile
    import threading

    rng = np.random.default_rng(0)
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w:gz") as tar:
        for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
            batch = {
                b"data": rng.integers(0, 256, (20, 3072), dtype=np.uint8),
                b"labels": list(rng.integers(0, 10, 20)),
            }
            blob = pickle.dumps(batch)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "cifar-10-python.tar.gz").write_bytes(archive.getvalue())

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **k):
            super().__init__(*a, directory=str(tmp_path / "www"), **k)

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)  # loopback only
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/cifar-10-python.tar.gz"
    try:
        yield url, hashlib.md5(archive.getvalue()).hexdigest()
    finally:
        server.shutdown()
        server.server_close()


def test_cifar10_downloads_once_into_the_cache_checked_against_its_md5(tmp_path, monkeypatch, cifar_server):
    from workers.common import data as datasets

    url, md5 = cifar_server
    monkeypatch.setenv("MLBENCH_DATA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MLBENCH_CIFAR10_URL", url)
    monkeypatch.setenv("MLBENCH_CIFAR10_MD5", "0" * 32)
    with pytest.raises(datasets.DownloadError) as e:  # another file than the published one
        datasets.fetch_cifar10()
    assert "not the published 0000" in _one_line(e.value) and "deleted" in str(e.value)
    assert not list((tmp_path / "cache").glob("*.tar.gz")) and not list((tmp_path / "cache").glob(".*tar.gz"))

    monkeypatch.setenv("MLBENCH_CIFAR10_MD5", md5)
    folder = datasets.fetch_cifar10()
    arrays = datasets.read_cifar10(str(folder), 64, 16)
    assert arrays["x_train"].shape == (64, 3, 32, 32) and arrays["y_val"].shape == (16,)
    monkeypatch.setenv("MLBENCH_CIFAR10_URL", "http://127.0.0.1:9/none.tar.gz")  # the cache serves it now
    assert datasets.fetch_cifar10() == folder


def test_cifar10_offline_is_one_line_saying_what_to_download_and_where(tmp_path, monkeypatch):
    from mlbench.orchestrator import run_suite

    monkeypatch.setenv("MLBENCH_DATA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MLBENCH_CIFAR10_URL", "http://127.0.0.1:9/cifar-10-python.tar.gz")  # nothing listens
    suite = parse_suite(suite_dict(models=["resnet18"], dataset={"name": "cifar10", "train_samples": 64}))
    with pytest.raises(ConfigError) as e:
        run_suite(suite, runs_root=tmp_path)
    said = _one_line(e.value)
    assert "cannot download CIFAR-10 from http://127.0.0.1:9/" in said
    assert "yourself" in said and "dataset.path" in said and str(tmp_path / "cache") in said


def test_a_cold_page_cache_makes_the_next_read_reach_the_disk_and_a_warm_one_does_not(tmp_path):
    x = np.random.default_rng(0).random((4096, 784), np.float32)
    ss = formats.write(tmp_path / "c.raw-4", "raw", x, np.zeros(4096, np.int32), 4)
    ss = dataclasses.replace(ss, mapped=False)  # as a cold cache's Source makes it: read, not mapped
    size = sum(os.path.getsize(ss.path(s)) for s in range(ss.shards))

    def from_disk() -> int:  # bytes this process has caused to be read from the block device
        with open("/proc/self/io") as f:
            return int(next(line for line in f if line.startswith("read_bytes")).split()[1])

    reader, every = formats.Reader(ss), np.arange(4096)
    reader.read(every)
    before = from_disk()
    assert np.array_equal(reader.read(every)[0], x)
    warm = from_disk() - before
    assert formats.evict(ss) == size
    before = from_disk()
    assert np.array_equal(reader.read(every)[0], x)  # the same open files: the drop reached their pages
    cold = from_disk() - before
    if cold == 0 and warm == 0:
        pytest.skip("the temporary folder is in memory (tmpfs): no read reaches a disk")
    assert cold >= 0.9 * size and warm < 0.1 * size, (cold, warm, size)
