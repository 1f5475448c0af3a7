"""Architectures and registry, generated from the registry: structure, published facts, forward passes.

Facts are checked against ``../shared/reference/zoo.json`` (the first 25 names) and ``zoo-wave2.json``
(the pre-activation ResNet, ResNet-D, DenseNet and Inception-ResNet names), read through one
normalised view so every registered name runs the same tests.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import pytest
import torch
from conftest import cifar_checkpoint, shared_path
from pydantic import ValidationError

import models
from models.checkpoints import expected_shapes
from models.resnet import ZeroPadShortcut, se_reduced_channels

ALL = models.list_models()
TORCHVISION = models.list_models(layout="torchvision")
TIMM = models.list_models(layout="timm")
#: The CIFAR-10 ResNets of the 2015 paper, with akamaster's shipped checkpoints.
CIFAR = [name for name in models.list_models(family="resnet", layout="cifar")]
#: Built for real (random init) and run: a few seconds each on 2 cores.
BIG = {
    "resnet1202", "wide_resnet101_2", "wide_resnet50_2", "seresnet152", "resnet152", "seresnext101_32x8d",
    "resnet152d", "densenet161", "densenet201", "inception_resnet_v2",
}  # fmt: skip


def forward_sides(name: str) -> tuple[int, int]:
    """Two input sizes the architecture takes: its smallest practical one and a larger one."""
    crop = models.get_model_config(name).preprocessing.crop_size
    if crop <= 32:
        return (32, 24)
    if crop >= 299:
        return (75, 107)  # Inception-ResNet's unpadded stem and reductions need at least 75
    return (64, 96)


ALL_MARKED_SLOW = [pytest.param(name, marks=pytest.mark.slow) if name in BIG else name for name in ALL]


@lru_cache(maxsize=2)
def zoo(wave: int = 1) -> dict[str, Any]:
    return json.loads(shared_path("reference", "zoo.json" if wave == 1 else "zoo-wave2.json").read_text())


def zoo_entry(key: str) -> dict[str, Any]:
    """``torchvision/<arch>`` or ``timm/<arch>`` from whichever reference file records it."""
    for wave in (1, 2):
        if key in zoo(wave):
            return zoo(wave)[key]  # type: ignore[no-any-return]
    raise AssertionError(f"{key} is in neither zoo.json nor zoo-wave2.json")


#: torchvision's ``ImageClassification`` defaults, which zoo-wave2.json leaves out for DenseNet.
TORCHVISION_DEFAULTS = {
    "crop_size": [224],
    "interpolation": "InterpolationMode.BILINEAR",
    "mean": [0.485, 0.456, 0.406],
    "std": [0.229, 0.224, 0.225],
}
#: timm's default tag (``timm.models.get_pretrained_cfg(name).tag``, timm 1.0.31) where the
#: reference does not record it (zoo-wave2.json lists the tags only).
TIMM_DEFAULT_TAGS = {
    "resnet26d": "bt_in1k",
    "resnet50d": "ra2_in1k",
    "resnet101d": "ra2_in1k",
    "resnet152d": "ra2_in1k",
    "resnetv2_50": "a1h_in1k",
    "resnetv2_101": "a1h_in1k",
    "inception_resnet_v2": "tf_in1k",
}


@dataclass(frozen=True)
class TimmFacts:
    num_params: int
    cfgs: dict[str, dict[str, Any]]  # full tag (arch.tag) -> pretrained config
    default_tag: str
    default_crop_pct: float


def timm_facts(name: str) -> TimmFacts:
    """The two files' timm records in one shape."""
    entry = zoo_entry(f"timm/{name}")
    if "pretrained_cfg" in entry:  # zoo.json: default cfg here, tags and cfgs in shared tables
        tags = [t for t in zoo()["timm_pretrained_tags"][name] if t.split(".")[0] == name]
        cfgs = {tag: zoo()["timm_pretrained_cfgs"][tag] for tag in tags}
        default = entry["pretrained_cfg"]
        return TimmFacts(entry["num_params"], cfgs, default["tag"], default["crop_pct"])
    cfgs = dict(entry["pretrained"])
    default_tag = TIMM_DEFAULT_TAGS[name]
    return TimmFacts(entry["num_params"], cfgs, default_tag, cfgs[f"{name}.{default_tag}"]["crop_pct"])


def reference_state_dict(name: str) -> dict[str, list[int]]:
    layout = models.get_model_config(name).layout
    return json.loads(shared_path("reference", "state_dicts", f"{layout}_{name}.json").read_text())


def test_registry_holds_the_issue_architectures() -> None:
    wanted = {
        "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d", "resnext101_32x8d",
        "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2",
        "seresnet18", "seresnet34", "seresnet50", "seresnet101", "seresnet152", "seresnext50_32x4d",
        "seresnext101_32x4d", "seresnext101_32x8d",
        "resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet1202",
    }  # fmt: skip
    assert wanted <= set(ALL)
    assert ALL == sorted(ALL)


