"""Hostile HTTP requests to /predict and the KServe V2 REST door, generated in memory (nothing binary is committed).

Each :class:`HostileCase` is one HTTP request (path, query, body, headers, how it is sent) with the
status the service documents for it and the error shape it must come in: /predict's
``{"error": {"code", "message"}}``, V2's ``{"error": "<message>"}``, or, for the few requests the
HTTP layer (uvicorn + httptools) refuses before the application sees them (a request target over
64 KiB, a Content-Length that is not one decimal number), its plain-text 400. Valid-but-unusual
images (16-bit, CMYK, 300-frame GIF, ...) are expected to succeed with 200; everything else gets a
4xx and never a 5xx, and no error message echoes more than :data:`MAX_MESSAGE_CHARS` characters.

Run ``python tests/hostile_corpus.py`` to list the cases with their paths, sizes and expectations.
Images are built with Pillow, bombs and malformed files with zlib/struct, so each case is a few
kilobytes to a few megabytes however many pixels it claims.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import functools
import gzip
import io
import json
import os
import shutil
import socket
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
from PIL import Image, ImageCms

#: The query string every corpus request carries (the hostile server serves one CIFAR model).
MODEL_QUERY = "?model=resnet20"
#: The body limit the hostile-corpus server runs with (``--max-upload-bytes``).
MAX_UPLOAD_BYTES = 8 * 1024 * 1024
#: The file-count limit the hostile-corpus server runs with (``--max-files``).
MAX_FILES = 16
#: Seconds of silence after which the server cuts a stalled upload (``--body-timeout-s``).
BODY_TIMEOUT_S = 2.0
#: Byte budget of the hostile-corpus server (``--max-inflight-bytes``): twice what the largest JSON
#: body is charged (MAX_UPLOAD_BYTES x 32), so a maximal JSON case never turns a valid request into 503.
MAX_INFLIGHT_BYTES = 512 * 1024 * 1024
BOUNDARY = "hostile-boundary-7f3a"
#: Longest error message accepted from the service: it cuts echoed input to 200 characters.
MAX_MESSAGE_CHARS = 400
#: Longest request target httptools (llhttp) passes on; longer ones get its plain-text 400.
MAX_TARGET_BYTES = 65535

#: Error shapes: /predict and the service's other routes, the KServe V2 routes, and the HTTP layer's
#: own answer to a request it cannot parse (uvicorn writes "Invalid HTTP request received.").
PREDICT_SHAPE = "predict"
V2_SHAPE = "v2"
HTTP_SHAPE = "http"
V2_MODEL = "resnet20"
V2_ENCODED = "resnet20-encoded"


@dataclass(frozen=True)
class HostileCase:
    """One request and the answer the service documents for it.

    ``kind`` says how to send it: ``"raw"`` (body as given), ``"chunked"`` (no Content-Length,
    streamed in 64 KiB chunks), ``"stall"`` (headers and part of the body, then silence) or
    ``"socket"`` (``body`` is the whole HTTP request, written verbatim: request lines or headers
    that an HTTP client would refuse to send). ``code`` is /predict's error code (None for a 200
    and for the V2 shape, whose errors carry a message only); ``words`` must appear in the message.
    """

    name: str
    status: int
    code: str | None
    why: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    kind: str = "raw"
    query: str = MODEL_QUERY
    path: str = "/predict"
    shape: str = PREDICT_SHAPE
    words: str | None = None

    @property
    def target(self) -> str:
        return self.path + self.query


# --- building blocks -------------------------------------------------------------------------------


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def slow_jpeg(shade: tuple[int, int, int] = (120, 130, 140)) -> bytes:
    """A 36-megapixel JPEG that is small on the wire but takes about 0.3 s to decode exactly (23 ms in
    JPEG draft mode, off by default): a request that stays in flight while a test acts on it."""
    return encode(Image.new("RGB", (6000, 6000), shade), "JPEG", quality=50)


def gradient(width: int, height: int, mode: str = "RGB") -> Image.Image:
    """A deterministic non-flat picture (flat images compress to nothing and hide decoder paths)."""
    ys, xs = np.mgrid[0:height, 0:width]
    rgb = np.stack([(xs * 7) % 256, (ys * 5) % 256, ((xs + ys) * 3) % 256], axis=-1).astype(np.uint8)
    return Image.fromarray(rgb, "RGB").convert(mode)


def multipart(parts: list[tuple[str, str, bytes]], boundary: str = BOUNDARY, content_type: str = "image/jpeg") -> bytes:
    """A multipart/form-data body from (field name, filename, data) parts."""
    out = bytearray()
    for name, filename, data in parts:
        out += f"--{boundary}\r\n".encode()
        out += f'Content-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'.encode()
        out += f"Content-Type: {content_type}\r\n\r\n".encode()
        out += data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out)


def as_file(data: bytes, filename: str = "upload.bin") -> tuple[bytes, dict[str, str]]:
    """``data`` as the single ``file`` field of a multipart body."""
    return multipart([("file", filename, data)]), {"content-type": f"multipart/form-data; boundary={BOUNDARY}"}


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)


@functools.cache
def png_bomb(width: int = 30000, height: int = 30000) -> bytes:
    """A 1-bit greyscale PNG of ``width`` x ``height`` zeros: 900 megapixels in about 100 KB.

    The IDAT is compressed row by row (streamed), so building it never holds the raw image.
    """
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    compressor = zlib.compressobj(9)
    row = b"\x00" * (1 + (width + 7) // 8)
    idat = bytearray()
    for _ in range(height):
        idat += compressor.compress(row)
    idat += compressor.flush()
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", bytes(idat)) + png_chunk(b"IEND", b"")


def png_with_text(text_bytes: int) -> bytes:
    """A small valid PNG with an uncompressed tEXt chunk of ``text_bytes`` placed before its pixels."""
    small = encode(gradient(48, 48), "PNG")
    ihdr_end = 8 + 25  # signature + IHDR chunk
    chunk = png_chunk(b"tEXt", b"Comment\x00" + b"A" * text_bytes)
    return small[:ihdr_end] + chunk + small[ihdr_end:]


@functools.cache
def png_with_ztxt_bomb(inflated_bytes: int) -> bytes:
    """A small valid PNG whose zTXt chunk inflates to ``inflated_bytes`` (a metadata bomb)."""
    small = encode(gradient(48, 48), "PNG")
    ihdr_end = 8 + 25
    chunk = png_chunk(b"zTXt", b"Comment\x00\x00" + zlib.compress(b"\x00" * inflated_bytes, 9))
    return small[:ihdr_end] + chunk + small[ihdr_end:]


def jpeg_with_comments(count: int) -> bytes:
    """A valid JPEG with ``count`` maximal COM segments (64 KiB each) right after SOI."""
    small = encode(gradient(64, 64), "JPEG", quality=90)
    comment = b"\xff\xfe" + struct.pack(">H", 65535) + b"C" * 65533
    return small[:2] + comment * count + small[2:]


def jpeg_claiming(width: int, height: int) -> bytes:
    """A real JPEG whose SOF header is rewritten to claim ``width`` x ``height``."""
    data = bytearray(encode(gradient(64, 64), "JPEG", quality=90))
    sof = data.find(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


def jpeg_with_corrupt_scan(seed: int) -> bytes:
    """A real JPEG with bytes of its entropy-coded data overwritten by random values."""
    data = bytearray(encode(gradient(256, 256), "JPEG", quality=90))
    start = data.find(b"\xff\xda") + 20
    rng = np.random.default_rng(seed)
    positions = rng.integers(start, len(data) - 2, size=64)
    data[positions[0]: positions[0] + 400] = bytes(rng.integers(0, 256, 400, dtype=np.uint8))
    for position in positions[1:]:
        data[position] = int(rng.integers(0, 256))
    return bytes(data)


def jpeg_with_exif_orientation(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(gradient(80, 40), "JPEG", exif=exif.tobytes())


def sixteen_bit_png() -> bytes:
    ramp = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)
    return encode(Image.fromarray(ramp), "PNG")


def palette_with_transparency() -> bytes:
    image = gradient(40, 40).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return encode(image, "PNG", transparency=0)


def gif_with_frames(count: int) -> bytes:
    frames = [gradient(32, 32).rotate(i * 3) for i in range(count)]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=20, loop=0)


def animated_webp(count: int) -> bytes:
    frames = [gradient(48, 48).rotate(i * 10) for i in range(count)]
    return encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=40)


def multipage_tiff(count: int) -> bytes:
    pages = [gradient(40, 40).rotate(i * 20) for i in range(count)]
    return encode(pages[0], "TIFF", save_all=True, append_images=pages[1:])


def srgb_icc_jpeg() -> bytes:
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    return encode(gradient(64, 64), "JPEG", icc_profile=profile)


def tiny_pdf() -> bytes:
    return (
        b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n2 0 obj<</Type/Pages/Kids[]/Count 0>>endobj\n"
        b"trailer<</Root 1 0 R>>\n%%EOF\n"
    )


# --- the corpus ------------------------------------------------------------------------------------


def _image_case(name: str, data: bytes, status: int, code: str | None, why: str, filename: str = "x") -> HostileCase:
    body, headers = as_file(data, filename)
    return HostileCase(name, status, code, why, body, headers)


def build_corpus() -> list[HostileCase]:
    """Every hostile case, in a stable order (names are unique)."""
    jpeg = encode(gradient(96, 72), "JPEG", quality=90)
    png = encode(gradient(96, 72), "PNG", compress_level=0)  # 20 KB, so cuts land inside the pixel data
    cases: list[HostileCase] = [
        _image_case("zero bytes", b"", 422, "empty_image", "an empty file part"),
        _image_case("one byte", b"\xff", 415, "unsupported_image", "no format matches one byte"),
        _image_case("plain text", b"hello, this is not a picture\n" * 10, 415, "unsupported_image", "text as an image"),
        _image_case("html", b"<!doctype html><html><body><img src=x></body></html>", 415, "unsupported_image",
                    "HTML as an image"),
        _image_case("json", json.dumps({"image": "cat.jpg", "pixels": [1, 2, 3]}).encode(), 415, "unsupported_image",
                    "JSON as an image"),
        _image_case("svg", b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect/></svg>', 415,
                    "unsupported_image", "vector formats are not decoded"),
        _image_case("pdf", tiny_pdf(), 415, "unsupported_image", "PDF is never handed to a decoder"),
        _image_case("eps header", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", 415, "unsupported_image",
                    "EPS would run Ghostscript: refused unread"),
    ]
    # Cut inside the header: no format can be identified (415). Cut inside the pixels: 422.
    for cut in (2, 20, 200, len(jpeg) // 2, len(jpeg) - 200):
        expected = (415, "unsupported_image") if cut <= 20 else (422, "corrupt_image")
        cases.append(_image_case(f"jpeg truncated at {cut}", jpeg[:cut], *expected, "a JPEG cut short"))
    for cut in (8, 30, 60, len(png) // 2, len(png) - 40):
        expected = (415, "unsupported_image") if cut <= 30 else (422, "corrupt_image")
        cases.append(_image_case(f"png truncated at {cut}", png[:cut], *expected, "a PNG cut short"))
    cases.append(_image_case("png without IEND", png[:-12], 200, None, "every pixel arrived; only the end marker is lost"))
    cases += [
        _image_case("jpeg corrupt entropy data", jpeg_with_corrupt_scan(7), 422, "corrupt_image",
                    "random bytes in the scan: libjpeg errors out"),
        _image_case("jpeg claiming 65535x65535", jpeg_claiming(65535, 65535), 413, "image_too_large",
                    "4.3 gigapixels in the header: refused before decoding"),
        _image_case("png bomb 30000x30000", png_bomb(), 413, "image_too_large",
                    "900 megapixels compressed to ~100 KB: refused from the header"),
        _image_case("png zTXt metadata bomb", png_with_ztxt_bomb(64 * 1024 * 1024), 413, "image_too_large",
                    "a 64 MB text chunk compressed to 64 KB: Pillow's chunk limit stops it"),
        _image_case("png huge tEXt chunk", png_with_text(3 * 1024 * 1024), 200, None,
                    "3 MB of plain metadata is within the body limit: ignored"),
        _image_case("jpeg 100 COM segments", jpeg_with_comments(100), 200, None, "6.5 MB of comments: ignored"),
        _image_case("gif 300 frames", gif_with_frames(300), 200, None, "only the first frame is decoded"),
        _image_case("animated webp", animated_webp(30), 200, None, "only the first frame is decoded"),
        _image_case("multi-page tiff", multipage_tiff(20), 200, None, "only the first page is decoded"),
        _image_case("16-bit png", sixteen_bit_png(), 200, None, "scaled to 8 bits"),
        _image_case("cmyk jpeg", encode(gradient(64, 64, "CMYK"), "JPEG"), 200, None, "converted to RGB"),
        _image_case("progressive jpeg", encode(gradient(128, 96), "JPEG", progressive=True), 200, None, "decoded"),
        _image_case("exif rotated jpeg", jpeg_with_exif_orientation(6), 200, None, "rotated as the tag says"),
        _image_case("exif orientation 99", jpeg_with_exif_orientation(99), 200, None, "nonsense tag ignored"),
        _image_case("icc profile jpeg", srgb_icc_jpeg(), 200, None, "profile ignored as torchvision does"),
        _image_case("palette with transparency", palette_with_transparency(), 200, None, "via RGBA to RGB"),
        _image_case("1x1 png", encode(Image.new("RGB", (1, 1), (200, 10, 10)), "PNG"), 200, None, "upscaled"),
        _image_case("10000x10 png", encode(gradient(10000, 10), "PNG"), 200, None, "crop window resampled only"),
        _image_case("grey jpeg", encode(gradient(50, 50, "L"), "JPEG"), 200, None, "grey to RGB"),
        _image_case("bmp", encode(gradient(30, 30), "BMP"), 200, None, "an accepted raster format"),
    ]
    # --- protocol-level cases -------------------------------------------------------------------
    multi = f"multipart/form-data; boundary={BOUNDARY}"
    cases += [
        HostileCase("jpeg as text/plain", 415, "unsupported_content_type", "raw body with a non-image type", jpeg,
                    {"content-type": "text/plain"}),
        HostileCase("no content-type", 415, "unsupported_content_type", "raw body without a type", jpeg, {}),
        HostileCase("json content-type", 415, "unsupported_content_type", "application/json body",
                    b'{"file": "x"}', {"content-type": "application/json"}),
        HostileCase("raw image/jpeg body", 200, None, "a raw image/* body is accepted", jpeg,
                    {"content-type": "image/jpeg"}),
        HostileCase("raw png labelled image/jpeg", 200, None, "the declared image type is not trusted", png,
                    {"content-type": "image/jpeg"}),
        HostileCase("multipart without boundary", 422, "bad_multipart", "no boundary parameter",
                    multipart([("file", "a.jpg", jpeg)]), {"content-type": "multipart/form-data"}),
        HostileCase("multipart wrong boundary", 422, "bad_multipart", "boundary never appears",
                    multipart([("file", "a.jpg", jpeg)]), {"content-type": "multipart/form-data; boundary=other"}),
        HostileCase("multipart 1000 files", 413, "too_many_files", f"more than {MAX_FILES} parts",
                    multipart([("files", f"{i}.jpg", b"x") for i in range(1000)]), {"content-type": multi}),
        HostileCase("wrong field name", 422, "unexpected_field", "field 'image' instead of 'file'",
                    multipart([("image", "a.jpg", jpeg)]), {"content-type": multi}),
        HostileCase("text field only", 422, "unexpected_field", "a form without a file",
                    multipart([("comment", "", b"hello")]), {"content-type": multi}),
        HostileCase("empty multipart", 422, "no_image", "closing boundary only", f"--{BOUNDARY}--\r\n".encode(),
                    {"content-type": multi}),
        HostileCase("long filename", 200, None, "1,000-character filename: truncated to 200 when echoed",
                    multipart([("files", "n" * 1_000 + ".jpg", jpeg)]), {"content-type": multi}),
        HostileCase("very long filename", 422, "bad_multipart", "10,000-character part header: over the parser's limit",
                    multipart([("files", "n" * 10_000 + ".jpg", jpeg)]), {"content-type": multi}),
        HostileCase("non-ascii filename", 200, None, "UTF-8 filename echoed intact",
                    multipart([("files", "chat-\u732b-\u00e9t\u00e9-\U0001f431.jpg", jpeg)]), {"content-type": multi}),
        HostileCase("one byte over the limit", 413, "upload_too_large", "Content-Length refused before reading",
                    b"\x00" * (MAX_UPLOAD_BYTES + 1), {"content-type": "image/jpeg"}),
        HostileCase("chunked one byte over the limit", 413, "upload_too_large", "no Content-Length: counted while reading",
                    b"\x00" * (MAX_UPLOAD_BYTES + 1), {"content-type": "image/jpeg"}, kind="chunked"),
        HostileCase("chunked multipart over the limit", 413, "upload_too_large", "multipart streamed past the limit",
                    *as_file(b"\x00" * (MAX_UPLOAD_BYTES + 10)), kind="chunked"),
        HostileCase("stalled upload", 408, "upload_timeout",
                    f"headers and half the body, then silence: cut off after {BODY_TIMEOUT_S:g} s",
                    *as_file(jpeg), kind="stall"),
        HostileCase("unknown model", 404, "unknown_model", "model names are looked up, never loaded",
                    *as_file(jpeg), query="?model=../../etc/passwd"),
        HostileCase("model as url", 404, "unknown_model", "no endpoint fetches a model from a URL",
                    *as_file(jpeg), query="?model=http://127.0.0.1:1/model.onnx"),
        HostileCase("top_k huge", 422, "bad_top_k", "more predictions than classes", *as_file(jpeg),
                    query=MODEL_QUERY + "&top_k=99999999999999999999999"),
        HostileCase("top_k not a number", 422, "invalid_request", "query validation", *as_file(jpeg),
                    query=MODEL_QUERY + "&top_k=%00"),
    ]
    cases += predict_query_cases(jpeg) + content_length_cases(jpeg) + v2_cases()
    names = [case.name for case in cases]
    assert len(names) == len(set(names)), "case names must be unique"
    return cases


# --- /predict query and header cases ---------------------------------------------------------------


def socket_request(target: str, body: bytes, header_lines: list[str]) -> bytes:
    """A whole ``Connection: close`` request, header lines exactly as given (none is added but Host)."""
    lines = [f"POST {target} HTTP/1.1", "Host: 127.0.0.1", "Connection: close", *header_lines]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + body


def predict_query_cases(jpeg: bytes) -> list[HostileCase]:
    """Hostile ``model``, ``version`` and ``top_k`` values (each given at most once, else 422)."""
    body, headers = as_file(jpeg)

    def query_case(name: str, query: str, status: int, code: str | None, why: str, words: str | None = None
                   ) -> HostileCase:
        return HostileCase(name, status, code, why, body, headers, query=query, words=words)

    def over_socket(name: str, target: str, status: int, code: str | None, why: str) -> HostileCase:
        """The same upload with a request target no HTTP client would send, written over a raw socket."""
        raw = socket_request(target, body, [f"Content-Length: {len(body)}", f"Content-Type: {headers['content-type']}"])
        path, mark, query = target.partition("?")
        shape = HTTP_SHAPE if status == 400 else PREDICT_SHAPE
        return HostileCase(name, status, code, why, raw, kind="socket", query=mark + query, path=path, shape=shape)

    def too_long(name: str, query: str, why: str) -> HostileCase:
        """A request target past httptools' 64 KiB: refused by the HTTP layer."""
        assert len("/predict" + query) > MAX_TARGET_BYTES
        return over_socket(name, "/predict" + query, 400, None, why)

    q = MODEL_QUERY
    bad_int = "invalid_request"
    cases = [
        query_case("top_k 5,000 digits", q + "&top_k=" + "9" * 5000, 422, "bad_top_k",
                   "beyond int()'s 4,300-digit limit: a well-formed number too large (was a 500)", "5000 characters"),
        query_case("top_k 60,000 digits", q + "&top_k=" + "7" * 60_000, 422, "bad_top_k", "echo cut to 40 characters"),
        query_case("top_k 10^30", q + "&top_k=1" + "0" * 30, 422, "bad_top_k", "above int64"),
        query_case("top_k 11 > classes", q + "&top_k=11", 422, "bad_top_k", "more predictions than resnet20 has classes"),
        query_case("top_k above MAX_TOP_K", q + "&top_k=1000001", 422, "bad_top_k", "over the parser's maximum"),
        query_case("top_k arabic-indic digit", q + "&top_k=%D9%A3", 422, bad_int, "'\u0663'.isdigit() is True: ASCII only"),
        query_case("top_k fullwidth digit", q + "&top_k=%EF%BC%93", 422, bad_int, "fullwidth 3: int() would take it"),
        query_case("top_k trailing NUL", q + "&top_k=3%00", 422, bad_int, "a NUL after the digits"),
        query_case("top_k negative", q + "&top_k=-1", 422, bad_int, "below 1"),
        query_case("top_k zero", q + "&top_k=0", 422, bad_int, "below 1"),
        query_case("top_k float", q + "&top_k=1.5", 422, bad_int, "not an integer"),
        query_case("top_k exponent", q + "&top_k=1e3", 422, bad_int, "not plain digits"),
        query_case("top_k underscore", q + "&top_k=1_0", 422, bad_int, "int('1_0') is 10: refused"),
        query_case("top_k plus sign", q + "&top_k=%2B3", 422, bad_int, "signs are not digits"),
        query_case("top_k space", q + "&top_k=+3", 422, bad_int, "'+' decodes to a space: int(' 3') is 3, refused"),
        query_case("top_k empty", q + "&top_k=", 422, bad_int, "given but empty"),
        query_case("top_k invalid utf-8", q + "&top_k=%FF", 422, bad_int, "decoded with replacement characters"),
        query_case("top_k leading zeros", q + "&top_k=007", 200, None, "plain digits: 7"),
        query_case("top_k repeated", q + "&top_k=3&top_k=3", 422, bad_int, "ambiguous even when equal", "given 2 times"),
        query_case("top_k 2,000 times", q + "&top_k=1" * 2000, 422, bad_int, "counted, not echoed", "given 2000 times"),
        query_case("model repeated", q + "&model=resnet20", 422, bad_int, "two model names", "given 2 times"),
        query_case("version repeated", q + "&version=1&version=1", 422, bad_int, "two versions", "given 2 times"),
        query_case("version 5,000 digits", q + "&version=" + "9" * 5000, 422, bad_int, "no int() on it", "5000 characters"),
        query_case("version 10^30", q + "&version=1" + "0" * 30, 422, bad_int, "above int64"),
        query_case("version arabic-indic digit", q + "&version=%D9%A3", 422, bad_int, "ASCII digits only"),
        query_case("version zero", q + "&version=0", 422, bad_int, "versions start at 1"),
        query_case("version negative", q + "&version=-1", 422, bad_int, "versions start at 1"),
        query_case("version NUL", q + "&version=%00", 422, bad_int, "not a number"),
        query_case("version empty", q + "&version=", 422, bad_int, "given but empty"),
        query_case("version not loaded", q + "&version=99", 404, "unknown_version", "a well-formed version not served"),
        query_case("version 1", q + "&version=1", 200, None, "the one loaded version"),
        query_case("model 60,000 characters", "?model=" + "m" * 60_000, 404, "unknown_model",
                   "the name came back whole in the 404 (60 KB); cut to 200 characters", "60000 characters"),
        query_case("model NUL", "?model=%00", 404, "unknown_model", "looked up, not found"),
        query_case("model resnet20 NUL", "?model=resnet20%00", 404, "unknown_model", "no prefix match"),
        query_case("model cjk", "?model=%E7%8C%AB", 404, "unknown_model", "UTF-8 name"),
        query_case("model invalid utf-8", "?model=%FF%FE", 404, "unknown_model", "replacement characters"),
        query_case("model upper case", "?model=RESNET20", 404, "unknown_model", "names are case-sensitive"),
        query_case("model empty", "?model=", 200, None, "empty means the default model"),
        query_case("unknown parameter", q + "&colour=red", 200, None, "unknown parameters are ignored"),
        query_case("2,000 unknown parameters", q + "".join(f"&p{i}=x" for i in range(2000)), 200, None, "ignored"),
        over_socket("raw utf-8 in the target", "/predict?model=\u732b", 400, None,
                    "non-ASCII bytes in the request line: the HTTP layer refuses"),
        over_socket("broken percent-escape", "/predict" + q + "&top_k=%zz", 422, bad_int, "'%zz' stays literal"),
        over_socket("absolute-form target", "http://evil.example/predict" + q, 200, None,
                    "http://host/predict: the host part is not used"),
        too_long("top_k 100 KB", q + "&top_k=" + "7" * 100_000, "a 100 KB target: refused by the HTTP layer"),
        too_long("model 100 KB", "?model=" + "m" * 100_000, "a 100 KB target: refused by the HTTP layer"),
        too_long("version 100 KB", q + "&version=" + "1" * 100_000, "a 100 KB target: refused by the HTTP layer"),
    ]
    return cases


