"""Frozen facts about architectures and their published checkpoints (no torch needed to read them)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

Family = Literal["torchvision", "timm", "cifar"]
LabelSet = Literal["imagenet1k", "cifar10"]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocessing:
    """How a checkpoint expects its input: resize the shorter side, centre-crop, normalise.

    Mirrors the fields of ``service.model_card.Preprocessing`` so export/ can convert one into the
    other, but stays a plain dataclass: models/ knows nothing of pydantic or HTTP.
    """

    resize_size: int
    crop_size: int
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        if self.crop_size > self.resize_size:
            raise ValueError(f"crop_size {self.crop_size} exceeds resize_size {self.resize_size}")
        if self.interpolation not in ("nearest", "bilinear", "bicubic"):
            raise ValueError(f"unknown interpolation {self.interpolation!r}")

    @property
    def input_size(self) -> tuple[int, int, int]:
        """(channels, height, width) of the tensor the model receives."""
        return (3, self.crop_size, self.crop_size)

    @classmethod
    def from_crop_pct(cls, crop_size: int, crop_pct: float, interpolation: str = "bicubic") -> Preprocessing:
        """timm's convention: resize to floor(crop / crop_pct) (0.875 -> 256, 0.95 -> 235 for 224)."""
        return cls(
            resize_size=math.floor(crop_size / crop_pct), crop_size=crop_size, interpolation=interpolation
        )


TORCHVISION_V1 = Preprocessing(resize_size=256, crop_size=224, interpolation="bilinear")
TORCHVISION_V2 = Preprocessing(resize_size=232, crop_size=224, interpolation="bilinear")
TIMM_DEFAULT = Preprocessing.from_crop_pct(224, 0.875)
CIFAR = Preprocessing(resize_size=32, crop_size=32, interpolation="bilinear")


@dataclass(frozen=True)
class PublishedCheckpoint:
    """One published set of weights for an architecture, with what is needed to fetch and check it.

    ``sha256`` is the full hash or the published prefix (torchvision's 8 hex digits in the file name);
    ``None`` where nothing is published (Hugging Face hub files): the loader then records the hash only.
    """

    arch: str
    tag: str
    spec: str
    url: str
    sha256: str | None
    acc1: float | None
    preprocessing: Preprocessing


@dataclass(frozen=True)
class ModelConfig:
    """A registered architecture: builder arguments plus the facts serving and export need."""

    name: str
    family: Family
    num_classes: int
    label_set: LabelSet
    preprocessing: Preprocessing
    num_params: int
    checkpoints: tuple[PublishedCheckpoint, ...]
    block: Literal["basic", "bottleneck"]
    layers: tuple[int, ...]
    stage_widths: tuple[int, ...] = (64, 128, 256, 512)
    groups: int = 1
    width_per_group: int = 64
    se: bool = False
    shortcut: Literal["A", "B"] = "B"
    stem: Literal["imagenet", "deep", "cifar"] = "imagenet"
    stem_width: int = 64
    avg_down: bool = False
    head_name: str = "fc"
    default_tag: str | None = field(default=None)

    @property
    def default_checkpoint(self) -> PublishedCheckpoint | None:
        """The checkpoint the upstream library picks by default (torchvision's DEFAULT, timm's first tag)."""
        for checkpoint in self.checkpoints:
            if checkpoint.tag == self.default_tag:
                return checkpoint
        return self.checkpoints[0] if self.checkpoints else None

    def checkpoint(self, tag: str) -> PublishedCheckpoint:
        """The published checkpoint called ``tag`` (``DEFAULT`` picks :attr:`default_checkpoint`)."""
        if tag == "DEFAULT" and self.default_checkpoint is not None:
            return self.default_checkpoint
        for checkpoint in self.checkpoints:
            if checkpoint.tag == tag:
                return checkpoint
        known = ", ".join(c.tag for c in self.checkpoints) or "none"
        raise KeyError(f"{self.name} has no published checkpoint {tag!r} (known: {known})")

    def builder_kwargs(self) -> dict[str, object]:
        """Arguments for :class:`models.resnet.ResNet` (without ``num_classes``)."""
        return {
            "block": self.block,
            "layers": self.layers,
            "stage_widths": self.stage_widths,
            "groups": self.groups,
            "width_per_group": self.width_per_group,
            "se": self.se,
            "shortcut": self.shortcut,
            "stem": self.stem,
            "stem_width": self.stem_width,
            "avg_down": self.avg_down,
            "head_name": self.head_name,
        }
