"""How a command line shows long work: bars on a terminal, plain lines in logs, only results with ``--quiet``.

``python -m export`` and ``python -m benchmarks`` call :func:`terminal` once and pass its ``log`` and
``progress`` down; library calls keep their defaults (``log=print``, one plain line as each long step
starts). The steps themselves (a download's bytes, verification images, INT8 calibration, bias
correction, the gate, benchmark phases) are counted where the work is, through
:class:`models.progress.Progress`.

The bars are tqdm's: one small pure-Python package with no dependencies, which handles what a bar needs
beside log lines (clearing and redrawing around each line, several bars at once, byte units with a rate).
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NamedTuple, TextIO

from tqdm import tqdm

from models.progress import SILENT, Advance, Lines, Log, Progress

__all__ = ["Bars", "Terminal", "terminal"]


class Bars:
    """A tqdm bar per step on ``stream`` while the step runs, cleared when it ends (its log line stays).

    Bytes show as MB with the rate and time left; a step without a total shows its elapsed time. tqdm
    redraws only when a step advances, and one advance may take seconds (64 ResNet-50 images, a whole
    ONNX trace), so a thread redraws every half second meanwhile: the clock shows the step is alive.
    """

    #: Seconds between redraws while a step does not advance.
    REDRAW_S = 0.5

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    @contextmanager
    def step(self, what: str, total: float | None = None, unit: str = "") -> Iterator[Advance]:
        bar = tqdm(
            total=total,
            desc=what,
            unit=unit or "it",
            unit_scale=unit == "B",
            unit_divisor=1000,
            leave=False,
            file=self.stream,
            dynamic_ncols=True,
            bar_format=_bar_format(total, unit),
        )
        done = threading.Event()
        ticker = threading.Thread(target=self._redraw, args=(bar, done), name="progress-bar", daemon=True)
        ticker.start()
        try:
            yield bar.update
        finally:
            done.set()
            ticker.join()
            bar.close()

    def _redraw(self, bar: tqdm, done: threading.Event) -> None:
        while not done.wait(self.REDRAW_S):
            bar.refresh()

    def write(self, line: str) -> None:
        """A log line above the bars (they are cleared, the line printed, the bars drawn again)."""
        tqdm.write(line, file=sys.stdout)
        sys.stdout.flush()


def _bar_format(total: float | None, unit: str) -> str | None:
    """tqdm's own for bytes (MB, rate, time left); done/total and time left for counts; else the clock."""
    if unit == "B":
        return None
    if total is None:
        return "{desc} [{elapsed}]" + (" {n_fmt} {unit}" if unit else "")
    return "{l_bar}{bar}| {n_fmt}/{total_fmt} {unit} [{elapsed}<{remaining}]"


class Terminal(NamedTuple):
    """What a command passes down: where its result lines go, and how steps show while they run."""

    log: Log
    progress: Progress


def _print(line: str) -> None:
    # Flushed at once: through a pipe (CI, ``docker logs``) a buffered line would show only at the end.
    print(line, flush=True)


def terminal(*, quiet: bool = False, stream: TextIO | None = None) -> Terminal:
    """Bars when ``stream`` (default stderr) is a terminal; otherwise one plain line as each long step starts,
    so a log read later shows what was running; with ``quiet``, neither: each step's result line only."""
    stream = stream if stream is not None else sys.stderr
    if quiet:
        return Terminal(_print, SILENT)
    if stream.isatty() and os.environ.get("TERM") != "dumb":
        bars = Bars(stream)
        return Terminal(bars.write, bars)
    return Terminal(_print, Lines(_print))
