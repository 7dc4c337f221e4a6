"""A memory limit over one cell's whole process tree (`memory_limit_mb`): out of memory under it is `oom`.

Where the machine allows it, each cell gets a memory cgroup of its own, made under the orchestrator's
own memory cgroup (cgroup v2: beside it where v2 forbids under it), so every limit above still
applies, and joined by the worker between fork and exec, so that every process it starts (PyTorch's
DDP ranks, data loaders) is charged to it and the kernel enforces the limit at allocation time, swap
included. cgroup v2 is tried first, then cgroup v1's memory controller. Where neither can be made (no
permission, a read-only /sys/fs/cgroup, not Linux) the fallback is a watchdog in the monitor that
kills the process group when the tree's summed RSS goes over the limit: checked only at each monitor
sample, so an allocation spike between two samples can escape it, and RSS counts pages shared between
processes once per process.

RLIMIT_AS is not used: it limits virtual address space, which the frameworks reserve far beyond what
they touch (TensorFlow and JAX could not even start under 1000 MB: docs/findings.md).

Every cell's cgroup is named `mlbench-<orchestrator pid>-<its start time>-<n>` and removed after the
cell; one left by an orchestrator that was killed (its workers die with it, PR_SET_PDEATHSIG) is empty
and is removed by the next limit made in the same place.
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

PREFIX = "mlbench-"
_NAME = re.compile(r"^mlbench-(\d+)-(\d+)-(\d+)$")
_SEQ = itertools.count()
_SEQ_LOCK = threading.Lock()
REMOVE_WAIT_S = 5.0  # how long the killed processes may take to leave the cgroup before it is given up


@dataclass
class MemoryLimit:
    """One cell's memory limit and how it is enforced: `cgroup` is its own memory cgroup (v1 or v2), or
    None where the monitor's RSS watchdog enforces it (`why` says why no cgroup could be made)."""

    mb: float
    mechanism: str  # short, for a reason: "cgroup v1 memory limit", "cgroup v2 memory.max", "RSS watchdog"
    how: str  # the mechanism in words, for the row
    cgroup: Path | None = None
    version: int | None = None
    why: str = ""
    _final: dict[str, Any] | None = field(default=None, repr=False)  # the counters, read before removal

    @property
    def limit_bytes(self) -> int:
        return int(self.mb * 2**20)

    def record(self) -> dict[str, Any]:
        """What the row keeps: {"mb", "how"}, and the cgroup's peak charge where it measured one."""
        out: dict[str, Any] = {"mb": self.mb, "how": self.how}
        peak = self.peak_bytes()
        if peak is not None:
            out["cgroup_peak_mb"] = round(peak / 2**20, 1)
        return out

    @property
    def procs_file(self) -> Path | None:
        """The file a process writes its pid to to join the cell's cgroup (the launcher does, before it
        execs the worker: everything the worker starts is inside too); None without a cgroup."""
        return None if self.cgroup is None else self.cgroup / "cgroup.procs"

    def oom_kills(self) -> int | None:
        """How many processes the kernel's OOM killer ended in this cell's cgroup (its own counter, so a
        cell next to it in the parent cgroup cannot move it); None without a cgroup or the counter."""
        if self.cgroup is None or self._final is not None:
            return self._final["oom_kills"] if self._final else None
        name = "memory.events" if self.version == 2 else "memory.oom_control"
        return _read_key(self.cgroup / name, "oom_kill")

    def hit_limit(self) -> bool:
        """Whether usage ever reached the limit (v1 memory.failcnt, v2 memory.events `max`): true also
        where the kernel only reclaimed page cache, so it is evidence, not a verdict."""
        if self.cgroup is None or self._final is not None:
            return bool(self._final and self._final["hit"])
        if self.version == 2:
            return bool(_read_key(self.cgroup / "memory.events", "max"))
        return bool(_read_int(self.cgroup / "memory.failcnt"))

    def peak_bytes(self) -> int | None:
        """The cgroup's peak charge (v1 memory.max_usage_in_bytes, v2 memory.peak from Linux 5.19): the
        tree's memory including page cache it read, which the kernel reclaims before it OOM-kills."""
        if self.cgroup is None or self._final is not None:
            return self._final["peak"] if self._final else None
        return _read_int(self.cgroup / ("memory.peak" if self.version == 2 else "memory.max_usage_in_bytes"))

    def pids(self) -> list[int]:
        if self.cgroup is None:
            return []
        try:
            return [int(p) for p in (self.cgroup / "cgroup.procs").read_text().split()]
        except (OSError, ValueError):
            return []

    def kill_all(self) -> None:
        """SIGKILL every process in the cell's cgroup, also one that left the worker's process group."""
        if self.cgroup is None:
            return
        for pid in self.pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass

    def remove(self) -> None:
        """Kill what is left in the cgroup and remove it (and any sub-group a worker made in it); its
        counters are read first and answered from then on."""
        if self.cgroup is None or self._final is not None:
            return
        self.kill_all()
        self._final = {"oom_kills": self.oom_kills(), "hit": self.hit_limit(), "peak": self.peak_bytes()}
        deadline = time.monotonic() + REMOVE_WAIT_S
        while True:
            self.kill_all()
            if _rmtree(self.cgroup) or time.monotonic() >= deadline:
                return
            time.sleep(0.02)  # a killed process leaves the cgroup once the kernel has freed its memory


