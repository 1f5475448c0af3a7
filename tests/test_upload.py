"""The one-piece multipart fast path answers exactly as the streaming parser does, on every body.

``service.doors.upload`` splits a multipart body that arrived in one piece with a few ``bytes.find`` calls
and hands anything not plainly formed to python-multipart's streaming parser. Each body below is read
both ways (in one piece, and in chunks that force the streaming parser): the images, filenames and
form shape, or the error status and code, must be the same.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.doors.multipart import read_multipart
from service.errors import ServiceError

BOUNDARY = b"b0undary-7f"
JPEG = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 3 + b"\xff\xd9"


def part(name: bytes = b"file", filename: bytes | None = b"a.jpg", data: bytes = JPEG, extra: bytes = b"") -> bytes:
    disposition = b'Content-Disposition: form-data; name="' + name + b'"'
    if filename is not None:
        disposition += b'; filename="' + filename + b'"'
    return b"--" + BOUNDARY + b"\r\n" + disposition + b"\r\nContent-Type: image/jpeg\r\n" + extra + b"\r\n" + data + b"\r\n"


def body(*parts: bytes, closing: bytes = b"--" + BOUNDARY + b"--\r\n") -> bytes:
    return b"".join(parts) + closing


BODIES = {
    "one file": body(part()),
    "one file, no trailing CRLF": body(part(), closing=b"--" + BOUNDARY + b"--"),
    "several files": body(part(b"files", b"a.jpg"), part(b"files", b"b.jpg"), part(b"files", b"c.jpg")),
    "no filename": body(part(filename=None)),
    "utf-8 filename": body(part(filename="ü名.jpg".encode())),
    "1,000-character filename": body(part(filename=b"x" * 1000)),
    "10,000-character filename": body(part(filename=b"x" * 10_000)),
    "4,100-character filename": body(part(filename=b"x" * 4100)),
    "9 headers": body(part(extra=b"".join(b"X-H%d: v\r\n" % i for i in range(8)))),
    "data containing CRLFs and dashes": body(part(data=b"\r\n--\r\n--" + BOUNDARY[:-1] + b"\r\n" + JPEG)),
    "empty file": body(part(data=b"")),
    "extra header": body(part(extra=b"X-Whatever: 1\r\n")),
    "header without a space": body(b"--" + BOUNDARY + b"\r\nContent-Disposition:form-data; name=\"file\"\r\n\r\n" + JPEG + b"\r\n"),
    "preamble": b"preamble\r\n" + body(part()),
    "epilogue": body(part(), closing=b"--" + BOUNDARY + b"--\r\nepilogue"),
    "LF line ends": body(part()).replace(b"\r\n", b"\n"),
    "wrong field": body(part(b"image")),
    "file given twice": body(part(), part()),
    "file and files": body(part(), part(b"files")),
    "no closing boundary": b"".join([part()]),
    "truncated in the data": body(part())[:-40],
    "not form-data": body(part()).replace(b"form-data", b"attachment"),
    "no name": body(part()).replace(b' name="file"', b""),
    "too many files": body(*[part(b"files", b"%d.jpg" % i) for i in range(5)]),
    "empty body": b"",
    "only the closing delimiter": b"--" + BOUNDARY + b"--\r\n",
    "garbage": b"\x00\xff" * 100,
    "header line without colon": body(part(extra=b"NoColonHere\r\n")),
    "header with space before colon": body(part(extra=b"X-Bad : 1\r\n")),
    "mixed-case header name": body(part()).replace(b"Content-Disposition", b"CONTENT-disposition"),
}
MAX_FILES = 4


def read(data: bytes, pieces: int) -> object:
    """The outcome of reading ``data`` delivered in ``pieces`` chunks (1 = in one piece)."""

    async def chunks() -> AsyncIterator[bytes]:
        size = max(1, -(-len(data) // pieces))
        for start in range(0, len(data), size):
            yield data[start : start + size]

    async def run() -> object:
        try:
            uploads = await read_multipart(chunks(), BOUNDARY, 1 << 20, MAX_FILES)
        except ServiceError as error:
            return ("error", error.status, error.code)
        return ("ok", uploads.multiple, [(u.filename, bytes(u.data)) for u in uploads.files])

    return asyncio.run(run())


@pytest.mark.parametrize("data", BODIES.values(), ids=list(BODIES))
def test_fast_path_answers_as_the_streaming_parser(data: bytes) -> None:
    assert read(data, 1) == read(data, 3)


@settings(max_examples=300, derandomize=True, deadline=None)
@given(
    st.lists(st.sampled_from(list(BODIES.values())), min_size=1, max_size=1),
    st.integers(0, 2000),
    st.binary(max_size=8),
)
def test_mutated_bodies_answer_the_same_both_ways(chosen: list[bytes], position: int, insert: bytes) -> None:
    data = chosen[0]
    position = min(position, len(data))
    mutated = data[:position] + insert + data[position + len(insert) // 2 :]
    assert read(mutated, 1) == read(mutated, 2)
