"""Hostile /predict requests, generated in memory (nothing binary is committed).

Each :class:`HostileCase` is one HTTP request (body, headers, how it is sent) with the status and
error code the service documents for it. Valid-but-unusual images (16-bit, CMYK, 300-frame GIF, ...)
are expected to succeed with 200; everything else gets a 4xx JSON error and never a 500.

Run ``python tests/hostile_corpus.py`` to list the cases with their sizes and expectations.
Images are built with Pillow, bombs and malformed files with zlib/struct, so each case is a few
kilobytes to a few megabytes however many pixels it claims.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import socket
import struct
import threading
import time
import zlib
from collections.abc import Iterator
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
BOUNDARY = "hostile-boundary-7f3a"


@dataclass(frozen=True)
class HostileCase:
    """One request and the answer the service documents for it.

    ``kind`` says how to send it: ``"raw"`` (body as given), ``"chunked"`` (no Content-Length,
    streamed in 64 KiB chunks) or ``"stall"`` (headers and part of the body, then silence).
    """

    name: str
    status: int
    code: str | None  # the error code; None for a 200
    why: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    kind: str = "raw"
    query: str = MODEL_QUERY


# --- building blocks -------------------------------------------------------------------------------


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


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
        out += f'Content-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'.encode("utf-8")
        out += f"Content-Type: {content_type}\r\n\r\n".encode()
        out += data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out)


def as_file(data: bytes, filename: str = "upload.bin") -> tuple[bytes, dict[str, str]]:
    """``data`` as the single ``file`` field of a multipart body."""
    return multipart([("file", filename, data)]), {"content-type": f"multipart/form-data; boundary={BOUNDARY}"}


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)


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
    names = [case.name for case in cases]
    assert len(names) == len(set(names)), "case names must be unique"
    return cases



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


class RssSampler(threading.Thread):
    """Samples a process's RSS every ``interval_s`` and keeps the peak."""

    def __init__(self, pid: int, interval_s: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.interval_s = interval_s
        self.peak = rss_bytes(pid)
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                self.peak = max(self.peak, rss_bytes(self.pid))
            except OSError:
                return
            self._stop_event.wait(self.interval_s)

    def stop(self) -> int:
        self._stop_event.set()
        self.join(timeout=5)
        return self.peak


@dataclass
class Answer:
    """What came back for one case: status, parsed JSON body (or None) and seconds to answer."""

    status: int
    body: object
    seconds: float
    headers: dict[str, str] = field(default_factory=dict)


def send_case(base_url: str, case: HostileCase, *, timeout_s: float = 60.0) -> Answer:
    """Send one case the way its ``kind`` says and return the server's answer."""
    url = base_url + "/predict" + case.query
    started = time.perf_counter()
    if case.kind == "stall":
        status, body = _send_and_stall(base_url, case, timeout_s)
        return Answer(status, body, time.perf_counter() - started)
    if case.kind == "chunked":
        payload = case.body

        def chunks() -> Iterator[bytes]:
            for offset in range(0, len(payload), 65536):
                yield payload[offset: offset + 65536]

        content: bytes | Iterator[bytes] = chunks()
    else:
        content = case.body
    headers = dict(case.headers)
    with httpx.Client(timeout=timeout_s) as client:
        request = client.build_request("POST", url, content=content, headers=headers)
        if "content-type" not in headers:
            request.headers.pop("content-type", None)
        response = client.send(request)
    try:
        body: object = response.json()
    except ValueError:
        body = None
    return Answer(response.status_code, body, time.perf_counter() - started, dict(response.headers))


def _send_and_stall(base_url: str, case: HostileCase, timeout_s: float) -> tuple[int, object]:
    """Headers plus half of the body, then nothing: read whatever the server answers."""
    host, port = base_url.removeprefix("http://").split(":")
    head = [f"POST /predict{case.query} HTTP/1.1", f"Host: {host}:{port}", f"Content-Length: {len(case.body)}"]
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


if __name__ == "__main__":
    for case in build_corpus():
        print(f"{case.name:34} {len(case.body):>10} B  {case.kind:8} -> {case.status} {case.code or ''}: {case.why}")
    print(f"{len(build_corpus())} cases")
