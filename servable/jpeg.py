"""Plain JPEGs straight from libjpeg-turbo into an array, for exactly the files where that equals Pillow.

Pillow decodes a JPEG with libjpeg-turbo too, but reads its header in Python first and feeds the
decoder through its own load loop: 142 us to preprocess a 32x32 CIFAR JPEG, of which decoding is ~10.
simplejpeg calls libjpeg-turbo on the bytes in one go with the settings Pillow uses (islow IDCT, fancy
upsampling), so the pixels are the same; what differs is what each accepts. Pillow's header parser is
stricter than libjpeg (a short JFIF or Adobe segment, a partial quantization table: Pillow refuses,
libjpeg reads on), and Pillow acts on segments libjpeg ignores (an EXIF orientation). So a file takes
this path only when its header is made of segments both read alike, and the decode is strict: any
libjpeg warning (a truncated or corrupt scan, which it would fill with grey) sends the file back to
Pillow, which then decides the answer, error or not. Measured on this 2-core EPYC, one thread, the
whole preprocessing of a 32x32 CIFAR JPEG: 29 us (header check 7, decode 11) instead of 142 us
(resnet20 ``/predict`` +16 % req/s at 32 clients); decoding a 500x375 photo: 0.96 instead of 1.35 ms.

The two libraries are separate builds of libjpeg-turbo (Pillow 13 and simplejpeg 1.9 bundle 3.2 and
3.1): :func:`agrees_with_pillow` decodes a few probe JPEGs both ways once per process and turns the
path off, with a warning, if any pixel differs.
"""

from __future__ import annotations

import functools
import io
import logging
from typing import Any

import numpy as np
from PIL import Image

try:
    import simplejpeg
except ImportError:  # pragma: no cover - a dependency; without it Pillow decodes every JPEG, only slower
    simplejpeg = None

log = logging.getLogger(__name__)

Buffer = bytes | bytearray | memoryview

_SOI = b"\xff\xd8\xff"
#: Application segments taken, by marker: (what the payload starts with, its shortest length). Pillow
#: parses these at open and fails on shorter ones (JFIF's version and density, the ICC chunk's sequence
#: number and count, Adobe's version and transform); EXIF (an orientation to apply), MPF, Photoshop's
#: resource blocks and everything else go to Pillow.
_APPLICATION_SEGMENTS = {
    0xE0: (b"JFIF\x00", 14),
    0xE1: (b"http://ns.adobe.com/xap/1.0/\x00", 29),
    0xE2: (b"ICC_PROFILE\x00", 14),
    0xEE: (b"Adobe", 12),
}
#: Baseline, extended sequential and progressive Huffman frames (arithmetic coding and lossless go to Pillow).
_PLAIN_FRAMES = frozenset({0xC0, 0xC1, 0xC2})
#: Segments Pillow skips or stores and libjpeg reads alike: DHT, DRI, COM.
_PASSIVE = frozenset({0xC4, 0xDD, 0xFE})
_SOS, _DQT = 0xDA, 0xDB
#: libjpeg's colour spaces that become RGB as Pillow's ``convert('RGB')`` makes them.
_PLAIN_COLORSPACES = frozenset({"YCbCr", "Gray"})


def plain_jpeg_size(data: Buffer) -> tuple[int, int] | None:
    """(width, height) of a JPEG this module decodes exactly as Pillow would, or None: Pillow's turn.

    Plain: a header of SOI, then only JFIF, XMP, ICC and Adobe segments, DQT, DHT, DRI, COM and one
    8-bit baseline, extended or progressive frame of 1 or 3 components, up to the first scan, which
    libjpeg reads as YCbCr or grey; and no larger than Pillow's own decompression-bomb limit.
    """
    if simplejpeg is None or bytes(data[:3]) != _SOI or not plain_segments(data):
        return None
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except Exception:
        return None
    if colorspace not in _PLAIN_COLORSPACES:
        return None
    bomb = Image.MAX_IMAGE_PIXELS
    if bomb is not None and width * height > 2 * bomb:
        return None  # Pillow refuses it as a decompression bomb: let it say so
    # Cached after the first call (the service makes that call at start-up, ServiceState.fast_jpeg); kept
    # here so that export/ and the benchmarks, which call preprocess_image directly, are covered too.
    return (width, height) if agrees_with_pillow() else None


