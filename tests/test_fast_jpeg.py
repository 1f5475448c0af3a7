"""The libjpeg-turbo fast path for plain JPEGs gives Pillow's pixels, and Pillow's answer to anything else.

``preprocess_image(..., fast_jpeg=False)`` is the reference (Pillow for every byte): on every real
image here, every encoder setting Pillow writes, and mutated JPEGs, the fast path must return the same
array or raise the same error; EXIF, CMYK and non-JPEG input must not take it at all.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import shared_path
from hostile import build_corpus, encode, gradient
from hostile.images import jpeg_with_corrupt_scan, jpeg_with_exif_orientation
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from load import BOUNDARY
from PIL import Image

from servable import jpeg
from servable.errors import ImageError
from servable.images import decode_opened, open_image, preprocess_image
from servable.preprocessing import Preprocessing
from service.doors.admin import models_body
from service.metrics import Metrics
from service.pipeline.decode import image_refusal
from service.settings import Settings
from service.state import ServiceState

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

IMAGENET = Preprocessing(resize_size=256, crop_size=224)
TIMM = Preprocessing(resize_size=235, crop_size=224, interpolation="bicubic")
CIFAR = Preprocessing(resize_size=32, crop_size=32)
MAX_PIXELS = 2_000_000
EXAMPLES = int(os.environ.get("RESNET_SERVE_FUZZ_EXAMPLES", "300"))

def outcome(data: bytes, p: Preprocessing, fast: bool) -> np.ndarray | tuple[int, str]:
    """The crop, or the (status, code) of the error: what a client would see."""
    try:
        return preprocess_image(data, p, max_pixels=MAX_PIXELS, fast_jpeg=fast)
    except ImageError as error:
        return (image_refusal(error).status, error.code)

def assert_same(data: bytes, p: Preprocessing) -> None:
    fast, pillow = outcome(data, p, True), outcome(data, p, False)
    if isinstance(pillow, np.ndarray):
        assert isinstance(fast, np.ndarray), f"Pillow decoded it, the fast path said {fast}"
        np.testing.assert_array_equal(fast, pillow)
    else:
        assert fast == pillow

@functools.cache
def photos() -> tuple[Image.Image, ...]:
    return tuple(Image.open(path).convert("RGB") for path in sorted(shared_path("data", "photos").glob("*.jpg")))

def test_real_files_decode_as_pillow_does_and_take_the_fast_path() -> None:
    """The shared photos as published and all 1,000 CIFAR sample JPEGs, in ImageNet and CIFAR crops."""
    files = sorted(shared_path("data", "photos").glob("*.jpg"))
    files += sorted(shared_path("data", "cifar10-sample").glob("*/*.jpg"))
    assert len(files) >= 1000
    for path in files:
        data = path.read_bytes()
        p = CIFAR if "cifar10" in str(path) else IMAGENET
        assert open_image(data).image is None, f"{path.name} did not take the fast path"
        assert_same(data, p)

ENCODINGS = list(itertools.product((0, 1, 2), (35, 90, 100), (False, True)))  # subsampling 4:4:4/4:2:2/4:2:0

@pytest.mark.parametrize(("subsampling", "quality", "progressive"), ENCODINGS)
def test_every_encoder_setting_decodes_as_pillow_does(subsampling: int, quality: int, progressive: bool) -> None:
    """Odd sizes (partial MCUs), both interpolations, resized and unresized, colour and grey."""
    for photo, (width, height) in itertools.product(photos()[:2], ((333, 217), (217, 333), (31, 17), (32, 32))):
        image = photo.resize((width, height))
        for mode in ("RGB", "L"):
            data = encode(image.convert(mode), "JPEG", quality=quality, subsampling=subsampling,
                          progressive=progressive, optimize=True)
            for p in (IMAGENET, TIMM, CIFAR):
                assert_same(data, p)

CMYK = encode(gradient(40, 30).convert("CMYK"), "JPEG")
ROUTES = [
    ("plain JPEG", encode(gradient(40, 30), "JPEG"), True),
    ("grey JPEG", encode(gradient(40, 30).convert("L"), "JPEG"), True),
    ("EXIF orientation 6", jpeg_with_exif_orientation(6), False),
    ("CMYK JPEG", CMYK, False),
    ("PNG", encode(gradient(40, 30), "PNG"), False),
    ("JPEG cut after its header", encode(gradient(40, 30), "JPEG")[:200], False),
]

@pytest.mark.parametrize(("data", "fast"), [r[1:] for r in ROUTES], ids=[r[0] for r in ROUTES])
def test_only_plain_jpegs_take_the_fast_path(data: bytes, fast: bool) -> None:
    try:
        opened = open_image(data)
    except ImageError:
        assert not fast
        return
    assert (opened.image is None) is fast
    assert_same(data, CIFAR)

def uploaded_files() -> list[bytes]:
    """The file bytes inside the hostile corpus's single-file multipart bodies."""
    opening = f"--{BOUNDARY}\r\n".encode()
    closing = f"\r\n--{BOUNDARY}--\r\n".encode()
    files = []
    for case in build_corpus():
        body = case.body
        if case.kind == "raw" and body.startswith(opening) and body.endswith(closing) and body.count(opening) == 1:
            files.append(body[body.index(b"\r\n\r\n") + 4 : -len(closing)])
    return files

