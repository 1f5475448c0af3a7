"""The images an INT8 export calibrates on and the different, held-out images its accuracy gate uses.

Both come from folders of ordinary image files, decoded and cropped by the service's own
preprocessing (``servable.images``), so the activation ranges are those of the pixels the service
will feed. Order is deterministic: files are grouped by their folder (one folder per class in the
usual layout), each group sorted, then taken round-robin, so the first N images spread over every
class. Without a separate held-out folder the one folder is split: calibration takes at most half of
it, from the front of that order, the gate takes the rest. No calibration image is ever a gate image.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from export.errors import ExportError
from servable.errors import ImageError
from servable.images import preprocess_image
from servable.preprocessing import Preprocessing

#: File suffixes taken as images (others in the folder, say a labels.txt, are ignored).
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".ppm"})
#: "A few hundred": on the CIFAR sample 100 calibration images gave 97.1-98.1 % held-out top-1 agreement
#: with fp32 (resnet56/resnet20), 300 gave 98.6-98.7 %, all 1,000 98.4-98.7 %: 300 is where it levels off.
DEFAULT_CALIBRATION_COUNT = 300
#: The gate must be able to see a loss: with 50 images one mismatch already costs 2 points.
MIN_HOLDOUT_IMAGES = 50


@dataclass(frozen=True)
class ImageSet:
    """Decoded uint8 [N, crop, crop, 3] pixels, the files they came from and a few words for the record."""

    pixels: np.ndarray
    files: tuple[Path, ...]
    source: str


def files_sha256(files: Sequence[Path]) -> str:
    """Digest over every file's bytes in order: the calibration data is part of what decides the file."""
    digest = hashlib.sha256()
    for path in files:
        try:
            digest.update(hashlib.sha256(path.read_bytes()).digest())
        except OSError as exc:
            raise ExportError(f"cannot read {path}: {exc}") from None
    return digest.hexdigest()


def default_holdout_count(preprocessing: Preprocessing) -> int:
    """Small inputs are cheap to check (1,000 CIFAR images ~2 s); a 224 px ResNet-50 reference ~10 img/s."""
    return 1000 if preprocessing.crop_size <= 64 else 200


def list_images(folder: Path, what: str) -> list[Path]:
    """Image files under ``folder`` (recursively), classes interleaved; a clear error when there are none."""
    if not folder.is_dir():
        raise ExportError(f"{what} folder {folder} does not exist or is not a folder")
    groups: dict[Path, list[Path]] = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith("."):
            groups.setdefault(path.parent, []).append(path)
    ordered = [groups[key] for key in sorted(groups)]
    files = [
        group[i] for i in range(max(map(len, ordered), default=0)) for group in ordered if i < len(group)
    ]
    if not files:
        raise ExportError(
            f"{what} folder {folder} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}),"
            " searched recursively"
        )
    return files


def load_images(files: Sequence[Path], preprocessing: Preprocessing, source: str) -> ImageSet:
    """Decode and crop every file as the service would; a file it cannot read is an error naming it."""
    pixels = []
    for path in files:
        try:
            pixels.append(preprocess_image(path.read_bytes(), preprocessing))
        except ImageError as exc:
            raise ExportError(f"cannot use {path} as an image: {exc.message}") from None
        except OSError as exc:
            raise ExportError(f"cannot read {path}: {exc}") from None
    return ImageSet(np.ascontiguousarray(np.stack(pixels)), tuple(files), source)


def select(
    calibration: Path | None,
    count: int,
    holdout: Path | None,
    holdout_count: int,
    *,
    min_holdout: int,
) -> tuple[list[Path], list[Path], str, str]:
    """(calibration files, held-out files, their descriptions); refuses sets too small to mean anything."""
    if calibration is None:
        raise ExportError(
            "INT8 needs calibration images: pass --calibration DIR (a few hundred images like those the"
            " model will see; folders per class are fine)"
        )
    if count < 1:
        raise ExportError(f"--calibration-count must be positive, got {count}")
    if holdout_count < 1:
        raise ExportError(f"--holdout-count must be positive, got {holdout_count}")
    files = list_images(Path(calibration), "calibration")
    if holdout is None:
        taken = min(count, len(files) // 2)
        calibration_files, rest = files[:taken], files[taken:]
        holdout_files = rest[:holdout_count]
        held_source = f"{calibration} (the images after the calibration ones)"
        if taken == 0:
            raise ExportError(
                f"calibration folder {calibration} has {len(files)} image(s): too few to split into"
                " calibration"
                " and held-out images; add images or give --holdout DIR"
            )
    else:
        calibration_files = files[:count]
        used = {path.resolve() for path in calibration_files}
        candidates = [p for p in list_images(Path(holdout), "held-out") if p.resolve() not in used]
        holdout_files = candidates[:holdout_count]
        held_source = str(holdout)
    if len(holdout_files) < min_holdout:
        raise ExportError(
            f"the accuracy gate needs at least {min_holdout} held-out images that are not calibration images,"
            f" found {len(holdout_files)}: add images, give --holdout DIR, lower --calibration-count,"
            " or pass --min-agreement 0 to export without a gate (benchmarks only)"
        )
    calibration_source = f"{len(calibration_files)} of {len(files)} images in {calibration}"
    return (
        calibration_files,
        holdout_files,
        calibration_source,
        f"{len(holdout_files)} images from {held_source}",
    )
