"""Small files that make a decoder work far beyond their pixel count (issue 27), built in memory.

Each is a few kilobytes to a few megabytes; :mod:`servable.cost` refuses them before any decoder
walks them (422 ``image_too_costly``).
"""

from __future__ import annotations

import functools
import io
import struct
import zlib

import numpy as np
from PIL import Image


@functools.cache
def progressive_scan_bomb(width: int, height: int, scans: int) -> bytes:
    """A grey progressive JPEG of ``width`` x ``height`` whose one AC scan is repeated ``scans`` times.

    Each copy is a full libjpeg pass over the coefficient buffer (an end-of-band run covering the whole
    image costs a few bytes), so the file stays small while the decode cost is ``scans`` x pixels.
    """
    buffer = io.BytesIO()
    Image.new("L", (width, height), 128).save(buffer, "JPEG", progressive=True, quality=50)
    data = buffer.getvalue()
    scans_found = _scan_segments(data)
    # Pick the last AC scan (Ss > 0) of the file: it codes nothing but end-of-band runs for a flat image.
    start, end = next((s, e) for s, e in reversed(scans_found) if data[s + 5 + 2 * data[s + 4]] > 0)
    scan = data[start:end]
    return data[:end] + scan * scans + data[end:]


def _scan_segments(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of every SOS segment with its entropy-coded data."""
    found = []
    position = 2
    while position + 4 <= len(data):
        marker = data[position + 1]
        if marker == 0xD9:
            break
        length = struct.unpack(">H", data[position + 2:position + 4])[0]
        if marker != 0xDA:
            position += 2 + length
            continue
        cursor = position + 2 + length
        while True:
            cursor = data.index(b"\xff", cursor)
            following = data[cursor + 1]
            if following == 0 or 0xD0 <= following <= 0xD7:
                cursor += 2
                continue
            break
        found.append((position, cursor))
        position = cursor
    return found


@functools.cache
def png_chunk_flood(chunks: int, width: int = 64, height: int = 64) -> bytes:
    """A small valid PNG with ``chunks`` empty ancillary chunks before its IDAT (Pillow walks each in Python)."""
    pixels = np.full((height, width * 3 + 1), 7, np.uint8)
    pixels[:, 0] = 0
    header = png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    empty = png_chunk(b"zzZz", b"")
    return (b"\x89PNG\r\n\x1a\n" + header + empty * chunks
            + png_chunk(b"IDAT", zlib.compress(pixels.tobytes())) + png_chunk(b"IEND", b""))





def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def jpeg_segment_flood(segments: int) -> bytes:
    """A 32x32 JPEG whose header holds ``segments`` empty COM segments (4 bytes each)."""
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (90, 120, 150)).save(buffer, "JPEG")
    data = buffer.getvalue()
    return data[:2] + b"\xff\xfe\x00\x02" * segments + data[2:]


def truncated_rle_bmp() -> bytes:
    """A 16x16 8-bit RLE BMP whose data stops after one run (Pillow: "not enough image data")."""
    palette = b"".join(bytes((i, i, i, 0)) for i in range(256))
    data = b"\x04\x01"
    info = struct.pack("<IiiHHIIiiII", 40, 16, 16, 1, 8, 1, len(data), 2835, 2835, 256, 0)
    offset = 14 + 40 + len(palette)
    return b"BM" + struct.pack("<IHHI", offset + len(data), 0, 0, offset) + info + palette + data
