"""What a running service holds: the model manager, the decode pool, the memory budgets, readiness.

One :class:`ServiceState` per app; every door reaches it through :class:`service.pipeline.core.Pipeline`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from servable import jpeg
from service.engine.manager import ModelManager
from service.limits.budget import ByteBudget, PixelBudget
from service.limits.memory import release_freed_memory, tune_gc
from service.metrics import Metrics
from service.pipeline.drain import ABANDON_MARGIN_S, InFlight
from service.settings import Settings

if TYPE_CHECKING:
    from service.workers.link import WorkerLink

log = logging.getLogger(__name__)

#: Seconds past the shutdown grace after which a process that has not exited ends itself (a decode or a
#: model read that cannot be interrupted would otherwise hold the exit: Python joins its threads).
EXIT_MARGIN_S = 1.5

#: Seconds between hand-backs of freed heap pages to the OS (``malloc_trim``, a few ms in a thread): after
#: 26,000 stalled gRPC calls RSS stayed at 225 MB (142 before); the next trim brought it to 194 MB.
MEMORY_TRIM_INTERVAL_S = 10.0


class ServiceState:
    """Loads models in the background, answers readiness, and owns the resources requests share."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.manager = ModelManager(settings, metrics)
        #: SIGTERM arrived: readiness is false (requests are still served during SHUTDOWN_DELAY_S).
        self.shutting_down = False
        #: The drain began: no new work is accepted anywhere, in-flight work finishes.
        self.draining = False
        self.decode_pool = ThreadPoolExecutor(max_workers=settings.decode_threads, thread_name_prefix="decode")
        self.body_budget = ByteBudget(settings.max_inflight_bytes)
        self.pixel_budget = PixelBudget(settings.max_inflight_pixels)
        #: Plain JPEGs go through libjpeg-turbo directly (service/jpeg.py): asked for, not replaced by draft
        #: decoding, and the probe that compares it with Pillow passed. Decided once, here, not per request.
        self.fast_jpeg = settings.fast_jpeg and not settings.jpeg_draft and jpeg.agrees_with_pillow()
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        #: Requests in progress: those the drain's grace cannot wait for are answered 503 before it ends.
        self.in_flight = InFlight()
        self._drain_deadline: float | None = None  # loop time
        #: Called once when the drain begins (the gRPC server registers its graceful stop here).
        self.on_drain: list[Callable[[], Awaitable[None]]] = []
        #: In a worker process (``WORKERS`` > 1): its siblings' readiness, repository and explicit control.
        self.workers: WorkerLink | None = None
        metrics.body_bytes.set_function(lambda: self.body_budget.held)
        metrics.ready.set_function(lambda: 1.0 if self.readiness()[0] else 0.0)

    # --- readiness -----------------------------------------------------------------------------

    def readiness(self) -> tuple[bool, str | None]:
        if self.workers is not None:
            return self.workers.readiness()
        if self.shutting_down:
            return False, "shutting down"
        return self.manager.readiness()

    @property
    def model_status(self) -> dict[str, str]:
        return self.manager.status()

    def begin_shutdown(self) -> None:
        """Called from the signal handler: readiness turns false before anything else happens.

        Requests keep being served until :meth:`begin_drain` (at once, or after SHUTDOWN_DELAY_S so
        load balancers health-check the replica out before it stops taking work).
        """
        self.shutting_down = True

    def begin_drain(self) -> None:
        """Stop taking new work everywhere (the gRPC door stops; HTTP is uvicorn's), let in-flight work finish."""
        self.begin_shutdown()
        if self.draining:
            return
        self.draining = True
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._run_drain_hooks)

    def _run_drain_hooks(self) -> None:
        loop = asyncio.get_running_loop()
        grace = self.settings.shutdown_grace_s
        self._drain_deadline = loop.time() + grace
        loop.call_later(max(0.0, grace - ABANDON_MARGIN_S), self._abandon_requests)
        for hook in self.on_drain:
            self._spawn(hook(), "drain-hook")

    def _abandon_requests(self) -> None:
        count = self.in_flight.abandon_all()
        if count:
            log.warning("shutdown grace ending: %d requests still in progress answered 503", count)

    def grace_left(self) -> float:
        """Seconds of the shutdown grace left (all of it before the drain has begun)."""
        if self._drain_deadline is None or self._loop is None:
            return self.settings.shutdown_grace_s
        return max(0.0, self._drain_deadline - self._loop.time())

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Lifespan start: load in the background (/health/live answers meanwhile), then follow the repository."""
        self._loop = asyncio.get_running_loop()
        self._spawn(self._load_and_follow(), "load-models")
        self._spawn(_trim_memory_forever(), "trim-memory")

    async def _load_and_follow(self) -> None:
        await self.manager.start()
        tune_gc()  # after the first load: what start-up allocated lives for the whole process
        s = self.settings
        if s.model_control == "poll" and s.repository_poll_s > 0:
            await self.manager.poll_forever(s.repository_poll_s)

    def _spawn(self, work: Awaitable[None], name: str) -> None:
        task = asyncio.ensure_future(work)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(_log_failure)

    async def stop(self) -> None:
        """Lifespan shutdown: not ready, finish what is queued, release threads without blocking the loop."""
        self.begin_drain()
        await asyncio.sleep(0)  # the drain hooks (scheduled thread-safely) run first and set the deadline
        for task in list(self._tasks):
            if task.get_name() in ("load-models", "trim-memory"):
                task.cancel()
        await self.manager.stop(self.grace_left())
        pending = [task for task in self._tasks if not task.done()]
        if pending:
            await asyncio.wait(pending, timeout=self.grace_left())
        # Abandoned decodes stop at their next read; nothing here waits for a thread past the grace.
        self.decode_pool.shutdown(wait=False, cancel_futures=True)


def exit_after(seconds: float) -> threading.Timer:
    """Last resort of a shutdown: end the process ``seconds`` from now if it is still running then.

    Python joins worker threads at exit, so one decode (or model read) that cannot be interrupted
    would hold the process past the grace it promised; the CLI arms this when the drain begins.
    """

    def expire() -> None:
        log.error("still running %.1f s after the drain began (a thread that cannot be interrupted): exiting now",
                  seconds)
        logging.shutdown()
        os._exit(1)

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()
    return timer


async def _trim_memory_forever() -> None:
    while True:
        await asyncio.sleep(MEMORY_TRIM_INTERVAL_S)
        await asyncio.to_thread(release_freed_memory)


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("background task %s failed", task.get_name(), exc_info=task.exception())
