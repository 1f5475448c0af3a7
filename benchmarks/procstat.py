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
