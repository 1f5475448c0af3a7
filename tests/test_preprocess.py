"""service/preprocess.py: torchvision parity on real photos, every image mode, EXIF, bad input."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from conftest import shared_path
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from servable.errors import ImageError
from servable.images import preprocess_image, resized_size
from servable.preprocessing import Preprocessing
from service.errors import ServiceError
from service.pipeline.decode import image_refusal

IMAGENET = Preprocessing(resize_size=256, crop_size=224, interpolation="bilinear")


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def reference_keys() -> list[str]:
    path = shared_path("reference", "preprocess", "torchvision_crops.npz")
    with np.load(path) as crops:
        return sorted(crops.keys())


def preprocessing_for(key: str) -> Preprocessing:
    """``resize256_crop224_bilinear`` -> Preprocessing(256, 224, bilinear)."""
    resize, crop, interpolation = key.split("|")[1].split("_")
    return Preprocessing(
        resize_size=int(resize.removeprefix("resize")),
        crop_size=int(crop.removeprefix("crop")),
        interpolation=interpolation,  # type: ignore[arg-type]
    )


def test_parity_with_torchvision_reference_crops() -> None:
    """Every photo x every published eval transform equals torchvision's crop, pixel for pixel."""
    crops = np.load(shared_path("reference", "preprocess", "torchvision_crops.npz"))
    photos = shared_path("data", "photos")
    keys = reference_keys()
    assert len(keys) >= 24
    for key in keys:
        data = (photos / key.split("|")[0]).read_bytes()
        ours = preprocess_image(data, preprocessing_for(key))
        expected = crops[key]
        assert ours.dtype == np.uint8 and ours.shape == expected.shape, key
        difference = np.abs(ours.astype(np.int16) - expected.astype(np.int16))
        assert difference.mean() <= 1.0, key  # the contract
        assert difference.max() == 0, f"{key}: {np.count_nonzero(difference)} pixels differ"  # what we achieve


def test_cifar_sized_image_is_passed_through_unchanged() -> None:
    sample = next(shared_path("data", "cifar10-sample").glob("*/0000.jpg"))
    ours = preprocess_image(sample.read_bytes(), Preprocessing(resize_size=32, crop_size=32))
    assert np.array_equal(ours, np.asarray(Image.open(sample).convert("RGB")))


def grey_ramp(width: int = 64, height: int = 48) -> np.ndarray:
    """An 8-bit ramp whose 16-bit, float and palette versions have known 8-bit values."""
    return (np.arange(width * height, dtype=np.int64).reshape(height, width) * 7 % 256).astype(np.uint8)


def identity(width: int, height: int) -> Preprocessing:
    """Resize to the image's own shorter side and crop a square: pixels pass through untouched."""
    side = min(width, height)
    return Preprocessing(resize_size=side, crop_size=side)


def centre_square(pixels: np.ndarray) -> np.ndarray:
    height, width = pixels.shape[:2]
    side = min(height, width)
    top, left = int(round((height - side) / 2)), int(round((width - side) / 2))
    return pixels[top : top + side, left : left + side]


@pytest.mark.parametrize(
    ("mode", "fmt"),
    [
        ("1", "PNG"), ("L", "PNG"), ("LA", "PNG"), ("P", "PNG"), ("RGB", "PNG"), ("RGBA", "PNG"),
        ("CMYK", "JPEG"), ("CMYK", "TIFF"), ("I;16", "PNG"), ("I", "TIFF"), ("F", "TIFF"), ("L", "GIF"),
        ("RGB", "WEBP"), ("RGB", "BMP"), ("RGB", "PPM"), ("YCbCr", "JPEG"),
    ],
)
def test_every_mode_becomes_rgb(mode: str, fmt: str) -> None:
    ramp = grey_ramp()
    if mode in ("I;16", "I"):
        image = Image.fromarray(ramp.astype(np.uint16) * 257)
        assert image.mode == "I;16"
        if mode == "I":
            image = image.convert("I")
        expected_grey = ramp
    elif mode == "F":
        image = Image.fromarray(ramp.astype(np.float32) / 255.0)
        expected_grey = ramp
    else:
        image = Image.fromarray(ramp, mode="L").convert(mode)
        expected_grey = None
    data = encode(image, fmt)
    ours = preprocess_image(data, identity(*image.size))
    assert ours.shape == (48, 48, 3) and ours.dtype == np.uint8
    if expected_grey is not None:
        # High-bit-depth greys are scaled to 8 bits, not clamped (Pillow's plain convert turns them white).
        assert np.array_equal(ours[..., 0], centre_square(expected_grey))
    elif fmt in ("PNG", "TIFF", "BMP", "PPM", "GIF") and mode != "CMYK":
        assert np.array_equal(ours, centre_square(np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))))
    else:  # lossy formats: the picture survives, roughly
        assert np.abs(ours.astype(int) - centre_square(ramp)[..., None]).mean() < 40


def test_palette_with_transparency_and_rgba_drop_alpha_like_torchvision() -> None:
    logo = shared_path("data", "photos", "logo-rgba.png")
    rgba = Image.open(logo)
    assert rgba.mode == "RGBA"
    palette = rgba.convert("P", palette=Image.Palette.ADAPTIVE)
    palette.info["transparency"] = 0
    for image in (rgba, palette):
        data = encode(image, "PNG", **({"transparency": 0} if image.mode == "P" else {}))
        ours = preprocess_image(data, identity(*image.size))
        reference = np.asarray(Image.open(io.BytesIO(data)).convert("RGBA").convert("RGB"))
        assert np.array_equal(ours, centre_square(reference))


