"""The ResNet family's names: torchvision ResNet/ResNeXt/Wide ResNet, timm SE-ResNet(-D) and
ResNet-D, the CIFAR-10 ResNets of the paper. All are :class:`models.resnet.ResNet`.

Facts come from the upstream publications (torchvision's weight enums, timm's pretrained configs,
the akamaster CIFAR-10 release) as recorded in ``../shared/reference/zoo.json`` and
``zoo-wave2.json``; they are copied here so the package works without that folder, and the tests
check the copies against it.
"""

from __future__ import annotations

from models.config import TORCHVISION_V1 as V1
from models.config import TORCHVISION_V2 as V2
from models.registry import register
from models.resnet import ResNet
from models.sources import (
    cifar10_checkpoint,
    model_config,
    timm_checkpoints,
    timm_preprocessing,
    torchvision_checkpoints,
)

FAMILY = "resnet"

# --- torchvision layout (ResNet v1.5) -------------------------------------------------------------
#: (name, block, stage depths, groups, width per group, parameters)
TORCHVISION = (
    ("resnet18", "basic", (2, 2, 2, 2), 1, 64, 11_689_512),
    ("resnet34", "basic", (3, 4, 6, 3), 1, 64, 21_797_672),
    ("resnet50", "bottleneck", (3, 4, 6, 3), 1, 64, 25_557_032),
    ("resnet101", "bottleneck", (3, 4, 23, 3), 1, 64, 44_549_160),
    ("resnet152", "bottleneck", (3, 8, 36, 3), 1, 64, 60_192_808),
    ("resnext50_32x4d", "bottleneck", (3, 4, 6, 3), 32, 4, 25_028_904),
    ("resnext101_32x8d", "bottleneck", (3, 4, 23, 3), 32, 8, 88_791_336),
    ("resnext101_64x4d", "bottleneck", (3, 4, 23, 3), 64, 4, 83_455_272),
    ("wide_resnet50_2", "bottleneck", (3, 4, 6, 3), 1, 128, 68_883_240),
    ("wide_resnet101_2", "bottleneck", (3, 4, 23, 3), 1, 128, 126_886_696),
)
#: torchvision's weight enums, each name's oldest first: (name, tag, sha256 prefix, acc@1, preprocessing)
TORCHVISION_WEIGHTS = (
    ("resnet18", "IMAGENET1K_V1", "f37072fd", 69.758, V1),
    ("resnet34", "IMAGENET1K_V1", "b627a593", 73.314, V1),
    ("resnet50", "IMAGENET1K_V1", "0676ba61", 76.130, V1),
    ("resnet50", "IMAGENET1K_V2", "11ad3fa6", 80.858, V2),
    ("resnet101", "IMAGENET1K_V1", "63fe2227", 77.374, V1),
    ("resnet101", "IMAGENET1K_V2", "cd907fc2", 81.886, V2),
    ("resnet152", "IMAGENET1K_V1", "394f9c45", 78.312, V1),
    ("resnet152", "IMAGENET1K_V2", "f82ba261", 82.284, V2),
    ("resnext50_32x4d", "IMAGENET1K_V1", "7cdf4587", 77.618, V1),
    ("resnext50_32x4d", "IMAGENET1K_V2", "1a0047aa", 81.198, V2),
    ("resnext101_32x8d", "IMAGENET1K_V1", "8ba56ff5", 79.312, V1),
    ("resnext101_32x8d", "IMAGENET1K_V2", "110c445d", 82.834, V2),
    # The only resnext101_64x4d weights were trained with the V2 recipe (resize 232) but are named V1.
    ("resnext101_64x4d", "IMAGENET1K_V1", "173b62eb", 83.246, V2),
    ("wide_resnet50_2", "IMAGENET1K_V1", "95faca4d", 78.468, V1),
    ("wide_resnet50_2", "IMAGENET1K_V2", "9ba9bcbe", 81.602, V2),
    ("wide_resnet101_2", "IMAGENET1K_V1", "32ee1156", 78.848, V1),
    ("wide_resnet101_2", "IMAGENET1K_V2", "d733dc28", 82.510, V2),
)

