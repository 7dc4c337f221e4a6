"""A worker that allocates and touches a given amount of host memory, to test `memory_limit_mb` for real.

The cell's `hog_mb` (run_cell's `extra`) says how much; the framework name says who allocates it:
`hog` the worker itself, `hogchild` a child process it starts and waits for (as DDP rank 0 waits for
its ranks). It imports no framework and fakes its figures.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from tests.fault_worker import _finish
from workers.common.cli import setup_process
from workers.common.events import Emitter

CHUNK_MB = 20  # allocated and touched a chunk at a time, so the memory rises over many monitor samples


def hog(mb: float, hold_s: float) -> None:
    """Allocate `mb` MB, touching every page (an untouched allocation costs no memory), then hold it."""
    held = []
    left = mb
    while left > 0:
        n = int(min(CHUNK_MB, left) * 2**20)
        held.append(b"\x01" * n)  # bytes of a given value: every page written
        left -= CHUNK_MB
        time.sleep(0.01)
    time.sleep(hold_s)


def main() -> int:
    cell = json.loads(sys.argv[sys.argv.index("--cell") + 1])
    if "--hog" in sys.argv:  # the child of `hogchild`
        hog(float(cell["hog_mb"]), float(cell.get("hog_hold_s", 1.0)))
        return 0
    mode = cell["framework"]
    events = setup_process()
    em = Emitter(cell["cell_id"], events)
    em.emit("hello", protocol=1, framework=mode, pid=os.getpid())
    if mode == "hog":
        hog(float(cell["hog_mb"]), float(cell.get("hog_hold_s", 1.0)))
    elif mode == "hogchild":
        child = subprocess.Popen([sys.executable, "-m", "tests.memhog_worker", "--cell", json.dumps(cell), "--hog"])
        pid_file = cell.get("hog_pid_file")
        if pid_file:
            with open(pid_file, "w") as f:
                f.write(str(child.pid))
        code = child.wait()
        if code != 0:  # as DDP's rank 0 reports a rank that died
            em.emit("error", kind="crashed", message=f"child {child.pid} died with status {code}", traceback="")
            return 1
    else:
        em.emit("error", kind="exception", message=f"unknown mode {mode!r}", traceback="")
        return 1
    _finish(em)
    return 0


if __name__ == "__main__":
    sys.exit(main())
