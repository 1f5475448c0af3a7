"""Dynamic batching: one bounded queue and one inference thread per model.

Requests reserve queue slots before they decode (so overload is refused in microseconds, before
any work), then enqueue one item per image with its own future. A collector task closes a batch
when it is full or its oldest image has waited ``max_delay_s``, and hands it to a single worker
thread; while that thread runs onnxruntime the next batch already gathers (and the decode pool
keeps decoding). Images whose request has given up are dropped before inference. A failing batch
fails only its own waiters.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from service.errors import ServiceError
from service.metrics import Metrics

log = logging.getLogger("service.batcher")

#: Seconds a client is told to wait after a 503 for a full queue.
RETRY_AFTER_S = 1


@dataclass(slots=True)
class _Item:
    pixels: np.ndarray
    future: asyncio.Future[np.ndarray]
    enqueued: float


class Batcher:
    """Collects images for one model into batches and runs them on one worker thread."""

    def __init__(
        self,
        model_name: str,
        run_batch: Callable[[np.ndarray], np.ndarray],
        *,
        max_batch_size: int,
        max_delay_s: float,
        max_queue_size: int,
        metrics: Metrics,
    ) -> None:
        self.model_name = model_name
        self._run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_s
        self.max_queue_size = max_queue_size
        self._pending: deque[_Item] = deque()
        self._reserved = 0
        self._closing = False
        self._wakeup = asyncio.Event()
        self._batch_full = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"infer-{model_name}")
        self._task: asyncio.Task[None] | None = None
        self._queue_depth = metrics.queue_depth.labels(model_name)
        self._queue_wait = metrics.queue_wait.labels(model_name)
        self._batch_size = metrics.batch_size.labels(model_name)
        self._inference_latency = metrics.inference_latency.labels(model_name)
        self._images = metrics.images.labels(model_name)

    # --- admission -----------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def load(self) -> int:
        """Images admitted and not yet handed to the inference thread."""
        return self._reserved + len(self._pending)

    def check_capacity(self, count: int = 1) -> None:
        """Raise 503 if ``count`` more images would not fit right now (reserves nothing)."""
        if self._closing:
            raise ServiceError(503, "shutting_down", "the service is shutting down", {"Retry-After": "5"})
        if self.load + count > self.max_queue_size:
            raise ServiceError(
                503,
                "queue_full",
                f"model {self.model_name!r} has {self.load} images queued (limit {self.max_queue_size}); retry later",
                {"Retry-After": str(RETRY_AFTER_S)},
            )

    def reserve(self, count: int) -> None:
        """Hold ``count`` queue slots for images about to be decoded; raise 503 when they do not fit."""
        if count > self.max_queue_size:
            raise ServiceError(
                413, "too_many_images", f"{count} images in one request exceed the queue size {self.max_queue_size}"
            )
        self.check_capacity(count)
        self._reserved += count

    def release(self, count: int) -> None:
        """Give back reserved slots whose images will never be submitted (decode failed)."""
        self._reserved = max(0, self._reserved - count)
        if self._reserved == 0 and self._pending:
            self._batch_full.set()

    def submit(self, images: Sequence[np.ndarray]) -> list[asyncio.Future[np.ndarray]]:
        """Turn reserved slots into queued images; each future resolves to that image's output row."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        futures: list[asyncio.Future[np.ndarray]] = []
        for pixels in images:
            future: asyncio.Future[np.ndarray] = loop.create_future()
            self._pending.append(_Item(pixels, future, now))
            futures.append(future)
        self._reserved = max(0, self._reserved - len(images))
        self._queue_depth.set(len(self._pending))
        self._wakeup.set()
        if len(self._pending) >= self.max_batch_size or self._reserved == 0:
            self._batch_full.set()  # full, or nothing more is coming: the collector need not wait
        return futures

    # --- the collector -------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._collect(), name=f"batcher-{self.model_name}")

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
                try:
                    await asyncio.wait_for(self._batch_full.wait(), remaining)
                except asyncio.TimeoutError:
                    pass
            await self._idle.wait()  # one batch runs at a time; meanwhile the queue keeps filling
            items = self._take_batch(loop.time())
            if not items:
                continue
            self._idle.clear()
            run = loop.run_in_executor(self._executor, self._infer, items)
            run.add_done_callback(lambda done, taken=items: self._deliver(done, taken))

    def _take_batch(self, now: float) -> list[_Item]:
        items: list[_Item] = []
        while self._pending and len(items) < self.max_batch_size:
            item = self._pending.popleft()
            if item.future.done():  # its request timed out or went away
                continue
            self._queue_wait.observe(now - item.enqueued)
            items.append(item)
        self._queue_depth.set(len(self._pending))
        if len(self._pending) < self.max_batch_size:
            self._batch_full.clear()
        return items

    def _infer(self, items: list[_Item]) -> tuple[list[_Item], np.ndarray | None]:
        """Worker thread: drop images whose request gave up meanwhile, stack and run the rest."""
        live = [item for item in items if not item.future.done()]
        if not live:
            return live, None
        started = time.perf_counter()
        outputs = self._run_batch(np.stack([item.pixels for item in live]))
        self._inference_latency.observe(time.perf_counter() - started)
        self._batch_size.observe(len(live))
        return live, outputs

    def _deliver(self, done: asyncio.Future[tuple[list[_Item], np.ndarray | None]], items: list[_Item]) -> None:
        self._idle.set()
        if done.cancelled():
            error: BaseException = ServiceError(503, "shutting_down", "inference was cancelled by shutdown")
        elif done.exception() is not None:
            log.error("inference failed for a batch of %d on %s", len(items), self.model_name, exc_info=done.exception())
            error = ServiceError(500, "inference_failed", f"inference failed for model {self.model_name!r}")
        else:
            live, outputs = done.result()
            if outputs is None:
                return
            self._images.inc(len(live))
            for item, row in zip(live, outputs):
                if not item.future.done():
                    item.future.set_result(row)
            return
        for item in items:
            if not item.future.done():
                item.future.set_exception(error)

    # --- shutdown ------------------------------------------------------------------------------

    async def drain(self, timeout_s: float) -> None:
        """Refuse new work, let queued images finish (up to ``timeout_s``), then stop."""
        self._closing = True
        deadline = time.monotonic() + timeout_s
        while (self._pending or not self._idle.is_set()) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        while self._pending:
            item = self._pending.popleft()
            if not item.future.done():
                item.future.set_exception(ServiceError(503, "shutting_down", "the service is shutting down"))
        self._executor.shutdown(wait=True, cancel_futures=True)
