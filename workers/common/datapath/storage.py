"""Shard folders in object storage (`dataset.uri`), read through fsspec.

A shard folder keeps the layout formats.py writes (meta.json, the shard files, a TFRecord's index)
under a URI: `s3://bucket/prefix/<dataset key>.<format>-<shards>`. fsspec picks the backend from the
scheme (s3fs for s3://, gcsfs for gs://, adlfs for az://; file:// is the local disk), and the backend
finds the credentials where its command-line tools do (AWS_ACCESS_KEY_ID / AWS_PROFILE /
~/.aws/credentials, GOOGLE_APPLICATION_CREDENTIALS, AZURE_STORAGE_*): the suite carries only
non-secret `storage_options` (an endpoint, a region), and a URI is recorded without any user or
password in it.

Two ways to read (`dataset.storage`, an axis):
- `stream`: every batch's records are fetched from storage as the loader reads them: a raw or
  TFRecord shard by byte ranges (consecutive records coalesced into one range; fsspec's `cat_ranges`
  sends a batch's ranges concurrently), an npz shard whole (numpy cannot read part of a zip member),
  an HDF5 shard through a buffered fsspec file that h5py reads like a local one;
- `cache`: the shard folder is copied to a local cache first (`<run>/data/cache/`, one copy per URI,
  whole or absent, kept across cells), then read as local files: the fetch is timed and counted once,
  and every later cell reads the cache (a hit).

Every process that fetches (a loader's worker processes too) adds what it fetched to a ledger file of
its own in the folder the options' `mlbench_ledger` (or `MLBENCH_STORAGE_LEDGER`) names, so the cell's bytes read and requests count
every process. TensorFlow reads no s3:// path by itself in 2.21 (tensorflow-io, which carried its S3
filesystem, stopped at 0.37), so tf.data streams through `tf.numpy_function` over this module.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

LEDGER_ENV = "MLBENCH_STORAGE_LEDGER"
# the ledger folder travels in the options a ShardSet carries to every loader process (an environment
# variable set after a forkserver started would not reach its children); fsspec never sees it
LEDGER_KEY = "mlbench_ledger"
# storage_options that hold a secret: refused in a suite (the backend reads them from the environment)
SECRET_KEYS = frozenset(
    {
        "key",
        "secret",
        "token",
        "password",
        "aws_access_key_id",
        "aws_secret_access_key",
        "aws_session_token",
        "account_key",
        "sas_token",
        "connection_string",
        "client_secret",
        "credential",  # adlfs
        "credentials",
    }
)
# a user and password before the host or bucket: `s3://KEY:SECRET@bucket/...` (a secret may hold a slash)
_USERINFO = re.compile(r"^([A-Za-z][\w+.-]*://)[^@]*:[^@]*@(.*)$")


class StorageError(OSError):
    """Storage that cannot be read: the one-line message names the URI and what went wrong."""


def is_remote(path: str | os.PathLike[str]) -> bool:
    """True for a URI fsspec reads from elsewhere than the local disk (file:// and plain paths are local)."""
    text = os.fspath(path)
    if "://" not in text:
        return False
    return text.split("://", 1)[0].lower() not in ("file", "local")


def local_path(path: str) -> str:
    """A plain path for a file:// URI (or a plain path)."""
    return path[len("file://") :] if path.startswith("file://") else path


def redact(uri: str) -> str:
    """The URI without a user or password in it (s3://key:secret@bucket/...: s3://bucket/...; a secret with
    a slash in it too). `abfs://container@account...` keeps its container: no password before the @."""
    m = _USERINFO.match(uri)
    return f"{m.group(1)}{m.group(2)}" if m else uri


def join(root: str, *names: str) -> str:
    return "/".join([root.rstrip("/"), *names])


_fs_lock = threading.Lock()
_fs: dict[tuple[int, str, str], Any] = {}


def filesystem(uri: str, options: dict[str, Any] | None = None) -> Any:
    """fsspec's filesystem for the URI's scheme, one per process and options (an async backend's
    session is not fork-safe: a forked loader worker makes its own)."""
    import fsspec

    protocol = uri.split("://", 1)[0].lower()
    options = {k: v for k, v in (options or {}).items() if k != LEDGER_KEY}
    key = (os.getpid(), protocol, json.dumps(options, sort_keys=True, default=str))
    with _fs_lock:
        fs = _fs.get(key)
        if fs is None:
            try:
                fs = _fs[key] = fsspec.filesystem(protocol, **(options or {}))
            except ImportError as exc:
                raise StorageError(
                    f"{redact(uri)}: reading {protocol}:// needs {exc.name or 'its fsspec backend'} "
                    f"(pip install 'mlbench[storage]': s3fs; gcsfs or adlfs for gs:// and az://)"
                ) from None
            except ValueError as exc:
                raise StorageError(f"{redact(uri)}: {protocol}:// is not a storage fsspec knows ({exc})") from None
        return fs


def describe_error(uri: str, exc: BaseException, what: str = "") -> str:
    """One line for a failed storage request: the URI, then what happened in words."""
    where = f"{redact(uri)}{f' ({what})' if what else ''}"
    text = " ".join(str(exc).split())[:300] or type(exc).__name__
    if isinstance(exc, FileNotFoundError):
        return f"{where}: no such object"
    if isinstance(exc, PermissionError):
        return (
            f"{where}: access denied ({text}); the backend takes its credentials from the environment or its "
            "config files (for s3://: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, ~/.aws/credentials)"
        )
    return f"{where}: storage request failed ({type(exc).__name__}: {text})"


# --- the ledger: what every process fetched ---------------------------------------------------------


class _Ledger:
    """This process's running totals, rewritten into its own file after every fetch."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.bytes = 0
        self.requests = 0
        self.fd: int | None = None
        self.pid = -1
        self.folder: str | None = None

    def add(self, nbytes: int, requests: int, folder: str | None) -> None:
        with self.lock:
            if self.pid != os.getpid():  # a forked child starts its own totals
                self.bytes, self.requests, self.fd, self.pid = 0, 0, None, os.getpid()
            if folder and folder != self.folder:  # another cell's ledger (a test process reads several)
                if self.fd is not None:
                    os.close(self.fd)
                self.bytes, self.requests, self.fd, self.folder = 0, 0, None, folder
            self.bytes += int(nbytes)
            self.requests += int(requests)
            if not folder:
                return
            if self.fd is None:
                self.fd = os.open(os.path.join(folder, f"{os.getpid()}.json"), os.O_WRONLY | os.O_CREAT, 0o644)
            data = json.dumps({"bytes": self.bytes, "requests": self.requests}).encode().ljust(64)
            os.pwrite(self.fd, data, 0)


_ledger = _Ledger()


def count(nbytes: int, requests: int = 1, options: dict[str, Any] | None = None) -> None:
    _ledger.add(nbytes, requests, (options or {}).get(LEDGER_KEY) or os.environ.get(LEDGER_ENV))


def ledger_totals(folder: str | os.PathLike[str]) -> tuple[int, int]:
    """Bytes and requests every process wrote into the ledger folder."""
    total_bytes = total_requests = 0
    for p in Path(folder).glob("*.json"):
        try:
            d = json.loads(p.read_bytes().strip() or b"{}")
        except ValueError:
            continue
        total_bytes += int(d.get("bytes", 0))
        total_requests += int(d.get("requests", 0))
    return total_bytes, total_requests


# --- reading ---------------------------------------------------------------------------------------


def cat(uri: str, options: dict[str, Any] | None, what: str = "") -> bytes:
    """A whole object."""
    try:
        data = filesystem(uri, options).cat_file(uri)
    except Exception as exc:
        raise StorageError(describe_error(uri, exc, what)) from None
    count(len(data), 1, options)
    return data


def cat_many(uris: list[str], options: dict[str, Any] | None) -> list[bytes]:
    """Whole objects, fetched concurrently where the backend can (an image folder's files)."""
    if not uris:
        return []
    fs = filesystem(uris[0], options)
    try:
        got = fs.cat(uris, on_error="return")
    except Exception as exc:
        raise StorageError(describe_error(uris[0], exc)) from None
    out = []
    for u in uris:
        data = got.get(u, got.get(fs._strip_protocol(u)))  # keyed by the path without its scheme
        if isinstance(data, BaseException) or data is None:
            raise StorageError(describe_error(u, data if isinstance(data, BaseException) else FileNotFoundError(u)))
        out.append(data)
    count(sum(len(d) for d in out), len(out), options)
    return out


def size(uri: str, options: dict[str, Any] | None, what: str = "") -> int:
    try:
        got = int(filesystem(uri, options).size(uri))
    except Exception as exc:
        raise StorageError(describe_error(uri, exc, what)) from None
    count(0, 1, options)  # a request (HEAD), no bytes of the object
    return got


def runs(starts: np.ndarray, ends: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Byte ranges of ascending records coalesced where one ends where the next starts: (first record,
    last record + 1, start byte, end byte) each."""
    out: list[tuple[int, int, int, int]] = []
    i, n = 0, len(starts)
    while i < n:
        j = i
        while j + 1 < n and starts[j + 1] == ends[j]:
            j += 1
        out.append((i, j + 1, int(starts[i]), int(ends[j])))
        i = j + 1
    return out


def ranges(uri: str, options: dict[str, Any] | None, spans: Iterable[tuple[int, int]], what: str = "") -> list[bytes]:
    """The bytes of each (start, end) span of one object, fetched concurrently where the backend can."""
    spans = list(spans)
    if not spans:
        return []
    fs = filesystem(uri, options)
    try:
        got = fs.cat_ranges([uri] * len(spans), [s for s, _ in spans], [e for _, e in spans], on_error="raise")
    except Exception as exc:
        raise StorageError(describe_error(uri, exc, what)) from None
    for g in got:
        if isinstance(g, BaseException):
            raise StorageError(describe_error(uri, g, what))
    count(sum(len(g) for g in got), len(spans), options)
    return list(got)


class CountedFile(io.RawIOBase):
    """A buffered fsspec file that h5py reads like a local one; every block its cache fetches from
    storage goes to the ledger (the bytes that came back, one request each)."""

    def __init__(self, uri: str, options: dict[str, Any] | None) -> None:
        self.uri = uri
        try:
            self.f = filesystem(uri, options).open(uri, "rb", block_size=1 << 20, cache_type="blockcache")
        except Exception as exc:
            raise StorageError(describe_error(uri, exc)) from None
        fetch = self.f.cache.fetcher

        def counted(start: int, end: int) -> bytes:
            data = fetch(start, end)
            count(len(data), 1, options)
            return data

        self.f.cache.fetcher = counted

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.f.seek(offset, whence)

    def tell(self) -> int:
        return self.f.tell()

    def readinto(self, b: Any) -> int:
        try:
            data = self.f.read(len(b))
        except Exception as exc:
            raise StorageError(describe_error(self.uri, exc)) from None
        b[: len(data)] = data
        return len(data)

    def close(self) -> None:
        try:
            self.f.close()
        finally:
            super().close()


# --- the local cache -------------------------------------------------------------------------------


def cache_folder(cache_root: str | os.PathLike[str], uri: str) -> Path:
    """Where a URI's shard folder is kept locally: a folder per URI (its hash), named as the folder."""
    clean = redact(uri).rstrip("/")
    return Path(cache_root) / hashlib.sha256(clean.encode()).hexdigest()[:16] / clean.rsplit("/", 1)[-1]


def fetch_folder(uri: str, options: dict[str, Any] | None, cache_root: str | os.PathLike[str]) -> dict[str, Any]:
    """Copy the shard folder at `uri` into the local cache, whole or not at all (a temporary folder,
    renamed when complete, meta.json last), unless it is there already. Returns the local folder and
    what the copy cost: bytes, requests, seconds (zero on a hit)."""
    target = cache_folder(cache_root, uri)
    if (target / "meta.json").is_file():
        return {"folder": str(target), "hit": True, "bytes": 0, "requests": 0, "seconds": 0.0}
    fs = filesystem(uri, options)
    t0 = time.perf_counter()
    meta_uri = join(uri, "meta.json")
    meta_bytes = cat(meta_uri, options)
    try:
        meta = json.loads(meta_bytes)
        names = list(meta["files"]) + list(meta.get("images", ()))  # an image folder: a file per sample
    except (ValueError, KeyError, TypeError) as exc:
        raise StorageError(f"{redact(meta_uri)}: not a shard folder's meta.json ({exc})") from None
    if meta.get("format") == "tfrecord":
        names += [f"{n}.idx.npy" for n in meta["files"]]
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    total, requests = len(meta_bytes), 1
    try:
        for name in names:
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        for i in range(0, len(names), 256):  # a batch of files at a time: an async backend fetches them together
            part = names[i : i + 256]
            try:
                fs.get([join(uri, n) for n in part], [str(tmp / n) for n in part])
            except Exception as exc:
                raise StorageError(describe_error(join(uri, part[0]) if len(part) == 1 else uri, exc)) from None
            got = sum((tmp / n).stat().st_size for n in part)
            count(got, len(part), options)
            total, requests = total + got, requests + len(part)
        (tmp / "meta.json").write_bytes(meta_bytes)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "meta.json").is_file():  # not another process's copy renamed first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "folder": str(target),
        "hit": False,
        "bytes": total,
        "requests": requests,
        "seconds": time.perf_counter() - t0,
    }


def put_folder(local: str | os.PathLike[str], uri: str, options: dict[str, Any] | None) -> int:
    """Upload a local shard folder to `uri`, meta.json last (a reader finds it whole or not at all).
    Returns the bytes written."""
    fs = filesystem(uri, options)
    local = Path(local)
    files = sorted(p for p in local.rglob("*") if p.is_file() and p != local / "meta.json")  # an image folder's too
    total = 0
    for p in [*files, local / "meta.json"]:
        dst = join(uri, p.relative_to(local).as_posix())
        try:
            fs.put_file(str(p), dst)
        except Exception as exc:
            raise StorageError(describe_error(dst, exc, "writing")) from None
        total += p.stat().st_size
    return total


def exists(uri: str, options: dict[str, Any] | None) -> bool:
    try:
        return bool(filesystem(uri, options).exists(uri))
    except Exception as exc:
        raise StorageError(describe_error(uri, exc)) from None
