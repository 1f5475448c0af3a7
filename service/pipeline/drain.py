"""Requests in progress, so that a drain whose grace runs out answers them instead of cutting them off.

uvicorn cancels the requests still running when its graceful-shutdown timeout passes, and a cancelled
ASGI task becomes a 500 with a ``CancelledError`` traceback in the log (seen with a decode bomb in
flight, 37-45 s after SIGTERM with a grace of 5 s). :meth:`InFlight.abandon_all` runs just before the
grace ends: it cancels every tracked request itself, and :meth:`InFlight.track` turns exactly those
cancellations into 503 ``shutting_down`` (any other cancellation, a client's hang-up, stays one).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

from service.errors import ServiceError

#: Seconds before the end of the shutdown grace at which unfinished requests are answered 503.
ABANDON_MARGIN_S = 0.5


class InFlight:
    """The tasks of the requests in progress (event loop only)."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[object]] = set()
        self._abandoned: set[asyncio.Task[object]] = set()

    def __len__(self) -> int:
        return len(self._tasks)

    @contextmanager
    def track(self) -> Iterator[None]:
        """Around one request: a cancellation by :meth:`abandon_all` leaves it as 503 ``shutting_down``."""
        task = asyncio.current_task()
        if task is None:  # pragma: no cover - requests always run in a task
            yield
            return
        self._tasks.add(task)
        try:
            yield
        except asyncio.CancelledError:
            if task not in self._abandoned:
                raise
            self._abandoned.discard(task)
            uncancel = getattr(task, "uncancel", None)  # Python 3.11+: the task is not being cancelled any more
            if uncancel is not None:
                uncancel()
            raise ServiceError.retry_later(
                "shutting_down", "the server is shutting down and this request could not finish in its "
                "grace period; retry (another replica will answer)", 1,
            ) from None
        finally:
            self._tasks.discard(task)

    def abandon_all(self) -> int:
        """Cancel every request in progress (each answers 503); returns how many."""
        pending = [task for task in self._tasks if not task.done()]
        for task in pending:
            self._abandoned.add(task)
            task.cancel()
        return len(pending)
