"""A public dataset for every model family (#38): SST-2 for the encoder (tokenised once, the same ids
in every framework) and Covertype for the MLP, fetched into a cache against their published
checksums, served in these tests by an HTTP server on loopback holding small files of the real
layout; a checksum that does not hold and an offline machine each end in one line."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import os
import threading
import zipfile

import numpy as np
import pyarrow.parquet as pq
import pytest

from mlbench.config import ConfigError, parse_suite
from tests.conftest import suite_dict
from workers.common import data as datasets
from workers.common import public_data

WORDS = ["a", "fine", "film", "dull", "plot", "great", "acting", "bad", "it", "'s", "not", "!"]


def _sst2_zip(train: int = 120, dev: int = 40) -> bytes:
    rng = np.random.default_rng(0)

    def tsv(n: int) -> str:
        lines = ["sentence\tlabel"]
        for _ in range(n):
            words = rng.choice(WORDS, rng.integers(3, 12))
            label = int(("great" in words or "fine" in words) and "bad" not in words)
            lines.append(" ".join(words) + f" \t{label}")
        return "\n".join(lines) + "\n"

    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        z.writestr("SST-2/train.tsv", tsv(train))
        z.writestr("SST-2/dev.tsv", tsv(dev))
        z.writestr("SST-2/test.tsv", "index\tsentence\n0\tunlabelled\n")
    return out.getvalue()


def _covtype_gz(rows: int = 300) -> bytes:
    rng = np.random.default_rng(1)
    cont = rng.integers(0, 4000, (rows, 10))
    wild = np.eye(4, dtype=int)[rng.integers(0, 4, rows)]
    soil = np.eye(40, dtype=int)[rng.integers(0, 40, rows)]
    cover = (cont[:, 0] // 600) % 7 + 1  # learnable from elevation
    table = np.concatenate([cont, wild, soil, cover[:, None]], axis=1)
    text = "\n".join(",".join(str(v) for v in row) for row in table) + "\n"
    return gzip.compress(text.encode())


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    """SST-2.zip and covtype.data.gz of the real layouts over HTTP on loopback; the cache in tmp_path."""
    files = {"/SST-2.zip": _sst2_zip(), "/covtype.data.gz": _covtype_gz()}

    class Files(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = files.get(self.path)
            self.send_response(200 if body is not None else 404)
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Files)  # loopback only
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("MLBENCH_DATA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MLBENCH_SST2_URL", f"{base}/SST-2.zip")
    monkeypatch.setenv("MLBENCH_SST2_MD5", hashlib.md5(files["/SST-2.zip"]).hexdigest())
    monkeypatch.setenv("MLBENCH_COVERTYPE_URL", f"{base}/covtype.data.gz")
    monkeypatch.setenv("MLBENCH_COVERTYPE_SHA256", hashlib.sha256(files["/covtype.data.gz"]).hexdigest())
    try:
        yield base
    finally:
        server.shutdown()
        server.server_close()


def test_the_tokeniser_is_a_function_of_the_text_and_the_vocabulary_of_the_training_split():
    vocab = public_data.vocabulary(["b a a", "c b a", "it's fine!"], 7)
    assert vocab == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a", "b", "!"]  # by count, ties alphabetical
    ids = public_data.encode(["a b zebra", "a " * 20], vocab, 6)
    assert ids.tolist() == [[2, 4, 5, 1, 3, 0], [2, 4, 4, 4, 4, 3]]  # [CLS] .. [SEP], [UNK], cut, [PAD]
    assert public_data.tokens("It's a FILM, isn't it?") == ["it's", "a", "film", ",", "isn't", "it", "?"]


def test_sst2_and_covertype_download_once_checked_and_read_as_the_models_arrays(tmp_path, mirror, monkeypatch):
    zip_path = public_data.fetch("sst2")
    assert zip_path.name == "SST-2.zip" and zip_path.parent.parent == tmp_path / "cache"
    arrays, vocab = public_data.read_sst2(zip_path, 100, 30, vocab_size=16, seq_len=8)
    assert arrays["x_train"].shape == (100, 8) and arrays["x_train"].dtype == np.int32
    assert arrays["x_val"].shape == (30, 8) and set(arrays["y_train"].tolist()) <= {0, 1}
    assert (arrays["x_train"][:, 0] == 2).all() and len(vocab) == 16 and arrays["x_train"].max() < 16
    monkeypatch.setenv("MLBENCH_SST2_URL", "http://127.0.0.1:9/SST-2.zip")  # the cache serves it now
    assert public_data.fetch("sst2") == zip_path

    cov = public_data.read_covertype(public_data.fetch("covertype"), 200, 60)
    assert cov["x_train"].shape == (200, 54) and cov["x_val"].shape == (60, 54)
    assert set(cov["y_train"].tolist()) <= set(range(7))
    assert np.allclose(cov["x_train"][:, :10].mean(0), 0, atol=1e-5)  # continuous columns standardised
    assert set(np.unique(cov["x_train"][:, 10:])) <= {0.0, 1.0}  # one-hot columns kept


@pytest.mark.parametrize("name", ["sst2", "covertype"])
def test_a_wrong_checksum_deletes_the_file_and_offline_is_one_line_saying_what_to_do(
    tmp_path, mirror, monkeypatch, name
):
    remote = public_data.REMOTES[name]
    key = f"MLBENCH_{name.upper()}_{remote.algo.upper()}"
    right = os.environ[key]
    monkeypatch.setenv(key, "0" * len(right))
    with pytest.raises(public_data.DownloadError) as e:
        public_data.fetch(name)
    said = str(e.value)
    assert "\n" not in said and f"has {remote.algo} {right}, not the published 0000" in said and "is deleted" in said
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]

    monkeypatch.setenv(key, right)
    monkeypatch.setenv(f"MLBENCH_{name.upper()}_URL", f"http://127.0.0.1:9/{remote.filename}")  # nothing listens
    with pytest.raises(public_data.DownloadError) as e:
        public_data.fetch(name)
    said = str(e.value)
    assert said.startswith(f"cannot download {remote.title} from http://127.0.0.1:9/{remote.filename}")
    assert "\n" not in said and "yourself" in said and "dataset.path" in said and str(tmp_path / "cache") in said


def test_public_names_each_models_own_dataset_and_a_model_it_cannot_feed_says_which_override_fits():
    suite = parse_suite(suite_dict(models=["mlp", "bert", "resnet18"], dataset={"name": "public"}))
    from mlbench.cells import expand

    assert {c.spec.model: c.spec.dataset["name"] for c in expand(suite)} == {
        "mlp": "covertype",
        "bert": "sst2",
        "resnet18": "cifar10",
    }
    from workers.common import specs

    why = datasets.fits("covertype", "tabular", specs.input_spec(specs.get_spec("mlp")))
    assert "in_features: 54, num_classes: 7" in why
    assert datasets.fits("sst2", "image", specs.input_spec(specs.get_spec("resnet18"))).startswith("sst2 holds tokens")
    with pytest.raises(ConfigError, match="name: public reads three"):
        parse_suite(suite_dict(dataset={"name": "public", "path": "/data/x"}))


def test_a_cifar10_cache_from_before_the_completion_marker_is_still_whole(tmp_path, monkeypatch):
    monkeypatch.setenv("MLBENCH_DATA_CACHE", str(tmp_path))
    monkeypatch.setenv("MLBENCH_CIFAR10_URL", "http://127.0.0.1:9/cifar-10-python.tar.gz")  # nothing listens
    root = tmp_path / "cifar10-c58f3010"  # the published md5's first 8: the folder earlier versions made
    (root / "cifar-10-batches-py").mkdir(parents=True)
    (root / "cifar-10-batches-py" / "test_batch").write_bytes(b"")
    assert public_data.fetch("cifar10") == root


def test_prepare_skips_a_model_the_named_set_cannot_feed_instead_of_stopping(tmp_path):
    from mlbench.cells import expand
    from mlbench.tasks.prepare import prepare

    # covertype has 54 features; the default MLP takes 784: its cell is skipped at run time, so prepare skips it
    suite = parse_suite(suite_dict(models=["mlp"], dataset={"name": "covertype"}))
    assert prepare(expand(suite), tmp_path) == []


@pytest.mark.e2e
def test_parity_real_runs_on_the_loopback_copies_the_encoder_on_sst2_and_the_mlp_on_covertype(tmp_path, mirror):
    import yaml

    from mlbench.orchestrator import run_suite
    from tests.conftest import ROOT

    real = yaml.safe_load((ROOT / "configs" / "parity-real.yaml").read_text())
    # configs/parity-real.yaml narrowed to what 2 cores do in seconds: its datasets and overrides, tiny sizes
    suite = parse_suite(
        suite_dict(
            name="public",
            frameworks=["pytorch", "jax"],
            models=["mlp", "bert"],
            batch_sizes=[20],
            epochs=2,
            dataset={**real["dataset"], "train_samples": 100, "val_samples": 40},
            model_overrides={
                "mlp": {**real["model_overrides"]["mlp"], "hidden": [32]},
                "bert": {**real["model_overrides"]["bert"], "seq_len": 16, "vocab_size": 64, "layers": 1}
                | {"hidden": 32, "heads": 2, "ffn": 64},
            },
        )
    )
    run_suite(suite, runs_root=tmp_path)
    rows = pq.read_table(tmp_path / "public" / "results.parquet").to_pylist()
    assert [r["status"] for r in rows] == ["ok"] * 4, [r["reason"] for r in rows]
    assert {(r["model_name"], r["dataset"]) for r in rows} == {("mlp", "covertype"), ("bert", "sst2")}
    vocab = next((tmp_path / "public" / "data").glob("sst2-*/vocab.txt")).read_text().split("\n")
    assert vocab[:4] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]"] and len([v for v in vocab if v]) <= 64
    # the same ids and rows in both frameworks: each model's first batches agree
    for model in ("mlp", "bert"):
        digests = {tuple(r["batch_digests"]) for r in rows if r["model_name"] == model}
        assert len(digests) == 1