def plain_segments(data: Buffer) -> bool:
    """Whether every header segment before the first scan is one Pillow and libjpeg read alike.

    Total on any bytes: a marker out of place, a standalone marker (RSTn, TEM), a length that runs
    past the end, an unknown or unlisted segment, or a header without exactly one frame is False.
    """
    view = memoryview(data).cast("B")
    size = len(view)
    position = 2
    frames = 0
    while position + 4 <= size:
        if view[position] != 0xFF:
            return False
        marker = view[position + 1]
        length = (view[position + 2] << 8) | view[position + 3]
        end = position + 2 + length
        if length < 2 or end > size:
            return False
        payload = view[position + 4 : end]
        if marker == _SOS:
            return frames == 1
        if marker in _APPLICATION_SEGMENTS:
            signature, shortest = _APPLICATION_SEGMENTS[marker]
            if len(payload) < shortest or bytes(payload[: len(signature)]) != signature:
                return False
        elif marker == _DQT:
            if not _whole_quantization_tables(payload):
                return False
        elif marker in _PLAIN_FRAMES:
            frames += 1
            if not _plain_frame(payload):
                return False
        elif marker not in _PASSIVE:
            return False
        position = end
    return False


def _whole_quantization_tables(payload: memoryview) -> bool:
    """One or more complete tables (8- or 16-bit, destinations 0-3): Pillow refuses a partial one."""
    position = 0
    while position < len(payload):
        precision, destination = payload[position] >> 4, payload[position] & 15
        if precision > 1 or destination > 3:
            return False
        position += 1 + 64 * (precision + 1)
    return position == len(payload) > 0


def _plain_frame(payload: memoryview) -> bool:
    """8 bits a sample, a non-empty size, 1 or 3 components, and a length that says exactly that."""
    if len(payload) < 6:
        return False
    height, width, components = (payload[1] << 8) | payload[2], (payload[3] << 8) | payload[4], payload[5]
    return payload[0] == 8 and height > 0 and width > 0 and components in (1, 3) and len(payload) == 6 + 3 * components


def decode(data: Buffer) -> np.ndarray | None:
    """libjpeg-turbo's RGB pixels (islow IDCT, fancy upsampling, as Pillow); None on any complaint.

    ``strict`` turns libjpeg's warnings into errors, so nothing libjpeg had to guess at comes back.
    """
    try:
        pixels: np.ndarray = simplejpeg.decode_jpeg(
            data, colorspace="RGB", fastdct=False, fastupsample=False, strict=True
        )
    except Exception:
        return None
    return pixels


def _probe_jpegs() -> list[bytes]:
    """Small JPEGs in the encodings the fast path takes: chroma 4:2:0, 4:2:2 and 4:4:4, progressive, grey."""
    ys, xs = np.mgrid[0:37, 0:53]
    noise = np.random.default_rng(7).integers(0, 64, (37, 53, 3))
    pixels = np.stack([xs * 4, ys * 6, (xs * ys) % 256], axis=-1) + noise
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    settings: list[tuple[Image.Image, dict[str, Any]]] = [
        (image, {"subsampling": 2, "quality": 90}),
        (image, {"subsampling": 1, "quality": 75, "progressive": True}),
        (image, {"subsampling": 0, "quality": 95, "optimize": True}),
        (image.convert("L"), {"quality": 85}),
    ]
    probes = []
    for picture, options in settings:
        buffer = io.BytesIO()
        picture.save(buffer, "JPEG", **options)
        probes.append(buffer.getvalue())
    return probes


@functools.cache
def agrees_with_pillow() -> bool:
    """Once per process: the probe JPEGs decode to Pillow's pixels (else the fast path stays off)."""
    if simplejpeg is None:
        return False
    try:
        for probe in _probe_jpegs():
            ours = decode(probe)
            with Image.open(io.BytesIO(probe)) as opened:
                theirs = np.asarray(opened.convert("RGB"))
            if ours is None or not np.array_equal(ours, theirs):
                log.warning(
                    "simplejpeg %s and Pillow %s decode a probe JPEG differently: every JPEG goes through Pillow",
                    getattr(simplejpeg, "__version__", "?"), Image.__version__,
                )
                return False
    except Exception as exc:  # pragma: no cover - a broken install: Pillow alone still serves
        log.warning("the JPEG fast path's self-check failed (%s): every JPEG goes through Pillow", exc)
        return False
    return True
