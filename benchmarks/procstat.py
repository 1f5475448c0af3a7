"""CPU time of processes and threads from ``/proc`` (Linux), for figures that survive a noisy box.

Throughput on a shared 2-core machine moves with whatever else runs; the CPU a server spent per
image does not (much). So the load phases record both: the images/s they got, and how many cores
the server had and what each image cost it.
"""

from __future__ import annotations

import os
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def stat_fields(path: Path) -> list[str]:
    """Fields of a /proc stat file after ``comm`` (which may hold spaces): index 0 is the state."""
    text = path.read_text()
    return text[text.rindex(")") + 2 :].split()


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of every thread of ``pid`` so far; None where /proc cannot say."""
    try:
        fields = stat_fields(Path(f"/proc/{pid}/stat"))
    except (OSError, ValueError):
        return None
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def group_pids(pgid: int) -> list[int]:
    """Every live process whose process group is ``pgid`` (the server and what it forked)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = stat_fields(entry / "stat")
            except (OSError, ValueError):
                continue
            if int(fields[2]) == pgid:
                found.append(int(entry.name))
    return sorted(found)


def group_cpu_seconds(pgid: int) -> float | None:
    """CPU seconds so far of every live process in group ``pgid``: a peer's frontend, workers and stubs.

    Helpers that exit between two readings take their CPU with them; servers here keep theirs."""
    times = [cpu_seconds(pid) for pid in group_pids(pgid)]
    known = [t for t in times if t is not None]
    return sum(known) if known else None


def server_cpu(before: float | None, after: float | None, wall_s: float, images: float) -> dict[str, float | None]:
    """How many cores the server had during a phase and its CPU milliseconds per image inferred.

    The doors' images/s swing by a third between rounds on this shared box (other tenants take
    cores: one resnet20 run gave the server 1.34 cores in one gRPC round and 1.66 in another), while
    the CPU an image costs the server moves by a few percent; so both go into every row. Warm-up
    requests count on both sides (CPU and images come from the whole phase)."""
    if before is None or after is None or wall_s <= 0:
        return {"server_cores": None, "server_cpu_ms_per_image": None}
    spent = after - before
    return {"server_cores": spent / wall_s, "server_cpu_ms_per_image": 1000 * spent / images if images else None}
