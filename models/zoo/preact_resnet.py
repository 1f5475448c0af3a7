"""The pre-activation ResNet family's names: timm's ``resnetv2_50``/``resnetv2_101`` and the CIFAR-10
ResNets of "Identity Mappings in Deep Residual Networks" (He et al. 2016), all
:class:`models.preact_resnet.PreActResNet`.

timm facts are those of ``../shared/reference/zoo-wave2.json`` (its a1h tags normalise to [-1, 1]).
The paper's CIFAR nets have no published weights: they are architectures to train or fine-tune.
"""

from __future__ import annotations

from models.config import CIFAR, TIMM_DEFAULT, ModelConfig
from models.preact_resnet import PreActResNet
from models.registry import register
from models.sources import default_preprocessing, timm_checkpoints
from servable.preprocessing import INCEPTION_MEAN, INCEPTION_STD, Preprocessing

FAMILY = "preact_resnet"


def _timm(name: str, layers: tuple[int, ...], *, num_params: int, tag: str) -> None:
    """A timm ResNetV2 (pre-activation bottleneck, BN + ReLU norms, 7x7 stem) with one a1h-style tag."""
    checkpoints = timm_checkpoints(
        name,
        [(tag, Preprocessing.from_crop_pct(224, 0.95, "bicubic", mean=INCEPTION_MEAN, std=INCEPTION_STD))],
    )
    register(
        ModelConfig(
            name=name,
            family=FAMILY,
            layout="timm",
            builder=PreActResNet,
            builder_args={"block": "bottleneck", "layers": layers},
            num_classes=1000,
            label_set="imagenet1k",
            preprocessing=default_preprocessing(checkpoints, tag, TIMM_DEFAULT),
            num_params=num_params,
            checkpoints=checkpoints,
            head_name="head.fc",
            default_tag=tag,
        )
    )


def _cifar(name: str, block: str, blocks_per_stage: int, *, num_params: int) -> None:
    """A CIFAR-10 pre-activation ResNet: 3x3 stem of 16, three stages, projection shortcuts."""
    widths = (16, 32, 64) if block == "basic" else (64, 128, 256)
    register(
        ModelConfig(
            name=name,
            family=FAMILY,
            layout="cifar",
            builder=PreActResNet,
            builder_args={
                "block": block,
                "layers": (blocks_per_stage,) * 3,
                "channels": widths,
                "stem": "cifar",
                "stem_width": 16,
            },
            num_classes=10,
            label_set="cifar10",
            preprocessing=CIFAR,
            num_params=num_params,
            checkpoints=(),
            head_name="head.fc",
        )
    )


_timm("resnetv2_50", (3, 4, 6, 3), num_params=25_549_352, tag="a1h_in1k")
_timm("resnetv2_101", (3, 4, 23, 3), num_params=44_541_480, tag="a1h_in1k")
# Depth 6n+2 with basic blocks (110: n=18), 9n+2 with bottlenecks (164: n=18); the paper gives 1.7 M for both.
_cifar("preact-resnet-110", "basic", 18, num_params=1_730_522)
_cifar("preact-resnet-164", "bottleneck", 18, num_params=1_703_258)
