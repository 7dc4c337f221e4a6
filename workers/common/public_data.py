"""Public datasets, one per model family, fetched on first use into a cache and checked against the
checksum their publishers (or the libraries that fetch them) publish:

- `cifar10` (ResNets): the python batches, md5 from https://www.cs.toronto.edu/~kriz/cifar.html;
- `sst2` (the BERT-like encoder): GLUE's SST-2, binary sentence sentiment, md5 as torchtext's SST2
  pins it. Chosen over AG News and IMDB because its sentences are short (a 64-token sequence holds
  almost all of them, so a CPU epoch is minutes) and its two classes match the encoder's head;
- `covertype` (the MLP): UCI Covertype, 581,012 rows of 54 features in 7 classes, sha256 as
  scikit-learn's fetch_covtype pins it (the tabular set the issue names; scikit-learn is not needed).

`MLBENCH_DATA_CACHE` (default ~/.cache/mlbench/datasets) is the cache; `MLBENCH_<NAME>_URL` and
`MLBENCH_<NAME>_<MD5|SHA256>` name a mirror and its file's checksum. A download is written beside
its place and renamed when its checksum holds; a mismatch deletes it and says so; offline, the error
is one line saying what to download and where to put it.

Text is tokenised here, once, in numpy and the standard library, so every framework reads the same
int32 ids: lower-cased words, numbers and single punctuation marks (`WORD`), a vocabulary of the
training split's most frequent tokens (ties alphabetical) after [PAD] 0, [UNK] 1, [CLS] 2, [SEP] 3,
written beside the arrays as vocab.txt; each sequence is [CLS] tokens [SEP], cut or padded with
[PAD] to the model's seq_len (the encoder has no attention mask: its padding is attended, alike in
every framework).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import re
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DOWNLOAD_TIMEOUT_S = 60.0
SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")
WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?|[^\sa-z0-9]")
SPLIT_SEED = 0  # the fixed shuffle that draws train and validation rows from a file's order


class DownloadError(Exception):
    """A dataset could not be fetched or failed its checksum: the message says what to do instead."""


@dataclass(frozen=True)
class Remote:
    name: str  # the dataset's name in a suite, and MLBENCH_<NAME>_URL's
    title: str
    url: str
    algo: str  # md5 or sha256
    checksum: str
    filename: str  # as kept in the cache
    unpack: str  # tar (unpacked into a folder), zip or gz (kept as downloaded)
    unpacked: str | None = None  # a tar's file whose presence says the folder is whole (caches made before .complete)


REMOTES = {
    r.name: r
    for r in (
        Remote(
            "cifar10",
            "CIFAR-10",
            "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
            "md5",
            "c58f30108f718f92721af3b95e74349a",
            "cifar-10-python.tar.gz",
            "tar",
            "cifar-10-batches-py/test_batch",
        ),
        Remote(
            "sst2",
            "SST-2",
            "https://dl.fbaipublicfiles.com/glue/data/SST-2.zip",
            "md5",
            "9f81648d4199384278b86e315dac217c",
            "SST-2.zip",
            "zip",
        ),
        Remote(
            "covertype",
            "Covertype",
            "https://ndownloader.figshare.com/files/5976039",
            "sha256",
            "614360d0257557dd1792834a85a1cdebfadc3c4f30b011d56afee7ffb5b15771",
            "covtype.data.gz",
            "gz",
        ),
    )
}


def cache_dir() -> Path:
    """Where downloaded datasets are kept: $MLBENCH_DATA_CACHE, else ~/.cache/mlbench/datasets."""
    return Path(os.environ.get("MLBENCH_DATA_CACHE") or Path.home() / ".cache" / "mlbench" / "datasets")


def source(name: str) -> tuple[str, str]:
    """The URL and checksum to fetch `name` from: the published ones, or a mirror's from the environment."""
    r = REMOTES[name]
    key = name.upper()
    return os.environ.get(f"MLBENCH_{key}_URL", r.url), os.environ.get(f"MLBENCH_{key}_{r.algo.upper()}", r.checksum)


def fetch(name: str) -> Path:
    """The dataset's file (zip, gz) or unpacked folder (tar) in the cache, downloaded first if absent."""
    r = REMOTES[name]
    url, expected = source(name)
    root = cache_dir() / f"{name}-{expected[:8]}"
    target = root / r.filename if r.unpack != "tar" else root
    done = root / ".complete"

    def whole() -> bool:
        return done.is_file() or bool(r.unpacked and (root / r.unpacked).is_file())

    if whole():
        return target
    by_hand = (
        f"download {url} yourself and give its {'unpacked folder' if r.unpack == 'tar' else 'file'} as dataset.path "
        f"(or put it under {root}{'' if r.unpack == 'tar' else f' as {r.filename}'}, with an empty .complete beside it)"
    )
    root.parent.mkdir(parents=True, exist_ok=True)
    part = root.parent / f".{name}-{expected[:8]}.{os.getpid()}.part"
    digest = hashlib.new(r.algo)
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as resp, open(part, "wb") as out:
            while chunk := resp.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        part.unlink(missing_ok=True)
        reason = getattr(exc, "reason", exc)
        raise DownloadError(f"cannot download {r.title} from {url} ({reason}); {by_hand}") from None
    if digest.hexdigest() != expected:
        part.unlink(missing_ok=True)
        raise DownloadError(
            f"{r.title} from {url} has {r.algo} {digest.hexdigest()}, not the published {expected}: the file was "
            f"damaged or replaced and is deleted; try again, or {by_hand}"
        )
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=root.parent))
    try:
        if r.unpack == "tar":
            import tarfile

            with tarfile.open(part) as tar:
                tar.extractall(tmp, filter="data")  # no path outside tmp, no links out, no devices
        else:
            shutil.move(str(part), tmp / r.filename)
        (tmp / ".complete").touch()
        os.rename(tmp, root)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if not whole():  # not another process's copy renamed first
            raise DownloadError(
                f"cannot keep {r.title} in {root} ({exc.strerror or exc}): remove that folder and try again, or {by_hand}"
            ) from None
    finally:
        part.unlink(missing_ok=True)
    return target


