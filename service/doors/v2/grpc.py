"""The KServe V2 gRPC door: ``inference.GRPCInferenceService`` on ``RESNET_SERVE_GRPC_PORT``.

grpc.aio runs on the service's own event loop, so its handlers call the same pipeline as the HTTP
doors (same admission, budgets, batcher, deadline, metrics, drain). Messages are our
``service/v2/proto/inference.proto`` (Triton's field numbers); handlers are registered under
Triton's service name, which is all the wire carries. The largest message accepted follows
``MAX_UPLOAD_BYTES``; ``LIMIT_CONCURRENCY`` bounds RPCs in flight across all listeners (see
:class:`GrpcDoor` for why there are several). Errors map to gRPC status codes:
400/413/415/422 INVALID_ARGUMENT, 404 NOT_FOUND, 401 UNAUTHENTICATED, a full queue or body budget
RESOURCE_EXHAUSTED (with ``retry-after`` metadata), not ready or draining UNAVAILABLE, 504
DEADLINE_EXCEEDED.

``ModelInfer`` is registered as a client-streaming method (the wire is the same for unary clients: one
message, then half-close), so its handler runs when the call's HEADERS arrive, not when its message
does: the API key is checked from the metadata at once, and the message must arrive within
``GRPC_MESSAGE_TIMEOUT_S`` before the call takes an inference slot. As a unary method, 24 connections
of calls that never sent their message held every one of grpc's per-listener slots, so every valid
call got RESOURCE_EXHAUSTED, keyed or not, for as long as the attacker liked.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import grpc.aio
import numpy as np

from service.doors.sockets import claim_port, host_port
from service.doors.v2 import protocol
from service.doors.v2.grpc_codec import (
    TYPED_ELEMENT_BYTES,
    config_message,
    parse_infer_request,
    parse_message,
    typed_elements,
)
from service.doors.v2.proto import inference_pb2 as pb
from service.doors.v2.protocol import InferCall
from service.doors.v2.tensors import to_raw
from service.errors import ServiceError
from service.limits.budget import BodyLease
from service.limits.timeouts import within
from service.pipeline.call import V2_GRPC, Admitted, Inputs, Target
from service.pipeline.core import Pipeline

log = logging.getLogger(__name__)

SERVICE = "inference.GRPCInferenceService"
#: Room for the message envelope (names, shapes, parameters) around the largest tensor payload.
ENVELOPE_BYTES = 64 * 1024

_BY_STATUS = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    404: grpc.StatusCode.NOT_FOUND,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    413: grpc.StatusCode.INVALID_ARGUMENT,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    500: grpc.StatusCode.INTERNAL,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}
#: 503s that a retry after a short wait will cure; other 503s mean "not serving" (UNAVAILABLE).
_EXHAUSTED = frozenset({"queue_full", "server_busy"})


def status_for(error: ServiceError) -> grpc.StatusCode:
    if error.status == 503:
        return grpc.StatusCode.RESOURCE_EXHAUSTED if error.code in _EXHAUSTED else grpc.StatusCode.UNAVAILABLE
    return _BY_STATUS.get(error.status, grpc.StatusCode.INVALID_ARGUMENT if error.status < 500 else grpc.StatusCode.INTERNAL)


Handler = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]


def _authorization(context: grpc.aio.ServicerContext) -> list[str]:
    """The call's Authorization metadata values (a binary value counts as an empty one)."""
    return [
        value if isinstance(value, str) else ""
        for key, value in (context.invocation_metadata() or ()) if key == "authorization"
    ]


def _serialize(response: Any) -> bytes:
    return response.SerializeToString()  # type: ignore[no-any-return]


async def _abort(context: grpc.aio.ServicerContext, error: ServiceError) -> None:
    """End the call with the error's status (and ``retry-after`` metadata for a retryable 503); raises."""
    metadata: tuple[tuple[str, str], ...] = ()
    if error.headers and "Retry-After" in error.headers:
        retry = error.headers["Retry-After"]
        metadata = (("retry-after", retry), ("grpc-retry-pushback-ms", str(int(float(retry) * 1000))))
    await context.abort(status_for(error), error.message, metadata)


