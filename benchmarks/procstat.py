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


def _cpu(fields: list[str]) -> float:
    """User + system CPU seconds from a stat file's fields (utime, stime)."""
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of every thread of ``pid`` so far; None where /proc cannot say."""
    try:
        fields = stat_fields(Path(f"/proc/{pid}/stat"))
    except (OSError, ValueError):
        return None
    return _cpu(fields)


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


def thread_cpu(pids: list[int]) -> dict[int, tuple[int, str, float]]:
    """tid -> (pid, thread name, CPU seconds so far) for every thread of ``pids``."""
    out = {}
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").glob("*"):
            try:
                fields = stat_fields(task / "stat")
                comm = (task / "comm").read_text().strip()
            except (OSError, ValueError):
                continue
            out[int(task.name)] = (pid, comm, _cpu(fields))
    return out


def process_name(pid: int) -> str:
    """What a process is, for a person: the script a Python process runs, else the program's name."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    names = [Path(a.decode(errors="replace")).name for a in argv if a]
    if names and names[0].startswith("python"):
        script = next((n for n in names[1:] if not n.startswith("-")), None)
        if "-c" in names[1:] or script is None:
            return f"{names[0]} (helper: {' '.join(names[1:3])[:30]})"
        return script
    return names[0] if names else "?"


def is_python(pid: int) -> bool:
    """Whether ``pid`` runs a Python interpreter (py-spy can read it), from its mapped libraries or name."""
    try:
        return "libpython" in Path(f"/proc/{pid}/maps").read_text() or "python" in process_name(pid)
    except OSError:
        return False
