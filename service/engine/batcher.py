"""Dynamic batching: one bounded queue per model version, one worker thread per model instance.

Requests reserve queue slots before they decode (so overload is refused in microseconds, before
any work), then enqueue one item per image with its own future. A collector task closes a batch
when it is full or its oldest image has waited ``max_delay_s``, and hands it to a free instance's
worker thread; while that thread runs onnxruntime the next batch already gathers (and the decode
pool keeps decoding). Images nobody waits for any more are dropped before inference: their request
abandoned them (its deadline passed, its client hung up: :meth:`Batcher.abandon`), or their own
deadline passed while they queued (checked when a batch is taken); each drop is counted by reason.

Threading rule: asyncio futures and every piece of batcher state are touched only on the event
loop. A worker thread receives one stacked uint8 array and returns the model's output array; the
loop decides which images are still wanted, and resolves each future. A failing batch, or one whose
output has the wrong number of rows, fails only its own waiters, at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from service.errors import ServiceError
from service.limits.timeouts import wait_event
from service.metrics import Metrics

if TYPE_CHECKING:
    from service.tracing import RequestTrace

log = logging.getLogger(__name__)

#: Seconds a client is told to wait after a 503 for a full queue, and for a version that is stopping.
RETRY_AFTER_S = 1
SHUTDOWN_RETRY_AFTER_S = 5

RunBatch = Callable[[np.ndarray], np.ndarray]

#: Drop reasons (``resnet_serve_images_dropped_total{reason}``) the batcher decides itself; the pipeline
#: gives these and its own (a hang-up) with :meth:`Batcher.abandon`.
DEADLINE = "deadline"
SHUTDOWN = "shutdown"
#: Another image of the same request failed first (or a future was cancelled without a reason).
FAILED = "error"
_NO_PIXELS = np.empty(0, dtype=np.uint8)


@dataclass(slots=True)
class Queued:
    """One submitted image: await ``future`` for its output row."""

    pixels: np.ndarray
    future: asyncio.Future[np.ndarray]
    enqueued: float
    deadline: float  # loop time after which nobody waits for it
    trace: RequestTrace | None = None
    #: In the queue and wanted. False once taken, or once abandoned while queued (then it stays in the
    #: queue until the collector pops it, already counted as dropped and no longer part of ``load``).
    waiting: bool = True


def _timed(run_batch: RunBatch, pixels: np.ndarray) -> tuple[np.ndarray, float]:
    """Worker thread: run one batch and time it; touches nothing but its arguments."""
    started = time.perf_counter()
    outputs = run_batch(pixels)
    return outputs, time.perf_counter() - started


class Batcher:
    """Collects images for one model version into batches and runs them on its instances' threads."""

    def __init__(
        self,
        label: str,
        instances: Sequence[RunBatch],
        *,
        max_batch_size: int,
        max_delay_s: float,
        max_queue_size: int,
        metrics: Metrics,
        metric_label: str | None = None,
        metric_version: str = "",
    ) -> None:
        if not instances:
            raise ValueError("a batcher needs at least one model instance")
        self.label = label
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_s
        self.max_queue_size = max_queue_size
        self._idle_instances: deque[RunBatch] = deque(instances)
        self._instance_count = len(instances)
        self._pending: deque[Queued] = deque()
        self._reserved = 0
        self._abandoned = 0  # queued items whose request gave up (popped later, never run)
        self._running: set[asyncio.Future[tuple[np.ndarray, float]]] = set()
        self._running_images = 0
        self._closing = False
        self._wakeup = asyncio.Event()
        self._batch_full = asyncio.Event()
        self._instance_free = asyncio.Event()
        self._instance_free.set()
        self._settled = asyncio.Event()  # set whenever nothing is reserved, queued or running
        self._settled.set()
        self._executor = ThreadPoolExecutor(max_workers=len(instances), thread_name_prefix=f"infer-{label}")
        self._task: asyncio.Task[None] | None = None
        name = metric_label or label
        self._model, self._version = name, metric_version
        self._dropped_total = metrics.images_dropped
        self._dropped: dict[str, Any] = {}
        self._queue_depth = metrics.queue_depth.labels(name, metric_version)
        self._inflight = metrics.inflight_images.labels(name, metric_version)
        self._queue_wait = metrics.queue_wait.labels(name)
        self._batch_size = metrics.batch_size.labels(name)
        self._inference_latency = metrics.inference_latency.labels(name)
        self._images = metrics.images.labels(name)

    # --- admission -----------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def closing(self) -> bool:
        return self._closing

    @property
    def load(self) -> int:
        """Images admitted, still wanted, and not yet handed to an inference thread."""
        return self._reserved + len(self._pending) - self._abandoned

    def check_capacity(self, count: int = 1) -> None:
        """Raise 503 if ``count`` more images would not fit right now (reserves nothing)."""
        if self._closing:
            raise ServiceError.retry_later("shutting_down", f"{self.label} is shutting down", SHUTDOWN_RETRY_AFTER_S)
        if self.load + count > self.max_queue_size:
            raise ServiceError.retry_later(
                "queue_full",
                f"{self.label} has {self.load} images queued (limit {self.max_queue_size}); retry later",
                RETRY_AFTER_S,
            )

    def reserve(self, count: int) -> None:
        """Hold ``count`` queue slots for images about to be decoded; raise 503 when they do not fit."""
        if count > self.max_queue_size:
            raise ServiceError(
                413, "too_many_images", f"{count} images in one request exceed the queue size {self.max_queue_size}"
            )
        self.check_capacity(count)
        self._reserved += count
        self._update_gauges()

    def release(self, count: int) -> None:
        """Give back reserved slots whose images will never be submitted (decode failed)."""
        self._reserved = max(0, self._reserved - count)
        if self._reserved == 0 and self._pending:
            self._batch_full.set()
        self._update_gauges()

    def submit(
        self, images: Sequence[np.ndarray], timeout_s: float = float("inf"), trace: RequestTrace | None = None
    ) -> list[Queued]:
        """Turn reserved slots into queued images; each one's future resolves to its output row.

        An image still queued ``timeout_s`` from now is dropped unrun (its future gets 504). Accepted
        while draining too: these slots were reserved before the drain began, and drain waits for them.
        """
        loop = asyncio.get_running_loop()
        now = loop.time()
        deadline = now + timeout_s
        queued: list[Queued] = []
        for pixels in images:
            item = Queued(pixels, loop.create_future(), now, deadline, trace)
            self._pending.append(item)
            queued.append(item)
        self._reserved = max(0, self._reserved - len(images))
        self._update_gauges()
        self._wakeup.set()
        if len(self._pending) >= self.max_batch_size or self._reserved == 0:
            self._batch_full.set()  # full, or nothing more is coming: the collector need not wait
        return queued

    def abandon(self, queued: Sequence[Queued], reason: str) -> None:
        """Nobody waits for these images any more (``reason``: deadline, disconnect, shutdown, error).

        Those still queued are dropped now: counted, their pixels freed, their slots out of ``load``
        (a hung-up request's slots come back at once, not when the collector reaches them); those
        already running finish, and their rows are discarded. A no-op for answered images.
        """
        dropped = 0
        for item in queued:
            # A future still waiting in the queue is unresolved, or was cancelled with the task awaiting it.
            if not item.future.cancel(reason) and not item.future.cancelled():
                item.future.exception()  # answered or failed: a failure nobody awaited is not logged at exit
            if item.waiting:
                item.waiting = False
                item.pixels = _NO_PIXELS
                dropped += 1
        if dropped:
            self._abandoned += dropped
            self._drop(reason, dropped)
            if self._reserved == 0 and len(self._pending) == self._abandoned:
                self._batch_full.set()
            self._update_gauges()

    def _drop(self, reason: str, count: int = 1) -> None:
        counter = self._dropped.get(reason)
        if counter is None:
            counter = self._dropped[reason] = self._dropped_total.labels(self._model, reason)
        counter.inc(count)

    def _update_gauges(self) -> None:
        queued = len(self._pending) - self._abandoned
        self._queue_depth.set(queued)
        self._inflight.set(self._reserved + queued + self._running_images)
        if self._reserved == 0 and not queued and not self._running:
            self._settled.set()
        else:
            self._settled.clear()

    # --- the collector -------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._collect(), name=f"batcher-{self.label}")

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            remaining = self._pending[0].enqueued + self.max_delay_s - loop.time()
            # Wait for company only while more images are on their way (admitted, still decoding):
            # a lone request (concurrency 1) runs at once instead of always paying the full delay.
            if len(self._pending) < self.max_batch_size and remaining > 0 and self._reserved > 0:
                self._batch_full.clear()
                await wait_event(self._batch_full, remaining)
            # A batch waits for a free instance; meanwhile the queue keeps filling.
            while not self._idle_instances:
                self._instance_free.clear()
                await self._instance_free.wait()
            items = self._take_batch(loop.time())
            if not items:
                self._update_gauges()  # everything taken was abandoned: the queue may be settled now
                continue
            self._dispatch(loop, items)

    def _take_batch(self, now: float) -> list[Queued]:
        """Pop up to a batch of images whose requests still wait (on the loop: liveness is decided here)."""
        items: list[Queued] = []
        while self._pending and len(items) < self.max_batch_size:
            item = self._pending.popleft()
            if not item.waiting:  # abandoned: counted when its request gave up
                self._abandoned -= 1
                continue
            item.waiting = False
            if item.future.done():  # cancelled without abandon(): count it now
                self._drop(_reason(item.future))
                continue
            if item.deadline <= now:  # nobody will wait for its answer
                item.future.set_exception(ServiceError(504, "timeout", "the request's deadline passed in the queue"))
                self._drop(DEADLINE)
                continue
            self._queue_wait.observe(now - item.enqueued)
            items.append(item)
        if len(self._pending) < self.max_batch_size:
            self._batch_full.clear()
        return items  # gauges (and "settled") are updated once the batch counts as running

    def _dispatch(self, loop: asyncio.AbstractEventLoop, items: list[Queued]) -> None:
        instance = self._idle_instances.popleft()
        pixels = np.stack([item.pixels for item in items])
        run = loop.run_in_executor(self._executor, _timed, instance, pixels)
        self._running.add(run)
        self._running_images += len(items)
        self._update_gauges()
        traces = [item.trace for item in items if item.trace is not None]
        if traces:
            started = time.time_ns()
            run.add_done_callback(lambda done: self._deliver(done, items, instance, traces, started))
        else:
            run.add_done_callback(lambda done: self._deliver(done, items, instance))

    def _deliver(
        self, done: asyncio.Future[tuple[np.ndarray, float]], items: list[Queued], instance: RunBatch,
        traces: list[RequestTrace] | None = None, started: int = 0,
    ) -> None:
        """On the loop: hand each waiter its row, or the batch's error (and write the batch's span)."""
        self._running.discard(done)
        self._running_images -= len(items)
        self._idle_instances.append(instance)
        self._instance_free.set()
        self._update_gauges()
        error = self._outcome_error(done, len(items))
        if traces:
            traces[0].tracing.batch(
                traces, model=self._model, version=self._version, size=len(items), started=started,
                failed=None if error is None else error.code,
            )
        if error is None:
            outputs, seconds = done.result()
            self._inference_latency.observe(seconds)
            self._batch_size.observe(len(items))
            self._images.inc(len(items))
            for item, row in zip(items, outputs, strict=True):
                if not item.future.done():
                    item.future.set_result(row)
            return
        for item in items:
            if not item.future.done():
                item.future.set_exception(error)

    def _outcome_error(self, done: asyncio.Future[tuple[np.ndarray, float]], count: int) -> ServiceError | None:
        if done.cancelled():
            return ServiceError(503, "shutting_down", "inference was cancelled by shutdown")
        exc = done.exception()
        if exc is not None:
            log.error("inference failed for a batch of %d on %s", count, self.label, exc_info=exc)
            return ServiceError(500, "inference_failed", f"inference failed for {self.label}")
        outputs, _ = done.result()
        rows = outputs.shape[0] if isinstance(outputs, np.ndarray) and outputs.ndim else None
        if rows != count:
            log.error("%s returned %s rows for a batch of %d images", self.label, rows, count)
            return ServiceError(
                500, "inference_failed", f"{self.label} returned {rows} output rows for {count} images"
            )
        return None

    # --- shutdown ------------------------------------------------------------------------------

    async def drain(self, timeout_s: float) -> None:
        """Refuse new work; let reserved, queued and running images finish (up to ``timeout_s``); stop.

        Never blocks the event loop: running batches are awaited as asyncio futures, and the worker
        threads are released without joining them.
        """
        self._closing = True
        try:
            await asyncio.wait_for(self._settled.wait(), timeout_s)
        except asyncio.TimeoutError:
            log.warning(
                "%s: drain timed out after %.1f s with %d reserved, %d queued, %d batches running",
                self.label, timeout_s, self._reserved, len(self._pending), len(self._running),
            )
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        stopped = ServiceError.retry_later(
            "shutting_down", f"{self.label} stopped before this image ran", SHUTDOWN_RETRY_AFTER_S
        )
        while self._pending:
            item = self._pending.popleft()
            if not item.waiting:
                self._abandoned -= 1
            elif item.future.done():
                self._drop(_reason(item.future))
            else:
                item.future.set_exception(stopped)
                self._drop(SHUTDOWN)
        self._update_gauges()
        self._executor.shutdown(wait=False, cancel_futures=True)


def _reason(future: asyncio.Future[Any]) -> str:
    """The reason a future was cancelled with (``cancel(reason)``), for the drop counter."""
    if future.cancelled():
        try:
            future.result()
        except asyncio.CancelledError as cancelled:
            return str(cancelled.args[0]) if cancelled.args and cancelled.args[0] else FAILED
    return FAILED
