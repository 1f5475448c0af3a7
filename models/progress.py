"""Progress on long work, as a hook: the code that knows how much work there is counts it, the caller
decides how it is shown.

``models`` draws nothing itself: :func:`models.load_checkpoint` reports a download only to a
:class:`Progress` it is given (default :data:`SILENT`), so a library user gets no output they did not ask
for. ``python -m export`` and ``python -m benchmarks`` pass bars on a terminal and :class:`Lines`
elsewhere (``export.progress``); the result of each step stays the caller's log line.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Protocol

Log = Callable[[str], None]
#: Called with how many more units of the step are done.
Advance = Callable[[float], None]


class Progress(Protocol):
    """Shows steps of long work while they run."""

    def step(self, what: str, total: float | None = None, unit: str = "") -> AbstractContextManager[Advance]:
        """A step named ``what`` of ``total`` ``unit``s (``"B"``: bytes; None: not known); the block calls the
        advance it is given as units get done."""
        ...


def ignore(amount: float) -> None:
    """An advance that shows nothing."""


class Silent:
    """Shows nothing: the library default, and ``--quiet`` (the log still says what each step did)."""

    @contextmanager
    def step(self, what: str, total: float | None = None, unit: str = "") -> Iterator[Advance]:
        yield ignore


SILENT: Progress = Silent()


@dataclass(frozen=True)
class Lines:
    """One line as each long step starts, for logs read later (CI, containers, a pipe): what runs and how
    much of it; the line that says how it ended is the caller's."""

    log: Log = print

    @contextmanager
    def step(self, what: str, total: float | None = None, unit: str = "") -> Iterator[Advance]:
        self.log(f"{what}: {amount(total, unit)} ..." if total else f"{what} ...")
        yield ignore


@dataclass(frozen=True)
class Prefixed:
    """``progress`` with ``prefix`` before every step's name (an export's ``[name]``)."""

    progress: Progress
    prefix: str

    def step(self, what: str, total: float | None = None, unit: str = "") -> AbstractContextManager[Advance]:
        return self.progress.step(f"{self.prefix} {what}", total, unit)


def amount(total: float, unit: str) -> str:
    """``97.8 MB`` for bytes (as the export log writes sizes), ``100 images`` (``1 image``) otherwise."""
    if unit == "B":
        return f"{total / 1e6:.1f} MB"
    return f"{total:g} {unit.removesuffix('s') if total == 1 else unit}".rstrip()
