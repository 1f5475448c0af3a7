"""Decode + resize + centre-crop throughput per core, and each decoder's parity with torchvision.

The service's own ``preprocess_image`` runs three ways: as served (plain JPEGs decoded by
libjpeg-turbo through simplejpeg, the rest by Pillow), Pillow for every JPEG, and with JPEG draft
mode; simplejpeg and PyTurboJPEG (libjpeg-turbo's TurboJPEG API) also decode at a reduced DCT scale,
then share the service's resize and crop. Parity is measured on the original
shared photos against ``reference/preprocess/torchvision_crops.npz`` (resize 256, crop 224, bilinear).
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from benchmarks.workload import PHOTO_FILES, photo_jpegs, shared_path
from servable.images import preprocess_image, resize_and_crop
from servable.preprocessing import Preprocessing

#: The reference crops in the npz file are keyed "<file>|resize256_crop224_bilinear".
REFERENCE = Preprocessing(resize_size=256, crop_size=224, interpolation="bilinear")
REFERENCE_SUFFIX = "resize256_crop224_bilinear"
#: A large phone-camera-like size, where DCT-domain downscaling has something to save.
LARGE_PHOTO_SIZE = (2048, 1536)

Decoder = Callable[[bytes, Preprocessing], np.ndarray]


@dataclass
class DecoderResult:
    name: str
    images_per_s_500x375: float
    images_per_s_2048x1536: float
    parity_mean_abs: float
    parity_max_abs: int
    parity_exact_fraction: float
    large_vs_exact_mean_abs: float

    def as_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


def _service(*, draft: bool = False, fast_jpeg: bool = True) -> Decoder:
    return lambda data, p: preprocess_image(data, p, jpeg_draft=draft, fast_jpeg=fast_jpeg)


def _scaled_min_side(width: int, height: int, resize_size: int) -> tuple[int, int]:
    """Smallest decoded size that still keeps twice the resize target (the service's draft rule)."""
    factor = min(1.0, 2.0 * resize_size / min(width, height))
    return int(np.ceil(width * factor)), int(np.ceil(height * factor))


def _simplejpeg(scaled: bool) -> Decoder | None:
    try:
        import simplejpeg
    except ImportError:
        return None

    def decode(data: bytes, p: Preprocessing) -> np.ndarray:
        if scaled:
            width, height, _, _ = simplejpeg.decode_jpeg_header(data)
            min_width, min_height = _scaled_min_side(width, height, p.resize_size)
            pixels = simplejpeg.decode_jpeg(data, colorspace="RGB", min_width=min_width, min_height=min_height)
        else:
            pixels = simplejpeg.decode_jpeg(data, colorspace="RGB")
        return resize_and_crop(Image.fromarray(pixels), p)

    return decode


def _turbojpeg(scaled: bool) -> Decoder | None:
    try:
        from turbojpeg import TJPF_RGB, TurboJPEG

        codec = TurboJPEG()
    except Exception:  # ImportError, or libturbojpeg (Debian: libturbojpeg0) missing / too old
        return None
    factors = sorted(codec.scaling_factors, key=lambda f: f[0] / f[1])

    def decode(data: bytes, p: Preprocessing) -> np.ndarray:
        factor = None
        if scaled:
            width, height, _, _ = codec.decode_header(data)
            wanted = min(1.0, 2.0 * p.resize_size / min(width, height))
            factor = next(f for f in factors if f[0] / f[1] >= wanted)
        pixels = codec.decode(data, pixel_format=TJPF_RGB, scaling_factor=factor)
        return resize_and_crop(Image.fromarray(pixels), p)

    return decode


def decoders() -> dict[str, Decoder | None]:
    """Every decoder path evaluated; None where its package is not installed."""
    return {
        "service (exact)": _service(),
        "pillow only (exact)": _service(fast_jpeg=False),
        "pillow + draft": _service(draft=True),
        "simplejpeg": _simplejpeg(False),
        "simplejpeg scaled": _simplejpeg(True),
        "turbojpeg": _turbojpeg(False),
        "turbojpeg scaled": _turbojpeg(True),
    }


def _throughput(decode: Decoder, payloads: list[bytes], p: Preprocessing, seconds: float) -> float:
    """Single-threaded images/s, i.e. per core."""
    for data in payloads:
        decode(data, p)
    count = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        for data in payloads:
            decode(data, p)
        count += len(payloads)
    return count / (time.perf_counter() - started)


def _parity(decode: Decoder) -> tuple[float, int, float]:
    references = np.load(shared_path("reference", "preprocess", "torchvision_crops.npz"))
    folder = shared_path("data", "photos")
    diffs = []
    for name in PHOTO_FILES:
        key = f"{name}|{REFERENCE_SUFFIX}"
        if key not in references:
            continue
        crop = decode((folder / name).read_bytes(), REFERENCE)
        diffs.append(np.abs(crop.astype(np.int16) - references[key].astype(np.int16)).ravel())
    every = np.concatenate(diffs)
    return float(every.mean()), int(every.max()), float((every == 0).mean())


def _mean_abs_vs_exact(decode: Decoder, payloads: list[bytes], p: Preprocessing) -> float:
    """On large photos (where scaled decoding kicks in): mean |difference| from the exact Pillow crop.

    The reference crops exist only for the original (small) photos, where draft mode changes
    nothing; the exact path equals torchvision there, so it stands in for it on big images.
    """
    exact = _service()
    diffs = [np.abs(decode(d, p).astype(np.int16) - exact(d, p).astype(np.int16)).mean() for d in payloads]
    return float(np.mean(diffs))


def _large_jpegs() -> list[bytes]:
    payloads = []
    for _, data in photo_jpegs():
        with Image.open(io.BytesIO(data)) as image:
            big = image.resize(LARGE_PHOTO_SIZE, Image.Resampling.BICUBIC)
        buffer = io.BytesIO()
        big.save(buffer, format="JPEG", quality=90)
        payloads.append(buffer.getvalue())
    return payloads


def run(*, quick: bool, log: Callable[[str], None] = print) -> dict[str, object]:
    """Measure every available decoder; seconds per measurement shrink with ``quick``."""
    seconds = 0.6 if quick else 2.0
    p = Preprocessing(resize_size=232, crop_size=224)  # resnet50's (IMAGENET1K_V2) preprocessing
    typical = [data for _, data in photo_jpegs()]
    large = _large_jpegs()
    results: list[DecoderResult] = []
    skipped: dict[str, str] = {}
    for name, decode in decoders().items():
        if decode is None:
            skipped[name] = "package or libturbojpeg not installed (pip install '.[bench]'; apt-get install libturbojpeg0)"
            continue
        mean_abs, max_abs, exact = _parity(decode)
        result = DecoderResult(
            name=name,
            images_per_s_500x375=_throughput(decode, typical, p, seconds),
            images_per_s_2048x1536=_throughput(decode, large, p, seconds),
            parity_mean_abs=mean_abs,
            parity_max_abs=max_abs,
            parity_exact_fraction=exact,
            large_vs_exact_mean_abs=_mean_abs_vs_exact(decode, large, p),
        )
        log(
            f"  preprocess {name:<24} {result.images_per_s_500x375:7.1f} img/s (500x375) "
            f"{result.images_per_s_2048x1536:6.1f} img/s (2048x1536)  parity mean|d| {mean_abs:.3f} max {max_abs}"
            f"  2048x1536 vs exact mean|d| {result.large_vs_exact_mean_abs:.3f}"
        )
        results.append(result)
    return {
        "preprocessing": p.model_dump(mode="json"),
        "parity_reference": f"torchvision_crops.npz [{REFERENCE_SUFFIX}] on the original photos",
        "decoders": [r.as_dict() for r in results],
        "skipped": skipped,
    }
