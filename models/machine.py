"""What this machine lets a process allocate: the bound every size check compares with before allocating."""

from __future__ import annotations

import resource
from pathlib import Path

MEMINFO = Path("/proc/meminfo")
CGROUP = Path("/sys/fs/cgroup")


def _meminfo_available(meminfo: Path) -> int | None:
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_room(cgroup: Path) -> int | None:
    """Bytes the process's cgroup (v2) may still take: ``memory.max`` minus ``memory.current``, or None (no limit)."""
    try:
        limit = (cgroup / "memory.max").read_text().strip()
        if limit == "max":
            return None
        return max(0, int(limit) - int((cgroup / "memory.current").read_text().strip()))
    except (OSError, ValueError):
        return None


def memory_budget(meminfo: Path = MEMINFO, cgroup: Path = CGROUP) -> int | None:
    """Bytes this process can expect to allocate: the least of the kernel's ``MemAvailable``, the room left under
    the process's address-space limit (``ulimit -v``) and under its cgroup's ``memory.max``; None where none of them
    says (not Linux)."""
    bounds = [_meminfo_available(meminfo), _cgroup_room(cgroup)]
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        used = _address_space()
        bounds.append(max(0, soft - used) if used is not None else soft)
    known = [b for b in bounds if b is not None]
    return min(known) if known else None


def _address_space() -> int | None:
    """Bytes of virtual address space this process already uses (``VmSize``), which ``ulimit -v`` also counts."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def gib(n_bytes: float) -> str:
    """``2.0 GiB``: a size for an error line."""
    return f"{n_bytes / 2**30:.1f} GiB"
