"""Images for hostile requests, built in memory with Pillow (bombs and malformed files with zlib/struct):
each is a few kilobytes to a few megabytes however many pixels it claims."""

from __future__ import annotations

import functools
import io
import struct
import zlib

import numpy as np
from PIL import Image, ImageCms


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
