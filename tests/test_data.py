"""Datasets: deterministic, learnable, cached in the run's folder; CIFAR-10 read locally and safely."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from workers.common import data
from workers.common.specs import get_spec, input_spec

DS = {"name": "synthetic", "train_samples": 64, "val_samples": 16, "path": None}


@pytest.mark.parametrize(
    "model,dtype,shape", [("mlp", np.float32, (784,)), ("resnet18", np.uint8, (3, 32, 32)), ("bert", np.int32, (128,))]
)
def test_synthetic_is_deterministic_and_cached(tmp_path, model, dtype, shape) -> None:
    spec = get_spec(model)
    a = data.load(DS, spec.family, input_spec(spec), 0, str(tmp_path))
    assert a.x_train.dtype == dtype and a.x_train.shape == (64, *shape) and a.y_val.shape == (16,)
    b = data.make_synthetic(spec.family, input_spec(spec), 64, 16, 0)
    assert np.array_equal(a.x_train, b["x_train"]) and np.array_equal(a.y_val, b["y_val"])
    assert len(os.listdir(tmp_path)) == 1  # one folder, no temporary left behind
    other = data.make_synthetic(spec.family, input_spec(spec), 64, 16, 1)
    assert not np.array_equal(other["x_train"], b["x_train"])
    assert set(np.unique(a.y_train)) <= set(range(spec.num_classes))


def test_tokens_start_with_the_classification_token(tmp_path) -> None:
    spec = get_spec("bert")
    d = data.make_synthetic("tokens", input_spec(spec), 32, 8, 0)
    assert (d["x_train"][:, 0] == 0).all() and d["x_train"].max() < spec.vocab_size
    # every label's markers outnumber the other class's; the background comes from a few hundred ids
    markers = 2 * data.TOKEN_MARKERS
    x, y = d["x_train"], d["y_train"]
    assert ((x >= 1) & (x <= markers)).sum(axis=1).tolist() == [data.TOKEN_OWN + data.TOKEN_OTHER] * len(y)
    assert len(np.unique(x[x > markers])) <= data.TOKEN_BACKGROUND


def test_the_dataset_key_follows_its_own_family_generator(monkeypatch) -> None:
    keys = {m: data.dataset_key(DS, get_spec(m).family, input_spec(get_spec(m)), 0) for m in ("mlp", "bert")}
    monkeypatch.setitem(data.GENERATOR, "tokens", {**data.GENERATOR["tokens"], "own": 8})
    assert data.dataset_key(DS, "tabular", input_spec(get_spec("mlp")), 0) == keys["mlp"]
    assert data.dataset_key(DS, "tokens", input_spec(get_spec("bert")), 0) != keys["bert"]


def test_batch_order_is_seed_stable_and_covers_the_epoch(tmp_path) -> None:
    spec = get_spec("mlp")
    ds = data.load(DS, spec.family, input_spec(spec), 0, str(tmp_path))
    assert np.array_equal(data.epoch_order(64, 0, 1), data.epoch_order(64, 0, 1))
    assert not np.array_equal(data.epoch_order(64, 0, 0), data.epoch_order(64, 0, 1))
    batches = list(data.train_batches(ds, 24, 0, 0))
    assert len(batches) == 2 and all(x.shape == (24, 784) for x, _ in batches)  # the last partial batch dropped
    val = list(data.val_batches(ds, 10))
    assert [len(y) for _, y in val] == [10, 6]  # every validation sample, once


def test_each_batch_is_its_slice_of_the_epoch_order_gathered_once(tmp_path) -> None:
    spec = get_spec("mlp")
    ds = data.load(DS, spec.family, input_spec(spec), 0, str(tmp_path))
    feed = data.BatchFeed(ds, 16)
    assert len(feed) == 4
    for epoch in (2, 3):  # the second epoch refills the same arrays
        order = data.epoch_order(64, 0, epoch)
        for i, (x, y) in enumerate(feed.epoch(0, epoch)):
            idx = np.sort(order[i * 16 : (i + 1) * 16])
            assert np.array_equal(x, ds.x_train[idx]) and np.array_equal(y, ds.y_train[idx])
            assert x.base is feed.x.base  # a view of the epoch's one gather, not a copy per step
            assert x.ctypes.data % data.ALIGN == 0 and y.ctypes.data % data.ALIGN == 0


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_feed_normalises_images_once_per_epoch_bit_for_bit(tmp_path, layout) -> None:
    spec = get_spec("resnet18")
    ds = data.load(DS, spec.family, input_spec(spec), 0, str(tmp_path), layout)
    feed = data.BatchFeed(ds, 16)
    order = data.epoch_order(len(ds.y_train), 0, 1)
    for i, (x, _) in enumerate(feed.epoch(0, 1)):
        expected = ds.inputs(ds.x_train[np.sort(order[i * 16 : (i + 1) * 16])])  # the per-batch transform
        assert x.dtype == np.float32 and x.ctypes.data % data.ALIGN == 0
        assert np.array_equal(x, expected)  # the same bits, prepared before the steps


def test_aligned_copy() -> None:
    a = np.arange(1000, dtype=np.float32)[1:]  # 4 bytes past an allocation: not aligned
    b = data.aligned(a)
    assert b.ctypes.data % data.ALIGN == 0 and b.flags.c_contiguous and np.array_equal(a, b)


def test_image_inputs_are_normalised_floats(tmp_path) -> None:
    spec = get_spec("resnet18")
    ds = data.load(DS, spec.family, input_spec(spec), 0, str(tmp_path))
    x, _ = next(data.train_batches(ds, 16, 0, 0))
    assert x.dtype == np.float32 and x.shape == (16, 3, 32, 32) and -5 < x.mean() < 5


def _write_cifar(root, n=20) -> None:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": list(rng.integers(0, 10, n))}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)


def test_cifar10_from_a_local_folder(tmp_path) -> None:
    _write_cifar(tmp_path / "src")
    spec = get_spec("resnet18")
    ds = data.load(
        {"name": "cifar10", "path": str(tmp_path / "src"), "train_samples": 50, "val_samples": 10},
        spec.family,
        input_spec(spec),
        0,
        str(tmp_path / "cache"),
    )
    assert ds.x_train.shape == (50, 3, 32, 32) and ds.x_val.shape == (10, 3, 32, 32)


def test_cifar10_refuses_pickles_that_build_objects(tmp_path) -> None:
    _write_cifar(tmp_path)
    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "wb") as f:
        pickle.dump({b"data": os.system, b"labels": []}, f)
    with pytest.raises(pickle.UnpicklingError, match="refusing to load"):
        data.read_cifar10(str(tmp_path), None, None)


def test_cifar10_missing_or_for_the_wrong_model(tmp_path) -> None:
    with pytest.raises(data.DataUnavailable, match="not found"):
        data.read_cifar10(str(tmp_path), None, None)
    spec = get_spec("bert")
    with pytest.raises(data.DataUnavailable, match="cifar10 holds images"):
        data.load({"name": "cifar10", "path": str(tmp_path)}, spec.family, input_spec(spec), 0, str(tmp_path))
