"""The ResNet family's names: torchvision ResNet/ResNeXt/Wide ResNet, timm SE-ResNet(-D) and
ResNet-D, the CIFAR-10 ResNets of the paper. All are :class:`models.resnet.ResNet`.

Facts come from the upstream publications (torchvision's weight enums, timm's pretrained configs,
the akamaster CIFAR-10 release) as recorded in ``../shared/reference/zoo.json`` and
``zoo-wave2.json``; they are copied here so the package works without that folder, and the tests
check the copies against it.
"""

from __future__ import annotations

from collections.abc import Iterable

from models.config import CIFAR, TIMM_DEFAULT, TORCHVISION_V1, TORCHVISION_V2, ModelConfig
from models.registry import register
from models.resnet import ResNet
from models.sources import (
    cifar10_checkpoint,
    default_preprocessing,
    timm_checkpoints,
    torchvision_checkpoints,
)
from servable.preprocessing import INCEPTION_MEAN, INCEPTION_STD, Preprocessing

FAMILY = "resnet"


def _torchvision(
    name: str,
    block: str,
    layers: tuple[int, ...],
    *,
    num_params: int,
    weights: Iterable[tuple[str, str, float, Preprocessing]],
    groups: int = 1,
    width_per_group: int = 64,
) -> None:
    """A torchvision ResNet; ``weights`` lists (tag, sha256 prefix, acc@1, preprocessing)."""
    checkpoints = torchvision_checkpoints(name, weights)
    # torchvision's DEFAULT is the newest recipe: V2 where it exists.
    default_tag = checkpoints[-1].tag
    register(
        ModelConfig(
            name=name,
            family=FAMILY,
            layout="torchvision",
            builder=ResNet,
            builder_args={
                "block": block,
                "layers": layers,
                "groups": groups,
                "width_per_group": width_per_group,
            },
            num_classes=1000,
            label_set="imagenet1k",
            preprocessing=default_preprocessing(checkpoints, default_tag, TORCHVISION_V1),
            num_params=num_params,
            checkpoints=checkpoints,
            default_tag=default_tag,
        )
    )


def _timm_tag(
    tag: str, crop: int, crop_pct: float, *, inception_norm: bool = False
) -> tuple[str, Preprocessing]:
    """A timm tag's bicubic crop_pct preprocessing (ImageNet mean/std unless ``inception_norm``)."""
    norm = {"mean": INCEPTION_MEAN, "std": INCEPTION_STD} if inception_norm else {}
    return tag, Preprocessing.from_crop_pct(crop, crop_pct, "bicubic", **norm)  # type: ignore[arg-type]


def _timm(
    name: str,
    block: str,
    layers: tuple[int, ...],
    *,
    num_params: int,
    se: bool,
    tags: Iterable[tuple[str, Preprocessing]] = (),
    default_tag: str | None = None,
    groups: int = 1,
    width_per_group: int = 64,
    deep_stem: bool = False,
) -> None:
    """A timm ResNet: SE-ResNet/SE-ResNeXt (``se``) and the "d" variants (``deep_stem``).

    timm's "d" is a deep 3x3 stem 32 wide (ResNet-D, He et al. 2019 "Bag of Tricks") with
    average-pool downsampling in the shortcuts; ``tags`` lists (tag, preprocessing).
    """
    checkpoints = timm_checkpoints(name, tags)
    register(
        ModelConfig(
            name=name,
            family=FAMILY,
            layout="timm",
            builder=ResNet,
            builder_args={
                "block": block,
                "layers": layers,
                "groups": groups,
                "width_per_group": width_per_group,
                "se": se,
                "stem": "deep" if deep_stem else "imagenet",
                "stem_width": 32 if deep_stem else 64,
                "avg_down": deep_stem,
            },
            num_classes=1000,
            label_set="imagenet1k",
            preprocessing=default_preprocessing(checkpoints, default_tag, TIMM_DEFAULT),
            num_params=num_params,
            checkpoints=checkpoints,
            default_tag=default_tag,
        )
    )


def _cifar(name: str, blocks_per_stage: int, *, num_params: int, sha256: str, acc1: float) -> None:
    """A CIFAR-10 ResNet of He et al. 2015 (6n+2 layers, option-A shortcuts, ``linear`` head)."""
    register(
        ModelConfig(
            name=name,
            family=FAMILY,
            layout="cifar",
            builder=ResNet,
            builder_args={
                "block": "basic",
                "layers": (blocks_per_stage,) * 3,
                "stage_widths": (16, 32, 64),
                "shortcut": "A",
                "stem": "cifar",
                "stem_width": 16,
                "head_name": "linear",
            },
            num_classes=10,
            label_set="cifar10",
            preprocessing=CIFAR,
            num_params=num_params,
            checkpoints=(cifar10_checkpoint(name, sha256, acc1),),
            head_name="linear",
            default_tag="cifar10",
        )
    )


