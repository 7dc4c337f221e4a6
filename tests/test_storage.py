"""Shards in object storage (#38): `dataset.uri` read through fsspec from a real S3 server (moto's,
started on loopback by these tests: no other address is ever asked), streamed or through a local
cache, with the same batches as local files in every framework; a missing object, a denied request
and a server that stops mid-epoch each end in one line naming the URI."""

from __future__ import annotations

import gc
import os
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from mlbench.cells import expand
from mlbench.config import ConfigError, parse_suite
from tests.conftest import suite_dict
from workers.common.datapath import formats, order, storage

BUCKET = "mlbench-test"
# the fake credentials from collection on, not per test: a loader's forkserver that an earlier test in this
# process started keeps the environment it started with, and its workers read S3 with it
for _k, _v in (("AWS_ACCESS_KEY_ID", "mlbench-test-key"), ("AWS_SECRET_ACCESS_KEY", "mlbench-test-secret")):
    os.environ.setdefault(_k, _v)
os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")


def _credentials() -> dict[str, str]:
    # what a user's environment would hold; moto accepts any pair unless it enforces authentication
    return {
        "AWS_ACCESS_KEY_ID": "mlbench-test-key",
        "AWS_SECRET_ACCESS_KEY": "mlbench-test-secret",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",  # never ask an instance-metadata address for credentials
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9",  # set to the server's when it starts: never AWS itself
    }


