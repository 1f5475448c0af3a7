"""The one request pipeline that every door (/predict, KServe V2 REST, V2 gRPC) calls.

A door parses its wire format into an :class:`~service.pipeline.call.InferenceCall` and formats the
answer; :meth:`Pipeline.infer` does everything between, in one order for all three: the API key, the
request metrics, resolving the model version (and holding it, so a version switch never pulls it
from under a request), admission before the body is read, the body byte budget, decoding on the
shared pool under the pixel budget, the shared batcher (images from all doors coalesce into the same
batches) and the deadline.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from service.errors import ServiceError
from service.limits.budget import BodyLease
from service.limits.timeouts import within
from service.pipeline.call import CLIENT_CLOSED, Admitted, EncodedImages, InferenceCall, Inputs, RequestScope
from service.pipeline.decode import Decoder

if TYPE_CHECKING:
    from service.state import ServiceState

Answer = TypeVar("Answer")


class Pipeline:
    """Per-request logic shared by every transport; holds no per-request state itself."""

    def __init__(self, state: ServiceState) -> None:
        self.state = state
        self.settings = state.settings
        self.metrics = state.metrics
        key = self.settings.api_key
        self._api_key = key.encode() if key is not None else None
        self.decoder = Decoder(
            pool=state.decode_pool,
            threads=self.settings.decode_threads,
            max_pixels=self.settings.max_image_pixels,
            hold=state.pixel_budget.hold,
            jpeg_draft=self.settings.jpeg_draft,
            fast_jpeg=state.fast_jpeg,
            max_scan_pixels=self.settings.max_scan_pixels,
        )
        # Label values are served model names (or "-"), statuses and protocols: a bounded set.
        self._request_counters: dict[tuple[str, int, str], Any] = {}
        self._latency: dict[str, Any] = {}

    # --- the one call ----------------------------------------------------------------------------

    async def infer(self, call: InferenceCall[Answer]) -> Answer:
        """Admit, read, decode, batch and answer one request; every failure is a ServiceError."""
        with self.account(call.protocol) as scope:
            if self._api_key is not None:
                self.authorize(call.credentials())
            body = BodyLease(self.state.body_budget)
            try:
                target = call.target(body)
                served = self.state.manager.resolve(target.model, target.version)
                scope.model = served.name
                with served.lease():
                    # A full queue answers 503 before a byte of the body is read. A request is still
                    # served after SIGTERM until the drain begins; from then on the batchers refuse.
                    served.batcher.check_capacity(target.images)
                    admitted = Admitted(served, scope.started + self.settings.request_timeout_s, body)
                    rows = await self._rows(admitted, await call.inputs(admitted))
                    answer = call.answer(admitted, rows)
            finally:
                body.release()
            scope.status = 200
            return answer

    async def _rows(self, admitted: Admitted, inputs: Inputs) -> list[np.ndarray]:
        """One output row per image: encoded images are decoded first (their bytes and budget are
        released as soon as they are), pixels go straight to the batcher."""
        served = admitted.served
        batcher = served.batcher
        if isinstance(inputs, EncodedImages):
            count = len(inputs)
            batcher.reserve(count)
            try:
                started = time.perf_counter()
                pixels = await self.decoder.decode(inputs, served.model.card.preprocessing, admitted.seconds_left())
                self.metrics.preprocess_latency.labels(served.name).observe(time.perf_counter() - started)
            except TimeoutError:  # the decode is abandoned (service.pipeline.decode): its threads stop
                batcher.release(count)
                raise self._timed_out() from None
            except BaseException:
                batcher.release(count)
                raise
            finally:
                inputs.blobs.clear()
                admitted.body.release()
        else:
            side = served.model.card.preprocessing.crop_size
            if inputs.dtype != np.uint8 or inputs.ndim != 4 or inputs.shape[1:] != (side, side, 3):
                raise ServiceError(
                    400, "invalid_request",
                    f"expected UINT8 [N, {side}, {side}, 3] for {served.name!r}, got {inputs.dtype} {list(inputs.shape)}",
                )
            batcher.reserve(len(inputs))
            pixels = list(inputs)
        futures = batcher.submit(pixels)

        async def rows() -> list[np.ndarray]:
            return [await future for future in futures]  # the first failed image's error, at once

        try:
            return await within(rows(), admitted.seconds_left())
        except TimeoutError:
            raise self._timed_out() from None
        finally:
            for future in futures:
                future.cancel()  # no-op when done; otherwise the batcher drops the image unrun

    def _timed_out(self) -> ServiceError:
        return ServiceError(
            504, "timeout", f"not answered within the request timeout of {self.settings.request_timeout_s:g} s"
        )

    # --- access and accounting -------------------------------------------------------------------

    @property
    def requires_key(self) -> bool:
        """Whether requests must carry the API key (a door can skip reading its credentials when not)."""
        return self._api_key is not None

    def authorize(self, authorization: str | Sequence[str] | None) -> None:
        """Check ``Authorization: Bearer <key>`` (HTTP header or gRPC metadata) when a key is set.

        The scheme is case-insensitive (RFC 7235); the key is compared in constant time, as the raw
        header bytes (Starlette decodes headers as latin-1) against the key's UTF-8 bytes. Several
        Authorization values are refused: which one a proxy or a door would pick is ambiguous.
        """
        if self._api_key is None:
            return
        if not isinstance(authorization, str) and authorization is not None:
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
    def account(self, protocol: str) -> Iterator[RequestScope]:
        """Count the request (by model, status and protocol), its latency and, on failure, the reason."""
        scope = RequestScope(protocol)
        try:
            with self.state.in_flight.track():  # a drain out of grace answers 503 (service.pipeline.drain)
                yield scope
        except ServiceError as error:
            scope.status = error.status
            self.metrics.rejections.labels(scope.model, error.code).inc()
            raise
        except asyncio.CancelledError:
            # Cancelled from outside: by the client (a cancelled RPC, a reset stream) unless the server
            # is draining and its grace ran out; a client's hang-up is not a server error.
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
