"""What a door hands the pipeline: one :class:`InferenceCall` per request, whatever its wire format.

A door knows its transport (where the credentials are, how the model is named, how the body is read
and parsed, how the answer is written); the pipeline knows the order in which a request is admitted,
read, decoded, batched and answered. The call is the seam between the two: the pipeline asks it for
each piece at the moment the order allows, so no door can read a body before admission, and every
door's requests take the same path.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, TypeVar

import numpy as np

from service.engine.served import ServedVersion
from service.limits.budget import BodyLease

if TYPE_CHECKING:
    from service.pipeline.lifecycle import Lifecycle
    from service.tracing import RequestTrace

#: Protocol label values of the request metrics.
PREDICT = "predict"
V2_REST = "v2-rest"
V2_GRPC = "v2-grpc"

#: Status counted for a request its client abandoned before the answer (nginx's "client closed request").
CLIENT_CLOSED = 499

Answer = TypeVar("Answer", covariant=True)


@dataclass(frozen=True, slots=True)
class Target:
    """Which model a request is for, how many images admission should expect (before the body), and the
    client's timeout when it gave one before the body (seconds from the request's start)."""

    model: str | None
    version: int | None = None
    images: int = 1
    timeout_s: float | None = None


@dataclass(slots=True)
class Admitted:
    """A request past admission: the version it holds, its lifecycle (deadline, hang-up), and its share
    of the body budget."""

    served: ServedVersion
    lifecycle: Lifecycle
    body: BodyLease

    def seconds_left(self) -> float:
        return self.lifecycle.seconds_left()

    def limit(self, timeout_s: float | None) -> None:
        """A client's timeout known only from the body (seconds from the request's start; None: none)."""
        if timeout_s is not None:
            self.lifecycle.limit(timeout_s)


@dataclass(slots=True)
class EncodedImages:
    """Encoded uploads and the names to report them by; the bytes are dropped once decoded."""

    names: list[str]
    blobs: list[bytes | bytearray | memoryview]

    def __len__(self) -> int:
        return len(self.names)


#: What a door's body becomes: encoded files to decode, or pixels the client already preprocessed
#: (uint8 [N, crop, crop, 3]).
Inputs = EncodedImages | np.ndarray


class InferenceCall(Protocol[Answer]):
    """One request as a door parsed it; the pipeline calls these in order, each at most once.

    ``target`` may charge ``body`` (a gRPC message is already in memory when its model is known);
    ``inputs`` reads and parses the body under ``admitted``'s deadline and budget, and checks
    anything that needs the model (top-k bounds, tensor shapes) before a byte is decoded.
    ``hang_up()`` is awaited once the body is read and the request has waited ``WATCH_AFTER_S``
    (:mod:`service.pipeline.lifecycle`): it returns when the client has gone (``hang_up`` is None where
    the transport cancels the request itself, as grpc.aio does). ``trace_carrier`` gives the W3C ``traceparent``/``tracestate`` carrier (headers, metadata); it is asked only when tracing is on.
    """

    protocol: str

    def credentials(self) -> Sequence[str]: ...

    def trace_carrier(self) -> Mapping[str, str]: ...

    @property
    def hang_up(self) -> Callable[[], Awaitable[object]] | None: ...

    def target(self, body: BodyLease) -> Target: ...

    async def inputs(self, admitted: Admitted) -> Inputs: ...

    def answer(self, admitted: Admitted, rows: list[np.ndarray]) -> Answer: ...


@dataclass(slots=True)
class RequestScope:
    """One request's accounting: which model it was for and how it ended (counted when it closes)."""

    protocol: str
    started: float = field(default_factory=time.perf_counter)
    model: str = "-"
    status: int = 500
    lifecycle: Lifecycle | None = None
    trace: RequestTrace | None = None