def test_corrupt_scans_and_the_hostile_image_corpus_answer_as_pillow_does() -> None:
    cases = uploaded_files()
    assert len(cases) >= 20
    cases += [jpeg_with_corrupt_scan(seed) for seed in range(20)]
    for data in cases:
        for p in (CIFAR, IMAGENET):
            assert_same(data, p)

def segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + (len(payload) + 2).to_bytes(2, "big") + payload

def after_soi(data: bytes, *segments: bytes) -> bytes:
    """``data`` with ``segments`` right after its SOI marker."""
    return data[:2] + b"".join(segments) + data[2:]

def rewrite_segment(data: bytes, marker: int, payload: bytes) -> bytes:
    """``data`` with its first ``marker`` segment's payload replaced."""
    position = 2
    while data[position + 1] != marker:
        position += 2 + int.from_bytes(data[position + 2 : position + 4], "big")
    end = position + 2 + int.from_bytes(data[position + 2 : position + 4], "big")
    return data[:position] + segment(marker, payload) + data[end:]

PLAIN = encode(gradient(48, 40), "JPEG", quality=90)
EXIF_ROTATED = jpeg_with_exif_orientation(6)
#: Headers libjpeg reads and Pillow refuses, or reads differently: none may take the fast path.
PILLOW_DECIDES = [
    ("a restart marker before the EXIF orientation", after_soi(EXIF_ROTATED, b"\xff\xd0")),
    ("a short JFIF segment", rewrite_segment(PLAIN, 0xE0, b"JFIF\x00")),
    ("a short Adobe segment", after_soi(PLAIN, segment(0xEE, b"Adobe"))),
    ("a short ICC chunk", after_soi(PLAIN, segment(0xE2, b"ICC_PROFILE\x00"))),
    ("a partial quantization table", after_soi(PLAIN, segment(0xDB, bytes(40)))),
    ("a 12-bit frame", PLAIN.replace(b"\xff\xc0\x00\x11\x08", b"\xff\xc0\x00\x11\x0c", 1)),
    ("Photoshop resource blocks", after_soi(PLAIN, segment(0xED, b"Photoshop 3.0\x008BIM\x04"))),
    ("an MPF segment", after_soi(PLAIN, segment(0xE2, b"MPF\x00" + bytes(12)))),
    ("a fill byte before a marker", PLAIN[:2] + b"\xff" + PLAIN[2:]),
    ("junk between segments", after_soi(PLAIN, b"\x00\x00")),
]

@pytest.mark.parametrize("data", [c[1] for c in PILLOW_DECIDES], ids=[c[0] for c in PILLOW_DECIDES])
def test_headers_pillow_reads_differently_do_not_take_the_fast_path(data: bytes) -> None:
    assert not jpeg.plain_segments(data)
    assert_same(data, CIFAR)
    assert_same(data, IMAGENET)

def test_segments_both_read_alike_keep_the_fast_path() -> None:
    with_extras = after_soi(
        PLAIN,
        segment(0xE2, b"ICC_PROFILE\x00\x01\x01" + bytes(64)),
        segment(0xE1, b"http://ns.adobe.com/xap/1.0/\x00<x/>"),
        segment(0xEE, b"Adobe\x00\x64\x00\x00\x00\x00\x01"),
        segment(0xFE, b"a comment"),
    )
    assert open_image(with_extras).image is None
    assert_same(with_extras, CIFAR)

def test_pillows_own_bomb_limit_applies_on_both_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    """A service limit above Pillow's (2 x Image.MAX_IMAGE_PIXELS) must not let the fast path decode more."""
    data = encode(gradient(40, 30), "JPEG")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # Pillow refuses above 1,000 pixels
    assert jpeg.plain_jpeg_size(data) is None
    for fast in (True, False):
        with pytest.raises(ImageError) as refused:
            preprocess_image(data, CIFAR, max_pixels=10**6, fast_jpeg=fast)
        assert (image_refusal(refused.value).status, refused.value.code) == (413, "image_too_large")

