"""Read HTTP request bodies under limits: size counted while streaming, file count while parsing.

/predict bodies are either ``multipart/form-data`` (field ``file`` for one image, repeated ``files``
for several) or a raw ``image/*`` (or ``application/octet-stream``) body; V2 REST bodies are read
whole by :func:`read_body`. Nothing is buffered beyond ``max_bytes``: a Content-Length over the
limit is refused before reading, a chunked or lying body as soon as the running count passes it,
and the multipart parser refuses the file after ``max_files`` while the rest is still on the wire.

Every body also holds its bytes in the process-wide :class:`~service.budget.ByteBudget` through a
:class:`~service.budget.BodyLease`: the whole Content-Length before the first byte is read, or each
chunk as it arrives when the length is not declared. A body that does not fit gets 503 at once.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from service.aio import within
from service.budget import BodyLease
from service.errors import ServiceError
from service.parsing import MAX_INT_DIGITS, shown

SINGLE_FIELD = "file"
MULTI_FIELD = "files"
RAW_BODY_NAME = "body"
#: Header field names the fast multipart path accepts as they are (anything else: the streaming parser).
_TOKEN = re.compile(rb"[A-Za-z0-9-]+")
#: Below python-multipart's own limits (8 headers, 4,224 bytes a line) so both paths judge alike.
_PLAIN_HEADER_COUNT = 6
_PLAIN_HEADER_BYTES = 4000
#: Longest filename echoed back in responses and errors.
MAX_FILENAME_CHARS = 200


@dataclass(frozen=True)
class Upload:
    """One image as received: the name to report it by, and its encoded bytes."""

    filename: str
    data: bytes | bytearray


@dataclass(frozen=True)
class Uploads:
    """What a /predict body held; ``multiple`` selects the several-images response shape."""

    files: list[Upload]
    multiple: bool


def too_large(max_bytes: int) -> ServiceError:
    return ServiceError(413, "upload_too_large", f"request body exceeds the limit of {max_bytes} bytes")


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
            return await _read_multipart(chunks, options.get(b"boundary"), max_bytes, max_files)
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
            raise ServiceError(400, "client_disconnected", "the client closed the connection mid-upload") from None


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


def describe_part(headers: dict[str, bytes], index: int, max_files: int) -> tuple[str, str]:
    """(field name, filename to report) of the ``index``-th part, or the 4xx its headers deserve."""
    disposition, params = parse_options_header(headers.get("content-disposition"))
    if disposition != b"form-data" or b"name" not in params:
        raise ServiceError(422, "bad_multipart", "a multipart part lacks 'Content-Disposition: form-data; name=...'")
    name = _text(params[b"name"])
    if name not in (SINGLE_FIELD, MULTI_FIELD):
        raise ServiceError(
            422, "unexpected_field",
            f"unexpected form field {shown(name, 60)}: send images as '{SINGLE_FIELD}' or '{MULTI_FIELD}'",
        )
    if index >= max_files:
        raise ServiceError(413, "too_many_files", f"more than {max_files} images in one request")
    filename = _text(params.get(b"filename", b"")) or f"{name}[{index}]"
    return name, filename[:MAX_FILENAME_CHARS]


class _PartCollector:
    """python-multipart callbacks that keep each part's name, filename and bytes."""

    def __init__(self, max_files: int) -> None:
        self.max_files = max_files
        self.files: list[Upload] = []
        self.field_names: list[str] = []
        self.finished = False
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._headers: dict[str, bytes] = {}
        self._data = bytearray()
        self._current_filename = ""

    def callbacks(self) -> dict[str, object]:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": lambda data, start, end: self._header_field.extend(data[start:end]),
            "on_header_value": lambda data, start, end: self._header_value.extend(data[start:end]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": lambda data, start, end: self._data.extend(data[start:end]),
            "on_part_end": self._part_end,
            "on_end": self._end,
        }

    def _part_begin(self) -> None:
        self._headers = {}
        self._data = bytearray()

    def _header_end(self) -> None:
        self._headers[bytes(self._header_field).decode("latin-1").lower()] = bytes(self._header_value)
        self._header_field.clear()
        self._header_value.clear()

    def _headers_finished(self) -> None:
        name, filename = describe_part(self._headers, len(self.field_names), self.max_files)
        self.field_names.append(name)
        self._current_filename = filename

    def _part_end(self) -> None:
        self.files.append(Upload(self._current_filename, self._data))  # the buffer itself: no second copy
        self._data = bytearray()

    def _end(self) -> None:
        self.finished = True


