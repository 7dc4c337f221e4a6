"""The event protocol, both sides."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest

from mlbench.process import protocol
from tests.conftest import ROOT
from workers.common import events


def test_emitted_events_parse() -> None:
    buf = io.StringIO()
    em = events.Emitter("abc", buf)
    em.emit("hello", protocol=1, framework="x", pid=1)
    em.emit(
        "epoch",
        epoch=0,
        train_loss=float("nan"),
        train_accuracy=0.5,
        val_loss=1.0,
        val_accuracy=0.5,
        train_s=1.0,
        samples=10,
    )
    em.log("hi")
    parsed = [protocol.parse_line(line) for line in buf.getvalue().splitlines()]
    assert [p["event"] for p in parsed] == ["hello", "epoch", "log"]
    assert parsed[1]["train_loss"] is None  # NaN is missing, not a number
    assert all(p["cell_id"] == "abc" and p["t"] >= 0 for p in parsed)


@pytest.mark.parametrize(
    "line,why",
    [
        ("plain text", "not JSON"),
        ("[1, 2]", "not a JSON object"),
        ('{"event": "party", "t": 0, "cell_id": "a"}', "unknown event type"),
        ('{"event": "log", "cell_id": "a", "message": "x"}', "without numeric `t`"),
        ('{"event": "epoch", "t": 0, "cell_id": "a"}', "without `epoch`"),
        (
            '{"event": "hello", "t": 0, "cell_id": "a", "protocol": "1", "framework": "x", "pid": 1}',
            "`protocol` has type str",
        ),
        (
            '{"event": "hello", "t": 0, "cell_id": "a", "protocol": true, "framework": "x", "pid": 1}',
            "`protocol` has type bool",
        ),
        ('{"event": "error", "t": 0, "cell_id": "a", "kind": "meh", "message": "x"}', "unknown kind"),
    ],
)
def test_bad_lines_are_refused_with_a_reason(line: str, why: str) -> None:
    with pytest.raises(protocol.ProtocolError, match=why):
        protocol.parse_line(line)


def test_oversized_event_is_refused_by_the_emitter() -> None:
    em = events.Emitter("a", io.StringIO())
    with pytest.raises(ValueError, match="line limit"):
        em.emit("log", message="x" * events.MAX_LINE_BYTES)


def test_protect_stdout_sends_library_prints_to_stderr() -> None:
    code = (
        "import os, sys\n"
        "from workers.common.events import Emitter, protect_stdout\n"
        "out = protect_stdout()\n"
        "print('from print')\n"
        "os.write(1, b'from fd 1\\n')\n"
        "Emitter('c', out).log('event')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    lines = proc.stdout.splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["message"] == "event"
    assert "from print" in proc.stderr and "from fd 1" in proc.stderr
