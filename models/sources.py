"""How each upstream publishes models: URL patterns, spec syntax, and each layout's conventions.

Kept apart from the zoo modules so that the checkpoint loader can parse ``hf:`` specs with the same
URL pattern the data uses, and so that each family's data module states only facts (tables of names,
shapes and tags), not plumbing: what every torchvision, timm or CIFAR-10 model shares (classes, label
set, which checkpoint is the default) is said once, in :data:`CONVENTIONS`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from models.config import (
    CIFAR,
    TIMM_DEFAULT,
    TORCHVISION_V1,
    KeyAdapter,
    LabelSet,
    Layout,
    ModelConfig,
    PublishedCheckpoint,
)
from servable.preprocessing import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    INCEPTION_MEAN,
    INCEPTION_STD,
    Preprocessing,
    Triple,
)

if TYPE_CHECKING:
    from torch import nn

TORCHVISION_URL = "https://download.pytorch.org/models/{arch}-{sha}.pth"
HF_URL = "https://huggingface.co/{hub_id}/resolve/main/model.safetensors"
CIFAR_URL = (
    "https://github.com/akamaster/pytorch_resnet_cifar10/raw/master/pretrained_models/{arch}-{sha8}.th"
)


def hf_url(hub_id: str) -> str:
    """The file a ``hf:<org>/<repo>`` spec names: the repo's ``model.safetensors`` on its main branch."""
    return HF_URL.format(hub_id=hub_id)


def torchvision_checkpoints(
    arch: str, weights: Iterable[tuple[str, str, float, Preprocessing]]
) -> tuple[PublishedCheckpoint, ...]:
    """torchvision weight enums; ``weights``: (tag, sha256 prefix of the file name, acc@1, preprocessing)."""
    return tuple(
        PublishedCheckpoint(
            arch=arch,
            tag=tag,
            spec=f"torchvision:{arch}:{tag}",
            url=TORCHVISION_URL.format(arch=arch, sha=sha),
            sha256=sha,
            acc1=acc1,
            preprocessing=preprocessing,
        )
        for tag, sha, acc1, preprocessing in weights
    )


def timm_checkpoints(arch: str, tags: Iterable[tuple[str, Preprocessing]]) -> tuple[PublishedCheckpoint, ...]:
    """timm pretrained tags on the Hugging Face hub (``timm/<arch>.<tag>``); no hash is published."""
    return tuple(
        PublishedCheckpoint(
            arch=arch,
            tag=tag,
            spec=f"hf:timm/{arch}.{tag}",
            url=hf_url(f"timm/{arch}.{tag}"),
            sha256=None,
            acc1=None,
            preprocessing=preprocessing,
        )
        for tag, preprocessing in tags
    )


def cifar10_checkpoint(arch: str, sha256: str, acc1: float) -> PublishedCheckpoint:
    """One of akamaster's CIFAR-10 ResNets (``cifar10:<arch>``), named after its hash prefix."""
    return PublishedCheckpoint(
        arch=arch,
        tag="cifar10",
        spec=f"cifar10:{arch}",
        url=CIFAR_URL.format(arch=arch, sha8=sha256[:8]),
        sha256=sha256,
        acc1=acc1,
        preprocessing=CIFAR,
    )


#: timm's input normalisations: ImageNet's mean/std, or [-1, 1] (TensorFlow ports, the a1h recipes).
NORMS: dict[str, tuple[Triple, Triple]] = {
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
    "inception": (INCEPTION_MEAN, INCEPTION_STD),
}


def timm_preprocessing(crop: int, crop_pct: float, norm: str = "imagenet") -> Preprocessing:
    """A timm tag's eval transform: bicubic, resize to floor(crop / crop_pct), centre-crop ``crop``."""
    mean, std = NORMS[norm]
    return Preprocessing.from_crop_pct(crop, crop_pct, "bicubic", mean=mean, std=std)


@dataclass(frozen=True)
class Convention:
    """What every model of a layout shares; ``default`` indexes the checkpoint its library picks."""

    num_classes: int
    label_set: LabelSet
    preprocessing: Preprocessing
    default: int


CONVENTIONS: dict[Layout, Convention] = {
    # torchvision's DEFAULT is the newest recipe: the last of a name's weights, oldest first.
    "torchvision": Convention(1000, "imagenet1k", TORCHVISION_V1, default=-1),
    # timm's default is the first tag it registers for a name.
    "timm": Convention(1000, "imagenet1k", TIMM_DEFAULT, default=0),
    "cifar": Convention(10, "cifar10", CIFAR, default=0),
}


def model_config(
    name: str,
    family: str,
    layout: Layout,
    builder: Callable[..., nn.Module],
    builder_args: Mapping[str, Any],
    checkpoints: tuple[PublishedCheckpoint, ...] = (),
    *,
    num_params: int,
    head_name: str = "fc",
    key_adapter: KeyAdapter | None = None,
) -> ModelConfig:
    """``name``'s registry entry: its facts, and the rest from its layout's :class:`Convention`.

    The default preprocessing is the default checkpoint's, or the layout's for a name without weights.
    """
    convention = CONVENTIONS[layout]
    default = checkpoints[convention.default] if checkpoints else None
    return ModelConfig(
        name,
        family,
        layout,
        builder,
        builder_args,
        num_classes=convention.num_classes,
        label_set=convention.label_set,
        preprocessing=default.preprocessing if default is not None else convention.preprocessing,
        num_params=num_params,
        checkpoints=checkpoints,
        head_name=head_name,
        default_tag=default.tag if default is not None else None,
        key_adapter=key_adapter,
    )