async def _read_multipart(
    chunk_stream: AsyncIterator[bytes], boundary: bytes | None, max_bytes: int, max_files: int
) -> Uploads:
    if not boundary:
        raise ServiceError(422, "bad_multipart", "multipart/form-data without a boundary parameter")
    first = await anext(chunk_stream, b"")
    second = await anext(chunk_stream, None) if first else None
    if second is None and len(first) <= max_bytes:
        # The whole body came in one piece (every small upload does): split it with a few bytes.find
        # calls instead of python-multipart's per-event Python callbacks (72 us -> 14 us for a 1 KB JPEG).
        # Anything not plainly formed falls through to the streaming parser, which says what is wrong.
        parts = _split_complete(first, boundary)
        if parts is not None and len(parts) <= max_files:
            described = [describe_part(headers, index, max_files) for index, (headers, _) in enumerate(parts)]
            files = [Upload(filename, data) for (_, filename), (_, data) in zip(described, parts, strict=True)]
            return _finish([name for name, _ in described], files)
    collector = _PartCollector(max_files)
    try:
        parser = MultipartParser(boundary, collector.callbacks())  # type: ignore[arg-type]
    except FormParserError as exc:
        raise ServiceError(422, "bad_multipart", f"invalid multipart boundary: {exc}") from None
    received = 0
    try:
        for chunk in (first, second):
            if chunk:
                received += len(chunk)
                if received > max_bytes:
                    raise too_large(max_bytes)
                parser.write(chunk)
        async for chunk in chunk_stream:
            received += len(chunk)
            if received > max_bytes:
                raise too_large(max_bytes)
            if chunk:
                parser.write(chunk)
        parser.finalize()
    except FormParserError as exc:
        raise ServiceError(422, "bad_multipart", f"malformed multipart body: {exc}") from None
    if not collector.finished:
        raise ServiceError(422, "bad_multipart", "the multipart body ends before its closing boundary")
    return _finish(collector.field_names, collector.files)


def _finish(field_names: list[str], files: list[Upload]) -> Uploads:
    if not files:
        raise ServiceError(422, "no_image", f"no image: send field '{SINGLE_FIELD}' or '{MULTI_FIELD}'")
    multiple = MULTI_FIELD in field_names
    if not multiple and len(files) > 1:
        raise ServiceError(
            422, "bad_form", f"field '{SINGLE_FIELD}' takes one image; send several as repeated '{MULTI_FIELD}'"
        )
    return Uploads(files, multiple=multiple)


def _split_complete(body: bytes | bytearray, boundary: bytes) -> list[tuple[dict[str, bytes], bytearray]] | None:
    """A complete, plainly formed multipart body as (headers, data) parts; None for anything unusual.

    Plain means: no preamble, CRLF line ends, ``Name: value`` header lines, a closing delimiter
    followed by at most one CRLF. The streaming parser handles (and judges) everything else.
    """
    opening = b"--" + boundary + b"\r\n"
    delimiter = b"\r\n--" + boundary
    if not body.startswith(opening):
        return None
    parts: list[tuple[dict[str, bytes], bytearray]] = []
    position = len(opening)
    while True:
        head_end = body.find(b"\r\n\r\n", position)
        if head_end < 0:
            return None
        headers: dict[str, bytes] = {}
        lines = bytes(body[position:head_end]).split(b"\r\n")
        if len(lines) > _PLAIN_HEADER_COUNT or any(len(line) > _PLAIN_HEADER_BYTES for line in lines):
            return None  # near python-multipart's per-part limits: let it judge
        for line in lines:
            field, colon, value = line.partition(b":")
            if not colon or not _TOKEN.fullmatch(field) or b"\r" in value or b"\n" in value:
                return None
            headers[field.decode("ascii").lower()] = value.strip(b" \t")
        start = head_end + 4
        end = body.find(delimiter, start)
        if end < 0:
            return None
        parts.append((headers, bytearray(body[start:end])))
        position = end + len(delimiter)
        after = bytes(body[position : position + 2])
        if after == b"--":
            return parts if bytes(body[position + 2 :]) in (b"", b"\r\n") else None
        if after != b"\r\n":
            return None
        position += 2


def _text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


class _no_timeout:
    """Python 3.10 has no asyncio.timeout; there the request deadline alone bounds a slow upload."""

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc: object) -> None:
        return None
