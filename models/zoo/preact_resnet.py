"""The pre-activation ResNet family's names: timm's ``resnetv2_50``/``resnetv2_101`` and the CIFAR-10
ResNets of "Identity Mappings in Deep Residual Networks" (He et al. 2016), all
:class:`models.preact_resnet.PreActResNet`.

timm facts are those of ``../shared/reference/zoo-wave2.json`` (its a1h tags normalise to [-1, 1]).
The paper's CIFAR nets have no published weights: they are architectures to train or fine-tune.
"""

from __future__ import annotations

from models.preact_resnet import PreActResNet
from models.registry import register
from models.sources import model_config, timm_checkpoints, timm_preprocessing

FAMILY = "preact_resnet"
#: timm's ``ClassifierHead(use_conv=True)``: a 1x1 convolution.
HEAD = "head.fc"

#: timm's ResNetV2 (pre-activation bottlenecks, BN + ReLU norms, 7x7 stem), one a1h-style tag each:
#: (name, stage depths, parameters, tag)
TIMM = (
    ("resnetv2_50", (3, 4, 6, 3), 25_549_352, "a1h_in1k"),
    ("resnetv2_101", (3, 4, 23, 3), 44_541_480, "a1h_in1k"),
)
#: The paper's CIFAR-10 nets: 3x3 stem of 16, three stages, projection shortcuts. Depth 6n+2 with basic
#: blocks (110: n=18), 9n+2 with bottlenecks (164: n=18); the paper gives 1.7 M for both.
#: (name, block, blocks per stage n, parameters)
CIFAR10 = (
    ("preact-resnet-110", "basic", 18, 1_730_522),
    ("preact-resnet-164", "bottleneck", 18, 1_703_258),
)


def _register() -> None:
    for name, layers, params, tag in TIMM:
        checkpoints = timm_checkpoints(name, [(tag, timm_preprocessing(224, 0.95, "inception"))])
        args: dict[str, object] = {"block": "bottleneck", "layers": layers}
        register(
            model_config(
                name, FAMILY, "timm", PreActResNet, args, checkpoints, num_params=params, head_name=HEAD
            )
        )
    for name, block, n, params in CIFAR10:
        widths = (16, 32, 64) if block == "basic" else (64, 128, 256)
        args = {"block": block, "layers": (n, n, n), "channels": widths, "stem": "cifar", "stem_width": 16}
        register(model_config(name, FAMILY, "cifar", PreActResNet, args, num_params=params, head_name=HEAD))


_register()