class S3:
    """moto's S3 server in a thread of this process, on loopback; stopped by the fixture (or the test)."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.server.start()
        host, port = self.server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"
        self.options = {"endpoint_url": self.endpoint}
        os.environ["AWS_ENDPOINT_URL"] = self.endpoint  # a client made without the options asks loopback too
        # moto keeps its buckets per process, not per server: start from none
        urllib.request.urlopen(urllib.request.Request(f"{self.endpoint}/moto-api/reset", method="POST"), timeout=10)
        storage.filesystem("s3://", self.options).mkdir(BUCKET)
        self.stopped = False

    def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            self.server.stop()


@pytest.fixture
def s3(monkeypatch):
    for k, v in _credentials().items():
        monkeypatch.setenv(k, v)
    server = S3()
    try:
        yield server
    finally:
        server.stop()


def _images(n: int = 200) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    return rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, n).astype(np.int32)


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text
    return text


# --- reading ----------------------------------------------------------------------------------


def test_every_format_streams_from_s3_with_the_local_bytes_and_counts_what_it_fetched(tmp_path, s3, monkeypatch):
    monkeypatch.setenv(storage.LEDGER_ENV, str(tmp_path / "ledger"))
    (tmp_path / "ledger").mkdir()
    x, y = _images()
    rng = np.random.default_rng(2)
    # every format, and records padded to 100,000 bytes (dataset.record_bytes): their ballast is fetched too
    padded = [(fmt, (100_000, 0)) for fmt in formats.BALLAST_FORMATS]
    for fmt, record in [(fmt, None) for fmt in formats.FORMATS] + padded:
        name = f"k.{fmt}-3" + ("-padded" if record else "")
        codec = "png" if fmt == "imagefolder" else None
        local = formats.write(tmp_path / name, fmt, x, y, 3, codec=codec, record=record)
        uri = f"s3://{BUCKET}/data/{name}"
        storage.put_folder(local.folder, uri, s3.options)
        remote = formats.ShardSet.open(uri, s3.options)
        first = remote.path(1) if remote.files else remote.image_path(1)  # an image folder: a file per sample
        assert remote.remote and remote.n == local.n and first.startswith(f"s3://{BUCKET}/data/")
        before = storage.ledger_totals(tmp_path / "ledger")
        idx = rng.permutation(len(y))[:64]
        want, got = formats.Reader(local).read(idx), formats.Reader(remote).read(idx)
        assert np.array_equal(want[0], got[0]) and np.array_equal(want[1], got[1]), fmt
        after = storage.ledger_totals(tmp_path / "ledger")
        fetched = after[0] - before[0]
        # at least the records asked for; an npz shard comes whole, an HDF5 one in 1 MiB blocks, an image
        # folder a file per sample (random pixels: PNG cannot shrink them)
        assert fetched >= 64 * local.mean_record_bytes, (fmt, record)
        assert after[1] > before[1]
    # consecutive records are one range: a whole raw shard is one request, after the one that asks its size
    shard = formats.Reader(formats.ShardSet.open(f"s3://{BUCKET}/data/k.raw-3", s3.options))
    before = storage.ledger_totals(tmp_path / "ledger")
    shard.read_shard(0)
    after = storage.ledger_totals(tmp_path / "ledger")
    assert after[1] - before[1] == 2


@pytest.mark.parametrize("kind", ["torch", "grain"])
def test_loader_worker_processes_stream_the_reference_batches_and_count_into_the_ledger(
    tmp_path, s3, monkeypatch, kind
):
    from workers.common.datapath import loaders

    (tmp_path / "ledger").mkdir()
    x, y = _images()
    local = formats.write(tmp_path / "k.raw-4", "raw", x, y, 4)
    uri = f"s3://{BUCKET}/w/k.raw-4"
    storage.put_folder(local.folder, uri, s3.options)
    spec = dict(batch_size=32, seed=3, order="two_level", shards=4, augment="crop_flip")
    want = [
        order.digest(a, b)
        for a, b in loaders.make(
            kind, loaders.Source(local.folder, **spec), loaders.LoaderSpec(kind=kind), "jax"
        ).epoch(1)
    ]
    # the ledger folder travels with the shard set's options, as FileFeed sends it: a forkserver started by an
    # earlier test in this process has another environment
    remote = loaders.Source(uri, options={**s3.options, storage.LEDGER_KEY: str(tmp_path / "ledger")}, **spec)
    loader = loaders.make(kind, remote, loaders.LoaderSpec(kind=kind, workers=2), "jax")
    try:
        assert [order.digest(a, b) for a, b in loader.epoch(1)] == want
    finally:
        loader.close()
    # what the two worker processes fetched, each in a ledger file of its own
    pids = [p.stem for p in (tmp_path / "ledger").glob("*.json")]
    assert len(set(pids) - {str(os.getpid())}) >= 2
    assert storage.ledger_totals(tmp_path / "ledger")[0] >= len(want) * 32 * local.record_bytes


def test_tf_data_streaming_a_missing_object_names_it_as_object_storage(tmp_path, s3):
    from workers.common.datapath import loaders

    x, y = _images()
    local = formats.write(tmp_path / "k.raw-2", "raw", x, y, 2)
    uri = f"s3://{BUCKET}/tf/k.raw-2"
    storage.put_folder(local.folder, uri, s3.options)
    storage.filesystem("s3://", s3.options).rm(f"{uri}/train-00001-of-00002.bin")
    src = loaders.Source(uri, options=s3.options, batch_size=32, seed=3)
    loader = loaders.make("tfdata", src, loaders.LoaderSpec(kind="tfdata"), "tensorflow")
    with pytest.raises(formats.StorageUnavailable) as e:  # raised inside tf.numpy_function, unwrapped
        list(loader.epoch(0))
    said = _one_line(e.value)
    del e  # the traceback holds the tf.data iterator: freed here, not by a later test's collection
    gc.collect()
    assert said.startswith(f"{uri}/train-00001-of-00002.bin (shard 1 of 2): no such object")


def test_the_cache_copies_a_folder_once_whole_and_a_second_cell_hits_it(tmp_path, s3):
    x, y = _images()
    local = formats.write(tmp_path / "k.tfrecord-2", "tfrecord", x, y, 2)
    uri = f"s3://{BUCKET}/c/k.tfrecord-2"
    written = storage.put_folder(local.folder, uri, s3.options)
    first = storage.fetch_folder(uri, s3.options, tmp_path / "cache")
    assert not first["hit"] and first["bytes"] == written and first["requests"] == 1 + 2 * 2
    again = storage.fetch_folder(uri, s3.options, tmp_path / "cache")
    assert again["hit"] and again["folder"] == first["folder"] and again["bytes"] == 0
    cached = formats.ShardSet.open(first["folder"])
    assert np.array_equal(formats.Reader(cached).read(np.arange(50))[0], x[:50])
    assert not [p for p in Path(first["folder"]).parent.iterdir() if p.name.startswith(".")]  # no temporary left
    # an image folder: a file per sample in a folder per class, copied alike
    images = formats.write(tmp_path / "k.imagefolder-png-2", "imagefolder", x, y, 2, codec="png")
    storage.put_folder(images.folder, f"s3://{BUCKET}/c/k.imagefolder-png-2", s3.options)
    got = storage.fetch_folder(f"s3://{BUCKET}/c/k.imagefolder-png-2", s3.options, tmp_path / "cache")
    assert got["requests"] == 1 + len(y)
    assert np.array_equal(formats.Reader(formats.ShardSet.open(got["folder"])).read(np.arange(len(y)))[0], x)


def test_a_missing_object_and_a_denied_request_are_one_line_naming_the_uri(tmp_path, s3, monkeypatch):
    import moto.settings

    with pytest.raises(formats.DataError) as e:
        formats.ShardSet.open(f"s3://{BUCKET}/none/k.raw-2", s3.options)
    said = _one_line(e.value)
    assert said.startswith(f"s3://{BUCKET}/none/k.raw-2/meta.json: no such object") and "mlbench data prepare" in said
    x, y = _images()
    local = formats.write(tmp_path / "k.raw-2", "raw", x, y, 2)
    storage.put_folder(local.folder, f"s3://{BUCKET}/d/k.raw-2", s3.options)
    storage.filesystem("s3://", s3.options).rm(f"s3://{BUCKET}/d/k.raw-2/train-00001-of-00002.bin")
    remote = formats.ShardSet.open(f"s3://{BUCKET}/d/k.raw-2", s3.options)
    with pytest.raises(formats.DataError) as e:
        formats.Reader(remote).read(np.arange(len(y)))
    assert _one_line(e.value).startswith(f"{remote.path(1)} (shard 1 of 2): no such object")
    # the server now checks every request's signature against the accounts it knows: ours is not one
    monkeypatch.setattr(moto.settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)
    with pytest.raises(formats.DataError) as e:
        formats.ShardSet.open(f"s3://{BUCKET}/d/k.raw-2", s3.options)
    said = _one_line(e.value)
    assert f"s3://{BUCKET}/d/k.raw-2/meta.json: access denied" in said and "AWS_ACCESS_KEY_ID" in said
    assert os.environ["AWS_SECRET_ACCESS_KEY"] not in said


# --- config -----------------------------------------------------------------------------------


def test_storage_is_an_axis_of_remote_cells_only_and_credentials_stay_out_of_the_suite():
    base = {"name": "t", "frameworks": ["pytorch"], "models": ["mlp"], "batch_sizes": [32]}
    plain = expand(parse_suite({**base, "dataset": {"format": ["memory", "raw"]}}))
    remote = expand(
        parse_suite(
            {
                **base,
                "dataset": {
                    "format": ["memory", "raw"],
                    "uri": "s3://bucket/prefix/",
                    "storage": ["stream", "cache"],
                    "storage_options": {"endpoint_url": "http://127.0.0.1:9000"},
                },
            }
        )
    )
    # a memory cell reads no files: the same cell, the same id, once
    assert len(remote) == 3 and remote[0].cell_id == plain[0].cell_id
    assert [c.spec.dataset["storage"] for c in remote[1:]] == ["stream", "cache"]
    assert remote[1].spec.dataset["uri"] == "s3://bucket/prefix"
    assert [c.label.split("bs32 ")[-1] for c in remote[1:]] == ["raw/torch w0 stream", "raw/torch w0 cache"]
    local = expand(parse_suite({**base, "dataset": {"format": ["raw"], "uri": "/data/shards", "storage": ["cache"]}}))
    assert len(local) == 1 and "storage" not in local[0].spec.dataset  # a local folder is read in place
    with pytest.raises(ConfigError, match=r"dataset\.storage_options.*secret.*credential"):
        parse_suite({**base, "dataset": {"uri": "s3://b/p", "storage_options": {"secret": "x"}}})
    with pytest.raises(ConfigError, match=r"client_kwargs\.aws_secret_access_key is a credential"):
        parse_suite(
            {
                **base,
                "dataset": {"uri": "s3://b/p", "storage_options": {"client_kwargs": {"aws_secret_access_key": "x"}}},
            }
        )
    with pytest.raises(ConfigError, match=r"dataset\.uri.*user or password"):
        parse_suite({**base, "dataset": {"uri": "s3://key:secret@b/p"}})
    with pytest.raises(ConfigError, match=r"dataset\.uri.*user or password"):  # a secret with a slash in it
        parse_suite({**base, "dataset": {"uri": "s3://AKIA:ab/cd@bucket/p"}})
    with pytest.raises(ConfigError, match=r"credential is a credential"):  # adlfs's name for it
        parse_suite({**base, "dataset": {"uri": "az://c/p", "storage_options": {"credential": "x"}}})
    with pytest.raises(ConfigError, match=r"endpoint_url holds a user and password"):
        parse_suite({**base, "dataset": {"uri": "s3://b/p", "storage_options": {"endpoint_url": "http://u:p@h:9000"}}})
    # an Azure URI names its container before the @: no password, kept
    assert parse_suite({**base, "dataset": {"uri": "abfs://cont@acct.dfs.core.windows.net/p"}}).dataset.uri


# --- end to end -------------------------------------------------------------------------------


def _suite(name: str, s3: S3, prefix: str, **over):
    dataset = {
        "train_samples": 256,
        "val_samples": 64,
        "format": ["raw"],
        "shards": 2,
        "uri": f"s3://{BUCKET}/{prefix}",
        "storage_options": s3.options,
        **over.pop("dataset", {}),
    }
    settings = {
        "name": name,
        "batch_sizes": [32],
        "epochs": 1,
        "inference": {"warmup": 1, "runs": 3, "min_runs": 2, "max_s": 1},
        "dataset": dataset,
        "loader": {"workers": [0]},
    }
    return parse_suite(suite_dict(**{**settings, **over}))


@pytest.mark.e2e
def test_every_framework_trains_on_s3_shards_with_the_memory_cells_batches(tmp_path, s3):
    from mlbench.orchestrator import run_suite
    from mlbench.tasks.prepare import prepare

    suite = _suite(
        "s3",
        s3,
        "runs",
        frameworks=["pytorch", "tensorflow", "jax"],
        dataset={"format": ["memory", "raw"], "storage": ["stream", "cache"]},
        # one memory cell is the bytes' reference; TensorFlow streams only (its cells are the slowest to start)
        excludes=[
            {"format": "memory", "framework": ["tensorflow", "jax"]},
            {"framework": "tensorflow", "storage": "cache"},
        ],
    )
    made = prepare(expand(suite), tmp_path / "s3" / "data")
    uploaded = [p for p in made if str(p.folder).startswith("s3://")]
    assert len(uploaded) == 1 and uploaded[0].made and uploaded[0].files == 3  # two shards and meta.json
    assert not prepare(expand(suite), tmp_path / "s3" / "data")[-1].made  # there already: not written again
    run_suite(suite, runs_root=tmp_path)
    rows = pq.read_table(tmp_path / "s3" / "results.parquet").to_pylist()
    assert [r["status"] for r in rows] == ["ok"] * 6, [r.get("reason") for r in rows]
    digests = {tuple(r["batch_digests"]) for r in rows}
    assert len(digests) == 1 and len(next(iter(digests))) == order.DIGEST_BATCHES
    assert all(r["digests_agree"] for r in rows)
    # the batches the local copy of the same shards gives, read here by index
    local = formats.ShardSet.open(next((tmp_path / "s3" / "data").glob("*.raw-2")))
    plan = order.plan(local.n, 32, suite.seed, 0, "global", 2)[: order.DIGEST_BATCHES]
    assert next(iter(digests)) == tuple(order.digest(*formats.Reader(local).read(row)) for row in plan)
    by = {(r["framework"], r["data_storage"]): r for r in rows}
    assert set(by) == {
        ("pytorch", None),
        ("pytorch", "stream"),
        ("pytorch", "cache"),
        ("tensorflow", "stream"),
        ("jax", "stream"),
        ("jax", "cache"),
    }
    record_mb = uploaded[0].bytes / 1e6
    for (_, how), r in by.items():
        if how is None:
            assert r["data_format"] == "memory" and r["storage_read_mb"] is None
            continue
        assert r["data_uri"].startswith(f"s3://{BUCKET}/runs/") and r["data_uri"].endswith(".raw-2")
        if how == "stream":  # the loader-alone epoch and the training epoch each read every record
            assert r["storage_read_mb"] >= 2 * 0.95 * record_mb and r["storage_requests"] > 2
            assert r["storage_read_mb_per_second"] > 0 and r["storage_cache_hit"] is None
    # the first cache cell copies the folder, the next one (another framework, same run) reads the copy
    assert not by["pytorch", "cache"]["storage_cache_hit"] and by["jax", "cache"]["storage_cache_hit"]
    assert by["pytorch", "cache"]["storage_read_mb"] == pytest.approx(record_mb, rel=0.01)
    assert by["jax", "cache"]["storage_read_mb"] == 0 and by["pytorch", "cache"]["storage_fetch_s"] > 0
    md = (tmp_path / "s3" / "RESULTS.md").read_text()
    assert "object storage MB/s" in md and f"stream from s3://{BUCKET}/runs/" in md
    assert os.environ["AWS_SECRET_ACCESS_KEY"] not in (tmp_path / "s3" / "results.csv").read_text() + md


def _reason(run: Path) -> tuple[str, str]:
    (row,) = pq.read_table(run / "results.parquet").to_pylist()
    return row["status"], row["reason"] or ""


@pytest.mark.e2e
def test_s3_faults_fail_the_cell_in_one_line_naming_the_uri_and_leave_nothing_running(tmp_path, s3, monkeypatch):
    import moto.settings
    import psutil

    from mlbench.orchestrator import run_suite
    from mlbench.tasks.prepare import prepare

    # a prefix nobody prepared: the shard folder's meta.json is missing
    missing = _suite("missing", s3, "nobody")
    run_suite(missing, runs_root=tmp_path)
    status, reason = _reason(tmp_path / "missing")
    assert status == "failed" and "\n" not in reason
    assert (
        f"s3://{BUCKET}/nobody/" in reason
        and "meta.json: no such object" in reason
        and "mlbench data prepare" in reason
    )

    # the server stops while the cell reads its epochs (each step a 20 ms sleep: the loader keeps reading)
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the worker's ledger folder, watched here
    stops = _suite(
        "stops",
        s3,
        "stops",
        epochs=6,
        loader={"workers": [0], "emulate_compute_s": 0.02},
        # botocore's own retries of a refused connection once, not five times (s3fs still retries five)
        dataset={"storage_options": {**s3.options, "config_kwargs": {"retries": {"max_attempts": 1}}}},
    )
    made = prepare(expand(stops), tmp_path / "stops" / "data")
    epoch_bytes = made[-1].bytes

    def stop_mid_epoch() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            for ledger in tmp_path.glob("mlbench-storage-*"):
                if storage.ledger_totals(ledger)[0] > 2.5 * epoch_bytes:  # past the probe, inside epoch 1 or 2
                    s3.stop()
                    return
            time.sleep(0.02)

    watcher = threading.Thread(target=stop_mid_epoch, daemon=True)
    watcher.start()
    run_suite(stops, runs_root=tmp_path)
    watcher.join(5)
    assert s3.stopped
    status, reason = _reason(tmp_path / "stops")
    assert status == "failed" and "\n" not in reason, reason
    assert f"object storage: s3://{BUCKET}/stops/" in reason and "storage request failed" in reason
    mine = psutil.Process().children(recursive=True)
    assert not [p for p in mine if "workers." in " ".join(p.cmdline())]
    assert not list(tmp_path.glob("mlbench-storage-*"))  # the ledger went with the cell

    # a server that checks every request's signature, and does not know ours
    denied_server = S3()
    try:
        monkeypatch.setattr(moto.settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)
        denied = _suite("denied", denied_server, "any")
        run_suite(denied, runs_root=tmp_path)
    finally:
        denied_server.stop()
    status, reason = _reason(tmp_path / "denied")
    assert status == "failed" and "\n" not in reason
    assert f"object storage: s3://{BUCKET}/any/" in reason and "access denied" in reason
