"""Bounded logs: a worker may print without limit; the files keep a head and a tail, never more."""

from __future__ import annotations

import collections
import threading
from pathlib import Path
from typing import IO


class BoundedLog:
    """Writes the first `head_bytes` to a file as they come, keeps the last `tail_bytes` in memory,
    and appends the tail (after a note of what was cut) when closed."""

    def __init__(self, path: Path, head_bytes: int = 1 << 20, tail_bytes: int = 1 << 20) -> None:
        self.path = path
        self.head_left = head_bytes
        self.tail_bytes = tail_bytes
        self.tail: collections.deque[bytes] = collections.deque()
        self.tail_size = 0
        self.cut_bytes = 0
        self.total_bytes = 0
        self._lock = threading.Lock()
        self._file: IO[bytes] | None = open(path, "wb")  # noqa: SIM115 - closed in close()

    def write(self, data: bytes) -> None:
        with self._lock:
            self.total_bytes += len(data)
            if self.head_left > 0 and self._file is not None:
                part = data[: self.head_left]
                self._file.write(part)
                self.head_left -= len(part)
                data = data[len(part) :]
            if data:
                self.tail.append(data)
                self.tail_size += len(data)
                while self.tail_size - len(self.tail[0]) >= self.tail_bytes:
                    self.cut_bytes += len(self.tail[0])
                    self.tail_size -= len(self.tail.popleft())

    def tail_text(self, max_lines: int = 20, max_chars: int = 4000) -> str:
        """The last lines written (for the stored row and the reason)."""
        with self._lock:
            blob = b"".join(self.tail) if self.tail else b""
        if not blob:
            try:
                blob = self.path.read_bytes()[-65536:]
            except OSError:
                blob = b""
        text = blob.decode("utf-8", "replace")
        return "\n".join(text.splitlines()[-max_lines:])[-max_chars:]

    def close(self) -> None:
        with self._lock:
            if self._file is None:
                return
            if self.cut_bytes:
                self._file.write(f"\n[... {self.cut_bytes} bytes cut by mlbench ...]\n".encode())
            self._file.write(b"".join(self.tail))
            self._file.close()
            self._file = None