# --- torchvision layout (ResNet v1.5) -------------------------------------------------------------
_torchvision(
    "resnet18",
    "basic",
    (2, 2, 2, 2),
    num_params=11_689_512,
    weights=[("IMAGENET1K_V1", "f37072fd", 69.758, TORCHVISION_V1)],
)
_torchvision(
    "resnet34",
    "basic",
    (3, 4, 6, 3),
    num_params=21_797_672,
    weights=[("IMAGENET1K_V1", "b627a593", 73.314, TORCHVISION_V1)],
)
_torchvision(
    "resnet50",
    "bottleneck",
    (3, 4, 6, 3),
    num_params=25_557_032,
    weights=[
        ("IMAGENET1K_V1", "0676ba61", 76.130, TORCHVISION_V1),
        ("IMAGENET1K_V2", "11ad3fa6", 80.858, TORCHVISION_V2),
    ],
)
_torchvision(
    "resnet101",
    "bottleneck",
    (3, 4, 23, 3),
    num_params=44_549_160,
    weights=[
        ("IMAGENET1K_V1", "63fe2227", 77.374, TORCHVISION_V1),
        ("IMAGENET1K_V2", "cd907fc2", 81.886, TORCHVISION_V2),
    ],
)
_torchvision(
    "resnet152",
    "bottleneck",
    (3, 8, 36, 3),
    num_params=60_192_808,
    weights=[
        ("IMAGENET1K_V1", "394f9c45", 78.312, TORCHVISION_V1),
        ("IMAGENET1K_V2", "f82ba261", 82.284, TORCHVISION_V2),
    ],
)
_torchvision(
    "resnext50_32x4d",
    "bottleneck",
    (3, 4, 6, 3),
    groups=32,
    width_per_group=4,
    num_params=25_028_904,
    weights=[
        ("IMAGENET1K_V1", "7cdf4587", 77.618, TORCHVISION_V1),
        ("IMAGENET1K_V2", "1a0047aa", 81.198, TORCHVISION_V2),
    ],
)
_torchvision(
    "resnext101_32x8d",
    "bottleneck",
    (3, 4, 23, 3),
    groups=32,
    width_per_group=8,
    num_params=88_791_336,
    weights=[
        ("IMAGENET1K_V1", "8ba56ff5", 79.312, TORCHVISION_V1),
        ("IMAGENET1K_V2", "110c445d", 82.834, TORCHVISION_V2),
    ],
)
# The only resnext101_64x4d weights were trained with the V2 recipe (resize 232) but are named V1.
_torchvision(
    "resnext101_64x4d",
    "bottleneck",
    (3, 4, 23, 3),
    groups=64,
    width_per_group=4,
    num_params=83_455_272,
    weights=[("IMAGENET1K_V1", "173b62eb", 83.246, TORCHVISION_V2)],
)
_torchvision(
    "wide_resnet50_2",
    "bottleneck",
    (3, 4, 6, 3),
    width_per_group=128,
    num_params=68_883_240,
    weights=[
        ("IMAGENET1K_V1", "95faca4d", 78.468, TORCHVISION_V1),
        ("IMAGENET1K_V2", "9ba9bcbe", 81.602, TORCHVISION_V2),
    ],
)
_torchvision(
    "wide_resnet101_2",
    "bottleneck",
    (3, 4, 23, 3),
    width_per_group=128,
    num_params=126_886_696,
    weights=[
        ("IMAGENET1K_V1", "32ee1156", 78.848, TORCHVISION_V1),
        ("IMAGENET1K_V2", "d733dc28", 82.510, TORCHVISION_V2),
    ],
)