def test_a_scan_libjpeg_complains_about_holds_the_pixel_budget_once_and_pillow_answers() -> None:
    """The truncated scan is refused by the strict decode, Pillow answers 422, the budget is released."""
    data = PLAIN[: len(PLAIN) * 2 // 3]
    opened = open_image(data)
    assert opened.image is None  # the header is plain: only the decode finds the scan cut
    held: list[int] = []
    released: list[int] = []

    @contextlib.contextmanager
    def hold(pixels: int) -> Iterator[None]:
        held.append(pixels)
        try:
            yield
        finally:
            released.append(pixels)

    with pytest.raises(ImageError) as refused:
        decode_opened(opened, CIFAR, hold=hold)
    status = image_refusal(refused.value).status
    assert status == 422 and (status, refused.value.code) == outcome(data, CIFAR, False)
    assert held == released == [48 * 40]

def test_the_fast_path_turns_itself_off_when_the_libraries_disagree(monkeypatch: pytest.MonkeyPatch) -> None:
    real = jpeg.decode
    monkeypatch.setattr(jpeg, "decode", lambda data: None if (pixels := real(data)) is None else pixels ^ 1)
    jpeg.agrees_with_pillow.cache_clear()
    try:
        assert not jpeg.agrees_with_pillow()
        assert jpeg.plain_jpeg_size(PLAIN) is None and open_image(PLAIN).image is not None
    finally:
        monkeypatch.undo()
        jpeg.agrees_with_pillow.cache_clear()
    assert jpeg.agrees_with_pillow() and open_image(PLAIN).image is None

def test_too_many_pixels_is_refused_from_the_header_before_decoding() -> None:
    data = encode(gradient(400, 300), "JPEG")
    with pytest.raises(ImageError) as refused:
        open_image(data, max_pixels=400 * 300 - 1)
    assert (image_refusal(refused.value).status, refused.value.code) == (413, "image_too_large")
    assert open_image(data, max_pixels=400 * 300).image is None

@functools.cache
def jpeg_seeds() -> tuple[bytes, ...]:
    photo = photos()[0].copy()
    photo.thumbnail((64, 64))
    return (
        encode(photo, "JPEG", quality=85),
        encode(photo, "JPEG", progressive=True, subsampling=0),
        encode(photo.convert("L"), "JPEG", quality=60),
    )

def header_length(data: bytes) -> int:
    """Bytes up to the first scan's data: where Pillow's and libjpeg's header parsers differ."""
    return data.index(b"\xff\xda") + 2 + int.from_bytes(data[data.index(b"\xff\xda") + 2 :][:2], "big")

@st.composite
def mutated_jpegs(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(jpeg_seeds())))
    in_header = draw(st.booleans())  # half the mutations land in the header segments
    for _ in range(draw(st.integers(1, 4))):
        limit = min(len(data), header_length(bytes(data))) if in_header and b"\xff\xda" in data else len(data)
        position = draw(st.integers(0, max(0, limit - 1)))
        action = draw(st.sampled_from(("flip", "insert", "delete", "cut")))
        if action == "flip":
            data[position] ^= 1 << draw(st.integers(0, 7))
        elif action == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=8))
        elif action == "delete":
            del data[position : position + draw(st.integers(1, 8))]
        else:
            del data[max(2, position):]
        if len(data) < 4:
            break
    return bytes(data)

@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(mutated_jpegs())
def test_mutated_jpegs_answer_as_pillow_does(data: bytes) -> None:
    """Flipped, inserted, deleted and cut bytes: the same crop, or the same status and code."""
    assert_same(data, CIFAR)

@pytest.mark.parametrize(
    ("fast_jpeg", "jpeg_draft", "taken"),
    [(True, False, True), (False, False, False), (True, True, False)],
    ids=["default", "turned off", "draft decoding wins"],
)
def test_the_service_decides_the_path_once_at_start(
    tmp_path: Path, fast_jpeg: bool, jpeg_draft: bool, taken: bool
) -> None:
    """The state holds the decision (setting, draft mode, the probe); /models shows it under runtime."""
    state = ServiceState(Settings(model_dir=tmp_path, fast_jpeg=fast_jpeg, jpeg_draft=jpeg_draft), Metrics())
    try:
        assert state.fast_jpeg is taken
        assert models_body(state)["runtime"]["fast_jpeg"] is taken
    finally:
        state.decode_pool.shutdown()
