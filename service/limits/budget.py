"""Process-wide bounds on memory held for requests: body bytes (all connections) and decoded pixels.

Per-request limits (``MAX_UPLOAD_BYTES``, ``MAX_IMAGE_PIXELS``) do not bound a process serving many
requests at once: 60 connections each sending a 19 MiB body took an unbounded service to 1.4 GB.
:class:`ByteBudget` is taken before a body is read (its Content-Length) or while it streams, and a
request that does not fit is refused with 503 ``server_busy`` at once; :class:`PixelBudget` makes
decode threads wait until the image they are about to decode fits. Each worker process
(``WORKERS``) has its own budgets: the service's bound is the sum over the workers (:func:`rss_bound`).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from service.errors import ServiceError

#: Seconds a client is told to wait when the byte budget is full (bodies drain in well under that).
BUSY_RETRY_AFTER_S = 1


class ByteBudget:
    """Bytes of request bodies held at once, across all connections (event-loop side, non-blocking).

    Only the event loop calls :meth:`take` and :meth:`give_back`, so no lock is needed; refusing
    instead of waiting keeps a flood from queueing unbounded work behind the budget.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.held = 0
        self.peak = 0

    def take(self, count: int) -> None:
        """Hold ``count`` more bytes, or raise 503 ``server_busy`` (nothing is held then)."""
        if count <= 0:
            return
        if self.held + count > self.capacity:
            raise ServiceError.retry_later(
                "server_busy",
                f"the server holds {self.held} bytes of request bodies (limit {self.capacity}); retry later",
                BUSY_RETRY_AFTER_S,
            )
        self.held += count
        self.peak = max(self.peak, self.held)

    def give_back(self, count: int) -> None:
        self.held = max(0, self.held - count)


class BodyLease:
    """The part of the byte budget one request holds; released exactly once, however the request ends."""

    __slots__ = ("_budget", "held")

    def __init__(self, budget: ByteBudget) -> None:
        self._budget = budget
        self.held = 0

    def take(self, count: int) -> None:
        self._budget.take(count)
        self.held += count

    def release(self) -> None:
        self._budget.give_back(self.held)
        self.held = 0


class PixelBudget:
    """Decoded pixels in flight across the decode threads (thread side, blocking).

    A decode thread asks for the pixel count read from the image header before decoding; it waits
    while others hold too much. An image larger than the whole budget still runs, alone, so the
    bound is ``max(capacity, MAX_IMAGE_PIXELS)`` and nothing deadlocks.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.held = 0
        self.peak = 0
        self._changed = threading.Condition()

    @contextmanager
    def hold(self, pixels: int) -> Iterator[None]:
        with self._changed:
            while self.held and self.held + pixels > self.capacity:
                self._changed.wait()
            self.held += pixels
            self.peak = max(self.peak, self.held)
        try:
            yield
        finally:
            with self._changed:
                self.held -= pixels
                self._changed.notify_all()


#: RSS bound terms: bytearray growth slack on top of each held body, and the bytes one decoded pixel
#: can occupy at peak (Pillow stores RGB as 4 bytes; a rotation or CMYK->RGB conversion holds two).
BODY_OVERHEAD = 1.15
BYTES_PER_DECODED_PIXEL = 8
#: Per connection: uvicorn reads at most this much of a body ahead of the application.
CONNECTION_BUFFER_BYTES = 64 * 1024


def rss_bound(idle_rss: int, *, max_inflight_bytes: int, max_inflight_pixels: int, max_image_pixels: int,
              limit_concurrency: int, queued_crop_bytes: int, image_cache_bytes: int, workers: int = 1) -> int:
    """The most a service should hold under any mix of requests (docs/hardening.md states it).

    ``idle_rss`` is the service after loading and warming its models (onnxruntime's arenas at the
    largest batch are in it): with ``workers`` > 1, every process's RSS together, the parent's
    included. The other terms are per process, so they count once per worker: each worker has its own
    budgets, connections and queues. ``queued_crop_bytes`` is the sum over served versions of their
    queue size times one model input (side x side x 3 uint8 bytes), the decoded crops waiting for a
    batch (the largest worker's); ``image_cache_bytes`` the freed image blocks Pillow keeps for reuse
    (``service.limits.memory.pillow_cache_bytes`` of one worker's decode threads).
    """
    per_worker = (
        BODY_OVERHEAD * max_inflight_bytes
        + BYTES_PER_DECODED_PIXEL * max(max_inflight_pixels, max_image_pixels)
        + CONNECTION_BUFFER_BYTES * limit_concurrency
        + queued_crop_bytes
        + image_cache_bytes
    )
    return int(idle_rss + workers * per_worker)
