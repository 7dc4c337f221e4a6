"""Shards on disk: the training set written as files of one format, and read back by index.

Formats (`dataset.format`):
- `raw`: fixed-length records, the label then the sample. Images follow CIFAR-10's binary layout
  (one label byte, 3,072 pixel bytes, CHW); tokens and tabular rows a little-endian int32 label then
  their int32 or float32 values. Read by memory map, or whole by tf.data's native ops.
- `npz`: numpy's zip of arrays `x` and `y`, one file per shard (DLIO's npz with several samples per
  file); no framework has a native reader.
- `tfrecord`: `tf.train.Example` records with features `x` (the sample's bytes) and `y` (int64),
  with an index of offsets beside each file (`.idx.npy`); read natively by tf.data, by offset (each
  record's CRCs checked) elsewhere (workers/common/datapath/tfrecords.py).
- `hdf5`: one HDF5 file per shard with datasets `x` and `y` (h5py), contiguous.
- `tfrecord` with `dataset.image_codec` jpeg or png: each Example's `x` the image encoded so (JPEG
  shards, as ImageNet's TFRecords hold), decoded by the loader as an image folder's files are.
- `npz`, `tfrecord` and `hdf5` with `dataset.record_bytes` (and `record_bytes_stdev`): each record padded
  to a size drawn from a normal distribution (DLIO's `record_length_bytes` and its stdev) with
  ballast, random bytes beside the sample (npz: a member `padNNNNNNN` a record; hdf5: a dataset `pad`
  of the records' ballast end to end and `pad_offsets`; tfrecord: a bytes feature `pad`), read by every
  loader with its record, each time, and discarded: a loader moves the workload's bytes and the
  model still sees its own. A draw below the record's own size adds nothing; meta.json's `records`
  holds the sizes as written (npz, hdf5: sample, int32 label and ballast; tfrecord: the framed
  Example). An npz shard's samples are held in memory once read; from object storage the whole file
  is fetched once a process, so there its ballast is then read from memory.
- `imagefolder`: images only, one folder per class (`000/`, `001/`, ...: the order torchvision's
  ImageFolder and Keras sort them in) of JPEG (Pillow, quality 90, 4:2:0) or PNG files
  (`dataset.image_codec`), one file per sample; `meta.json` lists them in the dataset's order. Read
  by decoding each file: Pillow (torchvision's ImageFolder's decoder) in DataLoader and Grain workers,
  `tf.io.decode_image` in tf.data (or Pillow everywhere: `loader.decoder: pillow`). `shards` groups
  consecutive files for the `two_level` order.

A shard set is a folder `<dataset key>.<format>-<shards>` beside the dataset's .npy folder, written
into a temporary folder and renamed, with `meta.json` last: whole or absent. The validation set is
not sharded: evaluation reads it from memory in every cell.

Bad data is a `DataError` whose one line names the file and the record: a truncated or corrupt
shard, a missing file, a record size that does not match.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from workers.common.datapath import storage, tfrecords
from workers.common.datapath.order import shard_bounds

FORMATS = ("raw", "npz", "tfrecord", "hdf5", "imagefolder")
EXTENSIONS = {"raw": "bin", "npz": "npz", "tfrecord": "tfrecord", "hdf5": "h5"}
CODECS = {"jpeg": "jpg", "png": "png"}  # imagefolder's files
JPEG_QUALITY = 90
META = "meta.json"
LAYOUT_VERSION = 1


class DataError(Exception):
    """Data that cannot be read as described: the message names the file and the record."""


class StorageUnavailable(DataError):
    """Object storage that did not answer as asked (storage.py): a missing object, a denied request, a
    server gone; the message names the URI."""


@dataclass(frozen=True)
class ShardSet:
    """What `meta.json` says about a shard folder."""

    folder: str
    format: str
    n: int
    bounds: tuple[int, ...]
    files: tuple[str, ...]
    shape: tuple[int, ...]  # of one sample, as stored (images CHW)
    dtype: str  # of the samples, numpy's str ('|u1', '<i4', '<f4')
    label_dtype: str  # '|u1' (images: CIFAR's layout) or '<i4'
    # where the folder is a URI (storage.py): fsspec's options for its backend (no secrets), else None
    options: dict[str, Any] | None = field(default=None, compare=False)
    # imagefolder: each sample's file (relative to the folder) and label, in the dataset's order; the codec
    images: tuple[str, ...] = field(default=(), compare=False, repr=False)
    labels: tuple[int, ...] = field(default=(), compare=False, repr=False)
    codec: str | None = None
    # encoded images stored at another size than the samples delivered (`shape`): resized and cropped
    stored_shape: tuple[int, ...] | None = None
    # raw shards read through a memory map (False under a cold page cache: pread, see evict)
    mapped: bool = field(default=True, compare=False)
    # records padded to a workload's size (dataset.record_bytes): their mean and stdev on disk, as written
    record_mean: float | None = None
    record_stdev: float = 0.0

    @property
    def mean_record_bytes(self) -> float:
        """A record's bytes on average, what a loader moves a sample: as written where padded (label, sample
        and ballast), else label and sample."""
        return self.record_mean if self.record_mean is not None else float(self.record_bytes)

    @property
    def remote(self) -> bool:
        return storage.is_remote(self.folder)

    @property
    def shards(self) -> int:
        return len(self.bounds) - 1

    def image_path(self, index: int) -> str:
        rel = self.images[index]
        return storage.join(self.folder, rel) if self.remote else os.path.join(self.folder, rel)

    @property
    def sample_bytes(self) -> int:
        return int(np.prod(self.shape)) * np.dtype(self.dtype).itemsize

    @property
    def record_bytes(self) -> int:
        return np.dtype(self.label_dtype).itemsize + self.sample_bytes

    def path(self, shard: int) -> str:
        return (
            storage.join(self.folder, self.files[shard])
            if self.remote
            else os.path.join(self.folder, self.files[shard])
        )

    def record_dtype(self) -> np.dtype:
        return np.dtype([("y", self.label_dtype), ("x", self.dtype, self.shape)])

    @classmethod
    def open(cls, folder: str | Path, options: dict[str, Any] | None = None) -> ShardSet:
        remote = storage.is_remote(str(folder))
        meta_path = storage.join(str(folder), META) if remote else Path(folder) / META
        try:
            meta = json.loads(storage.cat(str(meta_path), options) if remote else Path(meta_path).read_text())
        except FileNotFoundError:
            raise DataError(f"{meta_path}: no such file (the shard folder is incomplete or absent)") from None
        except storage.StorageError as exc:
            if str(exc).endswith("no such object"):
                raise StorageUnavailable(
                    f"{exc} (the shard folder is absent: write it with `mlbench data prepare CONFIG`)"
                ) from None
            raise StorageUnavailable(str(exc)) from None
        except (OSError, ValueError) as exc:
            raise DataError(f"{meta_path}: unreadable ({exc})") from None
        return cls(
            options=options if remote else None,
            folder=str(folder),
            format=meta["format"],
            n=meta["n"],
            bounds=tuple(meta["bounds"]),
            files=tuple(meta["files"]),
            shape=tuple(meta["shape"]),
            dtype=meta["dtype"],
            label_dtype=meta["label_dtype"],
            images=tuple(meta.get("images", ())),
            labels=tuple(meta.get("labels", ())),
            codec=meta.get("codec"),
            stored_shape=tuple(meta["stored_shape"]) if meta.get("stored_shape") else None,
            record_mean=(meta.get("records") or {}).get("mean_bytes"),
            record_stdev=float((meta.get("records") or {}).get("stdev_bytes") or 0.0),
        )


BALLAST_FORMATS = ("npz", "tfrecord", "hdf5")  # formats whose records take dataset.record_bytes


def folder_name(
    dataset_key: str,
    fmt: str,
    shards: int,
    codec: str | None = None,
    image_size: int | None = None,
    record: tuple[int, int] | None = None,
) -> str:
    if fmt == "imagefolder":
        codec = codec or "jpeg"
    encoded = f"-{codec}" if codec and fmt in ("imagefolder", "tfrecord") else ""
    sized = f"-{image_size}px" if encoded and image_size else ""
    padded = f"-{record[0]}B" + (f"sd{record[1]}" if record[1] else "") if record and fmt in BALLAST_FORMATS else ""
    return f"{dataset_key}.{fmt}{encoded}{sized}{padded}-{shards}"


def record_sizes(n: int, record: tuple[int, int]) -> np.ndarray:
    """Each of n records' size on disk, drawn from N(mean, stdev) and rounded (DLIO's record_length_bytes
    and its stdev). A function of (n, mean, stdev) alone: the same files every time."""
    mean, stdev = record
    drawn = np.rint(np.random.default_rng([n, mean, stdev]).normal(mean, stdev, n)) if stdev else np.full(n, mean)
    return np.maximum(drawn, 0).astype(np.int64)


class Ballast:
    """A shard's ballast: random (incompressible: no file system or codec shrinks it) bytes, made a
    record at a time (a shard's at once would hold it all in memory), the same for the same shard."""

    def __init__(self, shard: int) -> None:
        self.rng = np.random.default_rng([shard, 0xBA11A57])

    def take(self, n: int) -> bytes:
        return self.rng.bytes(int(n))


def encode_image(chw: np.ndarray, codec: str, size: int | None = None) -> bytes:
    """One CHW uint8 RGB image as a JPEG (Pillow, quality 90, 4:2:0) or PNG file's bytes; `size`: stored
    as a size x size image (Pillow's bicubic resize), as photographs come larger than a model's input."""
    from PIL import Image

    out = io.BytesIO()
    pic = Image.fromarray(np.ascontiguousarray(chw.transpose(1, 2, 0)))
    if size and pic.size != (size, size):
        pic = pic.resize((size, size), Image.Resampling.BICUBIC)
    if codec == "jpeg":
        pic.save(out, format="JPEG", quality=JPEG_QUALITY, subsampling="4:2:0")
    else:
        pic.save(out, format="PNG")
    return out.getvalue()


def _write_images(folder: Path, x: np.ndarray, y: np.ndarray, codec: str, size: int | None = None) -> list[str]:
    """One file per sample under its class's folder; the relative paths in the samples' order."""
    _check_images(x)
    names = []
    for i, (img, label) in enumerate(zip(x, y)):
        rel = f"{int(label):03d}/{i:07d}.{CODECS[codec]}"
        (folder / rel).parent.mkdir(exist_ok=True)
        (folder / rel).write_bytes(encode_image(img, codec, size))
        names.append(rel)
    return names


def _check_images(x: np.ndarray) -> None:
    if x.ndim != 4 or x.shape[1] != 3 or x.dtype != np.uint8:
        raise ValueError(f"encoded images are RGB (N, 3, H, W) of uint8, not {x.dtype} {x.shape}")


# --- writing -----------------------------------------------------------------------------------


def _pad_field(n: int) -> int:
    """The bytes a TFRecord Example's `pad` feature of n bytes adds beside them: its map entry's key and the
    protobuf lengths around it (the Example's own length may grow a byte or two more)."""

    def varint(v: int) -> int:
        return max(1, (v.bit_length() + 6) // 7)

    values = 1 + varint(n) + n  # BytesList
    feature = 1 + varint(values) + values
    entry = 5 + 1 + varint(feature) + feature  # key "pad", then the Feature
    return 1 + varint(entry) + entry - n


def _write_shard(
    path: str,
    fmt: str,
    x: np.ndarray,
    y: np.ndarray,
    label_dtype: str,
    codec: str | None = None,
    size: int | None = None,
    targets: np.ndarray | None = None,
    shard: int = 0,
) -> list[int] | None:
    """One shard's file(s). With `targets` (each record's size on disk, dataset.record_bytes) every record
    is padded with ballast to its target, where its own bytes fall short; returns the records' sizes as
    written (label, sample and ballast; a TFRecord's the framed Example), else None (`write` checks that
    the format takes ballast)."""
    own = int(np.prod(x.shape[1:])) * x.dtype.itemsize + 4  # npz and hdf5: the sample and an int32 label
    sizes: list[int] = []
    if fmt == "raw":
        rec = np.empty(len(y), np.dtype([("y", label_dtype), ("x", x.dtype.newbyteorder("<"), x.shape[1:])]))
        rec["y"], rec["x"] = y, x
        rec.tofile(path)
    elif fmt == "npz" and targets is None:
        with open(path, "wb") as f:
            np.savez(f, x=x, y=y.astype("<i4"))
    elif fmt == "npz":  # numpy's npz layout, written as np.savez does, with a member `padNNNNNNN` a record
        ballast = Ballast(shard)
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as z:

            def member(name: str, arr: np.ndarray) -> None:
                with z.open(name + ".npy", "w", force_zip64=True) as f:
                    np.lib.format.write_array(f, arr, allow_pickle=False)

            member("x", np.asarray(x))
            member("y", y.astype("<i4"))
            for k, target in enumerate(targets):
                pad = max(int(target) - own, 0)
                member(pad_name(k), np.frombuffer(ballast.take(pad), np.uint8))
                sizes.append(own + pad)
    elif fmt == "tfrecord":
        ballast = Ballast(shard)
        offsets, pos = [], 0
        with open(path, "wb") as f:
            for k, (xi, yi) in enumerate(zip(x, y)):
                offsets.append(pos)
                blob = encode_image(xi, codec, size) if codec else np.ascontiguousarray(xi).tobytes()
                example = tfrecords.encode_example(blob, yi)
                if targets is not None:  # the pad fills what the Example and its framing (16 bytes) leave
                    short = int(targets[k]) - len(example) - 16
                    example = tfrecords.encode_example(blob, yi, ballast.take(max(short - _pad_field(short), 0)))
                written = tfrecords.write_record(f, example)
                pos += written
                sizes.append(written)
        np.save(path + ".idx.npy", np.asarray(offsets, np.int64))  # each record's offset: random access
    elif fmt == "hdf5":
        import h5py

        with h5py.File(path, "w") as f:
            f.create_dataset("x", data=x)
            f.create_dataset("y", data=y.astype("<i4"))
            if targets is not None:  # the records' ballast end to end, and where each record's starts
                # (not a variable-length dataset: HDF5 keeps those in heaps it caches, so a second
                # epoch would read them from memory)
                ballast = Ballast(shard)
                lengths = np.maximum(targets.astype(np.int64) - own, 0)
                ends = np.cumsum(lengths)
                f.create_dataset("pad_offsets", data=np.concatenate([[0], ends]).astype("<i8"))
                pad = f.create_dataset("pad", (int(ends[-1]) if len(ends) else 0,), dtype=np.uint8)
                for k, n in enumerate(lengths):
                    if n:
                        pad[int(ends[k] - n) : int(ends[k])] = np.frombuffer(ballast.take(n), np.uint8)
                    sizes.append(own + int(n))
    else:
        raise ValueError(f"unknown format {fmt!r}; allowed: {', '.join(FORMATS)}")
    return sizes if targets is not None else None


def pad_name(k: int) -> str:
    """An npz shard's member holding record k's ballast (a member a record: read alone, as the record is)."""
    return f"pad{k:07d}"


def write(
    folder: str | Path,
    fmt: str,
    x: np.ndarray,
    y: np.ndarray,
    shards: int,
    codec: str | None = None,
    image_size: int | None = None,
    record: tuple[int, int] | None = None,
) -> ShardSet:
    """Write the samples (images NCHW uint8) as `shards` files of `fmt` into `folder`, atomically:
    into a temporary folder beside it, renamed when whole. An existing folder is kept (another
    process made it first: the same inputs make the same files). `record`: (mean, stdev) bytes of a
    record on disk, the sample padded with ballast (npz, tfrecord, hdf5)."""
    folder = Path(folder)
    if (folder / META).is_file():
        return ShardSet.open(folder)
    bounds = shard_bounds(len(y), shards)
    # CIFAR's layout (one label byte) where every label fits a byte; four bytes where one does not
    small = x.dtype == np.uint8 and (len(y) == 0 or (int(np.min(y)) >= 0 and int(np.max(y)) < 256))
    label_dtype = "|u1" if small else "<i4"
    files = [] if fmt == "imagefolder" else [f"train-{s:05d}-of-{shards:05d}.{EXTENSIONS[fmt]}" for s in range(shards)]
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        extra: dict[str, Any] = {}
        if fmt == "imagefolder":
            codec = codec or "jpeg"
            names = _write_images(tmp, x, y, codec, image_size)
            extra = {"images": names, "labels": [int(v) for v in y], "codec": codec}
        elif fmt == "tfrecord" and codec:  # JPEG (or PNG) shards
            _check_images(x)
            extra = {"codec": codec}
        size = image_size if extra.get("codec") and image_size and image_size != x.shape[-1] else None
        if size:  # stored larger or smaller than the samples the readers deliver
            extra["stored_shape"] = [x.shape[1], size, size]
        if record is not None and fmt not in BALLAST_FORMATS:
            raise ValueError(f"{fmt} records take no ballast; record_bytes is for {', '.join(BALLAST_FORMATS)}")
        targets = record_sizes(len(y), record) if record is not None else None
        written: list[int] = []
        for s, name in enumerate(files):
            lo, hi = int(bounds[s]), int(bounds[s + 1])
            part = targets[lo:hi] if targets is not None else None
            got = _write_shard(str(tmp / name), fmt, x[lo:hi], y[lo:hi], label_dtype, extra.get("codec"), size, part, s)
            written += got or []
        if record is not None:  # what the files hold, beside what was asked
            sizes = np.asarray(written, np.float64)
            extra["records"] = {
                "requested_bytes": record[0],
                "requested_stdev": record[1],
                "mean_bytes": float(sizes.mean()) if len(sizes) else None,
                "stdev_bytes": float(sizes.std()) if len(sizes) else None,
                "min_bytes": int(sizes.min()) if len(sizes) else None,
                "max_bytes": int(sizes.max()) if len(sizes) else None,
            }
        meta = {
            "format": fmt,
            "n": len(y),
            "bounds": [int(b) for b in bounds],
            "files": files,
            "shape": list(x.shape[1:]),
            "dtype": x.dtype.newbyteorder("<").str if x.dtype.itemsize > 1 else x.dtype.str,
            "label_dtype": label_dtype,
            "layout": LAYOUT_VERSION,
            **extra,
        }
        (tmp / META).write_text(json.dumps(meta, indent=1))
        os.rename(tmp, folder)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if (folder / META).is_file():  # another process renamed its copy first
            return ShardSet.open(folder)
        raise
    return ShardSet.open(folder)


# --- reading by index ----------------------------------------------------------------------------


def decode_image(blob: bytes, where: str, shape: tuple[int, ...], stored: tuple[int, ...] | None = None) -> np.ndarray:
    """One JPEG or PNG file's pixels by Pillow, CHW uint8 RGB, at the model's `shape`: an image stored at
    another size (`stored`) is resized so its shorter side is the model's, bilinearly, then centre-cropped
    (torchvision's Resize and CenterCrop). A file that is no image, or not of the stored size, is a
    DataError naming it."""
    from PIL import Image, UnidentifiedImageError

    stored = tuple(stored or shape)
    try:
        with Image.open(io.BytesIO(blob)) as pic:
            rgb = pic.convert("RGB")
            if rgb.size != (stored[2], stored[1]):
                w, h = rgb.size
                raise DataError(f"{where}: decodes to {w}x{h} pixels, expected {stored[2]}x{stored[1]}")
            if stored != tuple(shape):
                rgb = resize_crop(rgb, shape[1], shape[2])
            hwc = np.asarray(rgb)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(f"{where}: not an image Pillow decodes ({exc})") from None
    return hwc.transpose(2, 0, 1)


def resize_crop(pic: Any, height: int, width: int) -> Any:
    """Pillow: the shorter side to the target's (bilinear, antialiased as Pillow does), then the centre crop."""
    from PIL import Image

    w, h = pic.size
    scale = max(height / h, width / w)
    rw, rh = max(width, round(w * scale)), max(height, round(h * scale))
    pic = pic.resize((rw, rh), Image.Resampling.BILINEAR)
    left, top = (rw - width) // 2, (rh - height) // 2
    return pic.crop((left, top, left + width, top + height))


def _npz(z: Any, where: str, count: int, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, Any]:
    """An npz shard's samples and labels, checked against `count` records of `shape`, and the open file
    where its records carry ballast (a member a record, read with its record and discarded, every time it
    is read), else None (closed)."""
    x, y = z["x"], z["y"]
    pads = sum(name.startswith("pad") for name in z.files)
    if not pads:
        z.close()
    if len(y) != count or x.shape[1:] != shape or pads not in (0, count):
        z.close()
        raise DataError(
            f"{where}: holds {len(y)} samples of shape {x.shape[1:]} ({pads} with ballast), expected {count} of {shape}"
        )
    return x, y, z if pads else None


class _Pread:
    """A raw shard read by pread, consecutive records in one call (a page-cache drop cannot evict the pages
    of a memory map that is still in use, so a cold cache reads this way)."""

    def __init__(self, fd: int, record_bytes: int) -> None:
        self.fd, self.record_bytes = fd, record_bytes

    def records(self, local: np.ndarray, dtype: np.dtype) -> np.ndarray:
        starts = local.astype(np.int64) * self.record_bytes
        parts = [os.pread(self.fd, b - a, a) for _, _, a, b in storage.runs(starts, starts + self.record_bytes)]
        return np.frombuffer(b"".join(parts), dtype, count=len(local))

    def close(self) -> None:
        os.close(self.fd)


def local_files(ss: ShardSet) -> list[str]:
    """Every file a local shard set's readers open: the shards (a TFRecord's index too) or the images."""
    if ss.remote:
        return []
    files = [ss.image_path(i) for i in range(ss.n)] if ss.format == "imagefolder" else []
    for s in range(len(ss.files)):
        files.append(ss.path(s))
        if ss.format == "tfrecord":
            files.append(ss.path(s) + ".idx.npy")
    return files


def evict(ss: ShardSet) -> int:
    """Drop a local shard set's pages from the page cache (written back first where dirty), so the next
    reads reach the disk: posix_fadvise's DONTNEED, which needs no root. Returns the bytes it covered."""
    total = 0
    for path in local_files(ss):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            total += os.fstat(fd).st_size
        finally:
            os.close(fd)
    return total


class Reader:
    """Random access to a shard set by global sample index; files opened lazily in the process that
    reads (a loader's worker process opens its own) and kept open: a globally shuffled batch touches
    every shard (an npz shard is then held in memory whole, as np.load gives it)."""

    def __init__(self, shardset: ShardSet) -> None:
        self.ss = shardset
        self._open: dict[int, Any] = {}
        self._fileobjs: dict[int, Any] = {}  # a remote HDF5 shard's fsspec file
        self._pad_offsets: dict[int, np.ndarray] = {}  # an HDF5 shard's ballast index, read once

    def __getstate__(self) -> dict[str, Any]:  # a worker process opens its own files
        return {"ss": self.ss, "_open": {}, "_fileobjs": {}, "_pad_offsets": {}}

    def _file(self, shard: int) -> Any:
        handle = self._open.get(shard)
        if handle is None:
            handle = self._open[shard] = self._openshard(shard)
        return handle

    def _close(self, shard: int) -> None:
        handle = self._open.pop(shard)
        self._pad_offsets.pop(shard, None)
        if self.ss.format == "hdf5" or isinstance(handle, _Pread):
            handle.close()
        elif self.ss.format == "npz" and handle[2] is not None:
            handle[2].close()
        fileobj = self._fileobjs.pop(shard, None)
        if fileobj is not None:
            fileobj.close()

    def _openshard(self, shard: int) -> Any:
        ss, path = self.ss, self.ss.path(shard)
        count = ss.bounds[shard + 1] - ss.bounds[shard]
        if ss.remote:
            try:
                return self._openremote(shard, path, count)
            except storage.StorageError as exc:
                raise StorageUnavailable(str(exc)) from None
        if not os.path.isfile(path):
            raise DataError(f"{path}: no such file (shard {shard} of {ss.shards})")
        try:
            if ss.format == "raw":
                size = os.path.getsize(path)
                if size != count * ss.record_bytes:
                    raise DataError(
                        f"{path}: {size} bytes, expected {count} records of {ss.record_bytes} bytes "
                        f"(truncated, or another record size); record {size // ss.record_bytes} is the first incomplete"
                    )
                if not ss.mapped:  # read, not mapped: a page-cache drop never evicts a mapped page (evict)
                    return _Pread(os.open(path, os.O_RDONLY), ss.record_bytes)
                return np.memmap(path, ss.record_dtype(), mode="r", shape=(count,))
            if ss.format == "npz":
                return _npz(np.load(path, allow_pickle=False), path, count, ss.shape)
            if ss.format == "tfrecord":
                index = np.load(path + ".idx.npy", allow_pickle=False)
                if len(index) != count:
                    raise DataError(f"{path}.idx.npy: {len(index)} records indexed, expected {count}")
                return open(path, "rb"), index
            if ss.format == "hdf5":
                import h5py

                f = h5py.File(path, "r")
                if f["y"].shape[0] != count or f["x"].shape[1:] != ss.shape:
                    held = f["y"].shape[0]
                    f.close()
                    raise DataError(f"{path}: holds {held} samples, expected {count} of {ss.shape}")
                return f
        except DataError:
            raise
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as exc:
            raise DataError(f"{path}: cannot read shard {shard} ({type(exc).__name__}: {exc})") from None
        raise ValueError(f"unknown format {ss.format!r}")

    def _openremote(self, shard: int, path: str, count: int) -> Any:
        """A shard in object storage (storage.py): a raw or TFRecord shard as its records' byte offsets (read
        by ranges), an npz shard fetched whole, an HDF5 shard through a buffered file h5py reads."""
        ss, opts, what = self.ss, self.ss.options, f"shard {shard} of {self.ss.shards}"
        if ss.format == "raw":
            size = storage.size(path, opts, what)
            if size != count * ss.record_bytes:
                raise DataError(
                    f"{storage.redact(path)}: {size} bytes, expected {count} records of {ss.record_bytes} bytes "
                    f"(truncated, or another record size); record {size // ss.record_bytes} is the first incomplete"
                )
            return np.arange(count + 1, dtype=np.int64) * ss.record_bytes
        if ss.format == "tfrecord":
            index = np.load(io.BytesIO(storage.cat(path + ".idx.npy", opts, what)), allow_pickle=False)
            if len(index) != count:
                raise DataError(f"{storage.redact(path)}.idx.npy: {len(index)} records indexed, expected {count}")
            return np.append(index.astype(np.int64), storage.size(path, opts, what))
        if ss.format == "npz":
            try:
                # fetched whole, once a process: its ballast is then read from memory
                z = np.load(io.BytesIO(storage.cat(path, opts, what)), allow_pickle=False)
                return _npz(z, storage.redact(path), count, ss.shape)
            except (ValueError, KeyError, zipfile.BadZipFile, EOFError) as exc:
                raise DataError(
                    f"{storage.redact(path)}: cannot read shard {shard} ({type(exc).__name__}: {exc})"
                ) from None
        if ss.format == "hdf5":
            import h5py

            fileobj = storage.CountedFile(path, opts)
            try:
                f = h5py.File(fileobj, "r")
            except storage.StorageError:
                fileobj.close()
                raise
            except OSError as exc:
                fileobj.close()
                raise DataError(f"{storage.redact(path)}: cannot read shard {shard} ({exc})") from None
            if f["y"].shape[0] != count or f["x"].shape[1:] != ss.shape:
                held = f["y"].shape[0]
                f.close()
                fileobj.close()
                raise DataError(f"{storage.redact(path)}: holds {held} samples, expected {count} of {ss.shape}")
            self._fileobjs[shard] = fileobj
            return f
        raise ValueError(f"unknown format {ss.format!r}")

    def _remote_records(self, shard: int, local: np.ndarray) -> list[bytes]:
        """The bytes of each record `local` names (ascending), consecutive ones fetched as one range."""
        offsets = self._file(shard)
        starts, ends = offsets[local], offsets[local + 1]
        spans = storage.runs(starts, ends)
        try:
            blobs = storage.ranges(self.ss.path(shard), self.ss.options, [(a, b) for _, _, a, b in spans])
        except storage.StorageError as exc:
            raise StorageUnavailable(str(exc)) from None
        out: list[bytes] = []
        for (i0, i1, a, _), blob in zip(spans, blobs):
            out.extend(blob[int(starts[k]) - a : int(ends[k]) - a] for k in range(i0, i1))
        return out

    def _tfrecord(self, shard: int, local: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        path = self.ss.path(shard)
        if self.ss.remote:
            streams: Any = (io.BytesIO(b) for b in self._remote_records(shard, local))
        else:
            f, index = self._file(shard)

            def seek() -> Any:
                for i in local:
                    f.seek(int(index[i]))
                    yield f

            streams = seek()
        x = np.empty((len(local), *self.ss.shape), self.ss.dtype)
        y = np.empty(len(local), np.int32)
        for j, (i, stream) in enumerate(zip(local, streams)):
            where = f"{storage.redact(path)}: record {int(i)}"
            try:
                raw, y[j] = tfrecords.decode_example(tfrecords.read_record(stream, where))
            except ValueError as exc:
                raise DataError(str(exc)) from None  # a bad CRC, a record cut short: the file
            except Exception as exc:  # protobuf's DecodeError, a missing feature
                raise DataError(f"{where}: not a tf.train.Example with features x and y ({exc})") from None
            if self.ss.codec:  # a JPEG shard: the image decoded as an image folder's file is
                x[j] = decode_image(raw, where, self.ss.shape, self.ss.stored_shape)
                continue
            if len(raw) != self.ss.sample_bytes:
                raise DataError(f"{where}: {len(raw)} sample bytes, expected {self.ss.sample_bytes}")
            x[j] = np.frombuffer(raw, self.ss.dtype).reshape(self.ss.shape)
        return x, y

    def _images(self, shard: int, local: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Decode each sample's file with Pillow (what torchvision's ImageFolder does), as stored: CHW uint8."""
        ss = self.ss
        index = local + ss.bounds[shard]
        paths = [ss.image_path(int(i)) for i in index]
        if ss.remote:
            try:
                blobs = storage.cat_many(paths, ss.options)
            except storage.StorageError as exc:
                raise StorageUnavailable(str(exc)) from None
        else:
            blobs = []
            for i, p in zip(index, paths):
                try:
                    with open(p, "rb") as f:
                        blobs.append(f.read())
                except OSError as exc:
                    raise DataError(f"{p}: cannot read sample {int(i)} ({exc.strerror or exc})") from None
        x = np.empty((len(index), *ss.shape), ss.dtype)
        for j, (p, blob) in enumerate(zip(paths, blobs)):
            x[j] = decode_image(blob, storage.redact(p), ss.shape, ss.stored_shape)
        return x, np.asarray([ss.labels[int(i)] for i in index], np.int32)

    def _shard_part(self, shard: int, local: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        fmt = self.ss.format
        if fmt == "imagefolder":
            return self._images(shard, local)
        if fmt == "tfrecord":
            return self._tfrecord(shard, local)
        if fmt == "raw" and self.ss.remote:
            blob = b"".join(self._remote_records(shard, local))
            rec = np.frombuffer(blob, self.ss.record_dtype(), count=len(local))
            return rec["x"], rec["y"].astype(np.int32)
        handle = self._file(shard)
        if fmt == "raw":
            rec = handle.records(local, self.ss.record_dtype()) if isinstance(handle, _Pread) else handle[local]
            return rec["x"], rec["y"].astype(np.int32)
        if fmt == "npz":
            x, y, pads = handle
            if pads is not None:  # each record's ballast read from the file, discarded
                try:
                    for i in local:
                        pads[pad_name(int(i))]
                except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as exc:
                    raise DataError(
                        f"{self.ss.path(shard)}: cannot read the ballast of record {int(i)} ({exc})"
                    ) from None
            return x[local], y[local].astype(np.int32)
        try:  # hdf5: ascending indices
            if "pad" in handle:  # the records' ballast, a range a run of consecutive records, discarded
                if shard not in self._pad_offsets:
                    self._pad_offsets[shard] = handle["pad_offsets"][...]
                offsets = self._pad_offsets[shard]
                for _, _, a, b in storage.runs(offsets[local], offsets[local + 1]):
                    if b > a:
                        handle["pad"][a:b]
            return handle["x"][local], handle["y"][local].astype(np.int32)
        except (OSError, ValueError) as exc:
            raise DataError(f"{self.ss.path(shard)}: cannot read records {local[0]}..{local[-1]} ({exc})") from None

    def read(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Samples (as stored) and int32 labels of the given global indices, in that order (ascending
        indices read fastest)."""
        indices = np.asarray(indices, np.int64)
        shard_of = np.searchsorted(np.asarray(self.ss.bounds), indices, side="right") - 1
        x = np.empty((len(indices), *self.ss.shape), self.ss.dtype)
        y = np.empty(len(indices), np.int32)
        for shard in np.unique(shard_of):
            pos = np.nonzero(shard_of == shard)[0]
            local = indices[pos] - self.ss.bounds[shard]
            order = np.argsort(local, kind="stable")
            xs, ys = self._shard_part(int(shard), local[order])
            x[pos[order]], y[pos[order]] = xs, ys
        return x, y

    def read_shard(self, shard: int) -> tuple[np.ndarray, np.ndarray]:
        """A whole shard in stored order."""
        count = self.ss.bounds[shard + 1] - self.ss.bounds[shard]
        return self._shard_part(shard, np.arange(count))

    def close(self) -> None:
        for shard in list(self._open):
            self._close(shard)
