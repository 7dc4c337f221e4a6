"""Which samples make each batch of an epoch, and how each is augmented: pure functions of
(seed, epoch, index) that every loader follows, so every framework trains on the same bytes.

No loader's own shuffle is used (torch's random sampler, tf.data's shuffle buffer, Grain's index
shuffle each give a different order). Two orders:

- `global`: one permutation of the training set per epoch, `data.epoch_order`, the order the
  in-memory feed has always used (so a `memory` cell's batches do not change);
- `two_level` (DLIO's file and sample shuffle): a permutation of the shards, then of the records
  within each shard, read shard after shard. A loader that reads a shard sequentially (TFRecord,
  tf.data's readers) follows it with one shard in memory; a random-access loader follows it too, so
  every cell of a data-path comparison, `memory` included, sees the same batches.

A batch is the next `batch_size` samples of the order, its indices sorted (the same set; a
gather, a memory map or an HDF5 read in ascending order); the last partial batch is dropped.

Augmentation (`crop_flip`, the CIFAR recipe: pad 4 with zeros, a random 32x32 crop, a horizontal
flip with p = 1/2) draws its parameters from a SplitMix64 hash of (seed, epoch, sample index), not
from any framework's random stream, and applies them with integer slicing, so the uint8 batch is
the same in every framework and for every number of loader workers.
"""

from __future__ import annotations

import hashlib

import numpy as np

ORDERS = ("global", "two_level")
AUGMENTS = ("none", "crop_flip")
DIGEST_BATCHES = 4  # batches of the first epoch whose digests a cell reports
PAD = 4  # crop_flip: zero padding on each side; the crop offset is in [0, 2 * PAD]

_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The sample order of one epoch (`global`): the same in every framework for the same seed."""
    return np.random.default_rng(np.random.SeedSequence([seed, epoch, 0xDA7A])).permutation(n)


def shard_bounds(n: int, shards: int) -> np.ndarray:
    """Start of each shard and the end of the last: shard s holds samples bounds[s]:bounds[s+1]."""
    if not 1 <= shards <= n:
        raise ValueError(f"{shards} shards for {n} samples: give 1 to {n}")
    return np.array([s * n // shards for s in range(shards + 1)], np.int64)


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([*key, 0x5A4D]))


def two_level_order(n: int, shards: int, seed: int, epoch: int) -> np.ndarray:
    """The shards in a permuted order, each shard's records permuted within it."""
    bounds = shard_bounds(n, shards)
    parts = []
    for s in _rng(seed, epoch).permutation(shards):
        size = int(bounds[s + 1] - bounds[s])
        parts.append(bounds[s] + _rng(seed, epoch, int(s)).permutation(size))
    return np.concatenate(parts)


def sample_order(n: int, seed: int, epoch: int, order: str = "global", shards: int = 1) -> np.ndarray:
    """Every training sample's index, in the order one epoch reads them."""
    if order == "global":
        return epoch_order(n, seed, epoch)
    if order == "two_level":
        return two_level_order(n, shards, seed, epoch)
    raise ValueError(f"unknown order {order!r}; allowed: {', '.join(ORDERS)}")


def plan(n: int, batch_size: int, seed: int, epoch: int, order: str = "global", shards: int = 1) -> np.ndarray:
    """(batches, batch_size) sample indices of one epoch: row k is batch k, sorted."""
    steps = n // batch_size
    idx = sample_order(n, seed, epoch, order, shards)[: steps * batch_size]
    return np.sort(idx.reshape(steps, batch_size), axis=1)


# --- augmentation ---------------------------------------------------------------------------


def _splitmix64(z: np.ndarray) -> np.ndarray:
    """SplitMix64's output function (Steele, Lea, Flood 2014), on uint64 arrays (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = (z + np.uint64(0x9E3779B97F4A7C15)) & _M64
        z = ((z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _M64
        z = ((z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _M64
        return z ^ (z >> np.uint64(31))


def sample_hash(seed: int, epoch: int, index: np.ndarray) -> np.ndarray:
    """A 64-bit hash of (seed, epoch, index) per index: the random bits of that sample in that epoch."""
    key = _splitmix64(_splitmix64(np.array([seed], np.uint64)) ^ np.uint64(epoch))
    return _splitmix64(key ^ np.asarray(index, np.uint64))


def crop_flip_params(seed: int, epoch: int, index: np.ndarray) -> np.ndarray:
    """(len(index), 3) uint8: the crop's row and column offsets (0..2*PAD) and the flip (0 or 1)."""
    h = sample_hash(seed, epoch, index)
    span = np.uint64(2 * PAD + 1)
    return np.stack([h % span, (h >> np.uint64(16)) % span, (h >> np.uint64(32)) & np.uint64(1)], axis=1).astype(
        np.uint8
    )


def crop_flip(x: np.ndarray, params: np.ndarray) -> np.ndarray:
    """Pad 4, crop back to the image's size at each sample's offsets, flip where asked: uint8 NCHW in,
    uint8 NCHW out, exact."""
    n, _, h, w = x.shape
    padded = np.pad(x, ((0, 0), (0, 0), (PAD, PAD), (PAD, PAD)))
    out = np.empty_like(x)
    for i in range(n):
        dy, dx, flip = (int(v) for v in params[i])
        crop = padded[i, :, dy : dy + h, dx : dx + w]
        out[i] = crop[:, :, ::-1] if flip else crop
    return out


def burn(x: np.ndarray, rounds: int) -> None:
    """A planted per-sample CPU cost (`loader.burn`): `rounds` products of a 32x32 float32 matrix made
    from the sample, for each sample; burns a core (not a sleep), changes nothing."""
    if rounds <= 0:
        return
    flat = x.reshape(len(x), -1)
    for row in flat:
        m = np.resize(row[:1024].astype(np.float32) / 255.0, (32, 32))
        acc = m
        for _ in range(rounds):
            acc = np.tanh(acc @ m)


def digest(x: np.ndarray, y: np.ndarray) -> str:
    """A batch's identity: sha256 of its uint8 (or stored-type) samples in canonical NCHW and its labels
    as little-endian int32, shapes and dtypes included; 16 hex digits."""
    h = hashlib.sha256(f"{x.dtype.str}{x.shape}".encode())
    h.update(np.ascontiguousarray(x).data)
    h.update(np.ascontiguousarray(np.asarray(y).astype("<i4")).data)
    return h.hexdigest()[:16]