def content_length_cases(jpeg: bytes) -> list[HostileCase]:
    """Content-Length values an HTTP client would not send, written over a raw socket."""
    body, headers = as_file(jpeg)
    content_type = f"Content-Type: {headers['content-type']}"

    def case(name: str, lengths: list[str], status: int, code: str | None, why: str,
             extra: tuple[str, ...] = ()) -> HostileCase:
        raw = socket_request("/predict" + MODEL_QUERY, body, [*(f"Content-Length: {n}" for n in lengths), content_type,
                                                               *extra])
        return HostileCase(name, status, code, why, raw, kind="socket", shape=PREDICT_SHAPE if code else HTTP_SHAPE)

    size = len(body)
    return [
        case("content-length not a number", ["abc"], 400, None, "llhttp refuses it"),
        case("content-length negative", ["-1"], 400, None, "llhttp refuses it"),
        case("content-length plus sign", [f"+{size}"], 400, None, "llhttp refuses it"),
        case("content-length arabic-indic digit", ["\u0663"], 400, None, "llhttp refuses it"),
        case("content-length 40 digits", ["9" * 40], 400, None, "overflows llhttp's 64-bit counter"),
        case("content-length 11 digits", ["99999999999"], 413, "upload_too_large", "100 GB announced: refused unread"),
        case("content-length twice, different", [str(size), str(size + 1)], 400, None, "ambiguous framing"),
        case("content-length twice, equal", [str(size), str(size)], 400, None, "llhttp refuses duplicates"),
        case("content-length with chunked", [str(size)], 400, None, "request smuggling shape: refused",
             ("Transfer-Encoding: chunked",)),
        case("content-length shorter than body", [str(size // 2)], 422, "bad_multipart", "the form is cut off"),
        case("content-length zero", ["0"], 422, "bad_multipart", "an empty multipart body"),
    ]


# --- KServe V2 REST cases ------------------------------------------------------------------------------


def framed(*elements: bytes) -> bytes:
    """BYTES elements in the binary extension's framing: a 4-byte little-endian length before each."""
    return b"".join(struct.pack("<I", len(element)) + element for element in elements)


def v2_tensor(name: str = "images", datatype: str = "UINT8", shape: object = (1, 32, 32, 3), **extra: object) -> dict:
    return {"name": name, "datatype": datatype, "shape": list(shape) if isinstance(shape, tuple) else shape, **extra}


def infer_path(model: str = V2_MODEL, version: str | None = None) -> str:
    return f"/v2/models/{model}" + (f"/versions/{version}" if version is not None else "") + "/infer"


def v2_json(name: str, status: int, words: str | None, why: str, document: object, model: str = V2_MODEL,
            **options: object) -> HostileCase:
    """A JSON inference request (``document`` as JSON, or already-encoded bytes)."""
    body = document if isinstance(document, bytes) else json.dumps(document).encode()
    return HostileCase(name, status, None, why, body, {"content-type": "application/json"}, query="",
                       path=infer_path(model), shape=V2_SHAPE, words=words, **options)  # type: ignore[arg-type]


def v2_binary(name: str, status: int, words: str | None, why: str, header: dict, tail: bytes, model: str = V2_MODEL,
              header_length: str | None = None) -> HostileCase:
    """A binary-extension request: JSON header, then raw tensor bytes; the header's length may lie."""
    encoded = json.dumps(header).encode()
    headers = {"content-type": "application/octet-stream",
               "inference-header-content-length": header_length if header_length is not None else str(len(encoded))}
    return HostileCase(name, status, None, why, encoded + tail, headers, query="", path=infer_path(model),
                       shape=V2_SHAPE, words=words)


def one_input(tensor: dict, **extra: object) -> dict:
    return {"inputs": [tensor], **extra}


def v2_cases() -> list[HostileCase]:
    """Framing lies, hostile shapes and datatypes, hostile JSON and image bombs through the V2 REST door."""
    pixels = bytes(3072)
    size = {"binary_data_size": 3072}
    ok_pixels = v2_tensor(parameters=size)

    def sized(count: int) -> dict:
        return {"binary_data_size": count}

    def encoded_tensor(shape: tuple[int, ...], count: int) -> dict:
        return v2_tensor("image_bytes", "BYTES", shape, parameters=sized(count))

    def encoded(name: str, status: int, words: str | None, why: str, data: bytes, shape: tuple[int, ...] = (1, 1)) -> HostileCase:
        return v2_binary(name, status, words, why, one_input(encoded_tensor(shape, len(data))), data, model=V2_ENCODED)

    def json_pixels(name: str, words: str, why: str, data: object, datatype: str = "UINT8",
                    shape: tuple[int, ...] = (1, 32, 32, 3)) -> HostileCase:
        """The model's own shape (checked first) with hostile values among 3,072 (a flat list is padded)."""
        if isinstance(data, list) and all(not isinstance(v, list) for v in data):
            data = data + [0] * (3072 - len(data))
        return v2_json(name, 400, words, why, one_input(v2_tensor(datatype=datatype, shape=shape, data=data)))

    def raw_json(name: str, status: int, words: str, why: str, text: bytes, model: str = V2_MODEL) -> HostileCase:
        return v2_json(name, status, words, why, text, model=model)

    zeros = [0] * 3072
    jpeg = encode(gradient(64, 64), "JPEG", quality=90)
    # The largest JSON body the door reads is MAX_UPLOAD_BYTES: [[],[],...] builds ~26 bytes of Python
    # objects per byte (charged 32x in the byte budget), about 215 MB for 8 MiB, then it is refused.
    empties = (MAX_UPLOAD_BYTES - 16) // 3
    under_limit = b"[" + b"[]," * (empties - 1) + b"[]]"
    over_limit = b"[" + b"[]," * (empties + 8) + b"[]]"
    bytes_flood = (1024 * 1024) // 4  # 262,144 empty BYTES elements in 1 MiB
    cases = [
        v2_binary("v2 valid binary pixels", 200, None, "control: the binary door works", one_input(ok_pixels), pixels),
        v2_json("v2 valid json pixels", 200, None, "control: the JSON door works",
                one_input(v2_tensor(data=zeros))),
        encoded("v2 valid encoded jpeg", 200, None, "control: the encoded companion decodes like /predict", framed(jpeg)),
        # binary_data_size lies
        v2_binary("v2 binary_data_size bigger than the data", 400, "only 3072 bytes of binary data remain", "lying size",
                  one_input(v2_tensor(parameters=sized(3073))), pixels),
        v2_binary("v2 binary_data_size smaller than the data", 400, "3071 bytes of data for shape", "lying size",
                  one_input(v2_tensor(parameters=sized(3071))), pixels),
        v2_binary("v2 binary_data_size negative", 400, "outside 0..", "a negative size",
                  one_input(v2_tensor(parameters=sized(-1))), pixels),
        v2_binary("v2 binary_data_size 10^30", 400, "outside 0..", "above int64",
                  one_input(v2_tensor(parameters=sized(10**30))), pixels),
        v2_binary("v2 binary_data_size 4,000 digits", 400, "(4000 characters)", "echo cut",
                  one_input(v2_tensor(parameters=sized(10**3999))), pixels),
        v2_binary("v2 binary_data_size float", 400, "expected an integer", "3072.0 is not an integer",
                  one_input(v2_tensor(parameters={"binary_data_size": 3072.0})), pixels),
        v2_binary("v2 binary_data_size string", 400, "expected an integer", "'3072' is not an integer",
                  one_input(v2_tensor(parameters={"binary_data_size": "3072"})), pixels),
        v2_binary("v2 binary data left over", 400, "not claimed by any input", "trailing bytes",
                  one_input(ok_pixels), pixels + b"extra"),
        # Inference-Header-Content-Length lies
        v2_binary("v2 header length past the body", 400, "the body has only", "claims 1 MB of JSON",
                  one_input(ok_pixels), pixels, header_length="1000000"),
        v2_binary("v2 header length cuts the JSON", 400, "not valid JSON", "the JSON split in two",
                  one_input(ok_pixels), pixels, header_length="10"),
        v2_binary("v2 header length zero", 400, "not valid JSON", "an empty JSON header", one_input(ok_pixels), pixels,
                  header_length="0"),
        v2_binary("v2 header length not a number", 400, "must be a decimal number", "garbage",
                  one_input(ok_pixels), pixels, header_length="abc"),
        v2_binary("v2 header length negative", 400, "must be a decimal number", "a sign",
                  one_input(ok_pixels), pixels, header_length="-5"),
        v2_binary("v2 header length 5,000 digits", 400, "must be a decimal number", "no int() on it",
                  one_input(ok_pixels), pixels, header_length="9" * 5000),
        v2_binary("v2 header length arabic-indic digit", 400, "must be a decimal number", "ASCII digits only",
                  one_input(ok_pixels), pixels, header_length="\u0663"),
        v2_binary("v2 header length over the JSON limit", 413, "the JSON header exceeds", "refused before reading",
                  one_input(ok_pixels), pixels, header_length=str(2**40)),
        # BYTES framing lies (the encoded companion)
        encoded("v2 bytes prefix past the end", 400, "claims 999 bytes", "length prefix past the data",
                struct.pack("<I", 999) + b"abc"),
        encoded("v2 bytes prefix 4 GiB", 400, "claims 4294967295 bytes", "the largest prefix",
                b"\xff\xff\xff\xff" + b"abcd"),
        encoded("v2 bytes prefix cut off", 400, "length prefix is cut off", "two bytes of a prefix", b"\x05\x00"),
        encoded("v2 bytes fewer elements than the shape", 400, "1 BYTES elements for a shape of 3",
                "shape [3, 1], one element", framed(b"abc"), shape=(3, 1)),
        encoded("v2 bytes more elements than the shape", 400, "after the last of 1 elements", "shape [1, 1], two",
                framed(b"abc", b"def")),
        encoded("v2 bytes 262,144 empty elements", 413, "images in one request", "1 MiB of zero-length prefixes",
                bytes(4 * bytes_flood), shape=(bytes_flood, 1)),
        encoded("v2 bytes shape of 8 x 2^31-1", 400, "expected [N] or [N, 1]", "a 76-digit element count",
                framed(b"abc"), shape=(2**31 - 1,) * 8),
        # shapes
        v2_binary("v2 shape negative", 400, "outside 0..2147483647", "-1 as a dimension",
                  one_input(v2_tensor(shape=(-1, 32, 32, 3), parameters=size)), pixels),
        v2_binary("v2 shape 2^63", 400, "outside 0..2147483647", "above int64",
                  one_input(v2_tensor(shape=(2**63, 32, 32, 3), parameters=size)), pixels),
        v2_binary("v2 shape 10^9 elements", 400, "expected [N, 32, 32, 3]", "refused from the shape, nothing allocated",
                  one_input(v2_tensor(shape=(10**9, 1, 1, 1), parameters=size)), pixels),
        v2_json("v2 json shape 10^9 elements", 400, "expected [N, 32, 32, 3]", "3 values for 10^9",
                one_input(v2_tensor(shape=(1000, 1000, 1000, 1), data=[1, 2, 3]))),
        v2_binary("v2 shape 8 x 2^31-1", 400, "expected [N, 32, 32, 3]", "a 76-digit element count",
                  one_input(v2_tensor(shape=(2**31 - 1,) * 8, parameters=size)), pixels),
        v2_binary("v2 shape 9 dimensions", 400, "9 dimensions", "at most 8",
                  one_input(v2_tensor(shape=(1,) * 9, parameters=sized(1))), b"\x00"),
        v2_binary("v2 shape float dimension", 400, "expected an integer", "1.0 is not an integer",
                  one_input(v2_tensor(shape=[1.0, 32, 32, 3], parameters=size)), pixels),
        v2_binary("v2 shape a string", 400, "shape must be a list", "'1,32,32,3'",
                  one_input(v2_tensor(shape="1,32,32,3", parameters=size)), pixels),
        v2_binary("v2 shape nested", 400, "expected an integer", "[[1], 32, 32, 3]",
                  one_input(v2_tensor(shape=[[1], 32, 32, 3], parameters=size)), pixels),
        raw_json("v2 shape 4,000-digit dimension", 400, "(4000 characters)", "echo cut",
                 b'{"inputs":[{"name":"images","datatype":"UINT8","shape":[' + b"9" * 4000 + b'],"data":[1]}]}'),
        v2_binary("v2 zero images", 400, "expected [N, 32, 32, 3]", "shape [0, 32, 32, 3]",
                  one_input(v2_tensor(shape=(0, 32, 32, 3), parameters=sized(0))), b""),
        # datatypes
        v2_binary("v2 wrong datatype", 400, "expects UINT8", "FP32 pixels",
                  one_input(v2_tensor(datatype="FP32", parameters=sized(4 * 3072))), bytes(4 * 3072)),
        v2_binary("v2 BF16", 400, "expects UINT8", "a protocol datatype the model does not take",
                  one_input(v2_tensor(datatype="BF16", parameters=sized(2 * 3072))), bytes(2 * 3072)),
        v2_binary("v2 unknown datatype", 400, "unknown datatype", "UINT7",
                  one_input(v2_tensor(datatype="UINT7", parameters=size)), pixels),
        v2_binary("v2 lower-case datatype", 400, "unknown datatype", "uint8: names are exact",
                  one_input(v2_tensor(datatype="uint8", parameters=size)), pixels),
        v2_binary("v2 datatype null", 400, "unknown datatype", "null",
                  one_input(v2_tensor(datatype=None, parameters=size)), pixels),  # type: ignore[arg-type]
        v2_binary("v2 encoded bytes to the pixel model", 400, "resnet20-encoded", "BYTES to resnet20",
                  one_input(v2_tensor(datatype="BYTES", shape=(1, 1), parameters=sized(len(framed(jpeg))))), framed(jpeg)),
        v2_binary("v2 pixels to the encoded model", 400, "expects BYTES", "UINT8 to resnet20-encoded",
                  one_input(v2_tensor("image_bytes", parameters=size)), pixels, model=V2_ENCODED),
        # JSON data
        json_pixels("v2 json ragged data", "rectangular", "3,071 values, then 1", [[0] * 3071, [0]]),
        json_pixels("v2 json strings as UINT8", "must be integers", "'a'", ["a", "b", "c"]),
        json_pixels("v2 json floats as UINT8", "must be integers", "no silent truncation", [1.5, 2, 3]),
        json_pixels("v2 json 256 as UINT8", "outside the range of UINT8", "no wrap-around", [1, 2, 256]),
        json_pixels("v2 json -1 as UINT8", "outside the range of UINT8", "no wrap-around", [1, 2, -1]),
        json_pixels("v2 json 2^70 as UINT8", "must be integers", "beyond int64: an object array", [1, 2, 2**70]),
        json_pixels("v2 json nulls", "must be integers", "null", [1, 2, None]),
        json_pixels("v2 json booleans as UINT8", "not true/false", "true is not 1 here", [True, False, True]),
        json_pixels("v2 json objects", "must be integers", "{}", [{}, {}, {}]),
        raw_json("v2 json NaN as FP32", 400, "expects UINT8", "NaN parses; FP32 is refused by the model",
                 b'{"inputs":[{"name":"images","datatype":"FP32","shape":[1],"data":[NaN]}]}'),
        raw_json("v2 json Infinity as UINT8", 400, "must be integers", "Infinity is a float",
                 b'{"inputs":[{"name":"images","datatype":"UINT8","shape":[1,32,32,3],"data":[Infinity' + b",0" * 3071
                 + b"]}]}"),
        raw_json("v2 json nested 100,000 levels", 400, "not valid JSON", "json.loads' recursion limit",
                 b'{"inputs":[{"name":"images","datatype":"UINT8","shape":[1],"data":'
                 + b"[" * 100_000 + b"1" + b"]" * 100_000 + b"}]}"),
        raw_json("v2 json data nested 900 levels", 400, "rectangular", "deeper than NumPy's 64 dimensions",
                 b'{"inputs":[{"name":"images","datatype":"UINT8","shape":[1,32,32,3],"data":' + b"[" * 900
                 + b"1" + b",0" * 3071 + b"]" * 900 + b"}]}"),
        raw_json("v2 json 100,000-digit integer", 400, "not valid JSON", "beyond int()'s 4,300-digit limit",
                 b'{"inputs":[{"name":"images","datatype":"UINT8","shape":[1],"data":[' + b"9" * 100_000 + b"]}]}"),
        raw_json("v2 json 4,000-digit integer", 400, "must be integers", "parses; refused as data",
                 b'{"inputs":[{"name":"images","datatype":"UINT8","shape":[1,32,32,3],"data":[' + b"9" * 4000
                 + b",0" * 3071 + b"]}]}"),
        raw_json("v2 json not an object", 400, "must be a JSON object", "null", b"null"),
        raw_json("v2 json empty body", 400, "not valid JSON", "no body", b""),
        raw_json("v2 json invalid utf-8", 400, "not valid JSON", "\\xff in a name",
                 b'{"inputs":[{"name":"\xff\xfe","datatype":"UINT8","shape":[1],"data":[1]}]}'),
        raw_json("v2 json lone surrogate", 400, "unknown input", "\\ud800 as a name: echoed escaped",
                 b'{"inputs":[{"name":"\\ud800","datatype":"UINT8","shape":[1,32,32,3],"data":'
                 + json.dumps(zeros).encode() + b"}]}"),
        v2_json("v2 json unknown field of 100,000 characters", 400, "unknown field", "echo cut",
                {"k" * 100_000: 1, "inputs": []}),
        v2_json("v2 json input name of 100,000 characters", 400, "unknown input", "echo cut",
                one_input(v2_tensor("n" * 100_000, data=zeros))),
        v2_json("v2 json output name of 100,000 characters", 400, "unknown output", "echo cut",
                one_input(v2_tensor(data=zeros), outputs=[{"name": "o" * 100_000}])),
        v2_json("v2 json classification 4,000 digits", 400, "(4000 characters)", "echo cut",
                one_input(v2_tensor(data=zeros), outputs=[{"name": "probabilities",
                                                           "parameters": {"classification": 10**3999}}])),
        v2_json("v2 json classification negative", 400, "outside 0..", "-1",
                one_input(v2_tensor(data=zeros), outputs=[{"name": "probabilities", "parameters": {"classification": -1}}])),
        v2_json("v2 json bad base64", 400, "not valid base64", "'!!!'",
                one_input(v2_tensor("image_bytes", "BYTES", (1, 1), data=["!!!"], parameters={"content_type": "base64"})),
                model=V2_ENCODED),
        raw_json("v2 json just under the body limit of [[],[],...]", 400, "must be a JSON object",
                 "8 MiB of empty lists: ~215 MB of Python objects, charged 256 MiB in the byte budget, then refused",
                 under_limit),
        raw_json("v2 json over the body limit of [[],[],...]", 413, "exceeds the limit", "refused from Content-Length",
                 over_limit),
        v2_json("v2 chunked json over the body limit", 413, "exceeds the limit", "no Content-Length: counted and charged "
                "32x while it streams", over_limit, kind="chunked"),
        HostileCase("v2 gzip content-encoding", 415, None, "compressed bodies are refused (no decompression bomb)",
                    gzip.compress(json.dumps(one_input(v2_tensor(data=zeros))).encode()),
                    {"content-type": "application/json", "content-encoding": "gzip"}, query="", path=infer_path(),
                    shape=V2_SHAPE, words="Content-Encoding"),
        HostileCase("v2 stalled upload", 408, None, f"half the body, then silence: cut off after {BODY_TIMEOUT_S:g} s",
                    json.dumps(one_input(v2_tensor(data=zeros))).encode(), {"content-type": "application/json"},
                    kind="stall", query="", path=infer_path(), shape=V2_SHAPE, words="stalled"),
        # image bombs through the encoded companion: refused from the header, as on /predict
        encoded("v2 png bomb 30000x30000", 413, "more pixels than the limit", "900 MP in ~100 KB", framed(png_bomb())),
        encoded("v2 jpeg claiming 65535x65535", 413, "more pixels than the limit", "4.3 GP in the header",
                framed(jpeg_claiming(65535, 65535))),
        encoded("v2 png zTXt metadata bomb", 413, "metadata decompresses beyond the limit", "64 MB of text in 64 KB", framed(png_with_ztxt_bomb(64 << 20))),
        v2_json("v2 json base64 jpeg claiming 65535x65535", 413, "more pixels than the limit", "the JSON form too",
                one_input(v2_tensor("image_bytes", "BYTES", (1, 1),
                                    data=[base64.b64encode(jpeg_claiming(65535, 65535)).decode()],
                                    parameters={"content_type": "base64"})), model=V2_ENCODED),
        v2_binary("v2 encoded: not an image", 415, "not an image", "text in a BYTES element",
                  one_input(encoded_tensor((1, 1), len(framed(b"hello")))), framed(b"hello"), model=V2_ENCODED),
    ]
    cases += v2_path_cases(pixels)
    return cases


def v2_path_cases(pixels: bytes) -> list[HostileCase]:
    """Hostile model names and versions in the V2 URL (path parameters)."""
    header = one_input(v2_tensor(parameters={"binary_data_size": 3072}))

    def at(name: str, status: int, words: str, why: str, model: str, version: str | None = None) -> HostileCase:
        case = v2_binary(name, status, words, why, header, pixels)
        return dataclasses.replace(case, path=infer_path(model, version))

    big_version = "9" * 100_000
    raw = socket_request(infer_path(V2_MODEL, big_version), b"{}", ["Content-Length: 2"])
    return [
        at("v2 model 60,000 characters", 404, "(60000 characters)", "echo cut to 200", "m" * 60_000),
        at("v2 model NUL", 404, "no model named", "%00", "%00"),
        at("v2 model cjk", 404, "no model named", "UTF-8 name", "%E7%8C%AB"),
        at("v2 model invalid utf-8", 404, "no model named", "replacement characters", "%FF%FE"),
        at("v2 model with an encoded slash", 404, "Not Found", "%2F decodes to a path separator: no route", "a%2Fb"),
        at("v2 model dot-dot", 404, "no model named", "looked up by name, never a path", "%2E%2E"),
        at("v2 model broken percent-escape", 404, "no model named '%zz'", "stays literal", "%zz"),
        at("v2 version zero", 400, "model version", "versions start at 1", V2_MODEL, "0"),
        at("v2 version negative", 400, "model version", "a sign", V2_MODEL, "-1"),
        at("v2 version 10^30", 400, "model version", "above int64", V2_MODEL, "1" + "0" * 30),
        at("v2 version 5,000 digits", 400, "(5000 characters)", "no int() on it", V2_MODEL, "9" * 5000),
        at("v2 version arabic-indic digit", 400, "model version", "ASCII digits only", V2_MODEL, "%D9%A3"),
        at("v2 version NUL", 400, "model version", "%00", V2_MODEL, "%00"),
        at("v2 version not loaded", 404, "no version 99", "well-formed, not served", V2_MODEL, "99"),
        at("v2 version empty", 404, "Not Found", "versions//infer: no route", V2_MODEL, ""),
        HostileCase("v2 version 100 KB", 400, None, "a 100 KB target: refused by the HTTP layer", raw, kind="socket",
                    query="", path=infer_path(V2_MODEL, "9..."), shape=HTTP_SHAPE),
    ]


# --- sending cases and watching the server (shared by the hardening tests and the soak script) -----


def copy_model(model_repo: Path, name: str, target_repo: Path, as_name: str | None = None) -> Path:
    """Copy ``<model_repo>/<name>/<highest version>`` into ``target_repo`` (a one-model repository)."""
    source_dir = model_repo / name
    version = max(int(folder.name) for folder in source_dir.iterdir() if folder.name.isdigit())
    destination = target_repo / (as_name or name) / str(version)
    destination.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source_dir / str(version) / "model.onnx", destination / "model.onnx")
    return destination / "model.onnx"


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` from /proc (Linux), without extra dependencies."""
    with open(f"/proc/{pid}/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def tree_rss_bytes(pid: int) -> int:
    """RSS of ``pid`` and its children together (a ``--workers N`` service: the parent and its workers)."""
    children = Path(f"/proc/{pid}/task/{pid}/children")
    pids = [pid, *(int(child) for child in children.read_text().split())] if children.exists() else [pid]
    total = 0
    for one in pids:
        try:
            total += rss_bytes(one)
        except OSError:  # a worker that just exited
            pass
    return total


class RssSampler(threading.Thread):
    """Samples a process's RSS (``measure``: or its tree's) every ``interval_s`` and keeps the peak."""

    def __init__(self, pid: int, interval_s: float = 0.02, measure: Callable[[int], int] = rss_bytes) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.interval_s = interval_s
        self.measure = measure
        self.peak = measure(pid)
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                self.peak = max(self.peak, self.measure(self.pid))
            except OSError:
                return
            self._stop_event.wait(self.interval_s)

    def stop(self) -> int:
        self._stop_event.set()
        self.join(timeout=5)
        return self.peak


@dataclass
class Answer:
    """What came back for one case: status, parsed JSON body (or None), seconds to answer, raw body."""

    status: int
    body: object
    seconds: float
    headers: dict[str, str] = field(default_factory=dict)
    raw: bytes = b""


def error_problem(shape: str, body: object, raw: bytes = b"", max_message: int = MAX_MESSAGE_CHARS) -> str | None:
    """Why an error answer is not in ``shape``'s layout or echoes too much; None when it is right.

    ``body`` is the parsed JSON (None when the body is not JSON), ``raw`` the bytes as received.
    """
    if shape == HTTP_SHAPE:  # the HTTP layer's own text answer, before any application code ran
        if body is not None:
            return f"expected the HTTP layer's plain-text answer, got JSON: {raw[:200]!r}"
        return None
    if not isinstance(body, dict) or set(body) != {"error"}:
        return f"error body is not {{'error': ...}}: {raw[:300]!r}"
    error = body["error"]
    if shape == V2_SHAPE:
        message = error
        if not isinstance(message, str) or not message:
            return f"V2 error is not a non-empty string: {error!r:.300}"
    else:
        if not isinstance(error, dict) or set(error) != {"code", "message"} or not error["message"]:
            return f"error object lacks code/message: {error!r:.300}"
        message = error["message"]
        if not isinstance(message, str):
            return f"message is not a string: {message!r:.300}"
    if len(message) > max_message:
        return f"message of {len(message)} characters echoes too much: {message[:200]!r}..."
    return None


def error_message(body: object) -> str:
    """The message of either error shape ('' when there is none)."""
    if not isinstance(body, dict):
        return ""
    error = body.get("error")
    if isinstance(error, dict):
        return str(error.get("message", ""))
    return error if isinstance(error, str) else ""


def send_case(base_url: str, case: HostileCase, *, timeout_s: float = 60.0) -> Answer:
    """Send one case the way its ``kind`` says and return the server's answer."""
    url = base_url + case.target
    started = time.perf_counter()
    if case.kind == "stall":
        status, body = _send_and_stall(base_url, case, timeout_s)
        return Answer(status, body, time.perf_counter() - started)
    if case.kind == "socket":
        port = int(base_url.rsplit(":", 1)[1])
        answer = asyncio.run(send_early(port, case.body, timeout_s))
        try:
            parsed: object = json.loads(answer.body)
        except ValueError:
            parsed = None
        status = answer.status if answer.error is None or answer.status else 0
        return Answer(status, parsed, answer.seconds, answer.headers, answer.body)
    if case.kind == "chunked":
        payload = case.body

        def chunks() -> Iterator[bytes]:
            for offset in range(0, len(payload), 65536):
                yield payload[offset: offset + 65536]

        content: bytes | Iterator[bytes] = chunks()
    else:
        content = case.body
    headers = {name: value.encode("utf-8") for name, value in case.headers.items()}  # UTF-8 bytes as given
    with httpx.Client(timeout=timeout_s) as client:
        request = client.build_request("POST", url, content=content, headers=headers)
        if "content-type" not in headers:
            request.headers.pop("content-type", None)
        response = client.send(request)
    try:
        body: object = response.json()
    except ValueError:
        body = None
    return Answer(response.status_code, body, time.perf_counter() - started, dict(response.headers), response.content)


def _send_and_stall(base_url: str, case: HostileCase, timeout_s: float) -> tuple[int, object]:
    """Headers plus half of the body, then nothing: read whatever the server answers."""
    host, port = base_url.removeprefix("http://").split(":")
    head = [f"POST {case.target} HTTP/1.1", f"Host: {host}:{port}", f"Content-Length: {len(case.body)}"]
    head += [f"{key}: {value}" for key, value in case.headers.items()]
    with socket.create_connection((host, int(port)), timeout=timeout_s) as connection:
        connection.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + case.body[: len(case.body) // 2])
        received = b""
        while b"\r\n\r\n" not in received or len(received) < _expected_length(received):
            chunk = connection.recv(65536)
            if not chunk:
                break
            received += chunk
    status_line, _, rest = received.partition(b"\r\n")
    status = int(status_line.split()[1]) if status_line else 0
    _, _, payload = rest.partition(b"\r\n\r\n")
    try:
        return status, json.loads(payload)
    except ValueError:
        return status, None


def _expected_length(received: bytes) -> int:
    head, _, _ = received.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(head) + 4 + int(value.strip())
    return len(received)


def raw_http_request(port: int, target: str, body: bytes, headers: dict[str, str]) -> bytes:
    """A complete ``Connection: close`` POST, built once so a load generator only writes bytes.

    httpx costs milliseconds of client CPU per request; on a shared 2-core box that backlog would be
    measured as server latency. Raw requests keep the client nearly free.
    """
    lines = [f"POST {target} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: close", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@dataclass(frozen=True)
class RawAnswer:
    """Status (0 on a transport error), lower-cased headers, body and seconds to answer."""

    status: int
    headers: dict[str, str]
    body: bytes
    seconds: float
    error: str | None = None

    def error_code(self) -> str | None:
        try:
            return str(json.loads(self.body)["error"]["code"])
        except (ValueError, KeyError, TypeError):
            return None


async def send_raw(port: int, request: bytes, timeout_s: float) -> RawAnswer:
    """Write ``request`` on a new connection and read the answer until the server closes it."""
    started = time.perf_counter()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(request)
            await writer.drain()
            raw = await asyncio.wait_for(reader.read(), timeout_s)
        finally:
            writer.close()
    except (OSError, asyncio.TimeoutError) as exc:
        return RawAnswer(0, {}, b"", time.perf_counter() - started, repr(exc))
    seconds = time.perf_counter() - started
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1]) if lines and len(lines[0].split()) > 1 else 0
    headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
    return RawAnswer(status, headers, body, seconds)


async def send_early(port: int, request: bytes, timeout_s: float) -> RawAnswer:
    """Like :func:`send_raw`, but reading while writing: an answer sent before the body ends is seen.

    The server may answer (and close) before it has read the whole request; writing first and
    reading afterwards would then lose the answer to a connection reset.
    """
    started = time.perf_counter()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError as exc:
        return RawAnswer(0, {}, b"", time.perf_counter() - started, repr(exc))

    async def write() -> None:
        try:
            for offset in range(0, len(request), 65536):
                writer.write(request[offset: offset + 65536])
                await writer.drain()
        except OSError:
            pass  # the server stopped reading: its answer is what matters

    sending = asyncio.create_task(write())
    raw = b""
    error = None
    try:
        while True:
            chunk = await asyncio.wait_for(reader.read(65536), timeout_s)
            if not chunk:
                break
            raw += chunk
    except (OSError, asyncio.TimeoutError) as exc:
        error = repr(exc)
    finally:
        await sending
        writer.close()
    seconds = time.perf_counter() - started
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1]) if lines and len(lines[0].split()) > 1 else 0
    headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
    return RawAnswer(status, headers, body, seconds, error if not status else None)


class LivenessProbe(threading.Thread):
    """Polls ``/health/live`` and keeps the slowest answer: how long the event loop was unavailable."""

    def __init__(self, base_url: str, interval_s: float = 0.01) -> None:
        super().__init__(daemon=True)
        self.url = base_url + "/health/live"
        self.interval_s = interval_s
        self.worst_s = 0.0
        self.failures: list[str] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        with httpx.Client(timeout=60.0) as client:
            while not self._stop_event.is_set():
                started = time.perf_counter()
                try:
                    if client.get(self.url).status_code != 200:
                        self.failures.append("not 200")
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))
                self.worst_s = max(self.worst_s, time.perf_counter() - started)
                self._stop_event.wait(self.interval_s)

    def stop(self) -> float:
        self._stop_event.set()
        self.join(timeout=70)
        return self.worst_s


class ValidLoad(threading.Thread):
    """Sends a valid image in a loop (one connection) and records every status until stopped."""

    def __init__(self, base_url: str, image: bytes, query: str = MODEL_QUERY) -> None:
        super().__init__(daemon=True)
        self.url = base_url + "/predict" + query
        self.image = image
        self.statuses: list[int] = []
        self.errors: list[str] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        with httpx.Client(timeout=30.0) as client:
            while not self._stop_event.is_set():
                try:
                    response = client.post(self.url, files={"file": ("valid.jpg", self.image, "image/jpeg")})
                    self.statuses.append(response.status_code)
                except httpx.HTTPError as exc:
                    self.errors.append(repr(exc))

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=60)


def describe(case: HostileCase) -> str:
    """One listing line: name, where it goes, size, how it is sent, what it gets and why."""
    target = case.target if len(case.target) <= 44 else case.target[:30] + f"...({len(case.target)} chars)"
    expected = case.code or (f"{case.shape}: {case.words!r}" if case.words else case.shape if case.status != 200 else "")
    answer = f"{case.status} {expected}" if expected else str(case.status)
    return f"{case.name:50} {target:48} {len(case.body):>9} B {case.kind:8} -> {answer}: {case.why}"


if __name__ == "__main__":
    corpus = build_corpus()
    for case in corpus:
        print(describe(case))
    by_path = {}
    for case in corpus:
        door = "/v2 REST" if case.path.startswith("/v2") else case.path
        by_path[door] = by_path.get(door, 0) + 1
    print(f"{len(corpus)} cases ({', '.join(f'{count} {door}' for door, count in by_path.items())})")
