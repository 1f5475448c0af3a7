"""Encoded image bytes -> the model's uint8 HxWx3 input, exactly as torchvision's eval transforms do it.

The reference every checkpoint was evaluated with is ``Image.open(f).convert('RGB')`` followed by
``Resize(resize_size)`` (shorter side, antialiased PIL resampling) and ``CenterCrop(crop_size)``.
We reproduce those pixel for pixel, with two differences that only add safety or speed:

* the image size is checked against ``max_pixels`` from the header, before any pixel is decoded
  (decompression bombs cost nothing), and only well-known raster formats are tried;
* for extreme aspect ratios (say 10000x10) the resize computes only the crop window (Pillow's ``box``
  argument with the same scale) instead of materialising a huge intermediate image;
* a plain JPEG (YCbCr or grey, nothing in its header that Pillow and libjpeg read differently) is
  decoded by libjpeg-turbo straight into an array (:mod:`servable.jpeg`): the same pixels, a tenth of
  the CPU for small images. Anything else, and anything libjpeg complains about, goes through Pillow,
  which decides every error.

Normalisation (mean/std) happens inside the exported graph, never here. This module is shared with
export/ (verification feeds the same pixels to PyTorch and ONNX) and so imports no web framework.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from threading import Event
from typing import IO

import numpy as np
from PIL import Image, ImageOps

from servable import jpeg
from servable.cost import check_decode_cost
from servable.errors import (
    CorruptImage,
    DecodeAbandoned,
    EmptyImage,
    ImageError,
    ImageTooLarge,
    UnsupportedImage,
)
from servable.preprocessing import Preprocessing

#: Default cap on width x height read from an image header: a 50-megapixel photo decodes to 150 MB.
DEFAULT_MAX_IMAGE_PIXELS = 50_000_000
#: Default cap on a JPEG's scans x pixels (:mod:`servable.cost`): a standard 10-scan progressive encoding
#: of the largest image allowed.
DEFAULT_MAX_SCAN_PIXELS = 10 * DEFAULT_MAX_IMAGE_PIXELS
#: Most scans a JPEG may have for the libjpeg-turbo fast path (libjpeg's standard progression has 10,
#: 6 for grey; mozjpeg's up to ~20).
FAST_JPEG_MAX_SCANS = 32

Image.init()  # Registers every format plugin so the list below sees them.

#: Raster formats tried on upload. Others (EPS runs Ghostscript, PDF, ICNS, ...) are refused unread.
ACCEPTED_FORMATS: tuple[str, ...] = tuple(
    name for name in ("JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP", "TIFF", "PPM", "AVIF") if name in Image.OPEN
)

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}

_EXIF_ORIENTATION = 0x0112
#: Resized images larger than this many crop areas are resampled through the crop window only.
_FULL_RESIZE_MAX_AREA = 16
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
Buffer = jpeg.Buffer


@dataclass(frozen=True, slots=True)
class OpenedImage:
    """An upload whose header has been read and checked: its size, and what decodes its pixels.

    ``image`` is Pillow's (lazily decoding) image, or None for a plain JPEG that libjpeg-turbo
    decodes straight into an array (:mod:`servable.jpeg`); ``max_pixels`` is the limit it was checked
    against, which Pillow applies again if it has to take the file over.
    """

    width: int
    height: int
    image: Image.Image | None
    data: Buffer
    max_pixels: int | None
    abandoned: Event | None = None


def preprocess_image(
    data: Buffer,
    p: Preprocessing,
    *,
    max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
    jpeg_draft: bool = False,
    hold: Callable[[int], AbstractContextManager[object]] | None = None,
    fast_jpeg: bool = True,
    max_scan_pixels: int | None = DEFAULT_MAX_SCAN_PIXELS,
    abandoned: Event | None = None,
) -> np.ndarray:
    """Decode ``data`` and return the centre crop as a C-contiguous uint8 array (crop, crop, 3).

    Raises an :class:`~servable.errors.ImageError` (too many pixels, not an image we read, empty,
    truncated or corrupt) and nothing else for bad input.
    ``jpeg_draft`` lets libjpeg decode JPEGs at 1/2..1/8 scale when that still leaves at least
    twice the resize target: much faster on big photos, but no longer bit-exact with torchvision.
    ``hold(pixels)`` is entered with the header's pixel count around the decode (the service's
    budget of decoded pixels in flight across threads). ``fast_jpeg`` False decodes every JPEG
    with Pillow (the same pixels, slower). ``max_scan_pixels`` bounds a JPEG's decode work
    (:mod:`servable.cost`). Once ``abandoned`` is set, Pillow's next read of the file raises
    :class:`~servable.errors.DecodeAbandoned`: a caller that gave up gets its thread back within one
    64 KiB block of decoding.
    """
    opened = open_image(
        data, max_pixels=max_pixels, fast_jpeg=fast_jpeg and not jpeg_draft, max_scan_pixels=max_scan_pixels,
        abandoned=abandoned,
    )
    return decode_opened(opened, p, jpeg_draft=jpeg_draft, hold=hold)


def decode_opened(
    opened: OpenedImage,
    p: Preprocessing,
    *,
    jpeg_draft: bool = False,
    hold: Callable[[int], AbstractContextManager[object]] | None = None,
) -> np.ndarray:
    """The second half of :func:`preprocess_image`: decode an image :func:`open_image` has checked."""
    with hold(opened.width * opened.height) if hold is not None else nullcontext():
        image = opened.image
        if image is None:
            if not jpeg_draft:
                pixels = jpeg.decode(opened.data)
                if pixels is not None:
                    return _crop_decoded(pixels, p)
            image = _open_checked(opened.data, opened.max_pixels, opened.abandoned)  # Pillow decides what libjpeg refused
        with _pillow_errors():
            if jpeg_draft and image.format in ("JPEG", "MPO"):
                _request_draft(image, p.resize_size)
            image = apply_exif_orientation(image)
            image = to_rgb(image)
            return resize_and_crop(image, p)


@contextmanager
def _pillow_errors() -> Iterator[None]:
    """Whatever Pillow raises while decoding or resizing becomes the ImageError that says why."""
    try:
        yield
    except (ImageError, DecodeAbandoned):
        raise
    except Image.DecompressionBombError:
        raise ImageTooLarge("image decompresses beyond the pixel limit") from None
    except ValueError as exc:
        if _is_metadata_bomb(exc):
            raise ImageTooLarge("image metadata decompresses beyond the limit") from None
        raise _corrupt(exc) from None
    except Exception as exc:  # Pillow raises OSError, SyntaxError, EOFError, struct.error, ... on bad data.
        raise _corrupt(exc) from None


def open_image(
    data: Buffer, *, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS, fast_jpeg: bool = True,
    max_scan_pixels: int | None = DEFAULT_MAX_SCAN_PIXELS, abandoned: Event | None = None,
) -> OpenedImage:
    """Identify the format and read the header only; refuse images larger than ``max_pixels`` and
    files whose decode work is out of bounds (:func:`servable.cost.check_decode_cost`, before any
    header walk of Pillow's or ours)."""
    if not data:
        raise EmptyImage("the image is empty (0 bytes)")
    scans = check_decode_cost(data, max_scan_pixels, max_pixels)
    # libjpeg-turbo in one call cannot be abandoned, and its strict mode reports a bogus progression only
    # after decoding all of it: JPEGs with more scans than real encoders write go to Pillow's
    # interruptible reads.
    size = jpeg.plain_jpeg_size(data) if fast_jpeg and scans <= FAST_JPEG_MAX_SCANS else None
    if size is not None:
        _check_size(*size, max_pixels)
        return OpenedImage(size[0], size[1], None, data, max_pixels, abandoned)
    image = _open_checked(data, max_pixels, abandoned)
    return OpenedImage(image.width, image.height, image, data, max_pixels, abandoned)


def _open_checked(data: Buffer, max_pixels: int | None, abandoned: Event | None = None) -> Image.Image:
    image = _open_with_pillow(data, max_pixels, abandoned)
    _check_size(image.width, image.height, max_pixels)
    return image


def _check_size(width: int, height: int, max_pixels: int | None) -> None:
    if width < 1 or height < 1:
        raise CorruptImage(f"image header gives an empty size {width}x{height}")
    if max_pixels is not None and width * height > max_pixels:
        raise ImageTooLarge(f"image is {width}x{height} = {width * height} pixels, more than the limit of {max_pixels}")


def _open_with_pillow(data: Buffer, max_pixels: int | None, abandoned: Event | None = None) -> Image.Image:
    try:
        image = Image.open(_readable(data, abandoned), formats=ACCEPTED_FORMATS)
    except DecodeAbandoned:
        raise
    except Image.DecompressionBombError:
        limit = max_pixels if max_pixels is not None else Image.MAX_IMAGE_PIXELS
        raise ImageTooLarge(f"image has more pixels than the limit of {limit}") from None
    except Image.UnidentifiedImageError:
        raise UnsupportedImage(f"not an image in a supported format ({', '.join(ACCEPTED_FORMATS)})") from None
    except ValueError as exc:
        if _is_metadata_bomb(exc):  # e.g. a PNG zTXt/iTXt chunk inflating past MAX_TEXT_CHUNK, before any pixel
            raise ImageTooLarge("image metadata decompresses beyond the limit") from None
        raise _corrupt(exc) from None
    except Exception as exc:
        raise _corrupt(exc) from None
    return image


def _crop_decoded(pixels: np.ndarray, p: Preprocessing) -> np.ndarray:
    """:func:`resize_and_crop` for pixels libjpeg-turbo decoded: a slice when no resize is due, else
    through Pillow's resize, as on Pillow's own decode."""
    height, width = pixels.shape[:2]
    if resized_size(width, height, p.resize_size) != (width, height):
        with _pillow_errors():
            image = Image.fromarray(pixels)
            del pixels  # only Pillow's copy lives on through the resize (the pixel budget counts 8 bytes a pixel)
            return resize_and_crop(image, p)
    crop = p.crop_size
    top, left = _centre_offsets(width, height, crop)
    return _checked_crop(pixels[top : top + crop, left : left + crop], crop)


class _ViewReader(io.RawIOBase):
    """A read-only seekable file over a buffer, without copying it (io.BytesIO copies a bytearray);
    every read raises :class:`DecodeAbandoned` once ``abandoned`` is set."""

    def __init__(self, data: Buffer, abandoned: Event | None = None) -> None:
        super().__init__()
        self._view = memoryview(data).cast("B")
        self._position = 0
        self._abandoned = abandoned

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, target: bytearray | memoryview) -> int:  # type: ignore[override]
        if self._abandoned is not None and self._abandoned.is_set():
            raise DecodeAbandoned("the decode was abandoned")
        end = min(len(self._view), self._position + len(target))
        count = end - self._position
        memoryview(target).cast("B")[:count] = self._view[self._position : end]
        self._position = end
        return count

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: len(self._view)}[whence]
        self._position = max(0, base + offset)
        return self._position

    def tell(self) -> int:
        return self._position


