"""Read HTTP request bodies under limits: size counted while streaming, file count while parsing.

/predict bodies are either ``multipart/form-data`` (field ``file`` for one image, repeated ``files``
for several) or a raw ``image/*`` (or ``application/octet-stream``) body; V2 REST bodies are read
whole by :func:`read_body`. Nothing is buffered beyond ``max_bytes``: a Content-Length over the
limit is refused before reading, a chunked or lying body as soon as the running count passes it,
and the multipart parser refuses the file after ``max_files`` while the rest is still on the wire.

Every body also holds its bytes in the process-wide :class:`~service.limits.budget.ByteBudget` through a
:class:`~service.limits.budget.BodyLease`: the whole Content-Length before the first byte is read, or each
chunk as it arrives when the length is not declared. A body that does not fit gets 503 at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

from python_multipart.multipart import parse_options_header
from starlette.requests import ClientDisconnect, Request

from service.doors.multipart import (
    MULTI_FIELD,
    RAW_BODY_NAME,
    SINGLE_FIELD,
    Upload,
    Uploads,
    read_multipart,
    too_large,
)
from service.errors import ServiceError
from service.limits.budget import BodyLease
from service.limits.timeouts import within
from service.parsing import MAX_INT_DIGITS
from service.pipeline.call import CLIENT_CLOSED


def declared_length(request: Request, max_bytes: int) -> int | None:
    """The Content-Length (None when absent: chunked); 413 over ``max_bytes``, 400 when not a number."""
    values = request.headers.getlist("content-length")
    if not values:
        return None
    declared = values[0].strip()
    if len(set(values)) > 1 or not (declared.isascii() and declared.isdigit()):
        raise ServiceError(400, "bad_request", "Content-Length must be one decimal number")
    if len(declared) > MAX_INT_DIGITS or int(declared) > max_bytes:
        raise too_large(max_bytes)
    return int(declared)


Charge = Callable[[int], int]


def _take_declared(request: Request, max_bytes: int, lease: BodyLease | None, charge: Charge | None = None) -> bool:
    """Take the whole declared body from the budget up front; False when the length is not declared."""
    declared = declared_length(request, max_bytes)
    if declared is None:
        return False
    if lease is not None:
        lease.take(charge(declared) if charge else declared)  # 503 server_busy before a byte is read
    return True


async def read_uploads(
    request: Request,
    *,
    max_bytes: int,
    max_files: int,
    timeout_s: float,
    idle_timeout_s: float | None = None,
    lease: BodyLease | None = None,
) -> Uploads:
    """Parse the request body into images, enforcing every limit while reading.

    ``timeout_s`` bounds the whole body; ``idle_timeout_s`` bounds each wait for the next chunk, so a
    client that stalls mid-upload is cut off (408) long before the request deadline.
    """
    media_type, options = parse_options_header(request.headers.get("content-type"))
    if media_type != b"multipart/form-data" and not (
        media_type.startswith(b"image/") or media_type == b"application/octet-stream"
    ):
        shown_type = media_type.decode("latin-1")[:100] or "none"
        raise ServiceError(
            415,
            "unsupported_content_type",
            f"Content-Type {shown_type!r} is not accepted: send multipart/form-data with field "
            f"'{SINGLE_FIELD}' or '{MULTI_FIELD}', or a raw image/* body",
        )
    declared = _take_declared(request, max_bytes, lease)
    chunks = _chunks(request, idle_timeout_s, None if declared else lease)
    async with _body_errors(timeout_s, idle_timeout_s):
        if media_type == b"multipart/form-data":
            return await read_multipart(chunks, options.get(b"boundary"), max_bytes, max_files)
        data = await _read_all(chunks, max_bytes, declared_length(request, max_bytes))
        return Uploads([Upload(RAW_BODY_NAME, data)], multiple=False)


async def read_body(
    request: Request,
    *,
    max_bytes: int,
    timeout_s: float,
    idle_timeout_s: float | None,
    lease: BodyLease | None,
    charge: Charge | None = None,
) -> bytearray:
    """The whole body as bytes under the same limits, budget and timeouts as :func:`read_uploads`.

    ``charge(n)`` is what the first ``n`` body bytes cost in the byte budget (default ``n``): a JSON
    body is charged for the Python objects parsing it will create, not just for its bytes.
    """
    declared = _take_declared(request, max_bytes, lease, charge)
    chunks = _chunks(request, idle_timeout_s, None if declared else lease, charge)
    async with _body_errors(timeout_s, idle_timeout_s):
        return await _read_all(chunks, max_bytes, declared_length(request, max_bytes))


class _body_errors:
    """The body's deadline, and its transport failures as ServiceErrors (408 stalled/late, 400 gone)."""

    def __init__(self, timeout_s: float, idle_timeout_s: float | None) -> None:
        self.timeout_s = timeout_s
        self.idle_timeout_s = idle_timeout_s
        self._timeout = asyncio.timeout(timeout_s) if hasattr(asyncio, "timeout") else _no_timeout()

    async def __aenter__(self) -> None:
        await self._timeout.__aenter__()

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        try:
            await self._timeout.__aexit__(kind, exc, tb)  # type: ignore[arg-type]
        except TimeoutError:
            raise ServiceError(
                408, "upload_timeout", f"the request body did not arrive within {self.timeout_s:.0f} s"
            ) from None
        if isinstance(exc, _Stalled):
            raise ServiceError(
                408, "upload_timeout", f"the upload stalled: no data for {self.idle_timeout_s:g} s"
            ) from None
        if isinstance(exc, ClientDisconnect):
            # Counted as 499 (nobody reads the answer), like a hang-up while the request waits.
            raise ServiceError(
                CLIENT_CLOSED, "client_disconnected", "the client closed the connection mid-upload"
            ) from None


