"""Why an upload is not a usable image: one exception per reason, each with a stable code.

The pixel kernel is shared by export/ (calibration and verification images) and service/ (uploads),
so it cannot raise an HTTP error: the service maps each :attr:`ImageError.code` to its status
(``service.pipeline.decode``), the exporter to a message naming the file.
"""

from __future__ import annotations

from typing import ClassVar


class ImageError(ValueError):
    """Bytes that do not decode to a usable image; the message says why, for the client to read."""

    code: ClassVar[str] = "corrupt_image"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class EmptyImage(ImageError):
    """Zero bytes."""

    code = "empty_image"


class CorruptImage(ImageError):
    """A known format whose header or data is broken, truncated or inconsistent."""

    code = "corrupt_image"


class UnsupportedImage(ImageError):
    """Not one of the raster formats the kernel reads, or a mode that has no RGB form."""

    code = "unsupported_image"


class ImageTooLarge(ImageError):
    """More pixels (or inflated metadata) than the limit, known from the header before decoding."""

    code = "image_too_large"


class ImageTooCostly(ImageError):
    """Few pixels but far more decoding work (scans, segments, chunks) than any real image needs."""

    code = "image_too_costly"


class DecodeAbandoned(Exception):
    """Raised inside a decode whose caller gave up on it (deadline, shutdown): not the client's error."""
