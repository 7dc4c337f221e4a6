"""The worker side of the event protocol: one JSON object a line on the real stdout.

`protect_stdout()` keeps the real stdout for events and points file descriptor 1 (and
`sys.stdout`) at stderr, so prints from libraries, C extensions included, cannot break the stream.
"""

from __future__ import annotations

import json
import math
import os
import sys
import threading
import time
from typing import IO, Any

PROTOCOL_VERSION = 1
MAX_LINE_BYTES = 1 << 20  # the orchestrator cuts longer lines; keep every event below it
_T0 = time.perf_counter()


def protect_stdout() -> IO[str]:
    """Return a private handle on the real stdout and send fd 1 and sys.stdout to stderr."""
    sys.stdout.flush()
    events_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return os.fdopen(events_fd, "w", buffering=1, encoding="utf-8")


def _clean(value: Any) -> Any:
    """JSON-safe: NaN and infinities become null (missing, never a made-up number)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item"):  # numpy scalars
        return _clean(value.item())
    return value


class Emitter:
    """Writes events; every event carries its type, seconds since the worker started and the cell id."""

    def __init__(self, cell_id: str, stream: IO[str] | None = None) -> None:
        self.cell_id = cell_id
        self.stream = stream if stream is not None else sys.stdout
        self._lock = threading.Lock()  # a watcher thread may report while the main thread emits

    def emit(self, event: str, **fields: Any) -> None:
        record = {"event": event, "t": round(time.perf_counter() - _T0, 6), "cell_id": self.cell_id}
        record.update(_clean(fields))
        line = json.dumps(record, separators=(",", ":"), allow_nan=False)
        if len(line) >= MAX_LINE_BYTES:
            raise ValueError(f"event {event!r} is {len(line)} bytes, over the protocol's line limit")
        with self._lock:
            self.stream.write(line + "\n")
            self.stream.flush()

    def log(self, message: str, level: str = "info") -> None:
        self.emit("log", level=level, message=message)
