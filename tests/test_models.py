"""Architectures and registry, generated from the registry: structure, published facts, forward passes."""

from __future__ import annotations

import json
import math
from functools import lru_cache
from typing import Any

import pytest
import torch

import models
from models.checkpoints import expected_shapes
from models.resnet import ZeroPadShortcut, se_reduced_channels
from conftest import cifar_checkpoint, shared_path

ALL = models.list_models()
TORCHVISION = [name for name in ALL if models.get_model_config(name).family == "torchvision"]
TIMM = [name for name in ALL if models.get_model_config(name).family == "timm"]
CIFAR = [name for name in ALL if models.get_model_config(name).family == "cifar"]
#: Built for real (random init) and run: a few seconds each on 2 cores.
BIG = {"resnet1202", "wide_resnet101_2", "wide_resnet50_2", "seresnet152", "resnet152", "seresnext101_32x8d"}
ALL_MARKED_SLOW = [pytest.param(name, marks=pytest.mark.slow) if name in BIG else name for name in ALL]


@lru_cache(maxsize=1)
def zoo() -> dict[str, Any]:
    return json.loads(shared_path("reference", "zoo.json").read_text())


def reference_state_dict(name: str) -> dict[str, list[int]]:
    family = models.get_model_config(name).family
    return json.loads(shared_path("reference", "state_dicts", f"{family}_{name}.json").read_text())


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
    """Every architecture builds in eval mode and maps a small batch to one logit row per image."""
    config = models.get_model_config(name)
    model = models.create_model(name)
    assert not model.training
    side = 32 if config.family == "cifar" else 64
    with torch.no_grad():
        logits = model(torch.randn(2, 3, side, side))
    assert logits.shape == (2, config.num_classes)
    assert torch.isfinite(logits).all()


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
    entry = zoo()[f"{models.get_model_config(name).family}/{name}"]
    published = (
        {e["num_params"] for e in entry.values()} if "pretrained_cfg" not in entry else {entry["num_params"]}
    )
    assert published == {models.get_model_config(name).num_params}


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
    published = zoo()[f"torchvision/{name}"]
    config = models.get_model_config(name)
    assert {c.tag for c in config.checkpoints} == set(published)
    for checkpoint in config.checkpoints:
        facts = published[checkpoint.tag]
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
    """Hub ids and bicubic crop_pct preprocessing of each tag timm publishes for this very architecture."""
    tags = [t for t in zoo()["timm_pretrained_tags"][name] if t.split(".")[0] == name]
    config = models.get_model_config(name)
    assert sorted(f"{name}.{c.tag}" for c in config.checkpoints) == sorted(tags)
    for checkpoint in config.checkpoints:
        cfg = zoo()["timm_pretrained_cfgs"][f"{name}.{checkpoint.tag}"]
        assert checkpoint.spec == f"hf:{cfg['hf_hub_id']}"
        assert checkpoint.url == f"https://huggingface.co/{cfg['hf_hub_id']}/resolve/main/model.safetensors"
        crop = cfg["input_size"][1]
        pre = checkpoint.preprocessing
        assert (pre.crop_size, pre.resize_size) == (crop, math.floor(crop / cfg["crop_pct"]))
        assert pre.interpolation == cfg["interpolation"] == "bicubic"
        assert models.preprocessing_for(name, checkpoint.spec) == pre
    default_cfg = zoo()[f"timm/{name}"]["pretrained_cfg"]
    assert config.preprocessing.interpolation == "bicubic"
    if config.checkpoints:
        assert config.default_checkpoint is not None and config.default_checkpoint.tag == default_cfg["tag"]
    else:
        assert config.preprocessing.resize_size == math.floor(224 / default_cfg["crop_pct"])


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
    assert 6 * config.layers[0] + 2 == depth and len(config.layers) == 3
    assert config.stage_widths == (16, 32, 64) and config.shortcut == "A" and config.head_name == "linear"
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
    with pytest.raises(AttributeError):
        config.preprocessing.crop_size = 3  # type: ignore[misc]
