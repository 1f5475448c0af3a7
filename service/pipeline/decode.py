"""Encoded uploads -> model inputs on the decode pool, and the status each image refusal answers.

The pixel kernel (:mod:`servable.images`) raises an :class:`~servable.errors.ImageError` per reason;
here it becomes the client's :class:`~service.errors.ServiceError`, with the file it was about.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import Executor
from contextlib import AbstractContextManager
from dataclasses import dataclass

import numpy as np

from servable.errors import DecodeAbandoned, ImageError
from servable.images import OpenedImage, decode_opened, open_image, preprocess_image
from servable.preprocessing import Preprocessing
from service.errors import ServiceError
from service.parsing import shown
from service.pipeline.call import EncodedImages

#: Largest image (pixels, from its header) a single-image request decodes on the event loop ...
INLINE_DECODE_PIXELS = 64 * 64
#: ... and the largest file whose header it reads there: any walk over a file's structure (JPEG
#: segments, PNG chunks) is then bounded by its size. A 20 MiB PNG of 1.75 M empty chunks, opened on
#: the loop, kept /health/live waiting 4.2 s; a CIFAR JPEG is ~1 KB.
INLINE_DECODE_BYTES = 16 * 1024

#: The status each image refusal answers: too many pixels is the request's size, a format we do not
#: read is the media type, everything else (corrupt, or too costly to decode) is content the client must fix.
IMAGE_STATUS = {"image_too_large": 413, "unsupported_image": 415}

Hold = Callable[[int], AbstractContextManager[object]]


def image_refusal(error: ImageError, name: str | None = None) -> ServiceError:
    """The client's error for an image the kernel refused (``name``: the file it is about)."""
    message = error.message if name is None else f"file {shown(name)}: {error.message}"
    return ServiceError(IMAGE_STATUS.get(error.code, 422), error.code, message)


@dataclass(frozen=True, slots=True)
class Decoder:
    """How this process decodes: the pool, the limits, and the JPEG path chosen at start-up."""

    pool: Executor
    threads: int
    max_pixels: int
    hold: Hold
    jpeg_draft: bool
    fast_jpeg: bool
    max_scan_pixels: int | None = None

    async def decode(self, images: EncodedImages, preprocessing: Preprocessing) -> list[np.ndarray]:
        """Preprocess on the decode pool, one task per chunk of the request; a lone tiny image inline.

        The request's lifecycle cancels this at its deadline. A decode the caller stops waiting for (deadline, cancellation, a sibling image's error) is abandoned: its pool threads
        skip the images not begun, and Pillow's next read of the one in hand raises, so a thread is
        back within one 64 KiB block of decoding (libjpeg-turbo's one-call fast path runs to its end:
        its work is bounded by :mod:`servable.cost`).
        """
        if len(images) == 1 and len(images.blobs[0]) <= INLINE_DECODE_BYTES:
            return await self._decode_small(images, preprocessing)
        abandoned = threading.Event()
        try:
            return await self._decode_on_pool(images, preprocessing, abandoned)
        finally:
            abandoned.set()  # after an answer nothing is left running; otherwise this stops the threads

    async def _decode_small(self, images: EncodedImages, preprocessing: Preprocessing) -> list[np.ndarray]:
        """Handing a 32x32 JPEG to a pool thread and back cost more CPU than decoding it (the hand-off
        plus GIL ping-pong between the loop, the pool and the inference thread: ~150 us of ~200), so a
        single file of at most :data:`INLINE_DECODE_BYTES` whose header says at most
        :data:`INLINE_DECODE_PIXELS` is decoded on the event loop (+3-12 % requests/s for CIFAR uploads
        at 32 clients). Everything larger, and every multi-image request, goes to the pool.
        """
        name = images.names[0]
        try:
            # The header only: ~7 us for a plain JPEG (segment walk and libjpeg's header), ~30 us through Pillow.
            opened = open_image(
                images.blobs[0], max_pixels=self.max_pixels, fast_jpeg=self.fast_jpeg,
                max_scan_pixels=self.max_scan_pixels,
            )
            if opened.width * opened.height <= INLINE_DECODE_PIXELS:
                return [decode_opened(opened, preprocessing, jpeg_draft=self.jpeg_draft)]
        except ImageError as error:
            raise image_refusal(error, name) from None
        loop = asyncio.get_running_loop()
        return [await loop.run_in_executor(self.pool, self._decode_opened, opened, preprocessing, name)]

    async def _decode_on_pool(
        self, images: EncodedImages, preprocessing: Preprocessing, abandoned: threading.Event
    ) -> list[np.ndarray]:
        loop = asyncio.get_running_loop()
        count = len(images)
        chunks = min(count, self.threads)
        size = -(-count // max(1, chunks))
        parts = await asyncio.gather(*(
            loop.run_in_executor(
                self.pool, self._decode_range, images, preprocessing, start, min(start + size, count), abandoned
            )
            for start in range(0, count, size)
        ))
        return [image for part in parts for image in part]

    def _decode_opened(self, opened: OpenedImage, preprocessing: Preprocessing, name: str) -> np.ndarray:
        """Pool thread: decode an image whose header the loop already checked."""
        try:
            return decode_opened(opened, preprocessing, jpeg_draft=self.jpeg_draft, hold=self.hold)
        except ImageError as error:
            raise image_refusal(error, name) from None

    def _decode_range(
        self, images: EncodedImages, preprocessing: Preprocessing, start: int, stop: int,
        abandoned: threading.Event,
    ) -> list[np.ndarray]:
        """Pool thread: decode ``images[start:stop]`` in order, until the request abandons them."""
        out = []
        for index in range(start, stop):
            if abandoned.is_set():
                raise DecodeAbandoned("the request stopped waiting")
            try:
                out.append(preprocess_image(
                    images.blobs[index], preprocessing, max_pixels=self.max_pixels, jpeg_draft=self.jpeg_draft,
                    hold=self.hold, fast_jpeg=self.fast_jpeg, max_scan_pixels=self.max_scan_pixels,
                    abandoned=abandoned,
                ))
            except ImageError as error:
                raise image_refusal(error, images.names[index]) from None
        return out