class _Stalled(Exception):
    """No body bytes arrived within the idle timeout."""


async def _chunks(
    request: Request, idle_timeout_s: float | None, lease: BodyLease | None = None, charge: Charge | None = None
) -> AsyncIterator[bytes]:
    """The body's chunks straight from ASGI ``receive``; each wait is bounded by ``idle_timeout_s``.

    uvicorn (h11/httptools) has no body read timeout of its own: without this a client that sends
    headers and then nothing holds its connection until the request deadline. With ``lease`` (a
    body without Content-Length) each chunk is taken from the byte budget as it arrives.
    """
    receive = request.receive
    received = charged = 0
    while True:
        try:
            message = await within(receive(), idle_timeout_s)
        except TimeoutError:
            raise _Stalled() from None
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk: bytes = message.get("body", b"")
        if chunk:
            if lease is not None:
                received += len(chunk)
                cost = charge(received) if charge else received
                lease.take(cost - charged)
                charged = cost
            yield chunk
        if not message.get("more_body", False):
            return


async def _read_all(chunk_stream: AsyncIterator[bytes], max_bytes: int, declared: int | None) -> bytearray:
    """The body in one buffer, copied once: preallocated from Content-Length, or grown while chunks come.

    Joining a list of chunks would hold every body twice at its end (chunks + joined copy); the byte
    budget's bound is 1x per body (plus bytearray's growth slack for chunked bodies).
    """
    if declared is not None:
        buffer = bytearray(declared)
        view = memoryview(buffer)
        received = 0
        async for chunk in chunk_stream:
            end = received + len(chunk)
            if end > declared:  # the framing layer enforces Content-Length; this is belt and braces
                raise too_large(max_bytes)
            view[received:end] = chunk
            received = end
        view.release()
        if received != declared:
            raise ServiceError(400, "client_disconnected", "the body ended before its Content-Length")
        return buffer
    grown = bytearray()
    async for chunk in chunk_stream:
        if len(grown) + len(chunk) > max_bytes:
            raise too_large(max_bytes)
        grown += chunk
    return grown


class _no_timeout:
    """Python 3.10 has no asyncio.timeout; there the request deadline alone bounds a slow upload."""

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc: object) -> None:
        return None
