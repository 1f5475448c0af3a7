"""The one request pipeline that every door (/predict, KServe V2 REST, V2 gRPC) calls.

A door parses its wire format and formats the answer; everything between is here and is the same
for all three: the API key, the request metrics, resolving the model version (and holding it, so a
version switch never pulls it from under a request), admission before the body is read, the body
byte budget, decoding on the shared pool under the pixel budget, the shared batcher (images from
all doors coalesce into the same batches), the deadline, and top-k.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from service.aio import within
from service.budget import BodyLease
from service.errors import ServiceError
from service.manager import ServedVersion
from service.parsing import shown
from service.model_card import Preprocessing
from service.preprocess import OpenedImage, decode_opened, open_image, preprocess_image

if TYPE_CHECKING:
    from service.state import ServiceState

#: Largest image (pixels, from its header) a single-image request decodes on the event loop.
INLINE_DECODE_PIXELS = 64 * 64

PREDICT = "predict"
V2_REST = "v2-rest"
V2_GRPC = "v2-grpc"


#: Status counted for a request its client abandoned before the answer (nginx's "client closed request").
CLIENT_CLOSED = 499


@dataclass
class RequestScope:
    """One request's accounting: which model it was for and how it ended (counted when it closes)."""

    protocol: str
    started: float = field(default_factory=time.perf_counter)
    model: str = "-"
    status: int = 500


@dataclass
class EncodedImages:
    """Encoded uploads and the names to report them by; the bytes are dropped once decoded."""

    names: list[str]
    blobs: list[bytes | bytearray | memoryview]

    def __len__(self) -> int:
        return len(self.names)


