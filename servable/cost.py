"""What a file makes its decoder do, counted before anything decodes it: the work is bounded, not only pixels.

The pixel limit bounds memory, not time. Three small files showed the difference:

* a progressive JPEG whose one AC scan is repeated: every scan is another libjpeg pass over the whole
  coefficient buffer, a few bytes each: 7000x7000 with 15,000 scans in 1.2 MB took 71 s to decode;
* a JPEG whose header is 5 million empty COM segments (20 MB): 14.5 s of header walking in Python
  for a 32x32 image;
* a PNG with 1.75 M empty ancillary chunks before its IDAT: Pillow walks each chunk in Python (4.2 s).

So a JPEG's decode cost is counted as scans x pixels and refused above ``max_scan_pixels`` (default:
ten scans of the largest image allowed, what a standard progressive encoding of it takes, so the worst
accepted file costs no more than the largest ordinary one) or above :data:`MAX_SCANS` (libjpeg-turbo's
recommended ``TJPARAM_SCANLIMIT``); and a JPEG or PNG with more than :data:`MAX_SEGMENTS` segments or
chunks is refused outright (no real file comes near: libpng writes 8 KiB IDAT chunks, so a 20 MB PNG
has ~2,500). The walks here touch each segment once, jump over entropy-coded data with one regular
expression search, and stop at the caps, so they cost at most a few milliseconds on any input.
"""

from __future__ import annotations

import re

from servable.errors import ImageTooCostly

Buffer = bytes | bytearray | memoryview

#: Scans in one JPEG at most, whatever its size (libjpeg-turbo recommends 500 for TJPARAM_SCANLIMIT).
MAX_SCANS = 500
#: JPEG segments (or PNG chunks) walked at most; a file with more is refused.
MAX_SEGMENTS = 4096
#: JPEGs up to this size are checked with two ``bytes.count`` calls instead of the segment walk: 2.1
#: against 6.9 us for a CIFAR JPEG, but a 41 KB photo took 76 against 30 us (0xFF bytes are common in
#: entropy data, which the walk skips); the two cross near 4 KB.
COUNT_SHORTCUT_BYTES = 4096

_JPEG = b"\xff\xd8"
_PNG = b"\x89PNG\r\n\x1a\n"
#: The next marker after entropy-coded data: 0xFF not followed by a stuffed zero, a restart marker or a fill byte.
_NEXT_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
_SOS, _EOI = 0xDA, 0xD9
#: Frame headers (SOF0-SOF15 but DHT, JPG and DAC): where the image's size is.
_FRAMES = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD9)})


def check_decode_cost(data: Buffer, max_scan_pixels: int | None, max_pixels: int | None = None) -> int:
    """Raise :class:`~servable.errors.ImageTooCostly` when decoding ``data`` would cost beyond the bounds;
    return (at least) the number of scans of a JPEG, 0 for anything else.

    Formats other than JPEG and PNG pass (their decoders' work follows their pixels); a file that is
    not what its signature says passes too, and the decoder then says what is wrong with it. A JPEG
    of at most :data:`COUNT_SHORTCUT_BYTES` passes on two ``bytes.count`` calls: a file with at most
    :data:`MAX_SEGMENTS` 0xFF bytes has at most that many segments, and one with ``k`` SOS markers at
    most ``k`` scans, of at most ``max_pixels`` pixels (checked from its header).
    """
    head = bytes(data[:8])
    if head.startswith(_JPEG):
        return _check_jpeg(data, max_scan_pixels, max_pixels)
    if head == _PNG:
        _check_png(data)
    return 0


def jpeg_structure(data: Buffer) -> tuple[int, int, int]:
    """(segments, scans, pixels) of a JPEG's first image, each counted until a cap is passed.

    Stops at the end of the first image (EOI), at :data:`MAX_SEGMENTS` + 1 segments or at
    :data:`MAX_SCANS` + 1 scans; ``pixels`` is the frame's width x height (0 before a frame header).
    """
    view = memoryview(data).cast("B")
    size = len(view)
    segments = scans = pixels = 0
    position = 2
    while position + 2 <= size and segments <= MAX_SEGMENTS and scans <= MAX_SCANS:
        segments += 1
        if view[position] != 0xFF:
            break  # no marker where one must be: the decoder reports the damage
        marker = view[position + 1]
        if marker == 0xFF:
            position += 1  # a fill byte before a marker
            continue
        if marker == _EOI:
            break
        if marker in _STANDALONE:
            position += 2
            continue
        if position + 4 > size:
            break
        end = position + 2 + ((view[position + 2] << 8) | view[position + 3])
        if marker in _FRAMES and end <= size and end - position >= 9:
            height = (view[position + 5] << 8) | view[position + 6]
            width = (view[position + 7] << 8) | view[position + 8]
            pixels = width * height
        if marker != _SOS:
            position = end
            continue
        scans += 1
        found = _NEXT_MARKER.search(view, end)
        if found is None:
            break
        position = found.start()
    return segments, scans, pixels


def _check_jpeg(data: Buffer, max_scan_pixels: int | None, max_pixels: int | None) -> int:
    if (
        isinstance(data, (bytes, bytearray)) and len(data) <= COUNT_SHORTCUT_BYTES
        and max_scan_pixels is not None and max_pixels is not None
    ):
        markers = data.count(b"\xff\xda")  # (a memoryview has no count(): it is walked)
        if markers * max_pixels <= max_scan_pixels and markers <= MAX_SCANS and data.count(b"\xff") <= MAX_SEGMENTS:
            return markers
    segments, scans, pixels = jpeg_structure(data)
    if segments > MAX_SEGMENTS:
        raise ImageTooCostly(f"the JPEG has more than {MAX_SEGMENTS} segments")
    if scans > MAX_SCANS:
        raise ImageTooCostly(f"the JPEG has more than {MAX_SCANS} scans")
    too_many_pixels = max_pixels is not None and pixels > max_pixels  # the pixel limit's 413 says it better
    if max_scan_pixels is not None and not too_many_pixels and scans * pixels > max_scan_pixels:
        raise ImageTooCostly(
            f"the JPEG has {scans} scans of {pixels} pixels: decoding it is {scans * pixels} pixel passes, "
            f"more than the limit of {max_scan_pixels}"
        )
    return scans


def png_chunks(data: Buffer) -> int:
    """Chunks in a PNG up to IEND, counted until :data:`MAX_SEGMENTS` is passed (or the data runs out)."""
    view = memoryview(data).cast("B")
    size = len(view)
    position = len(_PNG)
    chunks = 0
    while position + 8 <= size and chunks <= MAX_SEGMENTS:
        chunks += 1
        length = int.from_bytes(view[position:position + 4], "big")
        if bytes(view[position + 4:position + 8]) == b"IEND":
            break
        position += 12 + length
    return chunks


def _check_png(data: Buffer) -> None:
    if png_chunks(data) > MAX_SEGMENTS:
        raise ImageTooCostly(f"the PNG has more than {MAX_SEGMENTS} chunks")