def test_unknown_architecture_lists_the_known_ones() -> None:
    with pytest.raises(KeyError, match="resnet50"):
        models.create_model("resnet51")


@pytest.mark.parametrize("name", ALL_MARKED_SLOW)
def test_forward_pass(name: str) -> None:
    """Every architecture builds in eval mode and maps a small batch to one logit row per image, two sizes."""
    config = models.get_model_config(name)
    model = models.create_model(name)
    assert not model.training
    for side in forward_sides(name):
        with torch.no_grad():
            logits = model(torch.randn(2, 3, side, side))
        assert logits.shape == (2, config.num_classes), side
        assert torch.isfinite(logits).all(), side


@pytest.mark.parametrize("name", TORCHVISION + TIMM)
def test_keys_and_shapes_equal_reference(name: str) -> None:
    """Same keys, same order, same shapes as torchvision's/timm's own model: their checkpoints load as-is."""
    reference = {key: tuple(shape) for key, shape in reference_state_dict(name).items()}
    ours = expected_shapes(name, 1000)
    assert list(ours) == list(reference)
    assert ours == reference


@pytest.mark.parametrize("name", ALL)
def test_param_count_is_the_registered_figure(name: str) -> None:
    config = models.get_model_config(name)
    with torch.device("meta"):
        model = models.build_model(name)
    assert sum(p.numel() for p in model.parameters()) == config.num_params


@pytest.mark.parametrize("name", TORCHVISION + TIMM)
def test_param_count_equals_published(name: str) -> None:
    config = models.get_model_config(name)
    if config.layout == "torchvision":
        published = {e["num_params"] for e in zoo_entry(f"torchvision/{name}").values()}
    else:
        published = {timm_facts(name).num_params}
    assert published == {config.num_params}


@pytest.mark.parametrize("name", CIFAR)
def test_cifar_param_count_equals_shipped_checkpoint(name: str) -> None:
    checkpoint = models.load_checkpoint(cifar_checkpoint(name))
    learned = sum(
        v.numel()
        for k, v in checkpoint.state_dict.items()
        if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))
    )
    assert learned == models.get_model_config(name).num_params


@pytest.mark.parametrize("name", TORCHVISION)
def test_torchvision_checkpoint_facts_equal_zoo(name: str) -> None:
    """URLs, hash prefixes, acc@1 and per-checkpoint preprocessing as torchvision publishes them."""
    published = zoo_entry(f"torchvision/{name}")
    config = models.get_model_config(name)
    assert {c.tag for c in config.checkpoints} == set(published)
    for checkpoint in config.checkpoints:
        facts = {**TORCHVISION_DEFAULTS, **published[checkpoint.tag]}
        assert checkpoint.url == facts["url"]
        assert checkpoint.sha256 is not None and f"-{checkpoint.sha256}." in facts["url"]
        assert checkpoint.acc1 == pytest.approx(facts["acc@1"])
        assert checkpoint.spec == f"torchvision:{name}:{checkpoint.tag}"
        pre = checkpoint.preprocessing
        assert (pre.resize_size, pre.crop_size) == (facts["resize_size"][0], facts["crop_size"][0])
        assert pre.interpolation == facts["interpolation"].rsplit(".", 1)[-1].lower()
        assert pre.mean == tuple(facts["mean"]) and pre.std == tuple(facts["std"])
        assert models.preprocessing_for(name, checkpoint.spec) == pre
    # Default = torchvision's DEFAULT (the newest recipe).
    assert config.default_checkpoint is config.checkpoints[-1]
    assert config.preprocessing == config.checkpoints[-1].preprocessing


@pytest.mark.parametrize("name", TIMM)
def test_timm_checkpoint_facts_equal_zoo(name: str) -> None:
    """Hub ids and bicubic crop_pct preprocessing (with its mean/std) of each tag timm publishes for it."""
    facts = timm_facts(name)
    config = models.get_model_config(name)
    assert sorted(f"{name}.{c.tag}" for c in config.checkpoints) == sorted(facts.cfgs)
    for checkpoint in config.checkpoints:
        cfg = facts.cfgs[f"{name}.{checkpoint.tag}"]
        assert checkpoint.spec == f"hf:{cfg['hf_hub_id']}"
        assert checkpoint.url == f"https://huggingface.co/{cfg['hf_hub_id']}/resolve/main/model.safetensors"
        crop = cfg["input_size"][1]
        pre = checkpoint.preprocessing
        assert (pre.crop_size, pre.resize_size) == (crop, math.floor(crop / cfg["crop_pct"]))
        assert pre.interpolation == cfg["interpolation"] == "bicubic"
        assert pre.mean == tuple(cfg["mean"]) and pre.std == tuple(cfg["std"])
        assert cfg.get("classifier", config.head_name) == config.head_name
        assert models.preprocessing_for(name, checkpoint.spec) == pre
    assert config.preprocessing.interpolation == "bicubic"
    if config.checkpoints:
        assert config.default_checkpoint is not None and config.default_checkpoint.tag == facts.default_tag
        assert config.preprocessing == config.default_checkpoint.preprocessing
    else:
        assert config.preprocessing.resize_size == math.floor(224 / facts.default_crop_pct)


