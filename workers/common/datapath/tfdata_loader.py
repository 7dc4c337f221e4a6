"""tf.data over the shards, shaped as TensorFlow's data-performance guide advises.

With the `two_level` order (the streaming case) the shards are read in the epoch's shard order, one
shard at a time, by TensorFlow's native C++ ops where it has them (`raw`: read_file + decode_raw;
`tfrecord`: TFRecordDataset, which checks every record's CRC), and by `tf.numpy_function` where it
has none (`npz`, `hdf5`: the workaround TensorFlow's users reach for, Python under the GIL); each
shard's records are permuted as the order says, the stream batched, each batch sorted and augmented
in one vectorised `map`, then `prefetch`. With the `global` order every batch reads its rows by
index through `tf.numpy_function` (tf.data has no random access to files). Shards in object
storage (`dataset.uri`, streamed) go through `tf.numpy_function` over fsspec in every format:
TensorFlow 2.21 reads no s3://, gs:// or az:// path itself (tensorflow-io, which carried those
filesystems, stopped at 0.37), so the native ops serve only local files and the local cache.
An image folder's files are decoded by `tf.io.decode_image` (read_file, then decode, per file inside
the batch's map), or by Pillow through `tf.numpy_function` with `loader.decoder: pillow`.

`workers` is the `num_parallel_calls` of the maps (0: none, and no prefetch: the batches are made
on demand), `prefetch` the batches made ahead; `deterministic` is on, so parallel maps keep the
order. In another framework's worker TensorFlow is shown no GPU.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorflow as tf

from workers.common.datapath import order as orders
from workers.common.datapath.formats import DataError, StorageUnavailable
from workers.common.datapath.loaders import Loader, LoaderSpec, Source, ThreadReaders

_DTYPES = {"|u1": tf.uint8, "<i4": tf.int32, "<f4": tf.float32}


def _burn(x: tf.Tensor, rounds: int) -> None:
    """order.burn in TensorFlow ops: the same products per sample."""
    b = tf.shape(x)[0]
    flat = tf.reshape(tf.cast(x, tf.float32), [b, -1])
    reps = -(-1024 // int(np.prod(x.shape[1:])))
    m = tf.reshape(tf.tile(flat, [1, reps])[:, :1024] / 255.0, [b, 32, 32])
    acc = tf.while_loop(lambda i, a: i < rounds, lambda i, a: (i + 1, tf.tanh(a @ m)), (0, m))[1]
    return acc


class TfDataLoader(Loader):
    kind = "tfdata"

    def __init__(self, source: Source, spec: LoaderSpec, framework: str) -> None:
        if framework != "tensorflow":  # a loader here, not the framework: it sees no device
            tf.config.set_visible_devices([], "GPU")
        self.source, self.spec = source, spec
        self.ss = source.shardset
        self.readers = ThreadReaders(self.ss)  # parallel maps call numpy functions from several threads
        self.par = spec.workers or None  # num_parallel_calls; None: sequential
        self.det = True if self.par else None  # parallel maps keep their order (sequential ones do anyway)
        # an image folder decoded by TensorFlow's own ops (local files): the paths and labels as constants
        self.tf_images = self.ss.format == "imagefolder" and spec.decoder == "native" and not self.ss.remote
        # a JPEG shard decoded by TensorFlow's own ops: in the two_level order (a whole shard read natively)
        self.tf_jpeg_shards = (
            self.ss.format == "tfrecord" and bool(self.ss.codec) and spec.decoder == "native" and not self.ss.remote
        )
        native_decode = self.tf_images or (self.tf_jpeg_shards and source.order == "two_level")
        self.image_decoder = "tf.io.decode_image" if native_decode else "pillow"
        if self.tf_images:
            self.paths_t = tf.constant([self.ss.image_path(i) for i in range(self.ss.n)])
            self.labels_t = tf.constant(np.asarray(self.ss.labels, np.int32))
        self._check_files()

    def _check_files(self) -> None:
        """What TensorFlow's native readers would report without a file name: a missing shard, a raw
        shard of the wrong size (a remote shard is checked by the Reader that streams it)."""
        ss = self.ss
        if ss.remote or ss.format == "imagefolder":  # an image is checked when it is decoded
            return
        for s in range(ss.shards):
            path, count = ss.path(s), ss.bounds[s + 1] - ss.bounds[s]
            if not os.path.isfile(path):
                raise DataError(f"{path}: no such file (shard {s} of {ss.shards})")
            size = os.path.getsize(path)
            if ss.format == "raw" and size != count * ss.record_bytes:
                raise DataError(
                    f"{path}: {size} bytes, expected {count} records of {ss.record_bytes} bytes "
                    f"(truncated, or another record size); record {size // ss.record_bytes} is the first incomplete"
                )

    def _decode(self, paths: tf.Tensor) -> tf.Tensor:
        """Image files to a CHW uint8 batch by tf.io.decode_image (JPEG and PNG alike)."""
        return self._decode_bytes(tf.map_fn(tf.io.read_file, paths, fn_output_signature=tf.string))

    def _decode_bytes(self, blobs: tf.Tensor) -> tf.Tensor:
        """Encoded images to a CHW uint8 batch by tf.io.decode_image."""
        shape = self.ss.shape
        stored = self.ss.stored_shape or shape

        def one(blob: tf.Tensor) -> tf.Tensor:
            hwc = tf.ensure_shape(tf.io.decode_image(blob, channels=3, expand_animations=False), [*stored[1:], 3])
            if tuple(stored) != tuple(shape):  # Keras' idiom: resize (bilinear, antialiased), centre crop
                scale = max(shape[1] / stored[1], shape[2] / stored[2])
                rh, rw = max(shape[1], round(stored[1] * scale)), max(shape[2], round(stored[2] * scale))
                big = tf.image.resize(tf.cast(hwc, tf.float32), [rh, rw], method="bilinear", antialias=True)
                top, left = (rh - shape[1]) // 2, (rw - shape[2]) // 2
                hwc = tf.cast(
                    tf.clip_by_value(tf.round(big[top : top + shape[1], left : left + shape[2]]), 0, 255), tf.uint8
                )
            return tf.transpose(hwc, [2, 0, 1])

        return tf.map_fn(one, blobs, fn_output_signature=tf.TensorSpec(shape, tf.uint8))

    def _shard_dataset(self, shard: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """A whole shard in stored order: (samples, labels)."""
        ss = self.ss
        if self.tf_images:
            bounds = tf.constant(np.asarray(ss.bounds, np.int64))
            lo, hi = bounds[shard], bounds[shard + 1]
            return self._decode(self.paths_t[lo:hi]), self.labels_t[lo:hi]
        xdtype = _DTYPES[ss.dtype]
        if ss.files:
            path = tf.gather(tf.constant([ss.path(s) for s in range(ss.shards)]), shard)
        if ss.format == "raw" and not ss.remote:
            records = tf.reshape(tf.io.decode_raw(tf.io.read_file(path), tf.uint8), [-1, ss.record_bytes])
            lb = np.dtype(ss.label_dtype).itemsize
            y = (
                tf.cast(records[:, 0], tf.int32)
                if lb == 1
                else tf.bitcast(tf.reshape(records[:, :4], [-1, 4]), tf.int32)
            )
            body = records[:, lb:]
            size = np.dtype(ss.dtype).itemsize
            x = body if size == 1 else tf.bitcast(tf.reshape(body, [-1, ss.sample_bytes // size, size]), xdtype)
            return tf.reshape(x, [-1, *ss.shape]), y
        if ss.format == "tfrecord" and not ss.remote and (not ss.codec or self.tf_jpeg_shards):
            serialized = tf.data.TFRecordDataset(path).batch(1 << 30).get_single_element()
            feats = tf.io.parse_example(
                serialized,
                {"x": tf.io.FixedLenFeature([], tf.string), "y": tf.io.FixedLenFeature([], tf.int64)},
            )
            if ss.codec:  # JPEG shards: each record's image decoded as an image folder's file is
                return self._decode_bytes(feats["x"]), tf.cast(feats["y"], tf.int32)
            x = tf.io.decode_raw(feats["x"], xdtype)
            return tf.reshape(x, [-1, *ss.shape]), tf.cast(feats["y"], tf.int32)
        # npz, hdf5: no reader in TensorFlow; object storage: no filesystem for it in TensorFlow 2.21
        x, y = tf.numpy_function(
            lambda s: self.readers.get().read_shard(int(s)), [shard], [xdtype, tf.int32], stateful=False
        )
        return tf.reshape(x, [-1, *ss.shape]), tf.reshape(y, [-1])

    def _augment(self, x: tf.Tensor, params: tf.Tensor) -> tf.Tensor:
        """crop_flip on a uint8 NCHW batch with the hash's parameters per sample, by gathers."""
        h, w = self.ss.shape[1], self.ss.shape[2]
        pad = orders.PAD
        padded = tf.transpose(tf.pad(x, [[0, 0], [0, 0], [pad, pad], [pad, pad]]), [0, 2, 3, 1])  # NHWC
        p = tf.cast(params, tf.int32)
        rows = p[:, 0:1] + tf.range(h)[None]
        cols = p[:, 1:2] + tf.range(w)[None]
        cols = tf.where(p[:, 2:3] == 1, tf.reverse(cols, [1]), cols)
        out = tf.gather(tf.gather(padded, rows, axis=1, batch_dims=1), cols, axis=2, batch_dims=1)
        return tf.transpose(out, [0, 3, 1, 2])

    def _dataset(self, epoch: int, start: int) -> tf.data.Dataset:
        src, ss = self.source, self.ss
        bs = src.batch_size
        if src.order == "global" and self.tf_images:
            plan = src.plan(epoch)[start:]
            params_t = tf.constant(
                orders.crop_flip_params(src.seed, epoch, np.arange(ss.n))
                if src.augment == "crop_flip"
                else np.zeros((1, 3), np.uint8)
            )

            def decode_rows(row: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
                x = self._decode(tf.gather(self.paths_t, row))
                if src.augment == "crop_flip":
                    x = self._augment(x, tf.gather(params_t, row))
                if src.burn:
                    with tf.control_dependencies([_burn(x, src.burn)]):
                        x = tf.identity(x)
                return x, tf.gather(self.labels_t, row)

            ds = tf.data.Dataset.from_tensor_slices(plan).map(
                decode_rows, num_parallel_calls=self.par, deterministic=True if self.par else None
            )
        elif src.order == "global":
            plan = src.plan(epoch)[start:]

            def read_rows(row: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
                x, y = self.readers.get().read(row)
                return src.finish(x, epoch, row), y

            ds = tf.data.Dataset.from_tensor_slices(plan).map(
                lambda row: tuple(tf.numpy_function(read_rows, [row], [_DTYPES[ss.dtype], tf.int32], stateful=False)),
                num_parallel_calls=self.par,
                deterministic=True if self.par else None,
            )
        else:
            read = orders.sample_order(ss.n, src.seed, epoch, "two_level", src.shards)
            bounds = np.asarray(ss.bounds)
            shard_seq = [int(s) for s in orders._rng(src.seed, epoch).permutation(src.shards)]
            ends = np.cumsum([bounds[s + 1] - bounds[s] for s in shard_seq])
            read_t, ends_t = tf.constant(read), tf.constant(np.concatenate([[0], ends]))
            bounds_t = tf.constant(bounds)
            shard_t = tf.constant(shard_seq, tf.int64)

            def one_shard(i: tf.Tensor) -> tf.data.Dataset:
                shard = shard_t[i]
                x, y = self._shard_dataset(shard)
                idx = read_t[ends_t[i] : ends_t[i + 1]]  # the shard's records in the epoch's order
                local = idx - bounds_t[shard]
                return tf.data.Dataset.from_tensor_slices((tf.gather(x, local), tf.gather(y, local), idx))

            params = tf.constant(
                orders.crop_flip_params(src.seed, epoch, np.arange(ss.n))
                if src.augment == "crop_flip"
                else np.zeros((1, 3), np.uint8)
            )

            def finish(x: tf.Tensor, y: tf.Tensor, idx: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
                o = tf.argsort(idx)  # a batch's indices in ascending order, as every loader has them
                x, y, idx = tf.gather(x, o), tf.gather(y, o), tf.gather(idx, o)
                if src.augment == "crop_flip" and len(ss.shape) == 3:  # images only
                    x = self._augment(x, tf.gather(params, idx))
                if src.burn:
                    with tf.control_dependencies([_burn(x, src.burn)]):
                        x = tf.identity(x)
                return x, y

            ds = (
                tf.data.Dataset.range(len(shard_seq))
                # one shard at a time, in order; with workers the next shard is read while this one is consumed
                .interleave(
                    one_shard, cycle_length=1, num_parallel_calls=1 if self.par else None, deterministic=self.det
                )
                .batch(bs, drop_remainder=True)
                .map(finish, num_parallel_calls=self.par, deterministic=self.det)
                .skip(start)
            )
        if self.spec.workers and self.spec.prefetch:
            ds = ds.prefetch(self.spec.prefetch)
        options = tf.data.Options()
        options.deterministic = True
        if not self.spec.workers:
            # no workers: batches made on demand, as the docstring says; tf.data's optimiser would otherwise
            # inject a prefetch that reads ahead in a thread of its own (and reads on after an error)
            options.experimental_optimization.inject_prefetch = False
        return ds.with_options(options)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        try:
            for x, y in self._dataset(epoch, start):
                yield x.numpy(), y.numpy()
        except tf.errors.OpError as exc:  # a corrupt record (TFRecordDataset names the file), a reader's DataError
            for kind in (StorageUnavailable, DataError):  # raised in a numpy_function: its own line, unwrapped
                said = [ln.strip() for ln in exc.message.splitlines() if f"{kind.__name__}: " in ln]
                if said:
                    raise kind(said[-1].split(f"{kind.__name__}: ", 1)[1]) from None
            raise DataError(" ".join(exc.message.split())[:500]) from None

    def describe(self) -> dict[str, Any]:
        return {"num_parallel_calls": self.par}