class Pipeline:
    """Per-request logic shared by every transport; holds no per-request state itself."""

    def __init__(self, state: ServiceState) -> None:
        self.state = state
        self.settings = state.settings
        self.metrics = state.metrics
        key = self.settings.api_key
        self._api_key = key.encode() if key is not None else None
        # Label values are served model names (or "-"), statuses and protocols: a bounded set.
        self._request_counters: dict[tuple[str, int, str], Any] = {}
        self._latency: dict[str, Any] = {}

    # --- access and accounting -----------------------------------------------------------------

    @property
    def requires_key(self) -> bool:
        """Whether requests must carry the API key (a door can skip reading its credentials when not)."""
        return self._api_key is not None

    def authorize(self, authorization: str | list[str] | None) -> None:
        """Check ``Authorization: Bearer <key>`` (HTTP header or gRPC metadata) when a key is set.

        The scheme is case-insensitive (RFC 7235); the key is compared in constant time, as the raw
        header bytes (Starlette decodes headers as latin-1) against the key's UTF-8 bytes. Several
        Authorization values are refused: which one a proxy or a door would pick is ambiguous.
        """
        if self._api_key is None:
            return
        if isinstance(authorization, list):
            if len(authorization) != 1:
                raise ServiceError(
                    401, "unauthorized", "missing or wrong API key (give one Authorization value)",
                    {"WWW-Authenticate": "Bearer"},
                )
            authorization = authorization[0]
        scheme, _, supplied = (authorization or "").partition(" ")
        try:
            raw = supplied.strip().encode("latin-1")
        except UnicodeEncodeError:  # gRPC metadata is already text: compare its UTF-8 bytes
            raw = supplied.strip().encode("utf-8", "surrogateescape")
        if scheme.lower() != "bearer" or not hmac.compare_digest(raw, self._api_key):
            raise ServiceError(401, "unauthorized", "missing or wrong API key", {"WWW-Authenticate": "Bearer"})

    @contextmanager
    def request(self, protocol: str) -> Iterator[RequestScope]:
        """Count the request (by model, status and protocol), its latency and, on failure, the reason."""
        scope = RequestScope(protocol)
        try:
            yield scope
        except ServiceError as error:
            scope.status = error.status
            self.metrics.rejections.labels(scope.model, error.code).inc()
            raise
        except asyncio.CancelledError:
            # Cancelled from outside: by the client (a cancelled RPC, a reset stream) unless the server is
            # draining and its grace ran out. Counted as 500 before, h2load's 32 streams reset at the end
            # of every run showed up as server errors on the 5xx dashboards.
            scope.status = 503 if self.state.draining else CLIENT_CLOSED
            raise
        finally:
            self._count(scope, time.perf_counter() - scope.started)

    def _count(self, scope: RequestScope, seconds: float) -> None:
        """Per-request series through cached children: ``labels()`` takes a lock and builds a key each call."""
        key = (scope.model, scope.status, scope.protocol)
        counter = self._request_counters.get(key)
        if counter is None:
            counter = self._request_counters[key] = self.metrics.requests.labels(
                scope.model, str(scope.status), scope.protocol
            )
        counter.inc()
        latency = self._latency.get(scope.model)
        if latency is None:
            latency = self._latency[scope.model] = self.metrics.request_latency.labels(scope.model)
        latency.observe(seconds)

    def deadline(self, scope: RequestScope) -> float:
        return scope.started + self.settings.request_timeout_s

    # --- model and admission -------------------------------------------------------------------

    @contextmanager
    def open(self, scope: RequestScope, model: str | None, version: int | None, count: int = 1) -> Iterator[ServedVersion]:
        """Resolve and hold the model version, and refuse at once (503) when its queue is full.

        A request is still served after SIGTERM (readiness says 503 meanwhile) until the drain begins;
        from then on uvicorn and the gRPC server take no new requests and the batchers refuse.
        """
        served = self.state.manager.resolve(model, version)
        scope.model = served.name
        with served.lease():
            served.batcher.check_capacity(count)  # before a byte of the body is read
            yield served

    def body_lease(self) -> BodyLease:
        return BodyLease(self.state.body_budget)

    # --- inference -----------------------------------------------------------------------------

    async def classify_encoded(
        self, served: ServedVersion, images: EncodedImages, deadline: float, *, body: BodyLease | None = None
    ) -> list[np.ndarray]:
        """Decode ``images`` exactly as /predict always has, then batch them; one output row each.

        The encoded bytes (and the body budget they hold) are released as soon as they are decoded.
        """
        batcher = served.batcher
        count = len(images)
        batcher.reserve(count)
        try:
            started = time.perf_counter()
            pixels = await self._decode_all(served, images)
            self.metrics.preprocess_latency.labels(served.name).observe(time.perf_counter() - started)
        except BaseException:
            batcher.release(count)
            raise
        finally:
            images.blobs.clear()
            if body is not None:
                body.release()
        return await self._await_rows(served, pixels, deadline)

    async def classify_pixels(self, served: ServedVersion, pixels: np.ndarray, deadline: float) -> list[np.ndarray]:
        """Batch already-preprocessed uint8 [N, crop, crop, 3] pixels (the client did the preprocessing)."""
        side = served.model.card.preprocessing.crop_size
        if pixels.dtype != np.uint8 or pixels.ndim != 4 or pixels.shape[1:] != (side, side, 3):
            raise ServiceError(
                400, "invalid_request",
                f"expected UINT8 [N, {side}, {side}, 3] for {served.name!r}, got {pixels.dtype} {list(pixels.shape)}",
            )
        served.batcher.reserve(len(pixels))
        return await self._await_rows(served, list(pixels), deadline)

    async def _await_rows(self, served: ServedVersion, pixels: list[np.ndarray], deadline: float) -> list[np.ndarray]:
        futures = served.batcher.submit(pixels)

        async def rows() -> list[np.ndarray]:
            return [await future for future in futures]  # the first failed image's error, at once

        try:
            return await within(rows(), max(0.0, deadline - time.perf_counter()))
        except TimeoutError:
            raise ServiceError(
                504, "timeout", f"not answered within the request timeout of {self.settings.request_timeout_s:g} s"
            ) from None
        finally:
            for future in futures:
                future.cancel()  # no-op when done; otherwise the batcher drops the image unrun

    async def _decode_all(self, served: ServedVersion, images: EncodedImages) -> list[np.ndarray]:
        """Preprocess on the decode pool, one task per chunk of the request; a lone tiny image inline.

        Handing a 32x32 JPEG to a pool thread and back cost more CPU than decoding it (the hand-off
        plus GIL ping-pong between the loop, the pool and the inference thread: ~150 us of ~200), so a
        single image whose header says at most :data:`INLINE_DECODE_PIXELS` is decoded on the event
        loop (measured: +3-12 % requests/s for CIFAR uploads at 32 clients). Everything larger, and
        every multi-image request, goes to the pool.
        """
        loop = asyncio.get_running_loop()
        preprocessing = served.model.card.preprocessing
        max_pixels = self.settings.max_image_pixels
        draft = self.settings.jpeg_draft
        fast = self.state.fast_jpeg
        hold = self.state.pixel_budget.hold
        if len(images) == 1:
            try:
                # The header only: ~7 us for a plain JPEG (segment walk and libjpeg's header), ~30 us through Pillow.
                opened = open_image(images.blobs[0], max_pixels=max_pixels, fast_jpeg=fast)
                if opened.width * opened.height <= INLINE_DECODE_PIXELS:
                    return [decode_opened(opened, preprocessing, jpeg_draft=draft)]
            except ServiceError as error:
                raise error.about(f"file {shown(images.names[0])}") from None
            return [await loop.run_in_executor(
                self.state.decode_pool, _decode_in_pool, opened, preprocessing, draft, hold, images.names[0]
            )]

        def decode(start: int, stop: int) -> list[np.ndarray]:
            out = []
            for index in range(start, stop):
                try:
                    out.append(preprocess_image(
                        images.blobs[index], preprocessing, max_pixels=max_pixels, jpeg_draft=draft, hold=hold,
                        fast_jpeg=fast,
                    ))
                except ServiceError as error:
                    raise error.about(f"file {shown(images.names[index])}") from None
            return out

        pool = self.state.decode_pool
        count = len(images)
        chunks = min(count, self.settings.decode_threads)
        if chunks <= 1:
            return await loop.run_in_executor(pool, decode, 0, count)
        size = -(-count // chunks)
        parts = await asyncio.gather(
            *(loop.run_in_executor(pool, decode, i, min(i + size, count)) for i in range(0, count, size))
        )
        return [image for part in parts for image in part]


def _decode_in_pool(
    opened: OpenedImage, preprocessing: Preprocessing, draft: bool, hold: Any, name: str
) -> np.ndarray:
    try:
        return decode_opened(opened, preprocessing, jpeg_draft=draft, hold=hold)
    except ServiceError as error:
        raise error.about(f"file {shown(name)}") from None


def top_k(row: np.ndarray, k: int) -> list[int]:
    """Indices of the ``k`` highest scores, highest first (ties keep index order)."""
    if k < row.shape[0]:
        best = np.argpartition(row, -k)[-k:]
        best = best[np.argsort(-row[best], kind="stable")]
    else:
        best = np.argsort(-row, kind="stable")
    return [int(i) for i in best.tolist()]


def bounded_top_k(requested: int | None, default: int, served: ServedVersion) -> int:
    """``requested`` checked against the model's class count, or the model's default capped by it."""
    classes = served.model.card.num_classes
    if requested is not None and requested > classes:
        raise ServiceError(422, "bad_top_k", f"top_k must be between 1 and {classes} for model {served.name!r}")
    return min(requested or default, classes)

