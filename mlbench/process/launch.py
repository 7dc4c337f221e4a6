"""The worker's launcher: what must happen between the orchestrator's fork and the worker's exec, done
in an interpreter of its own (`python -I -S launch.py PARENT FD PROCS -- ARGV...`), not in the threaded
orchestrator, where Python documents a pre-exec function as unsafe (a lock another thread held at the
fork can hang the child before it execs). It asks the kernel to SIGKILL it when the orchestrator's
thread that started it ends (PR_SET_PDEATHSIG: kept across exec), joins the cell's memory cgroup
(PROCS: the cgroup's cgroup.procs file, or empty for none), reports `ok` or why not on the pipe FD, and
execs the worker: one process, one pid, from the new session to the worker's end. Standard library
only: it runs before anything is imported and costs one interpreter start (bench/README.md)."""

from __future__ import annotations

import os
import sys

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Linux: SIGKILL this process (and the worker it becomes) when the orchestrator dies, even by SIGKILL."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, 9)
    except (OSError, AttributeError):  # not Linux: the orchestrator's own cleanup is all there is
        pass


def join(procs: str) -> str:
    """Move this process into the cgroup whose cgroup.procs is `procs`: '' when done, else why not."""
    try:
        fd = os.open(procs, os.O_WRONLY)
        try:
            os.write(fd, str(os.getpid()).encode())
        finally:
            os.close(fd)
    except OSError as exc:
        return f"joining {os.path.dirname(procs)} failed: {exc}"
    return ""


def main(argv: list[str]) -> int:
    parent, fd, procs, _, *command = argv
    die_with_parent()
    if os.getppid() != int(parent):  # the orchestrator ended before the signal was set: no one waits
        return 1
    why = join(procs) if procs else ""
    os.write(int(fd), (why or "ok").encode())
    os.close(int(fd))
    if why:
        return 1
    os.execv(command[0], command)
    return 1  # pragma: no cover - execv does not return


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
