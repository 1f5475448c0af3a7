"""The libjpeg-turbo fast path for plain JPEGs gives Pillow's pixels, and Pillow's answer to anything else.

``preprocess_image(..., fast_jpeg=False)`` is the reference (Pillow for every byte): on every real
image here, every encoder setting Pillow writes, and mutated JPEGs, the fast path must return the same
array or raise the same error; EXIF, CMYK and non-JPEG input must not take it at all.
"""

from __future__ import annotations

import functools
import io
import itertools
import os

import numpy as np
import pytest
from conftest import shared_path
from hostile_corpus import (
    BOUNDARY,
    build_corpus,
    encode,
    gradient,
    jpeg_with_corrupt_scan,
    jpeg_with_exif_orientation,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from service.errors import ServiceError
from service.model_card import Preprocessing
from service.preprocess import open_image, preprocess_image

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
    except ServiceError as error:
        return (error.status, error.code)


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
    except ServiceError:
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


def test_too_many_pixels_is_refused_from_the_header_before_decoding() -> None:
    data = encode(gradient(400, 300), "JPEG")
    with pytest.raises(ServiceError) as refused:
        open_image(data, max_pixels=400 * 300 - 1)
    assert (refused.value.status, refused.value.code) == (413, "image_too_large")
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


@st.composite
def mutated_jpegs(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(jpeg_seeds())))
    for _ in range(draw(st.integers(1, 4))):
        position = draw(st.integers(0, len(data) - 1))
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