def test_exif_orientation_is_applied() -> None:
    """A landscape picture stored sideways with orientation 6 (rotate 90 CW) comes out upright."""
    upright = np.zeros((40, 60, 3), np.uint8)
    upright[:, :30] = (255, 0, 0)  # left half red
    upright[:, 30:] = (0, 0, 255)  # right half blue
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)  # 40 wide, 60 tall
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(stored, "PNG", exif=exif.tobytes())
    ours = preprocess_image(data, Preprocessing(resize_size=40, crop_size=40))
    assert ours.shape == (40, 40, 3)
    assert np.array_equal(ours, upright[:, 10:50])
    jpeg = preprocess_image(encode(stored, "JPEG", exif=exif.tobytes(), quality=95), Preprocessing(resize_size=40, crop_size=40))
    assert jpeg[:, :8, 0].mean() > 200 and jpeg[:, -8:, 2].mean() > 200


def test_animated_gif_uses_first_frame() -> None:
    frames = [Image.new("RGB", (32, 32), colour) for colour in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=10, loop=0)
    ours = preprocess_image(data, Preprocessing(resize_size=32, crop_size=32))
    assert ours[..., 0].min() > 240 and ours[..., 1].max() < 15


@pytest.mark.parametrize("size", [(10000, 10), (10, 10000), (1, 1), (3, 7000)])
def test_extreme_aspect_ratios_stay_bounded_and_faithful(size: tuple[int, int]) -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    ours = preprocess_image(encode(image, "PNG"), IMAGENET)
    assert ours.shape == (224, 224, 3)
    new_width, new_height = resized_size(*size, 256)
    if new_width * new_height < 5_000_000:  # small enough to compare with a full-size resize
        full = np.asarray(image.resize((new_width, new_height), Image.Resampling.BILINEAR))
        top, left = int(round((new_height - 224) / 2)), int(round((new_width - 224) / 2))
        reference = full[top : top + 224, left : left + 224]
        assert np.abs(ours.astype(int) - reference).mean() <= 1.0


def test_jpeg_draft_mode_keeps_the_parity_bound() -> None:
    photo = Image.open(shared_path("data", "photos", "coffee.jpg")).convert("RGB")
    big = photo.resize((photo.width * 4, photo.height * 4), Image.Resampling.BICUBIC)
    data = encode(big, "JPEG", quality=90)
    exact = preprocess_image(data, IMAGENET)
    drafted = preprocess_image(data, IMAGENET, jpeg_draft=True)
    assert np.abs(exact.astype(int) - drafted).mean() <= 1.0


def expect_error(data: bytes, status: int, code: str, **kwargs: object) -> ServiceError:
    with pytest.raises(ImageError) as caught:
        preprocess_image(data, IMAGENET, **kwargs)  # type: ignore[arg-type]
    refusal = image_refusal(caught.value)
    assert (refusal.status, refusal.code) == (status, code), refusal
    return refusal


def test_bad_input_gets_the_documented_error() -> None:
    photo = shared_path("data", "photos", "chelsea.jpg").read_bytes()
    png = shared_path("data", "photos", "chelsea.png").read_bytes()
    expect_error(b"", 422, "empty_image")
    expect_error(b"\x00", 415, "unsupported_image")
    expect_error(b"<html><body>not a picture</body></html>", 415, "unsupported_image")
    expect_error(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj<<>>endobj", 415, "unsupported_image")
    expect_error(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", 415, "unsupported_image")
    expect_error(photo[: len(photo) // 2], 422, "corrupt_image")
    expect_error(png[: len(png) // 3], 422, "corrupt_image")
    expect_error(photo[:200], 422, "corrupt_image")


def test_decompression_bombs_are_refused_from_the_header() -> None:
    bomb = encode(Image.new("L", (20000, 20000)), "PNG", optimize=True)  # 400 MP in a few hundred KB
    assert len(bomb) < 1_000_000
    error = expect_error(bomb, 413, "image_too_large", max_pixels=50_000_000)
    assert "50000000" in error.message or "20000x20000" in error.message
    error = expect_error(encode(Image.new("L", (9000, 9000)), "PNG"), 413, "image_too_large", max_pixels=50_000_000)
    assert "9000x9000" in error.message
    expect_error(encode(Image.new("RGB", (300, 300)), "PNG"), 413, "image_too_large", max_pixels=300 * 299)
    assert preprocess_image(encode(Image.new("RGB", (300, 300)), "PNG"), IMAGENET, max_pixels=300 * 300).shape == (
        224, 224, 3,
    )


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=512), st.sampled_from([b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"GIF89a"]))
def test_arbitrary_bytes_raise_only_image_errors(tail: bytes, magic: bytes) -> None:
    try:
        preprocess_image(magic + tail, IMAGENET)
    except ImageError as error:
        assert image_refusal(error).status in (413, 415, 422)


def test_reference_crop_files_exist() -> None:
    photos = shared_path("data", "photos")
    assert {key.split("|")[0] for key in reference_keys()} <= {path.name for path in Path(photos).iterdir()}