def connection_options(max_connections: int, listeners: int, streams: int, handshake_s: float,
                       idle_s: float) -> list[tuple[str, int]]:
    """grpc's limits per listener: connections (the door's share), streams per connection, seconds to
    finish the HTTP/2 handshake, and seconds a connection may stay without a call before it is closed
    (GOAWAY: grpc clients reconnect by themselves)."""
    return [
        ("grpc.max_allowed_incoming_connections", max(1, math.ceil(max_connections / listeners))),
        ("grpc.max_concurrent_streams", streams),
        ("grpc.server_handshake_timeout_ms", max(1, int(handshake_s * 1000))),
        ("grpc.max_connection_idle_ms", max(1, int(idle_s * 1000))),
    ]


class GrpcDoor:
    """``GRPC_LISTENERS`` grpc.aio servers on one port, and their handlers.

    Why several: a grpc.aio server asks C-core for its next call only after the previous one has
    reached the event loop, so RPCs arrive one loop iteration apart however many clients wait. With
    eight servers sharing the port (SO_REUSEPORT: the kernel spreads the connections), resnet20's
    batches under 32 clients grew from 4-5 to 10-15 images and h2load's img/s from 875 to 1,114;
    sixteen were no better (the runs are in benchmarks/README.md). A client's connection stays on
    one server, so one channel gains nothing and loses nothing.
    """

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.settings = pipeline.settings
        self.manager = pipeline.state.manager
        self._servers: list[grpc.aio.Server] = []
        self._stopping: asyncio.Future[Any] | None = None
        self._in_flight = 0  # RPCs in any listener's handlers; only the event loop touches it
        self.port = 0

    async def start(self) -> None:
        s = self.settings
        in_worker = self.pipeline.state.workers is not None  # siblings share the port; the parent claimed it
        shared = s.grpc_listeners > 1 or in_worker
        if shared and s.grpc_port and not in_worker:
            # SO_REUSEPORT would let a second instance bind the port silently. (Two instances starting
            # in the same instant can both pass the probe; the window is the few ms of the binds below.)
            claim_port(s.host, s.grpc_port)
        options = [
            ("grpc.max_receive_message_length", s.max_upload_bytes + ENVELOPE_BYTES),
            ("grpc.max_send_message_length", 64 * 1024 * 1024),
            ("grpc.so_reuseport", int(shared)),
            *connection_options(s.max_connections, s.grpc_listeners, s.grpc_max_streams_per_connection,
                                s.header_timeout_s, s.grpc_idle_timeout_s),
        ]
        handlers = (grpc.method_handlers_generic_handler(SERVICE, self._handlers()),)
        port = s.grpc_port
        try:
            for _ in range(s.grpc_listeners):
                # The documented limit spans the listeners and is counted in _guarded, once a message has
                # arrived; grpc's own per-server limiter stays as a backstop that refuses a call before its
                # message is read (calls still uploading are then at most listeners x LIMIT_CONCURRENCY).
                server = grpc.aio.server(options=options, maximum_concurrent_rpcs=s.limit_concurrency)
                self._servers.append(server)
                server.add_generic_rpc_handlers(handlers)
                port = server.add_insecure_port(host_port(s.host, port))
                await server.start()
        except BaseException:
            await asyncio.gather(*(server.stop(None) for server in self._servers))  # none left half-started
            self._servers.clear()
            raise
        self.port = port
        log.info("gRPC (KServe V2) on %s (%d listeners)", host_port(s.host, self.port), len(self._servers))

    async def stop(self) -> None:
        """Refuse new RPCs, let in-flight ones finish within the shutdown grace (a second call waits for
        the first: the lifespan's stop must not return while the drain's is still finishing calls)."""
        if not self._servers:
            return
        if self._stopping is None:
            grace = self.settings.shutdown_grace_s
            self._stopping = asyncio.gather(*(server.stop(grace) for server in self._servers))
        await asyncio.shield(self._stopping)

    def _handlers(self) -> dict[str, grpc.RpcMethodHandler]:
        table: dict[str, tuple[Handler, Any]] = {
            "ServerLive": (self.server_live, pb.ServerLiveRequest),
            "ServerReady": (self.server_ready, pb.ServerReadyRequest),
            "ModelReady": (self.model_ready, pb.ModelReadyRequest),
            "ServerMetadata": (self.server_metadata, pb.ServerMetadataRequest),
            "ModelMetadata": (self.model_metadata, pb.ModelMetadataRequest),
            "ModelConfig": (self.model_config, pb.ModelConfigRequest),
            "RepositoryIndex": (self.repository_index, pb.RepositoryIndexRequest),
            "RepositoryModelLoad": (self.repository_load, pb.RepositoryModelLoadRequest),
            "RepositoryModelUnload": (self.repository_unload, pb.RepositoryModelUnloadRequest),
        }
        # Requests arrive as bytes and are parsed inside the guard: a message protobuf cannot decode is
        # then INVALID_ARGUMENT like any other bad input (grpc's own deserializer would answer UNKNOWN).
        handlers = {
            name: grpc.unary_unary_rpc_method_handler(
                self._guarded(handler, message), request_deserializer=None, response_serializer=_serialize,
            )
            for name, (handler, message) in table.items()
        }
        # ModelInfer parses its own bytes, after taking their budget; it runs from the call's start.
        handlers["ModelInfer"] = grpc.stream_unary_rpc_method_handler(
            self._receiving(self._guarded(self.model_infer, None)), request_deserializer=None,
            response_serializer=_serialize,
        )
        return handlers

    def _receiving(self, guarded: Handler) -> Callable[[AsyncIterator[bytes], grpc.aio.ServicerContext], Awaitable[Any]]:
        """A client-streaming handler for a unary call: the API key from the metadata first, then the
        one message within ``GRPC_MESSAGE_TIMEOUT_S``, then ``guarded`` (which takes the inference slot)."""

        async def receive(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> Any:
            try:
                self._authorize(context)
                timeout = self.settings.grpc_message_timeout_s
                try:
                    raw = await within(anext(requests), timeout)
                except TimeoutError:
                    raise ServiceError(
                        408, "upload_timeout", f"the request message did not arrive within {timeout:g} s"
                    ) from None
                except StopAsyncIteration:
                    raise ServiceError(400, "invalid_request", "the call ended without a request message") from None
            except ServiceError as error:
                await _abort(context, error)
            return await guarded(raw, context)

        receive.__name__ = getattr(guarded, "__name__", "receive")
        return receive

    def _guarded(self, handler: Handler, message: Any) -> Handler:
        """Admit the call under ``LIMIT_CONCURRENCY``, parse the request (``message`` None: the handler
        takes the bytes), run the handler; every ServiceError becomes its gRPC status, anything else
        INTERNAL with nothing leaked."""

        async def run(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
            try:
                if self._in_flight >= (limit := self.settings.limit_concurrency):
                    raise ServiceError.retry_later(
                        "server_busy", f"more than {limit} gRPC calls in flight; retry shortly", 1
                    )
                self._in_flight += 1
                try:
                    return await handler(raw if message is None else parse_message(message, raw), context)
                finally:
                    self._in_flight -= 1
            except ServiceError as error:
                await _abort(context, error)
            except grpc.aio.AbortError:
                raise
            except Exception:
                log.exception("unhandled error in gRPC %s", getattr(handler, "__name__", "handler"))
                await context.abort(grpc.StatusCode.INTERNAL, "internal server error")
            raise AssertionError("unreachable")  # pragma: no cover  (context.abort raises)

        run.__name__ = getattr(handler, "__name__", "handler")
        return run

    def _authorize(self, context: grpc.aio.ServicerContext) -> None:
        if not self.pipeline.requires_key:
            return  # invocation_metadata() builds a tuple per call: not worth it when nothing checks it
        self.pipeline.authorize(_authorization(context))

    # --- health and metadata ---------------------------------------------------------------------

    async def server_live(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def server_ready(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.ServerReadyResponse(ready=self.pipeline.state.readiness()[0])

    async def model_ready(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self._authorize(context)
        target = protocol.lookup(self.manager, request.name)
        return pb.ModelReadyResponse(
            ready=protocol.model_ready(self.manager, target, protocol.parse_version(request.version))
        )

    async def server_metadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.ServerMetadataResponse(**protocol.server_metadata())

    async def model_metadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self._authorize(context)
        target = protocol.lookup(self.manager, request.name)
        meta = protocol.model_metadata(self.manager, target, protocol.parse_version(request.version))
        return pb.ModelMetadataResponse(
            name=meta["name"], versions=meta["versions"], platform=meta["platform"],
            inputs=[pb.ModelMetadataResponse.TensorMetadata(**t) for t in meta["inputs"]],
            outputs=[pb.ModelMetadataResponse.TensorMetadata(**t) for t in meta["outputs"]],
        )

    async def model_config(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self._authorize(context)
        target = protocol.lookup(self.manager, request.name)
        config = protocol.model_config(self.manager, target, protocol.parse_version(request.version))
        return pb.ModelConfigResponse(config=config_message(config))

    async def repository_index(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self._authorize(context)
        rows = protocol.service_index(self.pipeline.state, request.ready)
        return pb.RepositoryIndexResponse(models=[pb.RepositoryIndexResponse.ModelIndex(**row) for row in rows])

    async def repository_load(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self._authorize(context)
        await protocol.repository_control(self.pipeline.state, "load", request.model_name)
        return pb.RepositoryModelLoadResponse()

    async def repository_unload(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self._authorize(context)
        await protocol.repository_control(self.pipeline.state, "unload", request.model_name)
        return pb.RepositoryModelUnloadResponse()

    # --- inference --------------------------------------------------------------------------------

    async def model_infer(self, raw: bytes, context: grpc.aio.ServicerContext) -> Any:
        return await self.pipeline.infer(GrpcInferCall(self, raw, context))


class GrpcInferCall:
    """One ``ModelInfer`` call: the message arrives whole, so its model is known only once it is parsed."""

    protocol = V2_GRPC

    def __init__(self, door: GrpcDoor, raw: bytes, context: grpc.aio.ServicerContext) -> None:
        self.door = door
        self.raw: bytes | None = raw
        self.context = context
        self.message: Any = None
        self.model: protocol.V2Model | None = None
        self.call: InferCall | None = None

    def credentials(self) -> list[str]:
        return _authorization(self.context)

    def trace_carrier(self) -> dict[str, Any]:
        return dict(self.context.invocation_metadata() or ())

    hang_up: Callable[[], Awaitable[object]] | None = None  # grpc.aio cancels the handler when the client cancels or its deadline passes

    def target(self, body: BodyLease) -> Target:
        # The message is in memory already (grpc read it, within the size limit); holding its bytes
        # in the budget before parsing still bounds how many are decoded at once. Parsing is
        # synchronous, so at most one message at a time exists beyond its charge: typed contents (a
        # packed 1-byte varint becomes an 8-byte number to convert) are charged per value right after.
        assert self.raw is not None
        body.take(len(self.raw))
        self.message = parse_message(pb.ModelInferRequest, self.raw)
        self.raw = None
        body.take(TYPED_ELEMENT_BYTES * typed_elements(self.message))
        self.model = protocol.lookup(self.door.manager, self.message.model_name)
        return Target(self.model.base, protocol.parse_version(self.message.model_version), timeout_s=self._timeout_s())

    def _timeout_s(self) -> float | None:
        """The sooner of the call's gRPC deadline and its ``timeout`` parameter (microseconds, as Triton's)."""
        timeout = None
        if protocol.TIMEOUT_PARAMETER in self.message.parameters:
            parameter = self.message.parameters[protocol.TIMEOUT_PARAMETER]
            choice = parameter.WhichOneof("parameter_choice")
            if choice not in ("int64_param", "uint64_param"):
                raise ServiceError(400, "invalid_request", "parameters.timeout must be an integer (microseconds)")
            timeout = protocol.timeout_s(int(getattr(parameter, choice)))
        remaining = self.context.time_remaining()
        if remaining is not None and (timeout is None or remaining < timeout):
            timeout = max(0.0, remaining)
        return timeout

    async def inputs(self, admitted: Admitted) -> Inputs:
        assert self.model is not None
        max_files = self.door.settings.max_files
        self.call = parse_infer_request(self.message, protocol.input_check(self.model, admitted.served, max_files))
        self.message = None
        return protocol.model_inputs(self.model, admitted.served, self.call, max_files)

    def answer(self, admitted: Admitted, rows: list[np.ndarray]) -> Any:
        assert self.model is not None and self.call is not None
        outputs = protocol.model_outputs(self.model, admitted.served, self.call, rows)
        response = pb.ModelInferResponse(model_name=self.model.name, model_version=str(admitted.served.version))
        if self.call.id:
            response.id = self.call.id
        for tensor, _ in outputs:
            response.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=list(tensor.shape))
            response.raw_output_contents.append(to_raw(tensor))
        return response
