"""Preprocessing for an imported ONNX classifier: a named preset, the user's own values, the file's size.

An imported file says nothing about how its pixels were prepared in training, so the user must say
it: a preset (the eval transforms of torchvision, timm or Inception-style models) or ``mean`` and
``std`` themselves; resize, crop and interpolation default from the preset and the file's input size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from pydantic import ValidationError

from export.errors import ExportError
from servable.preprocessing import IMAGENET_MEAN, IMAGENET_STD, INCEPTION_MEAN, INCEPTION_STD, Preprocessing


@dataclass(frozen=True)
class Preset:
    """Eval transforms: resize the shorter side to floor(crop / crop_pct), centre-crop ``crop``."""

    crop: int
    crop_pct: float
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    about: str


PRESETS: dict[str, Preset] = {
    "torchvision": Preset(224, 0.875, "bilinear", IMAGENET_MEAN, IMAGENET_STD, "Resize(256) CenterCrop(224)"),
    "timm": Preset(224, 0.875, "bicubic", IMAGENET_MEAN, IMAGENET_STD, "timm's default cfg"),
    "inception": Preset(
        299, 0.8975, "bicubic", INCEPTION_MEAN, INCEPTION_STD, "timm Inception(-ResNet)-v2: 333 -> 299"
    ),
}


@dataclass(frozen=True)
class PreprocessingSpec:
    """What the user gave; any field may be missing and is filled from the preset or the file."""

    preset: str | None = None
    resize: int | None = None
    crop: int | None = None
    crop_pct: float | None = None
    interpolation: str | None = None
    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None

    def as_settings(self) -> dict[str, object]:
        """The flags as given, for the card: every field, sequences as the lists JSON reads back."""
        return {
            key: list(value) if isinstance(value, Sequence) and not isinstance(value, str) else value
            for key, value in asdict(self).items()
        }


def resolve(spec: PreprocessingSpec, model_side: int | None) -> Preprocessing:
    """The card's Preprocessing; ``model_side`` is the file's fixed input size (None when dynamic)."""
    preset = _preset(spec.preset)
    if spec.crop is not None and model_side is not None and spec.crop != model_side:
        raise ExportError(f"--crop {spec.crop} but the model's input is fixed at {model_side}x{model_side}")
    crop = spec.crop or model_side or (preset.crop if preset else None)
    if crop is None:
        raise ExportError(
            "the model's input size is dynamic: give --crop (the side the model was trained at)"
        )
    if spec.resize is not None and spec.crop_pct is not None:
        raise ExportError("give --resize or --crop-pct, not both")
    crop_pct = spec.crop_pct if spec.crop_pct is not None else (preset.crop_pct if preset else None)
    if crop_pct is not None and not 0.0 < crop_pct <= 1.0:
        raise ExportError(f"--crop-pct must be in (0, 1], got {crop_pct}")
    resize = spec.resize or (math.floor(crop / crop_pct) if crop_pct else crop)
    mean = spec.mean if spec.mean is not None else (preset.mean if preset else None)
    std = spec.std if spec.std is not None else (preset.std if preset else None)
    if mean is None or std is None:
        raise ExportError(
            "say how the model normalises its input: --preset "
            f"({', '.join(sorted(PRESETS))}) or both --mean R G B and --std R G B"
        )
    if len(mean) != 3 or len(std) != 3:
        raise ExportError(f"--mean and --std take three values (R G B), got {list(mean)} and {list(std)}")
    if any(value <= 0 for value in std):
        raise ExportError(f"--std values must be positive, got {list(std)}")
    interpolation = spec.interpolation or (preset.interpolation if preset else "bilinear")
    try:
        return Preprocessing(
            resize_size=resize,
            crop_size=crop,
            interpolation=interpolation,  # type: ignore[arg-type]
            mean=tuple(float(v) for v in mean),  # type: ignore[arg-type]
            std=tuple(float(v) for v in std),  # type: ignore[arg-type]
        )
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'preprocessing'}: {e['msg']}" for e in exc.errors()
        )
        raise ExportError(f"invalid preprocessing: {problems}") from None


def _preset(name: str | None) -> Preset | None:
    if name is None:
        return None
    if name not in PRESETS:
        raise ExportError(f"unknown preset {name!r}; known: {', '.join(sorted(PRESETS))}")
    return PRESETS[name]