# --- timm layout, squeeze-and-excitation --------------------------------------------------------
# timm publishes no weights for seresnet18/34/101/152 (its seresnet152d tag is another architecture).
_timm("seresnet18", "basic", (2, 2, 2, 2), se=True, num_params=11_779_624)
_timm("seresnet34", "basic", (3, 4, 6, 3), se=True, num_params=21_960_416)
_timm(
    "seresnet50",
    "bottleneck",
    (3, 4, 6, 3),
    se=True,
    num_params=28_088_024,
    default_tag="a1_in1k",
    tags=[
        _timm_tag("a1_in1k", 224, 0.95),
        _timm_tag("a2_in1k", 224, 0.95),
        _timm_tag("a3_in1k", 160, 0.95),
        _timm_tag("ra2_in1k", 224, 0.875),
    ],
)
_timm("seresnet101", "bottleneck", (3, 4, 23, 3), se=True, num_params=49_326_872)
_timm("seresnet152", "bottleneck", (3, 8, 36, 3), se=True, num_params=66_821_848)
_timm(
    "seresnext26d_32x4d",
    "bottleneck",
    (2, 2, 2, 2),
    se=True,
    groups=32,
    width_per_group=4,
    num_params=16_809_512,
    deep_stem=True,
    default_tag="bt_in1k",
    tags=[_timm_tag("bt_in1k", 224, 0.875)],
)
_timm(
    "seresnext50_32x4d",
    "bottleneck",
    (3, 4, 6, 3),
    se=True,
    groups=32,
    width_per_group=4,
    num_params=27_559_896,
    default_tag="racm_in1k",
    tags=[_timm_tag("racm_in1k", 224, 0.875), _timm_tag("gluon_in1k", 224, 0.875)],
)
_timm(
    "seresnext101_32x4d",
    "bottleneck",
    (3, 4, 23, 3),
    se=True,
    groups=32,
    width_per_group=4,
    num_params=48_955_416,
    default_tag="gluon_in1k",
    tags=[_timm_tag("gluon_in1k", 224, 0.875)],
)
_timm(
    "seresnext101_32x8d",
    "bottleneck",
    (3, 4, 23, 3),
    se=True,
    groups=32,
    width_per_group=8,
    num_params=93_569_048,
    default_tag="ah_in1k",
    tags=[_timm_tag("ah_in1k", 224, 0.95)],
)

# --- timm layout, ResNet-D (deep stem, avg-pool downsampling, no SE) --------------------------------
# Default tags are timm's (the first it registers): ra2 for 50d/101d/152d.
_timm(
    "resnet26d",
    "bottleneck",
    (2, 2, 2, 2),
    se=False,
    deep_stem=True,
    num_params=16_014_408,
    default_tag="bt_in1k",
    tags=[_timm_tag("bt_in1k", 224, 0.875)],
)
_timm(
    "resnet50d",
    "bottleneck",
    (3, 4, 6, 3),
    se=False,
    deep_stem=True,
    num_params=25_576_264,
    default_tag="ra2_in1k",
    tags=[
        _timm_tag("ra2_in1k", 224, 0.875),
        _timm_tag("ra4_e3600_r224_in1k", 224, 0.95, inception_norm=True),
        _timm_tag("a1_in1k", 224, 0.95),
        _timm_tag("a2_in1k", 224, 0.95),
        _timm_tag("a3_in1k", 160, 0.95),
        _timm_tag("gluon_in1k", 224, 0.875),
    ],
)
_timm(
    "resnet101d",
    "bottleneck",
    (3, 4, 23, 3),
    se=False,
    deep_stem=True,
    num_params=44_568_392,
    default_tag="ra2_in1k",
    tags=[_timm_tag("ra2_in1k", 256, 0.95), _timm_tag("gluon_in1k", 224, 0.875)],
)
_timm(
    "resnet152d",
    "bottleneck",
    (3, 8, 36, 3),
    se=False,
    deep_stem=True,
    num_params=60_212_040,
    default_tag="ra2_in1k",
    tags=[_timm_tag("ra2_in1k", 256, 0.95), _timm_tag("gluon_in1k", 224, 0.875)],
)

# --- CIFAR-10 ResNets of the paper (section 4.2), akamaster's trained checkpoints -------------------
# acc1 = 100 - the published test error on the full CIFAR-10 test set.
_cifar(
    "resnet20",
    3,
    num_params=269_722,
    acc1=91.73,
    sha256="12fca82f0bebc4135bf1f32f6e3710e61d5108578464b84fd6d7f5c1b04036c8",
)
_cifar(
    "resnet32",
    5,
    num_params=464_154,
    acc1=92.63,
    sha256="d509ac1820d7f25398913559d7e81a13229b1e7adc5648e3bfa5e22dc137f850",
)
_cifar(
    "resnet44",
    7,
    num_params=658_586,
    acc1=93.10,
    sha256="014dd6541728a1c700b1642ab640e211dc6eb8ed507d70697458dc8f8a0ae2e4",
)
_cifar(
    "resnet56",
    9,
    num_params=853_018,
    acc1=93.39,
    sha256="4bfd97631478d6b638d2764fd2baff3edb1d7d82252d54439343b6596b9b5367",
)
_cifar("resnet110", 18, num_params=1_727_962, acc1=93.68, sha256="1d1ed7c2")
_cifar("resnet1202", 200, num_params=19_421_274, acc1=93.82, sha256="f3b1deed")
