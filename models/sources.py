"""How each upstream publishes checkpoints: URL patterns, spec syntax, and helpers for the zoo data.

Kept apart from the zoo modules so that the checkpoint loader can parse ``hf:`` specs with the same
URL pattern the data uses, and so that each family's data module states only facts, not plumbing.
"""

from __future__ import annotations

from collections.abc import Iterable

from models.config import CIFAR, PublishedCheckpoint
from servable.preprocessing import Preprocessing

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


def default_preprocessing(
    checkpoints: tuple[PublishedCheckpoint, ...], default_tag: str | None, fallback: Preprocessing
) -> Preprocessing:
    """The default checkpoint's preprocessing, or ``fallback`` for an architecture without weights."""
    for checkpoint in checkpoints:
        if checkpoint.tag == default_tag:
            return checkpoint.preprocessing
    return checkpoints[0].preprocessing if checkpoints else fallback