# --- SST-2: sentences to token ids ------------------------------------------------------------


def tokens(text: str) -> list[str]:
    return WORD.findall(text.lower())


def vocabulary(texts: list[str], size: int) -> list[str]:
    """The specials, then the texts' most frequent tokens (ties alphabetical) up to `size` entries."""
    counts = Counter(t for s in texts for t in tokens(s))
    ranked = sorted(counts, key=lambda t: (-counts[t], t))
    return [*SPECIALS, *ranked[: max(0, size - len(SPECIALS))]]


def encode(texts: list[str], vocab: list[str], seq_len: int) -> np.ndarray:
    """[CLS] ids [SEP], cut or padded with [PAD] to seq_len: int32 (N, seq_len)."""
    index = {t: i for i, t in enumerate(vocab)}
    out = np.zeros((len(texts), seq_len), np.int32)  # [PAD] is 0
    for row, text in enumerate(texts):
        body = [index.get(t, 1) for t in tokens(text)][: seq_len - 2]
        ids = [2, *body, 3]
        out[row, : len(ids)] = ids
    return out


def _tsv(z: zipfile.ZipFile, member: str, where: str) -> tuple[list[str], np.ndarray]:
    try:
        lines = z.read(member).decode("utf-8").splitlines()
    except KeyError:
        raise DownloadError(f"{where}: no {member} in it (not GLUE's SST-2.zip)") from None
    head = lines[0].split("\t")
    if head[:2] != ["sentence", "label"]:
        raise DownloadError(f"{where}: {member} starts {head!r}, expected the columns sentence, label")
    rows = [ln.rsplit("\t", 1) for ln in lines[1:] if ln.strip()]
    return [r[0] for r in rows], np.asarray([int(r[1]) for r in rows], np.int32)


def read_sst2(
    path: str | Path, train: int | None, val: int | None, vocab_size: int, seq_len: int
) -> tuple[dict[str, np.ndarray], list[str]]:
    """GLUE's SST-2.zip: train.tsv (a fixed shuffle of it, the first `train`) and dev.tsv (the first
    `val`; GLUE's test labels are not published) as token ids; and the vocabulary, from all of train.tsv."""
    with zipfile.ZipFile(path) as z:
        train_text, y_train = _tsv(z, "SST-2/train.tsv", str(path))
        val_text, y_val = _tsv(z, "SST-2/dev.tsv", str(path))
    vocab = vocabulary(train_text, vocab_size)
    order = np.random.default_rng(SPLIT_SEED).permutation(len(train_text))[:train]
    return {
        "x_train": encode([train_text[i] for i in order], vocab, seq_len),
        "y_train": y_train[order],
        "x_val": encode(val_text[:val], vocab, seq_len),
        "y_val": y_val[:val],
    }, vocab


# --- Covertype: rows to standardised features -------------------------------------------------------

COVERTYPE_FEATURES, COVERTYPE_CLASSES, COVERTYPE_CONTINUOUS = 54, 7, 10


def read_covertype(path: str | Path, train: int | None, val: int | None) -> dict[str, np.ndarray]:
    """covtype.data.gz: 54 features (10 continuous, standardised by the training rows' mean and std; 44
    binary, kept 0/1) and the cover type 1..7 as 0..6; a fixed shuffle of the rows, the first `train`
    for training and the next `val` for validation."""
    with gzip.open(path, "rb") as f:
        try:
            table = np.loadtxt(io.TextIOWrapper(f, "ascii"), delimiter=",", dtype=np.int64)
        except (ValueError, OSError, EOFError) as exc:
            raise DownloadError(f"{path}: not Covertype's comma-separated rows ({exc})") from None
    if table.ndim != 2 or table.shape[1] != COVERTYPE_FEATURES + 1:
        raise DownloadError(f"{path}: rows of {table.shape[-1]} values, expected {COVERTYPE_FEATURES + 1}")
    order = np.random.default_rng(SPLIT_SEED).permutation(len(table))
    n_train = len(table) if train is None else min(train, len(table))
    n_val = len(table) - n_train if val is None else min(val, len(table) - n_train)
    rows_train, rows_val = table[order[:n_train]], table[order[n_train : n_train + n_val]]
    x_train = rows_train[:, :-1].astype(np.float32)
    x_val = rows_val[:, :-1].astype(np.float32)
    c = slice(0, COVERTYPE_CONTINUOUS)
    mean, std = x_train[:, c].mean(0), x_train[:, c].std(0)
    std[std == 0] = 1.0
    x_train[:, c] = (x_train[:, c] - mean) / std
    x_val[:, c] = (x_val[:, c] - mean) / std
    return {
        "x_train": x_train,
        "y_train": (rows_train[:, -1] - 1).astype(np.int32),
        "x_val": x_val,
        "y_val": (rows_val[:, -1] - 1).astype(np.int32),
    }
