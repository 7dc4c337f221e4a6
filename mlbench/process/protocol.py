"""The orchestrator side of the event protocol: NDJSON lines from a worker, checked before use."""

from __future__ import annotations

import json
from typing import Any

from workers.common.events import MAX_LINE_BYTES, PROTOCOL_VERSION  # one definition, on the workers' side

__all__ = ["MAX_LINE_BYTES", "PROTOCOL_VERSION", "ProtocolError", "parse_line"]

_NUM = (int, float, type(None))  # figures may be null: missing, never invented
REQUIRED: dict[str, dict[str, tuple[type, ...]]] = {
    "hello": {"protocol": (int,), "framework": (str,), "pid": (int,)},
    "model": {"num_parameters": (int,), "size_on_disk_bytes": (int,)},
    "epoch": {
        "epoch": (int,),
        "train_loss": _NUM,
        "train_accuracy": _NUM,
        "val_loss": _NUM,
        "val_accuracy": _NUM,
        "train_s": _NUM,
        "samples": (int,),
    },
    "steps": {"step_s": (list,), "warmup_s": (list,)},
    "inference": {
        "batch_size": (int,),
        "runs": (int,),
        "mean_ms": _NUM,
        "p50_ms": _NUM,
        "p95_ms": _NUM,
        "p99_ms": _NUM,
    },
    "memory": {},
    "result": {},
    "error": {"kind": (str,), "message": (str,)},
    "log": {"message": (str,)},
    "calibration": {"n": (int,), "peak_tflops": _NUM, "best_s": _NUM},
    "verify": {"model": (str,), "num_parameters": (int,), "shapes": (dict,), "losses": (list,), "arrays": (str,)},
    "verify_error": {"model": (str,), "kind": (str,), "message": (str,)},  # one model's check raised; the next goes on
    "progress": {"step": (int,), "total_steps": (int,)},
    # the timed training steps (name train: GPU window figures) or the timed inference passes start or end;
    # the monitor measures other load over each
    "phase": {"name": (str,), "state": (str,)},
    "profile": {},  # a step's time by part (workers/common/profile.py), or `skipped` with the reason
    # the data path: format, loader, the first batches' digests, the loader alone (workers/common/datapath/)
    "data": {"format": (str,), "digests": (list,)},
}
ERROR_KINDS = ("oom", "unsupported", "exception", "crashed")  # crashed: a data-parallel cell lost a rank


class ProtocolError(ValueError):
    """A stdout line that is not a valid event (kept as a log line, never a crash)."""


def parse_line(line: str) -> dict[str, Any]:
    """Parse and check one event line."""
    try:
        obj = json.loads(line)
    except ValueError:
        raise ProtocolError("not JSON") from None
    if not isinstance(obj, dict):
        raise ProtocolError("not a JSON object")
    kind = obj.get("event")
    if kind not in REQUIRED:
        raise ProtocolError(f"unknown event type {kind!r}")
    if not isinstance(obj.get("t"), (int, float)) or not isinstance(obj.get("cell_id"), str):
        raise ProtocolError(f"{kind} event without numeric `t` or string `cell_id`")
    for key, types in REQUIRED[kind].items():
        if key not in obj:
            raise ProtocolError(f"{kind} event without `{key}`")
        if not isinstance(obj[key], types) or (isinstance(obj[key], bool) and bool not in types):
            raise ProtocolError(f"{kind} event: `{key}` has type {type(obj[key]).__name__}")
    if kind in ("error", "verify_error") and obj["kind"] not in ERROR_KINDS:
        raise ProtocolError(f"error event of unknown kind {obj['kind']!r}")
    return obj
