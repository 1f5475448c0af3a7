"""The DenseNet family's names: torchvision's DenseNet-121/161/169/201 (:class:`models.densenet.DenseNet`).

URLs, hash prefixes, acc@1 and parameter counts are torchvision's IMAGENET1K_V1 weights as recorded in
``../shared/reference/zoo-wave2.json``. Those files use the 2017 key names, renamed on load by
:func:`models.densenet.rename_legacy_keys` (this family's key adapter).
"""

from __future__ import annotations

from models.config import TORCHVISION_V1, ModelConfig
from models.densenet import DenseNet, rename_legacy_keys
from models.registry import register
from models.sources import torchvision_checkpoints

FAMILY = "densenet"


def _torchvision(
    name: str,
    growth_rate: int,
    block_config: tuple[int, ...],
    num_init_features: int,
    *,
    num_params: int,
    sha: str,
    acc1: float,
) -> None:
    """A torchvision DenseNet-BC with its one published checkpoint (IMAGENET1K_V1, resize 256 crop 224)."""
    register(
        ModelConfig(
            name=name,
            family=FAMILY,
            layout="torchvision",
            builder=DenseNet,
            builder_args={
                "growth_rate": growth_rate,
                "block_config": block_config,
                "num_init_features": num_init_features,
            },
            num_classes=1000,
            label_set="imagenet1k",
            preprocessing=TORCHVISION_V1,
            num_params=num_params,
            checkpoints=torchvision_checkpoints(name, [("IMAGENET1K_V1", sha, acc1, TORCHVISION_V1)]),
            head_name="classifier",
            default_tag="IMAGENET1K_V1",
            key_adapter=rename_legacy_keys,
        )
    )


_torchvision("densenet121", 32, (6, 12, 24, 16), 64, num_params=7_978_856, sha="a639ec97", acc1=74.434)
_torchvision("densenet161", 48, (6, 12, 36, 24), 96, num_params=28_681_000, sha="8d451a50", acc1=77.138)
_torchvision("densenet169", 32, (6, 12, 32, 32), 64, num_params=14_149_480, sha="b2777c0a", acc1=75.600)
_torchvision("densenet201", 32, (6, 12, 48, 32), 64, num_params=20_013_928, sha="c1103571", acc1=76.896)