# --- timm layout: squeeze-and-excitation, and ResNet-D ----------------------------------------------
# timm's "d" is a deep 3x3 stem 32 wide (ResNet-D, He et al. 2019 "Bag of Tricks") with average-pool
# downsampling in the shortcuts.
#: (name, block, stage depths, groups, width per group, SE, "d", parameters)
TIMM = (
    ("seresnet18", "basic", (2, 2, 2, 2), 1, 64, True, False, 11_779_624),
    ("seresnet34", "basic", (3, 4, 6, 3), 1, 64, True, False, 21_960_416),
    ("seresnet50", "bottleneck", (3, 4, 6, 3), 1, 64, True, False, 28_088_024),
    ("seresnet101", "bottleneck", (3, 4, 23, 3), 1, 64, True, False, 49_326_872),
    ("seresnet152", "bottleneck", (3, 8, 36, 3), 1, 64, True, False, 66_821_848),
    ("seresnext26d_32x4d", "bottleneck", (2, 2, 2, 2), 32, 4, True, True, 16_809_512),
    ("seresnext50_32x4d", "bottleneck", (3, 4, 6, 3), 32, 4, True, False, 27_559_896),
    ("seresnext101_32x4d", "bottleneck", (3, 4, 23, 3), 32, 4, True, False, 48_955_416),
    ("seresnext101_32x8d", "bottleneck", (3, 4, 23, 3), 32, 8, True, False, 93_569_048),
    ("resnet26d", "bottleneck", (2, 2, 2, 2), 1, 64, False, True, 16_014_408),
    ("resnet50d", "bottleneck", (3, 4, 6, 3), 1, 64, False, True, 25_576_264),
    ("resnet101d", "bottleneck", (3, 4, 23, 3), 1, 64, False, True, 44_568_392),
    ("resnet152d", "bottleneck", (3, 8, 36, 3), 1, 64, False, True, 60_212_040),
)
#: timm's pretrained tags, each name's default first: (name, tag, crop, crop_pct, normalisation).
#: timm publishes no weights for seresnet18/34/101/152 (its seresnet152d tag is another architecture).
TIMM_TAGS = (
    ("seresnet50", "a1_in1k", 224, 0.95, "imagenet"),
    ("seresnet50", "a2_in1k", 224, 0.95, "imagenet"),
    ("seresnet50", "a3_in1k", 160, 0.95, "imagenet"),
    ("seresnet50", "ra2_in1k", 224, 0.875, "imagenet"),
    ("seresnext26d_32x4d", "bt_in1k", 224, 0.875, "imagenet"),
    ("seresnext50_32x4d", "racm_in1k", 224, 0.875, "imagenet"),
    ("seresnext50_32x4d", "gluon_in1k", 224, 0.875, "imagenet"),
    ("seresnext101_32x4d", "gluon_in1k", 224, 0.875, "imagenet"),
    ("seresnext101_32x8d", "ah_in1k", 224, 0.95, "imagenet"),
    ("resnet26d", "bt_in1k", 224, 0.875, "imagenet"),
    ("resnet50d", "ra2_in1k", 224, 0.875, "imagenet"),
    ("resnet50d", "ra4_e3600_r224_in1k", 224, 0.95, "inception"),
    ("resnet50d", "a1_in1k", 224, 0.95, "imagenet"),
    ("resnet50d", "a2_in1k", 224, 0.95, "imagenet"),
    ("resnet50d", "a3_in1k", 160, 0.95, "imagenet"),
    ("resnet50d", "gluon_in1k", 224, 0.875, "imagenet"),
    ("resnet101d", "ra2_in1k", 256, 0.95, "imagenet"),
    ("resnet101d", "gluon_in1k", 224, 0.875, "imagenet"),
    ("resnet152d", "ra2_in1k", 256, 0.95, "imagenet"),
    ("resnet152d", "gluon_in1k", 224, 0.875, "imagenet"),
)

# --- CIFAR-10 ResNets of the paper (section 4.2), akamaster's trained checkpoints -------------------
# 6n+2 layers, option-A shortcuts, a ``linear`` head; acc1 = 100 - the published test error on the
# full CIFAR-10 test set.
#: (name, blocks per stage n, parameters, acc@1, sha256 or its published prefix)
CIFAR10 = (
    ("resnet20", 3, 269_722, 91.73, "12fca82f0bebc4135bf1f32f6e3710e61d5108578464b84fd6d7f5c1b04036c8"),
    ("resnet32", 5, 464_154, 92.63, "d509ac1820d7f25398913559d7e81a13229b1e7adc5648e3bfa5e22dc137f850"),
    ("resnet44", 7, 658_586, 93.10, "014dd6541728a1c700b1642ab640e211dc6eb8ed507d70697458dc8f8a0ae2e4"),
    ("resnet56", 9, 853_018, 93.39, "4bfd97631478d6b638d2764fd2baff3edb1d7d82252d54439343b6596b9b5367"),
    ("resnet110", 18, 1_727_962, 93.68, "1d1ed7c2"),
    ("resnet1202", 200, 19_421_274, 93.82, "f3b1deed"),
)


def _register() -> None:
    for name, block, layers, groups, width, params in TORCHVISION:
        weights = [row[1:] for row in TORCHVISION_WEIGHTS if row[0] == name]
        checkpoints = torchvision_checkpoints(name, weights)
        args = {"block": block, "layers": layers, "groups": groups, "width_per_group": width}
        register(model_config(name, FAMILY, "torchvision", ResNet, args, checkpoints, num_params=params))
    for name, block, layers, groups, width, se, d, params in TIMM:
        tags = [
            (tag, timm_preprocessing(crop, pct, norm)) for n, tag, crop, pct, norm in TIMM_TAGS if n == name
        ]
        checkpoints = timm_checkpoints(name, tags)
        args = {"block": block, "layers": layers, "groups": groups, "width_per_group": width, "se": se}
        args |= {"stem": "deep" if d else "imagenet", "stem_width": 32 if d else 64, "avg_down": d}
        register(model_config(name, FAMILY, "timm", ResNet, args, checkpoints, num_params=params))
    for name, n, params, acc1, sha256 in CIFAR10:
        checkpoints = (cifar10_checkpoint(name, sha256, acc1),)
        args = {"block": "basic", "layers": (n, n, n), "stage_widths": (16, 32, 64), "shortcut": "A"}
        args |= {"stem": "cifar", "stem_width": 16, "head_name": "linear"}
        register(
            model_config(
                name, FAMILY, "cifar", ResNet, args, checkpoints, num_params=params, head_name="linear"
            )
        )


_register()
