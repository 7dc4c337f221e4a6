"""Where a step's time goes: a profiler trace of a reference loop's steps, and any trace's top operations.

`bench.fidelity --profile` puts two traces of the same case side by side: the worker's (mlbench's own
`profile: true`: three real steps after the timed window, with the framework's profiler) and the
independent reference's (this module: `TRACED` steps of the hand-written loop after its warm-up, with
the same profiler), each read into its operations' self time per step, so a gap between the two comes
with the operations it is made of.

    python -m bench.step_profile --framework tensorflow --model resnet18 --batch-size 64 --out DIR [--threads 2]
    python -m bench.step_profile --top TRACE_FILE --steps 3   # any trace's top operations

Traces: PyTorch's Chrome trace (`trace.json`), JAX's Perfetto trace (`perfetto_trace.json.gz`) and
TensorFlow's XSpace (`*.xplane.pb`, TensorBoard's profile plugin) are all read: every timed event on
every host thread, its self time (its duration less its children's on the same thread) summed by name.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
from pathlib import Path
from typing import Any

TRACED = 3  # steps in a trace, as the worker's (workers/common/harness.TRACED_STEPS)
WARMUP = 3
TOP = 12

Event = tuple[Any, float, float, str]  # (thread, start, duration, name), times in microseconds


def _chrome_events(path: Path) -> list[Event]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        raw = json.load(f)
    events = raw["traceEvents"] if isinstance(raw, dict) else raw
    out = []
    for e in events:
        if e.get("ph") != "X" or "dur" not in e:
            continue
        # torch's trace: operators only (not its Python frames or the profiler's own step annotations);
        # JAX's Perfetto trace keeps every event
        torch_trace = not path.name.endswith(".json.gz")
        if torch_trace and e.get("cat") not in ("cpu_op", "kernel", "gpu_op", "Kernel"):
            continue
        out.append(((e.get("pid"), e.get("tid")), float(e["ts"]), float(e["dur"]), str(e.get("name"))))
    return out


def _xspace_events(path: Path) -> list[Event]:
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    space = xplane_pb2.XSpace()
    space.ParseFromString(path.read_bytes())
    out = []
    for plane in space.planes:
        if not plane.name.startswith(("/host:", "/device:")):
            continue
        names = {k: v.name for k, v in plane.event_metadata.items()}
        for line in plane.lines:
            if line.name in ("Steps", "XLA Modules", "Source code"):  # summaries over the ops' own lines
                continue
            for e in line.events:
                start = (line.timestamp_ns * 1000 + e.offset_ps) / 1e6
                out.append(((plane.name, line.id), start, e.duration_ps / 1e6, names.get(e.metadata_id, "?")))
    return out


def self_times(events: list[Event]) -> dict[str, float]:
    """Self time (us) per event name: each event's duration less that of the events nested in it on
    its own thread."""
    by_thread: dict[Any, list[Event]] = collections.defaultdict(list)
    for e in events:
        by_thread[e[0]].append(e)
    total: dict[str, float] = collections.defaultdict(float)
    for evs in by_thread.values():
        evs.sort(key=lambda e: (e[1], -e[2]))
        stack: list[list[Any]] = []  # [end, name, self time so far]
        for _, start, dur, name in evs:
            while stack and stack[-1][0] <= start:
                end, n, own = stack.pop()
                total[n] += own
            if stack:
                stack[-1][2] -= min(dur, stack[-1][0] - start)
            stack.append([start + dur, name, dur])
        for _, n, own in stack:
            total[n] += own
    return dict(total)


def top_ops(path: str | Path, steps: int, n: int = TOP) -> dict[str, Any]:
    """The trace's operations by self time per step (ms), the largest `n`, and the total."""
    path = Path(path)
    events = _xspace_events(path) if path.name.endswith(".xplane.pb") else _chrome_events(path)
    times = self_times(events)
    ranked = sorted(times.items(), key=lambda kv: -kv[1])
    return {
        "trace": str(path),
        "steps": steps,
        "total_ms_per_step": sum(times.values()) / 1e3 / steps,
        "top_ms_per_step": [[name, t / 1e3 / steps] for name, t in ranked[:n]],
    }


def trace_reference(framework: str, model: str, bs: int, out: Path) -> dict[str, Any]:
    """`TRACED` steps of the framework's reference loop traced into `out`, after `WARMUP` untimed ones."""
    from bench.handwritten import LOOPS

    run = LOOPS[framework](model, bs, WARMUP + 2 * TRACED, WARMUP + 2 * TRACED)
    run(WARMUP)
    run(TRACED)  # warm past the profiler's own first-use costs too
    out.mkdir(parents=True, exist_ok=True)
    if framework == "pytorch":
        import torch

        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            run(TRACED)
        path = out / "trace.json"
        prof.export_chrome_trace(str(path))
    elif framework == "tensorflow":
        import tensorflow as tf

        tf.profiler.experimental.start(str(out))
        try:
            run(TRACED)
        finally:
            tf.profiler.experimental.stop()
        path = Path(sorted(glob.glob(str(out / "plugins" / "profile" / "*" / "*.xplane.pb")))[-1])
    else:
        import jax

        with jax.profiler.trace(str(out), create_perfetto_trace=True):
            run(TRACED)
        path = Path(sorted(glob.glob(str(out / "plugins" / "profile" / "*" / "perfetto_trace.json.gz")))[-1])
    return top_ops(path, TRACED)


def main() -> None:
    from bench.handwritten import LOOPS, use_threads

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--framework", choices=list(LOOPS))
    p.add_argument("--model")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--threads", type=int)
    p.add_argument("--out", help="folder for the reference's trace")
    p.add_argument("--top", metavar="TRACE", help="print a trace's top operations and stop")
    p.add_argument("--steps", type=int, default=TRACED, help="steps the trace holds (with --top)")
    a = p.parse_args()
    if a.top:
        print(json.dumps(top_ops(a.top, a.steps)))
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if a.threads:
        use_threads(a.framework, a.threads)
    print(json.dumps(trace_reference(a.framework, a.model, a.batch_size, Path(a.out))))


if __name__ == "__main__":
    main()
