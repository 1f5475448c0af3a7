"""The one description of how pixels become a model's input: resize the shorter side, centre-crop, normalise.

A checkpoint's registry entry (models/), the exporter that bakes the normalisation into the graph
(export/) and the service that resizes and crops uploads (service/) all read this one type, so they
cannot drift apart. It is a frozen pydantic model because it also travels inside the model card.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Interpolation = Literal["nearest", "bilinear", "bicubic"]
Triple = tuple[float, float, float]

IMAGENET_MEAN: Triple = (0.485, 0.456, 0.406)
IMAGENET_STD: Triple = (0.229, 0.224, 0.225)
#: timm's "inception" normalisation (pixels to [-1, 1]): ResNetV2 a1h, Inception-ResNet, ResNet-D ra4.
INCEPTION_MEAN: Triple = (0.5, 0.5, 0.5)
INCEPTION_STD: Triple = (0.5, 0.5, 0.5)


class Preprocessing(BaseModel):
    """How raw pixels become the model's uint8 input, and how the graph normalises them.

    ``mean`` and ``std`` are applied inside the exported graph (on 0..1 scaled values); they are
    recorded here so a reader knows what the graph does. The service never applies them itself.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    resize_size: int = Field(gt=0, description="Shorter side after resizing, in pixels.")
    crop_size: int = Field(gt=0, description="Side of the square centre crop fed to the model.")
    interpolation: Interpolation = "bilinear"
    mean: Triple = IMAGENET_MEAN
    std: Triple = IMAGENET_STD

    @model_validator(mode="after")
    def _crop_fits(self) -> Preprocessing:
        if self.crop_size > self.resize_size:
            raise ValueError(f"crop_size {self.crop_size} exceeds resize_size {self.resize_size}")
        return self

    @property
    def input_size(self) -> tuple[int, int, int]:
        """(channels, height, width) of the tensor the network itself receives."""
        return (3, self.crop_size, self.crop_size)

    @classmethod
    def from_crop_pct(
        cls,
        crop_size: int,
        crop_pct: float,
        interpolation: Interpolation = "bicubic",
        *,
        mean: Triple = IMAGENET_MEAN,
        std: Triple = IMAGENET_STD,
    ) -> Preprocessing:
        """timm's convention: resize to floor(crop / crop_pct) (0.875 -> 256, 0.95 -> 235 for 224)."""
        return cls(
            resize_size=math.floor(crop_size / crop_pct),
            crop_size=crop_size,
            interpolation=interpolation,
            mean=mean,
            std=std,
        )