def make(mb: float, watchdog_interval_s: float, *, force_watchdog: bool = False) -> MemoryLimit:
    """The cell's memory limit: its own cgroup where one can be made, else the RSS watchdog."""
    reasons = []
    if not force_watchdog:
        for version, attempt in ((2, _cgroup_v2), (1, _cgroup_v1)):
            try:
                return attempt(mb)
            except _NoCgroup as exc:
                reasons.append(f"cgroup v{version}: {exc}")
    why = "forced" if force_watchdog else "; ".join(reasons)
    return watchdog(mb, watchdog_interval_s, why)


def watchdog(mb: float, interval_s: float, why: str) -> MemoryLimit:
    return MemoryLimit(
        mb=mb,
        mechanism="RSS watchdog",
        how=(
            f"RSS watchdog: the process tree's summed RSS checked every {interval_s:g} s, the process group"
            f" killed over the limit (a spike between checks can escape it); no memory cgroup ({why})"
        ),
        why=why,
    )


class _NoCgroup(Exception):
    pass


def _mounts() -> list[tuple[str, Path, str, set[str]]]:
    """(root inside the hierarchy, mount point, fstype, super options) of each cgroup mount."""
    out = []
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) >= 5 and len(tail) >= 3 and tail[0] in ("cgroup", "cgroup2"):
            out.append((fields[3], Path(fields[4].replace("\\040", " ")), tail[0], set(tail[2].split(","))))
    return out


def _own_path(version: int, pid: int | str = "self") -> str | None:
    """A process's cgroup path in the v2 tree, or in the v1 hierarchy of the memory controller."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if version == 2 and line.startswith("0::"):
            return path
        if version == 1 and "memory" in controllers.split(","):
            return path
    return None


def memory_cgroup(pid: int | str = "self") -> Path | None:
    """The folder of a process's memory cgroup (the v1 memory controller's, else the v2 tree's), as
    this process sees the mounts; None where it has none or it is not mounted here."""
    for version in (1, 2):
        try:
            return _place(version, pid)[0]
        except _NoCgroup:
            continue
    return None


def _place(version: int, pid: int | str = "self") -> tuple[Path, Path]:
    """The folder of a process's memory cgroup (this process's own: where a cell's cgroup is made), and
    the mount point of its hierarchy."""
    path = _own_path(version, pid)
    if path is None:
        raise _NoCgroup("this process is in no such cgroup")
    for root, point, fstype, options in _mounts():
        if (fstype == "cgroup2") != (version == 2) or (version == 1 and "memory" not in options):
            continue
        # a container may mount only its own part of the hierarchy: the path is relative to that root
        rel = os.path.relpath(path, root) if root != "/" else path.lstrip("/")
        if rel.startswith(".."):
            continue
        folder = (point / rel).resolve() if rel not in ("", ".") else point
        if folder.is_dir():
            return folder, point
    raise _NoCgroup("no mounted hierarchy holds this process's cgroup")


def _new_name() -> str:
    with _SEQ_LOCK:
        n = next(_SEQ)
    return f"{PREFIX}{os.getpid()}-{_start_ticks(os.getpid())}-{n}"


def _start_ticks(pid: int) -> int:
    """A process's start time (to tell a reused pid from the orchestrator that made a cgroup)."""
    try:
        return int(psutil.Process(pid).create_time() * 100)
    except psutil.Error:
        return -1


