"""Image files to decode (#38): `format: imagefolder` writes a JPEG or PNG file per image in a folder
per class, each loader decodes them as its users do, the digest check tells two decoders' pixels
apart and measures the gap, and `loader.decoder: pillow` gives every framework the same bytes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from mlbench.config import parse_suite
from tests.conftest import suite_dict
from workers.common.datapath import formats, loaders, order


def _images(n: int = 192) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(4)
    # smooth images (a gradient per sample plus a little noise): what a JPEG encoder is made for
    ramp = np.linspace(0, 200, 32, dtype=np.float32)
    base = ramp[None, None, :, None] + ramp[None, None, None, :] * rng.uniform(0.2, 1, (n, 3, 1, 1))
    x = np.clip(base / 2 + rng.normal(0, 4, (n, 3, 32, 32)), 0, 255).astype(np.uint8)
    return x, rng.integers(0, 10, n).astype(np.int32)


def test_an_image_folder_is_a_folder_per_class_in_the_order_torchvision_reads_and_png_is_lossless(tmp_path):
    x, y = _images()
    ss = formats.write(tmp_path / "k.imagefolder-png-3", "imagefolder", x, y, 3, "png")
    classes = sorted(p.name for p in Path(ss.folder).iterdir() if p.is_dir())
    assert classes == [f"{c:03d}" for c in sorted(set(y.tolist()))]  # sorted names: the label order
    assert ss.shards == 3 and ss.codec == "png" and len(ss.images) == len(y)
    got = formats.Reader(ss).read(np.arange(len(y)))
    assert np.array_equal(got[0], x) and np.array_equal(got[1], y)
    jpeg = formats.write(tmp_path / "k.imagefolder-jpeg-3", "imagefolder", x, y, 3, "jpeg")
    decoded = formats.Reader(jpeg).read(np.arange(len(y)))[0]
    gap = np.abs(decoded.astype(int) - x.astype(int))
    assert gap.max() > 0 and gap.mean() < 4  # lossy, and close on smooth images


def test_a_file_that_is_no_image_or_of_another_size_is_one_line_naming_it(tmp_path):
    from PIL import Image

    x, y = _images(20)
    ss = formats.write(tmp_path / "k.imagefolder-jpeg-1", "imagefolder", x, y, 1, "jpeg")
    broken = Path(ss.image_path(3))
    broken.write_bytes(b"not a jpeg")
    with pytest.raises(formats.DataError) as e:
        formats.Reader(ss).read(np.arange(5))
    assert str(e.value).startswith(f"{broken}: not an image Pillow decodes") and "\n" not in str(e.value)
    Image.new("RGB", (16, 16)).save(ss.image_path(4), format="JPEG")
    with pytest.raises(formats.DataError, match=r"decodes to 16x16 pixels, expected 32x32"):
        formats.Reader(ss).read(np.arange(4, 6))


def test_tf_data_decodes_jpeg_otherwise_than_pillow_and_the_pillow_decoder_gives_every_loader_the_same_bytes(tmp_path):
    x, y = _images()
    folder = formats.write(tmp_path / "k.imagefolder-jpeg-4", "imagefolder", x, y, 4, "jpeg")
    shards = formats.write(tmp_path / "k.tfrecord-jpeg-4", "tfrecord", x, y, 4, "jpeg")  # JPEG shards
    # the same encoder on the same pixels: a JPEG shard's record is the image folder's file, byte for byte
    assert np.array_equal(formats.Reader(shards).read(np.arange(50))[0], formats.Reader(folder).read(np.arange(50))[0])
    got = {}
    for ss in (folder, shards):
        for order_ in ("global", "two_level"):
            src = loaders.Source(ss.folder, 32, seed=3, order=order_, shards=4, augment="crop_flip")
            reference = [(src.finish(formats.Reader(ss).read(row)[0], 1, row), y[row]) for row in src.plan(1)]
            for kind in ("torch", "tfdata", "grain"):
                for decoder in ("native", "pillow"):
                    loader = loaders.make(kind, src, loaders.LoaderSpec(kind=kind, decoder=decoder), "jax")
                    batches = list(loader.epoch(1))
                    named = getattr(loader, "image_decoder", "pillow")
                    loader.close()
                    gaps = [
                        int(np.abs(a.astype(int) - r.astype(int)).max()) for (a, _), (r, _) in zip(batches, reference)
                    ]
                    same = all(order.digest(*b) == order.digest(*r) for b, r in zip(batches, reference))
                    got[ss.format, order_, kind, decoder] = (max(gaps), same, len(batches), named)
    for (fmt, order_, kind, decoder), (gap, same, n, named) in got.items():
        assert n == len(y) // 32
        # tf.data decodes in its graph where it reads the files itself: every image folder, and JPEG shards
        # read a whole shard at a time (two_level); by index it reads through Pillow
        tf_decodes = kind == "tfdata" and decoder == "native" and (fmt == "imagefolder" or order_ == "two_level")
        assert named == ("tf.io.decode_image" if tf_decodes else "pillow"), (fmt, order_, kind, decoder)
        if tf_decodes:  # libjpeg's fast integer IDCT against Pillow's accurate one
            assert 0 < gap <= 16 and not same, (fmt, order_, gap)
        else:
            assert gap == 0 and same, (fmt, order_, kind, decoder, gap)


def test_images_stored_larger_are_resized_and_centre_cropped_to_the_models_input_by_each_loader(tmp_path):
    from PIL import Image

    x, y = _images(96)
    ss = formats.write(tmp_path / "k.imagefolder-png-48px-2", "imagefolder", x, y, 2, "png", image_size=48)
    assert ss.stored_shape == (3, 48, 48) and ss.shape == (3, 32, 32)
    assert Image.open(ss.image_path(0)).size == (48, 48)
    pillow = formats.Reader(ss).read(np.arange(96))[0]
    assert pillow.shape == (96, 3, 32, 32) and np.abs(pillow.astype(int) - x.astype(int)).mean() < 3
    src = loaders.Source(ss.folder, 32, seed=3, order="global", shards=2)
    reference = [pillow[row] for row in src.plan(1)]
    gaps = {}
    for kind in ("torch", "tfdata", "grain"):
        loader = loaders.make(kind, src, loaders.LoaderSpec(kind=kind), "jax")
        gaps[kind] = max(
            int(np.abs(a.astype(int) - r.astype(int)).max()) for (a, _), r in zip(loader.epoch(1), reference)
        )
        loader.close()
    # Pillow's resize in DataLoader and Grain workers; tf.image.resize in tf.data, the gap measured, not assumed
    assert gaps["torch"] == 0 and gaps["grain"] == 0 and gaps["tfdata"] <= 16, gaps


def test_verify_datas_reference_for_encoded_images_is_pillows_decode_of_the_files_the_cells_read(tmp_path):
    from mlbench.tasks import verify_data
    from workers.common.datapath import feed

    suite = parse_suite(
        suite_dict(
            models=["resnet18"],
            batch_sizes=[32],
            dataset={
                "train_samples": 128,
                "format": ["tfrecord"],
                "image_codec": "jpeg",
                "image_size": 40,
                "shards": 2,
            },
        )
    )
    want = verify_data.reference(suite, "resnet18", tmp_path, lossy=("jpeg", 40))
    # the cells' own files: JPEG shards stored at 40 px, decoded and resized by Pillow
    (folder,) = [p for p in tmp_path.iterdir() if p.is_dir() and "." not in p.name]
    dataset = {**suite.dataset.cell_dict("tfrecord"), "seed": 0}
    ss = feed.materialise(folder, dataset)
    assert ss.codec == "jpeg" and ss.stored_shape == (3, 40, 40)
    plan = order.plan(ss.n, 32, suite.seed, verify_data.EPOCH, "global", 2)
    got = [order.digest(*formats.Reader(ss).read(row)) for row in plan]
    assert got == want and want != verify_data.reference(suite, "resnet18", tmp_path)  # not the arrays' bytes


def test_an_emulated_image_cell_finds_its_memory_twin(tmp_path):
    from mlbench.cells import Unit, expand
    from mlbench.executors.base import emulated_step

    suite = parse_suite(
        suite_dict(
            models=["resnet18"],
            dataset={"format": ["memory", "imagefolder"], "image_size": 40},
            loader={"emulate_compute_s": ["measured"]},
        )
    )
    memory, images = expand(suite)
    step, why = emulated_step(Unit(images), tmp_path)  # nothing stored yet: the reason names the twin sought
    assert step is None and memory.cell_id in why


@pytest.mark.e2e
def test_an_image_folder_run_reports_the_decoders_gap_the_digest_mismatch_and_the_decode_cost(tmp_path):
    from mlbench.orchestrator import run_suite

    suite = parse_suite(
        suite_dict(
            name="img",
            frameworks=["pytorch", "tensorflow", "jax"],
            models=["resnet18"],
            batch_sizes=[32],
            epochs=1,
            dataset={"train_samples": 256, "val_samples": 32, "format": ["raw", "imagefolder"], "shards": 2},
            # the loader is measured, not the model: each step a 1 ms sleep (DLIO's emulated compute)
            loader={"workers": [0], "emulate_compute_s": 0.001},
        )
    )
    run_suite(suite, runs_root=tmp_path)
    rows = pq.read_table(tmp_path / "img" / "results.parquet").to_pylist()
    assert [r["status"] for r in rows] == ["ok"] * 6, [r["reason"] for r in rows]
    by = {(r["framework"], r["data_format"]): r for r in rows}
    torch_img, tf_img = by["pytorch", "imagefolder"], by["tensorflow", "imagefolder"]
    assert torch_img["image_codec"] == "jpeg" and torch_img["image_decoder"] == "pillow"
    assert torch_img["decode_max_abs_diff"] == 0
    assert tf_img["image_decoder"] == "tf.io.decode_image" and 0 < tf_img["decode_max_abs_diff"] <= 16
    # JPEG cells are checked against each other, Pillow's decode the reference; the raw cells against each other
    assert torch_img["digests_agree"] and by["jax", "imagefolder"]["digests_agree"] and not tf_img["digests_agree"]
    assert "differs from pytorch imagefolder/torch w0" in tf_img["digest_mismatch"]
    assert by["pytorch", "raw"]["digests_agree"] and by["tensorflow", "raw"]["digests_agree"]
    for fw in ("pytorch", "tensorflow", "jax"):  # the loader alone, with and without a file per sample to decode
        img, raw = by[fw, "imagefolder"], by[fw, "raw"]
        assert img["image_decode_cost"] == pytest.approx(
            1 - img["loader_samples_per_second"] / raw["loader_samples_per_second"]
        )
        assert raw["image_decode_cost"] is None
    md = (tmp_path / "img" / "RESULTS.md").read_text()
    assert "jpeg by tf.io.decode_image" in md and "levels from Pillow at most" in md

    # tf.data decoding with Pillow: the PyTorch cell's bytes
    pillow = parse_suite(
        {
            **suite.model_dump(),
            "name": "img-pillow",
            "frameworks": ["tensorflow"],
            "dataset": {**suite.dataset.model_dump(), "format": ["imagefolder"]},
            "loader": {**suite.loader.model_dump(), "decoder": "pillow", "page_cache": "cold"},
        }
    )
    run_suite(pillow, runs_root=tmp_path)
    (row,) = pq.read_table(tmp_path / "img-pillow" / "results.parquet").to_pylist()
    assert row["status"] == "ok" and row["image_decoder"] == "pillow" and row["decode_max_abs_diff"] == 0
    assert row["page_cache"] == "cold"  # the image files dropped from the page cache before each epoch
    assert row["batch_digests"] == torch_img["batch_digests"]
