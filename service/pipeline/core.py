"""The one request pipeline that every door (/predict, KServe V2 REST, V2 gRPC) calls.

A door parses its wire format into an :class:`~service.pipeline.call.InferenceCall` and formats the
answer; :meth:`Pipeline.infer` does everything between, in one order for all three: the API key, the
request metrics, resolving the model version (and holding it, so a version switch never pulls it
from under a request), admission before the body is read, the body byte budget, decoding on the
shared pool under the pixel budget, the shared batcher (images from all doors coalesce into the same
batches), the deadline and the client's hang-up (:mod:`service.pipeline.lifecycle`), and tracing.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from service.engine.batcher import DEADLINE, FAILED
from service.errors import ServiceError
from service.limits.budget import BodyLease
from service.pipeline.call import CLIENT_CLOSED, Admitted, EncodedImages, InferenceCall, Inputs, RequestScope
from service.pipeline.decode import Decoder
from service.pipeline.lifecycle import Lifecycle
from service.tracing import BODY_READ, DECODE, QUEUE_WAIT, RESPONSE

if TYPE_CHECKING:
    from service.state import ServiceState
    from service.tracing import RequestTrace, Tracing

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
        #: Set for the lifespan when the OTEL_* variables turn tracing on (service.tracing).
        self.tracing: Tracing | None = None

    # --- the one call ----------------------------------------------------------------------------

    async def infer(self, call: InferenceCall[Answer]) -> Answer:
        """Admit, read, decode, batch and answer one request; every failure is a ServiceError."""
        with self.account(call.protocol) as scope:
            trace = scope.trace = (
                self.tracing.request(call.protocol, call.trace_carrier()) if self.tracing is not None else None
            )
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
                    scope.lifecycle = lifecycle = Lifecycle(scope.started, self.settings.request_timeout_s)
                    admitted = Admitted(served, lifecycle, body)
                    admitted.limit(target.timeout_s)  # the client's, where it gave a shorter one
                    if trace is not None:
                        trace.attributes["resnet_serve.model_version"] = str(served.version)
                        trace.enter(BODY_READ)
                    # Everything the request waits for ends at its deadline or when its client hangs up.
                    with lifecycle:
                        inputs = await call.inputs(admitted)
                        lifecycle.watch(call.hang_up)
                        rows = await self._rows(admitted, inputs, trace)
                    answer = call.answer(admitted, rows)
            finally:
                body.release()
            scope.status = 200
            return answer

    async def _rows(self, admitted: Admitted, inputs: Inputs, trace: RequestTrace | None) -> list[np.ndarray]:
        """One output row per image: encoded images are decoded first (their bytes and budget are
        released as soon as they are), pixels go straight to the batcher."""
        served = admitted.served
        batcher = served.batcher
        if trace is not None:
            trace.attributes["resnet_serve.images"] = len(inputs)
        if isinstance(inputs, EncodedImages):
            count = len(inputs)
            batcher.reserve(count)
            if trace is not None:
                trace.enter(DECODE)
            try:
                started = time.perf_counter()
                # The lifecycle cancels this at the deadline; the decoder then abandons what it has not begun.
                pixels = await self.decoder.decode(inputs, served.model.card.preprocessing)
                self.metrics.preprocess_latency.labels(served.name).observe(time.perf_counter() - started)
            except BaseException as failure:
                batcher.release(count)
                if isinstance(failure, asyncio.CancelledError):  # dropped before they were decoded
                    self.metrics.images_dropped.labels(served.name, self._why(admitted)).inc(count)
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
        if trace is not None:
            trace.enter(QUEUE_WAIT)
        queued = batcher.submit(pixels, admitted.seconds_left(), trace)
        why = FAILED
        try:
            rows = [await item.future for item in queued]  # the first failed image's error, at once
            if trace is not None:
                trace.enter(RESPONSE)
            return rows
        except asyncio.CancelledError:
            why = self._why(admitted)
            raise
        except ServiceError as failure:
            if failure.code == "timeout":  # the batcher found the deadline passed: so it has for the rest
                why = DEADLINE
            raise
        finally:
            batcher.abandon(queued, why)  # no-op for answered images; the batcher drops queued ones unrun

    def _why(self, admitted: Admitted) -> str:
        return admitted.lifecycle.why(self.state.draining)

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
        """Count the request (by model, status and protocol), its latency and, on failure, the reason;
        end its trace."""
        scope = RequestScope(protocol)
        code: str | None = None
        try:
            with self.state.in_flight.track():  # a drain out of grace answers 503 (service.pipeline.drain)
                yield scope
        except ServiceError as error:
            scope.status, code = error.status, error.code
            self.metrics.rejections.labels(scope.model, code).inc()
            raise
        except asyncio.CancelledError:
            # Cancelled from outside: by the client (a cancelled RPC, a reset stream; grpc's own deadline)
            # unless the server is draining and its grace ran out; a client's hang-up is not a server error.
            why = scope.lifecycle.why(self.state.draining) if scope.lifecycle is not None else None
            if self.state.draining:
                scope.status, code = 503, "shutting_down"
            elif why == DEADLINE:
                scope.status, code = 504, "timeout"
            else:
                scope.status, code = CLIENT_CLOSED, "client_disconnected"
            self.metrics.rejections.labels(scope.model, code).inc()
            raise
        except BaseException:
            code = "internal_error"
            raise
        finally:
            self._count(scope, time.perf_counter() - scope.started)
            if scope.trace is not None:
                scope.trace.finish(scope.model, scope.status, code)

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