def remove_stale(parent: Path) -> list[str]:
    """Remove the empty cell cgroups that orchestrators no longer alive left in `parent`; the names
    removed. One that still holds a process stays (the kernel refuses to remove it anyway)."""
    removed = []
    try:
        entries = list(parent.iterdir())
    except OSError:
        return removed
    for entry in entries:
        m = _NAME.match(entry.name)
        if not m or not entry.is_dir():
            continue
        pid, ticks = int(m.group(1)), int(m.group(2))
        if psutil.pid_exists(pid) and _start_ticks(pid) == ticks:
            continue  # its orchestrator still runs (this one too): it removes its own
        if _rmtree(entry):
            removed.append(entry.name)
    return removed


def _cgroup_v2(mb: float) -> MemoryLimit:
    """The cell's cgroup in the v2 tree: under this process's own cgroup where the memory controller
    can be handed down to it, else beside it. v2 lets a cgroup (other than the root) hand controllers
    down only while it holds no process, and the orchestrator is in its own: so the usual case on a
    v2 host run as root is beside it, in the parent, whose sub-groups already have the controller
    (this cgroup's own cgroup.controllers lists it); a container that sees only its own cgroup falls
    back to the watchdog unless it runs in the root of the hierarchy."""
    own, mount = _place(2)
    try:
        if "memory" not in (own / "cgroup.controllers").read_text().split():
            raise _NoCgroup(f"the memory controller is not available in {own}")
    except OSError as exc:
        raise _NoCgroup(f"cannot read {own}/cgroup.controllers: {exc.strerror or exc}") from None
    tried = []
    try:
        if "memory" not in (own / "cgroup.subtree_control").read_text().split():
            (own / "cgroup.subtree_control").write_text("+memory")  # EBUSY where it holds processes
        return _make_v2(own, mb)
    except OSError as exc:
        tried.append(f"under {own}: {exc.strerror or exc}")
    if own != mount:
        try:
            return _make_v2(own.parent, mb)
        except OSError as exc:
            tried.append(f"beside it: {exc.strerror or exc}")
    raise _NoCgroup("; ".join(tried))


def _make_v2(place: Path, mb: float) -> MemoryLimit:
    remove_stale(place)
    group = place / _new_name()
    limit = MemoryLimit(mb, "cgroup v2 memory.max", "", cgroup=group, version=2)
    try:
        group.mkdir()
        (group / "memory.max").write_text(str(limit.limit_bytes))
        swap = "swap not limited: no memory.swap.max"
        if (group / "memory.swap.max").exists():
            (group / "memory.swap.max").write_text("0")
            swap = "no swap, memory.swap.max=0"
        if (group / "memory.oom.group").exists():  # the OOM killer ends the cell's whole tree at once
            (group / "memory.oom.group").write_text("1")
    except OSError:
        _rmtree(group)
        raise
    limit.how = f"cgroup v2 memory.max of the cell's own cgroup ({swap}), the kernel's OOM killer over it"
    return limit


def _cgroup_v1(mb: float) -> MemoryLimit:
    """The cell's cgroup under this process's own v1 memory cgroup (v1 has no rule against a cgroup
    with processes having sub-groups)."""
    place, _ = _place(1)
    remove_stale(place)
    group = place / _new_name()
    limit = MemoryLimit(mb, "cgroup v1 memory limit", "", cgroup=group, version=1)
    try:
        group.mkdir()
        (group / "memory.limit_in_bytes").write_text(str(limit.limit_bytes))
    except OSError as exc:
        _rmtree(group)
        raise _NoCgroup(f"cannot make {group}: {exc.strerror or exc}") from None
    swap = "swap not limited: no memory.memsw (swap accounting off)"
    try:  # memory and swap together: the limit cannot be dodged by swapping (memsw >= memory, set after it)
        (group / "memory.memsw.limit_in_bytes").write_text(str(limit.limit_bytes))
        swap = "swap included, memory.memsw.limit_in_bytes"
    except OSError:
        pass
    limit.how = f"cgroup v1 memory.limit_in_bytes of the cell's own cgroup ({swap}), the kernel's OOM killer over it"
    return limit


def _rmtree(group: Path) -> bool:
    """rmdir a cgroup and its sub-groups, deepest first (a cgroup folder's files go with it); True when gone."""
    try:
        subs = [p for p in group.iterdir() if p.is_dir()]
    except FileNotFoundError:
        return True
    except OSError:
        subs = []
    for sub in subs:
        _rmtree(sub)
    try:
        group.rmdir()
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return True


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _read_key(path: Path, key: str) -> int | None:
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        return None
    return None
