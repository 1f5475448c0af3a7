"""What a load does to a real server's process: RSS (its own, or with its workers), the slowest liveness answer."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from server import RunningServer


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` from /proc (Linux), without extra dependencies."""
    with open(f"/proc/{pid}/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def tree_rss_bytes(pid: int) -> int:
    """RSS of ``pid`` and its children together (a ``--workers N`` service: the parent and its workers)."""
    children = Path(f"/proc/{pid}/task/{pid}/children")
    pids = [pid, *(int(child) for child in children.read_text().split())] if children.exists() else [pid]
    total = 0
    for one in pids:
        try:
            total += rss_bytes(one)
        except OSError:  # a worker that just exited
            pass
    return total


class RssSampler(threading.Thread):
    """Samples a process's RSS (``measure``: or its tree's) every ``interval_s`` and keeps the peak."""

    def __init__(self, pid: int, interval_s: float = 0.02, measure: Callable[[int], int] = rss_bytes) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.interval_s = interval_s
        self.measure = measure
        self.peak = measure(pid)
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                self.peak = max(self.peak, self.measure(self.pid))
            except OSError:
                return
            self._stop_event.wait(self.interval_s)

    def stop(self) -> int:
        self._stop_event.set()
        self.join(timeout=5)
        return self.peak


class LivenessProbe(threading.Thread):
    """Polls ``/health/live`` and keeps the slowest answer: how long the event loop was unavailable."""

    def __init__(self, base_url: str, interval_s: float = 0.01) -> None:
        super().__init__(daemon=True)
        self.url = base_url + "/health/live"
        self.interval_s = interval_s
        self.worst_s = 0.0
        self.failures: list[str] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        with httpx.Client(timeout=60.0) as client:
            while not self._stop_event.is_set():
                started = time.perf_counter()
                try:
                    if client.get(self.url).status_code != 200:
                        self.failures.append("not 200")
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))
                self.worst_s = max(self.worst_s, time.perf_counter() - started)
                self._stop_event.wait(self.interval_s)

    def stop(self) -> float:
        self._stop_event.set()
        self.join(timeout=70)
        return self.worst_s


@dataclass
class Watch:
    """What a server's process did while a block ran: RSS before, at its peak and after, the longest stall."""

    rss_before: int
    rss_peak: int = 0
    rss_after: int = 0
    stall_s: float = 0.0  # the slowest /health/live answer (0 when liveness was not probed)

    @property
    def rss_growth(self) -> int:
        """How far the peak rose above the RSS before the block."""
        return self.rss_peak - self.rss_before


@contextmanager
def watched(server: RunningServer, *, liveness: bool = True, interval_s: float = 0.02) -> Iterator[Watch]:
    """Sample ``server``'s RSS every ``interval_s`` (and poll /health/live when ``liveness``) during the block.

    RSS is the process tree's: a ``--workers N`` server's parent and workers together."""
    pid = server.process.pid
    watch = Watch(tree_rss_bytes(pid))
    sampler = RssSampler(pid, interval_s, measure=tree_rss_bytes)
    probe = LivenessProbe(server.base_url) if liveness else None
    sampler.start()
    if probe is not None:
        probe.start()
    try:
        yield watch
    finally:
        if probe is not None:
            watch.stall_s = probe.stop()
        watch.rss_peak = sampler.stop()
        watch.rss_after = tree_rss_bytes(pid) if server.alive() else 0
