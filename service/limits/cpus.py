"""How many CPUs this process may really use: its affinity mask and its cgroup's CPU quota.

``os.cpu_count()`` is the host's core count: a ``--cpus=2`` container on a 64-core host would start
64 onnxruntime threads and 64 decode threads, and the kernel would throttle them all into 2 CPUs'
worth of time slices (latency spikes of a whole CFS period, 100 ms). The quota is the smallest
``cpu.max`` (cgroup v2) or ``cpu.cfs_quota_us / cpu.cfs_period_us`` (cgroup v1) on the way from the
process's cgroup to the root, rounded down (at least 1), as Go's automaxprocs does.
"""

from __future__ import annotations

import math
import os
import platform
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

PROC_SELF_CGROUP = Path("/proc/self/cgroup")
CPUINFO = Path("/proc/cpuinfo")
CGROUP_ROOT = Path("/sys/fs/cgroup")

Limit = tuple[float, str]


@dataclass(frozen=True)
class CpuBudget:
    """The CPUs to size thread pools by, and where that number came from (shown in /models)."""

    usable: int
    affinity: int
    quota: float | None
    source: str

    def as_dict(self) -> dict[str, object]:
        return {"usable": self.usable, "affinity": self.affinity, "cgroup_quota": self.quota, "source": self.source}


def affinity_count() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


def cgroup_quota(proc_cgroup: Path = PROC_SELF_CGROUP, root: Path = CGROUP_ROOT) -> tuple[float | None, str]:
    """(CPUs the cgroup quota allows, or None when unlimited/unknown; which file said so)."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None, "no /proc/self/cgroup"
    best: tuple[float | None, str] = (None, "no cgroup CPU limit")
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":  # cgroup v2 unified hierarchy
            found = _walk(root, path, _v2_limit)
        elif "cpu" in controllers.split(","):
            mount = next((root / name for name in (controllers, "cpu,cpuacct", "cpu") if (root / name).is_dir()), None)
            found = _walk(mount, path, _v1_limit) if mount is not None else (None, "")
        else:
            continue
        if found[0] is not None and (best[0] is None or found[0] < best[0]):
            best = found
    return best


def _walk(mount: Path, path: str, read: Callable[[Path], Limit | None]) -> tuple[float | None, str]:
    """The smallest limit from the process's cgroup folder up to the mount's root.

    Without a cgroup namespace the path names the host's hierarchy, which a container may not see:
    missing folders read as "no limit" and the walk still reaches the mount's root.
    """
    folder = mount.joinpath(*(part for part in path.split("/") if part not in ("", ".", "..")))
    limits: list[Limit] = []
    while True:
        limit = read(folder)
        if limit is not None:
            limits.append(limit)
        if folder == mount:
            break
        folder = folder.parent
    if not limits:
        return None, ""
    cpus, where = min(limits)
    return cpus, where


def _v2_limit(folder: Path) -> Limit | None:
    try:
        quota, period = (folder / "cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    try:
        cpus = int(quota) / int(period)
    except (ValueError, ZeroDivisionError):
        return None
    return (cpus, f"cgroup v2 {folder / 'cpu.max'}") if cpus > 0 else None


def _v1_limit(folder: Path) -> Limit | None:
    try:
        quota = int((folder / "cpu.cfs_quota_us").read_text().strip())
        period = int((folder / "cpu.cfs_period_us").read_text().strip())
    except (OSError, ValueError):
        return None
    if quota <= 0 or period <= 0:
        return None
    return quota / period, f"cgroup v1 {folder / 'cpu.cfs_quota_us'}"


def cpu_budget(proc_cgroup: Path = PROC_SELF_CGROUP, root: Path = CGROUP_ROOT) -> CpuBudget:
    affinity = affinity_count()
    quota, where = cgroup_quota(proc_cgroup, root)
    if quota is None:
        return CpuBudget(affinity, affinity, None, "affinity" + ("" if where.startswith("no") else f" ({where})"))
    limited = max(1, math.floor(quota))
    if limited < affinity:
        return CpuBudget(limited, affinity, quota, where)
    return CpuBudget(affinity, affinity, quota, "affinity (cgroup quota is not lower)")


#: Usable CPUs per worker that ``WORKERS=auto`` gives (see :func:`auto_workers`): a judgement from the
#: projection in benchmarks/README.md ("Worker processes"), not measured above 2 cores.
CPUS_PER_AUTO_WORKER = 4


def auto_workers(usable: int) -> int:
    """Serving processes for ``WORKERS=auto``: one per :data:`CPUS_PER_AUTO_WORKER` usable CPUs, at least one.

    One process's event loop is the ceiling for small models (benchmarks/README.md, "Worker processes"),
    while every worker holds its own copy of the sessions and budgets; a worker per few CPUs keeps each
    loop fed with intra-op threads without multiplying memory by the core count.
    """
    return max(1, usable // CPUS_PER_AUTO_WORKER)


#: x86 flags of instructions that add uint8 x int8 products straight into 32 bits.
_EXACT_INT8_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
_X86 = frozenset({"x86_64", "amd64", "i386", "i686"})


def int8_pairs_saturate(cpuinfo: Path = CPUINFO, machine: str | None = None) -> bool | None:
    """Whether onnxruntime's U8S8 kernels here add each pair of products in 16 bits, saturating.

    x86 without VNNI has only ``vpmaddubsw`` for uint8 x int8, whose 16-bit pair sums clip above
    32,767: an INT8 file with full-range (8-bit) weights then computes something else than its
    accuracy gate measured (ResNet-20: 91.6 % agreement instead of 99.1 %). Other architectures
    widen exactly. None when the flags cannot be read.
    """
    arch = (machine if machine is not None else platform.machine()).lower()
    if arch not in _X86:
        return False
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return None
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), None)
    if flags is None:
        return None
    return not _EXACT_INT8_FLAGS.intersection(flags)
