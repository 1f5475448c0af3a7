"""Frozen facts about architectures and their published checkpoints (no torch needed to read them).

A :class:`ModelConfig` is what the registry maps a name to: the builder callable and its arguments,
plus everything serving, export and the checkpoint loader need to know without building the model
(head name, label set, parameter count, published checkpoints with their preprocessing, and an
optional hook that renames the keys of old checkpoint files).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

from servable.preprocessing import Preprocessing

if TYPE_CHECKING:
    import torch
    from torch import nn

#: Whose key layout (and so whose checkpoints) an architecture follows.
Layout = Literal["torchvision", "timm", "cifar"]
LabelSet = Literal["imagenet1k", "cifar10"]
#: Renames the keys of a state_dict saved by an older release of the layout (torchvision's DenseNet files).
KeyAdapter = Callable[[dict[str, "torch.Tensor"]], dict[str, "torch.Tensor"]]

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
    """A registered architecture: how to build it, and the facts serving, export and loading need.

    ``family`` is the architecture family (its module: ``resnet``, ``preact_resnet``, ``densenet``,
    ``inception_resnet``); ``layout`` is whose state_dict keys it reproduces, which decides the
    checkpoint specs that name it (``torchvision:``, ``hf:timm/``, ``cifar10:``).
    """

    name: str
    family: str
    layout: Layout
    builder: Callable[..., nn.Module] = field(repr=False)
    builder_args: Mapping[str, Any] = field(repr=False, hash=False)
    num_classes: int
    label_set: LabelSet
    preprocessing: Preprocessing
    num_params: int
    checkpoints: tuple[PublishedCheckpoint, ...]
    head_name: str = "fc"
    default_tag: str | None = None
    key_adapter: KeyAdapter | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        # A read-only copy: the registry's data cannot be changed through a config handed out.
        object.__setattr__(self, "builder_args", MappingProxyType(dict(self.builder_args)))
        for checkpoint in self.checkpoints:
            if checkpoint.arch != self.name:
                raise ValueError(
                    f"{self.name}: checkpoint {checkpoint.spec} is registered for {checkpoint.arch}"
                )

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

    def builder_kwargs(self) -> dict[str, Any]:
        """Arguments for :attr:`builder` (without ``num_classes``)."""
        return dict(self.builder_args)

    def build(self, num_classes: int | None = None) -> nn.Module:
        """A randomly initialised model in training mode (on the current default device)."""
        return self.builder(num_classes=num_classes or self.num_classes, **self.builder_args)