def _readable(data: Buffer, abandoned: Event | None = None) -> IO[bytes]:
    """A file object over ``data``; ``bytes`` are shared by BytesIO itself, other buffers (and any
    decode that may be abandoned) by a view."""
    if isinstance(data, bytes) and abandoned is None:
        return io.BytesIO(data)
    return io.BufferedReader(_ViewReader(data, abandoned))  # type: ignore[return-value]


def apply_exif_orientation(image: Image.Image) -> Image.Image:
    """Rotate/flip as the EXIF orientation tag says (phones store pixels sideways)."""
    if image.format in ("JPEG", "MPO") and "exif" not in image.info:
        return image  # a JPEG's EXIF is its APP1 segment, read with the header: none, nothing to parse (~50 us)
    try:
        orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # A broken EXIF block is not worth refusing the pixels for.
        return image
    if orientation in (2, 3, 4, 5, 6, 7, 8):
        return ImageOps.exif_transpose(image)
    return image


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB as ``Image.convert('RGB')`` would, but scaling high-bit-depth greys.

    Pillow clamps 16-bit and float greys to 0..255 instead of scaling them (a 16-bit scan turns
    white), so those modes are rescaled to 8 bits first. Alpha is dropped, like torchvision's loader.
    """
    mode = image.mode
    if mode == "RGB":
        return image
    image.load()  # a file that fails to decode (a truncated RLE BMP) is corrupt, not a mode without RGB
    if mode in _SIXTEEN_BIT_MODES or mode in ("I", "F"):
        return Image.fromarray(_grey_to_uint8(np.asarray(image), mode)).convert("RGB")
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # Palette transparency must go through RGBA (Pillow warns otherwise).
    try:
        return image.convert("RGB")
    except ValueError:
        try:
            return image.convert("RGBA").convert("RGB")
        except ValueError:
            raise UnsupportedImage(f"cannot convert image mode {mode!r} to RGB") from None


def _grey_to_uint8(pixels: np.ndarray, mode: str) -> np.ndarray:
    if mode in _SIXTEEN_BIT_MODES:
        return (pixels.astype(np.uint16) >> 8).astype(np.uint8)
    if mode == "I":
        peak = int(pixels.max()) if pixels.size else 0
        if peak <= 255:
            return np.clip(pixels, 0, 255).astype(np.uint8)
        return (np.clip(pixels, 0, 65535) // 257).astype(np.uint8)  # I is how Pillow often holds 16-bit data.
    finite = np.nan_to_num(pixels.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    brightest = float(finite.max()) if finite.size else 0.0
    scale = 255.0 if brightest <= 1.0 else 1.0
    return np.clip(np.rint(finite * scale), 0, 255).astype(np.uint8)


def resized_size(width: int, height: int, resize_size: int) -> tuple[int, int]:
    """torchvision ``Resize(int)``: the shorter side becomes ``resize_size``, the longer is truncated."""
    if width <= height:
        return resize_size, int(resize_size * height / width)
    return int(resize_size * width / height), resize_size


def resize_and_crop(image: Image.Image, p: Preprocessing) -> np.ndarray:
    """Resize the shorter side then centre-crop.

    Ordinary aspect ratios resize the whole image (bit-exact with torchvision). Beyond
    ``_FULL_RESIZE_MAX_AREA`` crops of resized area (aspect ratio above ~16:1), only the crop window
    is resampled: Pillow's ``box`` keeps the same filter but rounds a few pixels differently
    (measured: <= 0.4% of pixels off by one grey level), and memory stays bounded.
    """
    width, height = image.size
    new_width, new_height = resized_size(width, height, p.resize_size)
    crop = p.crop_size
    top, left = _centre_offsets(new_width, new_height, crop)
    if (new_width, new_height) == (width, height):
        window = image.crop((left, top, left + crop, top + crop))
    elif new_width * new_height <= _FULL_RESIZE_MAX_AREA * crop * crop:
        resized = image.resize((new_width, new_height), _RESAMPLE[p.interpolation])
        window = resized.crop((left, top, left + crop, top + crop))
    else:
        scale_x = width / new_width
        scale_y = height / new_height
        box = (left * scale_x, top * scale_y, (left + crop) * scale_x, (top + crop) * scale_y)
        window = image.resize((crop, crop), _RESAMPLE[p.interpolation], box=box)
    return _checked_crop(np.asarray(window, dtype=np.uint8), crop)


def _centre_offsets(width: int, height: int, crop: int) -> tuple[int, int]:
    """(top, left) of torchvision's centre crop."""
    return round((height - crop) / 2.0), round((width - crop) / 2.0)


def _checked_crop(pixels: np.ndarray, crop: int) -> np.ndarray:
    """The crop as a C-contiguous (crop, crop, 3) array; anything else is a corrupt image, never a 500."""
    if pixels.shape != (crop, crop, 3):
        raise CorruptImage(f"decoded to an unexpected shape {pixels.shape}")
    return np.ascontiguousarray(pixels)


def _request_draft(image: Image.Image, resize_size: int) -> None:
    """Let libjpeg scale by 1/2..1/8 while keeping at least twice the pixels the resize needs."""
    width, height = image.size
    factor = 2.0 * resize_size / min(width, height)
    if factor < 1.0:
        image.draft("RGB", (math.ceil(width * factor), math.ceil(height * factor)))


def _is_metadata_bomb(exc: ValueError) -> bool:
    """Pillow's words for a compressed metadata chunk that inflates past its safety limit."""
    return "decompressed data too large" in str(exc).lower()


def _corrupt(exc: BaseException) -> CorruptImage:
    reason = str(exc).strip() or type(exc).__name__
    return CorruptImage(f"cannot decode the image: {reason[:200]}")
