"""glibc's malloc settings for a worker process (the suite key `malloc`), and how a worker started
by hand gets the same ones as under the orchestrator.

By default glibc serves a block above its mmap threshold (128 KiB, raised as such blocks are freed,
at most 32 MiB) with a fresh mmap, and gives the top of its heap back to the kernel once more than
twice that lies free: a training step's temporaries are then unmapped at its end and page-faulted
(and zeroed by the kernel) in afresh by the next step, as often as the thresholds happen to stand in
that process (tens of thousands of faults a step: docs/findings.md). Fixed thresholds keep freed
memory in the heap (1 GiB before a trim) and huge pages (through madvise) serve what is still mapped.
docs/measurement.md, "Host memory between steps", has what it did to throughput.

glibc reads GLIBC_TUNABLES once, when the process starts: the orchestrator sets it in each worker's
environment; a worker started by hand re-executes itself once with it (`ensure`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

STEADY = "glibc.malloc.hugetlb=1:glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=1073741824"
TUNABLES: dict[str, str | None] = {"steady": STEADY, "system": None}  # the `malloc` setting -> GLIBC_TUNABLES
DEFAULT = "steady"  # the suites' default (mlbench/config.py), and a worker's when started by hand
_REEXEC = "MLBENCH_MALLOC_REEXEC"  # set across the one re-exec, so it can never loop


def env_for(mode: str, env: Mapping[str, str]) -> dict[str, str]:
    """The variables `malloc: mode` sets in a process environment `env` (none for `system`). A user's
    own GLIBC_TUNABLES follow ours: glibc takes the last value of a tunable named twice, so a tunable
    the user set deliberately wins (the environment record shows the whole variable)."""
    ours = TUNABLES[mode]  # an unknown mode is an error, not quietly one of the two
    if ours is None:
        return {}
    own = env.get("GLIBC_TUNABLES")
    if own and own.startswith(ours):  # already ours (a worker under the orchestrator, or re-executed)
        return {"GLIBC_TUNABLES": own}
    return {"GLIBC_TUNABLES": f"{ours}:{own}" if own else ours}


def restart_env(mode: str, environ: Mapping[str, str]) -> dict[str, str] | None:
    """What a process with environment `environ` must restart with for `malloc: mode`, or None: it has
    it already (under the orchestrator, which sets it), `system` asks for nothing, or it restarted once."""
    want = env_for(mode, environ)
    if not want or all(environ.get(k) == v for k, v in want.items()) or environ.get(_REEXEC):
        return None
    return want


def ensure(mode: str) -> None:
    """Re-execute this process, once, when its environment lacks what `malloc: mode` sets (see
    restart_env). Call it first, before anything imports a framework or touches stdout: the process
    image is replaced, with the same command line."""
    want = restart_env(mode, os.environ)
    if want is None:
        return
    sys.stderr.write(f"mlbench worker: malloc: {mode}: restarting with GLIBC_TUNABLES={want['GLIBC_TUNABLES']}\n")
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], {**os.environ, **want, _REEXEC: "1"})
