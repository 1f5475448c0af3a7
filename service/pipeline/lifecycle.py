"""When a request stops being worth working on: its deadline passed, or its client hung up.

One :class:`Lifecycle` per admitted request scopes everything the request waits for (body, decoding,
the batch queue). At the deadline, or when the door reports a hang-up, it cancels the request's task
the way ``asyncio.timeout`` does, so whatever the request is waiting on lets go at once: reserved queue
slots and the body budget come back, queued images are dropped unrun (the pipeline abandons their
futures with the reason), and the request ends as 504 ``timeout`` or 499 ``client_disconnected``.

A cancellation from outside (grpc.aio cancelling a call whose client went away or whose deadline
passed, the server's drain running out of grace) is not converted: it keeps propagating, and
:meth:`Lifecycle.why` still says which of the three it was, for the drop counter.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from types import TracebackType

from service.engine.batcher import DEADLINE, SHUTDOWN
from service.errors import ServiceError
from service.pipeline.call import CLIENT_CLOSED

#: Images dropped unrun because their client hung up (the other reasons are the batcher's).
DISCONNECT = "disconnect"

#: A cancellation from outside this close to the deadline is the deadline's: a gRPC client cancels at
#: its own deadline, which runs ahead of the server's by the time the call took to arrive (the server
#: counts the timeout from when it received the call). Without it, 4 of 8 calls with a 300 ms deadline
#: were counted as hang-ups in one run on the busy 2-core box.
DEADLINE_SLACK_S = 0.05

#: How long a request waits (after its body is read) before its client's hang-up is watched for: a
#: hang-up is noticed at most this late, so it costs at most this much of work nobody reads.
WATCH_AFTER_S = 0.1

#: ``Task.uncancel`` (3.11+) tells our own cancellation from one that came from outside as well.
_HAVE_UNCANCEL = sys.version_info >= (3, 11)


class Lifecycle:
    """The request's deadline (``started + timeout_s``, perf_counter seconds) and hang-up, while it waits."""

    __slots__ = ("_loop", "_open", "_task", "_timer", "_watch_timer", "_watcher", "deadline", "reason", "started", "timeout_s")

    def __init__(self, started: float, timeout_s: float) -> None:
        self.started = started
        self.timeout_s = timeout_s
        self.deadline = started + timeout_s
        #: Set when this lifecycle ended the request (DEADLINE or DISCONNECT).
        self.reason: str | None = None
        self._task: asyncio.Task[object] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._watch_timer: asyncio.TimerHandle | None = None
        self._watcher: asyncio.Task[object] | None = None
        self._open = False

    def seconds_left(self) -> float:
        return max(0.0, self.deadline - time.perf_counter())

    def limit(self, timeout_s: float) -> None:
        """Tighten the deadline to ``timeout_s`` after the request started (a client's timeout that is
        known only once its body is parsed, as V2 REST's ``parameters.timeout``); never loosens it."""
        if timeout_s < self.timeout_s:
            self.timeout_s = timeout_s
            self.deadline = self.started + timeout_s
            if self._open:
                self._arm()

    def watch(self, hang_up: Callable[[], Awaitable[object]] | None) -> None:
        """End the request when the awaitable ``hang_up()`` gives finishes (the door's wait for its client
        to go away), watched from :data:`WATCH_AFTER_S` on; None: the transport cancels by itself.

        A task, because nothing else reads the connection while the request waits; started late, because
        most requests are answered before a hang-up could matter, and a task (create, first step,
        cancel) costs the loop ~8 us more than the timer that defers it (of ~700 us a resnet20 request).
        """
        if hang_up is not None and self._open:
            assert self._loop is not None
            self._watch_timer = self._loop.call_later(WATCH_AFTER_S, self._start_watching, hang_up)

    def _start_watching(self, hang_up: Callable[[], Awaitable[object]]) -> None:
        self._watch_timer = None
        if not self._open:
            return
        assert self._loop is not None
        self._watcher = self._loop.create_task(hang_up())  # type: ignore[arg-type]
        self._watcher.add_done_callback(self._hung_up)

    def why(self, draining: bool) -> str:
        """Why the request's work was cancelled: this lifecycle's reason, else the drain, the deadline, or
        (a cancelled RPC, a reset stream) the client."""
        if self.reason is not None:
            return self.reason
        if draining:
            return SHUTDOWN
        return DEADLINE if time.perf_counter() >= self.deadline - DEADLINE_SLACK_S else DISCONNECT

    def error(self) -> ServiceError:
        if self.reason == DISCONNECT:
            return ServiceError(CLIENT_CLOSED, "client_disconnected", "the client went away before the answer")
        return ServiceError(504, "timeout", f"not answered within the request's deadline of {self.timeout_s:g} s")

    # --- the scope ---------------------------------------------------------------------------------

    def __enter__(self) -> None:
        self._task = asyncio.current_task()
        self._loop = asyncio.get_running_loop()
        self._open = True
        self._arm()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._open = False
        if self._timer is not None:
            self._timer.cancel()
        if self._watch_timer is not None:
            self._watch_timer.cancel()
        if self._watcher is not None:
            self._watcher.remove_done_callback(self._hung_up)
            self._watcher.cancel()
        if self.reason is None or not isinstance(exc, asyncio.CancelledError):
            return
        assert self._task is not None
        if _HAVE_UNCANCEL and self._task.uncancel() > 0:
            return  # cancelled from outside as well (the drain, a cancelled RPC): that cancellation goes on
        raise self.error() from None

    def _arm(self) -> None:
        assert self._loop is not None
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_later(max(0.0, self.deadline - time.perf_counter()), self._end, DEADLINE)

    def _hung_up(self, watcher: asyncio.Task[object]) -> None:
        if not watcher.cancelled() and watcher.exception() is None:
            self._end(DISCONNECT)

    def _end(self, reason: str) -> None:
        """Runs on the loop while the request's task is suspended inside the scope: the cancellation
        lands in what it awaits, and :meth:`__exit__` turns it into the request's answer."""
        if self._open and self.reason is None and self._task is not None:
            self.reason = reason
            self._task.cancel(reason)  # what it awaits is cancelled with the reason too
