"""Read /predict's body under limits: size counted while streaming, file count while parsing.

Bodies are either ``multipart/form-data`` (field ``file`` for one image, repeated ``files`` for
several) or a raw ``image/*`` (or ``application/octet-stream``) body. Nothing is buffered beyond
``max_bytes``: a Content-Length over the limit is refused before reading, a chunked or lying body
as soon as the running count passes it, and the multipart parser refuses the file after
``max_files`` while the rest is still on the wire.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from service.errors import ServiceError

SINGLE_FIELD = "file"
MULTI_FIELD = "files"
RAW_BODY_NAME = "body"
#: Longest filename echoed back in responses and errors.
MAX_FILENAME_CHARS = 200


@dataclass(frozen=True)
class Upload:
    """One image as received: the name to report it by, and its encoded bytes."""

    filename: str
    data: bytes


@dataclass(frozen=True)
class Uploads:
    """What a /predict body held; ``multiple`` selects the several-images response shape."""

    files: list[Upload]
    multiple: bool


def too_large(max_bytes: int) -> ServiceError:
    return ServiceError(413, "upload_too_large", f"request body exceeds the limit of {max_bytes} bytes")


async def read_uploads(
    request: Request, *, max_bytes: int, max_files: int, timeout_s: float, idle_timeout_s: float | None = None
) -> Uploads:
    """Parse the request body into images, enforcing every limit while reading.

    ``timeout_s`` bounds the whole body; ``idle_timeout_s`` bounds each wait for the next chunk, so a
    client that stalls mid-upload is cut off (408) long before the request deadline.
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise too_large(max_bytes)
    media_type, options = parse_options_header(request.headers.get("content-type"))
    try:
        async with asyncio.timeout(timeout_s) if hasattr(asyncio, "timeout") else _no_timeout():
            if media_type == b"multipart/form-data":
                return await _read_multipart(
                    _chunks(request, idle_timeout_s), options.get(b"boundary"), max_bytes, max_files
                )
            if media_type.startswith(b"image/") or media_type == b"application/octet-stream":
                data = await _read_all(_chunks(request, idle_timeout_s), max_bytes)
                return Uploads([Upload(RAW_BODY_NAME, data)], multiple=False)
    except _Stalled:
        raise ServiceError(
            408, "upload_timeout", f"the upload stalled: no data for {idle_timeout_s:g} s"
        ) from None
    except TimeoutError:
        raise ServiceError(408, "upload_timeout", f"the request body did not arrive within {timeout_s:.0f} s") from None
    except ClientDisconnect:
        raise ServiceError(400, "client_disconnected", "the client closed the connection mid-upload") from None
    shown = media_type.decode("latin-1") or "none"
    raise ServiceError(
        415,
        "unsupported_content_type",
        f"Content-Type {shown!r} is not accepted: send multipart/form-data with field "
        f"'{SINGLE_FIELD}' or '{MULTI_FIELD}', or a raw image/* body",
    )


class _Stalled(Exception):
    """No body bytes arrived within the idle timeout."""


async def _chunks(request: Request, idle_timeout_s: float | None) -> AsyncIterator[bytes]:
    """The body's chunks; each wait for the next one is bounded by ``idle_timeout_s``.

    uvicorn (h11/httptools) has no body read timeout of its own: without this a client that sends
    headers and then nothing holds its connection until the request deadline.
    """
    stream = request.stream().__aiter__()
    while True:
        try:
            chunk = await asyncio.wait_for(stream.__anext__(), idle_timeout_s)
        except StopAsyncIteration:
            return
        except asyncio.TimeoutError:
            raise _Stalled() from None
        yield chunk


async def _read_all(chunk_stream: AsyncIterator[bytes], max_bytes: int) -> bytes:
    chunks: list[bytes] = []
    received = 0
    async for chunk in chunk_stream:
        received += len(chunk)
        if received > max_bytes:
            raise too_large(max_bytes)
        chunks.append(chunk)
    return b"".join(chunks)


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
        disposition, params = parse_options_header(self._headers.get("content-disposition"))
        if disposition != b"form-data" or b"name" not in params:
            raise ServiceError(422, "bad_multipart", "a multipart part lacks 'Content-Disposition: form-data; name=...'")
        name = _text(params[b"name"])
        if name not in (SINGLE_FIELD, MULTI_FIELD):
            raise ServiceError(
                422, "unexpected_field", f"unexpected form field {name!r}: send images as '{SINGLE_FIELD}' or '{MULTI_FIELD}'"
            )
        if len(self.field_names) >= self.max_files:
            raise ServiceError(413, "too_many_files", f"more than {self.max_files} images in one request")
        self.field_names.append(name)
        filename = _text(params.get(b"filename", b"")) or f"{name}[{len(self.field_names) - 1}]"
        self._current_filename = filename[:MAX_FILENAME_CHARS]

    def _part_end(self) -> None:
        self.files.append(Upload(self._current_filename, bytes(self._data)))
        self._data = bytearray()

    def _end(self) -> None:
        self.finished = True


async def _read_multipart(
    chunk_stream: AsyncIterator[bytes], boundary: bytes | None, max_bytes: int, max_files: int
) -> Uploads:
    if not boundary:
        raise ServiceError(422, "bad_multipart", "multipart/form-data without a boundary parameter")
    collector = _PartCollector(max_files)
    try:
        parser = MultipartParser(boundary, collector.callbacks())  # type: ignore[arg-type]
    except FormParserError as exc:
        raise ServiceError(422, "bad_multipart", f"invalid multipart boundary: {exc}") from None
    received = 0
    try:
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
    if not collector.files:
        raise ServiceError(422, "no_image", f"no image: send field '{SINGLE_FIELD}' or '{MULTI_FIELD}'")
    multiple = MULTI_FIELD in collector.field_names
    if not multiple and len(collector.files) > 1:
        raise ServiceError(
            422, "bad_form", f"field '{SINGLE_FIELD}' takes one image; send several as repeated '{MULTI_FIELD}'"
        )
    return Uploads(collector.files, multiple=multiple)


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