def test_per_checkpoint_preprocessing_examples() -> None:
    assert models.preprocessing_for("resnet50", "torchvision:resnet50:IMAGENET1K_V1").resize_size == 256
    assert models.preprocessing_for("resnet50", "torchvision:resnet50:IMAGENET1K_V2").resize_size == 232
    assert models.preprocessing_for("resnet50", "torchvision:resnet50:DEFAULT").resize_size == 232
    a1 = models.preprocessing_for("seresnet50", "hf:timm/seresnet50.a1_in1k")
    ra2 = models.preprocessing_for("seresnet50", "hf:timm/seresnet50.ra2_in1k")
    assert (a1.resize_size, a1.interpolation, ra2.resize_size) == (235, "bicubic", 256)
    assert models.preprocessing_for("seresnet50", "hf:timm/seresnet50.a3_in1k").input_size == (3, 160, 160)
    assert models.preprocessing_for("resnet18").input_size == (3, 224, 224)


@pytest.mark.parametrize("name", CIFAR)
def test_cifar_config(name: str) -> None:
    config = models.get_model_config(name)
    depth = int(name.removeprefix("resnet"))
    args = config.builder_args
    assert 6 * args["layers"][0] + 2 == depth and len(args["layers"]) == 3
    assert args["stage_widths"] == (16, 32, 64) and args["shortcut"] == "A" and config.head_name == "linear"
    pre = config.preprocessing
    assert (pre.resize_size, pre.crop_size, pre.mean, pre.std) == (
        32,
        32,
        (0.485, 0.456, 0.406),
        (0.229, 0.224, 0.225),
    )
    (checkpoint,) = config.checkpoints
    assert checkpoint.spec == f"cifar10:{name}"
    assert checkpoint.url.endswith(f"/pretrained_models/{name}-{checkpoint.sha256[:8]}.th")


@pytest.mark.parametrize("name", CIFAR)
def test_cifar_checkpoint_hash_is_the_shipped_file(name: str) -> None:
    path = cifar_checkpoint(name)
    checkpoint = models.get_model_config(name).checkpoints[0]
    assert path.name == checkpoint.url.rsplit("/", 1)[-1]
    assert models.load_checkpoint(path).sha256 == checkpoint.sha256


def test_option_a_shortcut_subsamples_and_zero_pads() -> None:
    x = torch.arange(2 * 16 * 8 * 8, dtype=torch.float32).reshape(2, 16, 8, 8)
    y = ZeroPadShortcut(stride=2, extra_channels=16)(x)
    assert y.shape == (2, 32, 4, 4)
    assert torch.equal(y[:, 8:24], x[:, :, ::2, ::2])
    assert not y[:, :8].any() and not y[:, 24:].any()
    cifar = models.create_model("resnet20")
    assert not any("shortcut" in key or "downsample" in key for key in cifar.state_dict())


@pytest.mark.parametrize(
    ("channels", "hidden"), [(64, 8), (128, 8), (256, 16), (512, 32), (1024, 64), (2048, 128)]
)
def test_se_width(channels: int, hidden: int) -> None:
    assert se_reduced_channels(channels) == hidden


def test_squeeze_excite_sits_after_last_bn_before_add() -> None:
    """Zeroing SE's output bias to -inf-like values must silence the residual branch, not the shortcut."""
    model = models.create_model("seresnet18")
    block = model.layer1[0]
    assert block.se is not None
    x = torch.randn(1, 64, 8, 8)
    with torch.no_grad():
        block.se.fc2.bias.fill_(-1e4)  # sigmoid -> 0: the block becomes relu(identity)
        assert torch.allclose(block(x), torch.relu(x))


def test_num_classes_override() -> None:
    model = models.create_model("resnet18", num_classes=37)
    assert model.fc.out_features == 37
    assert models.create_model("resnet20", num_classes=100).linear.out_features == 100


def test_labels() -> None:
    imagenet = models.labels_for("resnet50")
    assert imagenet is not None and len(imagenet) == 1000 and imagenet[0] == "tench"
    assert imagenet == tuple(shared_path("labels", "imagenet1k.txt").read_text().splitlines())
    cifar = models.labels_for("resnet20")
    assert cifar is not None and cifar[0] == "airplane" and len(cifar) == 10
    assert models.labels_for("resnet50", 1000) == imagenet
    assert models.labels_for("resnet50", 37) is None
    assert models.labels_for("resnet20", 10) == cifar


def test_configs_are_frozen() -> None:
    config = models.get_model_config("resnet50")
    with pytest.raises(AttributeError):
        config.num_classes = 3  # type: ignore[misc]
    # servable's Preprocessing is a frozen pydantic model.
    with pytest.raises(ValidationError, match="frozen"):
        config.preprocessing.crop_size = 3  # type: ignore[misc]
