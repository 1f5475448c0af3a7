"""The families beyond the plain ResNet: registry listing, each family's own behaviour and checkpoint hooks.

Keys, shapes, parameter counts, published facts and forward passes of every name are generated in
tests/test_models.py; this file checks what is particular to a family (DenseNet's legacy key names,
ResNetV2's 1x1-convolution head, the pre-activation identity path, Inception-ResNet's 299 input).
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT
from safetensors.torch import save_file

import models
import models.zoo
from models import CheckpointError
from models.checkpoints import expected_shapes, mismatch
from models.config import ModelConfig
from models.densenet import rename_legacy_keys
from models.preact_resnet import PreActBasic, PreActBottleneck
from models.registry import register


def logits(model: torch.nn.Module, side: int, batch: int = 2) -> torch.Tensor:
    torch.manual_seed(1)
    with torch.no_grad():
        return model(torch.randn(batch, 3, side, side))


# --- the registry --------------------------------------------------------------------------------------


def test_families_partition_the_registry() -> None:
    families = models.list_families()
    assert families == ["densenet", "inception_resnet", "preact_resnet", "resnet"]
    by_family = {family: models.list_models(family=family) for family in families}
    assert sorted(name for names in by_family.values() for name in names) == models.list_models()
    assert by_family["densenet"] == ["densenet121", "densenet161", "densenet169", "densenet201"]
    assert by_family["inception_resnet"] == ["inception_resnet_v2"]
    assert by_family["preact_resnet"] == [
        "preact-resnet-110",
        "preact-resnet-164",
        "resnetv2_101",
        "resnetv2_50",
    ]
    assert {"resnet26d", "resnet50d", "resnet101d", "resnet152d", "resnet50", "resnet20"} <= set(
        by_family["resnet"]
    )
    for family, names in by_family.items():
        assert all(models.get_model_config(name).family == family for name in names)


def test_python_m_models_lists_every_name_by_family() -> None:
    listing = subprocess.run(
        [sys.executable, "-m", "models"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    for family in models.list_families():
        assert f"{family} ({len(models.list_models(family=family))})" in listing
    rows = {line.split()[0]: line for line in listing.splitlines() if line.startswith("  ")}
    assert sorted(rows) == models.list_models()
    assert "hf:timm/inception_resnet_v2.tf_in1k" in rows["inception_resnet_v2"]
    assert "no published weights" in rows["preact-resnet-164"]


def test_every_data_module_is_a_family() -> None:
    """A family is one data module in models/zoo (found by listing the package) registering its names."""
    assert list(models.zoo.FAMILY_MODULES) == models.list_families()


def test_unknown_family_lists_the_known_ones() -> None:
    with pytest.raises(KeyError, match="densenet, inception_resnet, preact_resnet, resnet"):
        models.list_models(family="vgg")


def test_layout_filter() -> None:
    assert models.list_models(family="preact_resnet", layout="timm") == ["resnetv2_101", "resnetv2_50"]
    assert models.list_models(family="preact_resnet", layout="cifar") == [
        "preact-resnet-110",
        "preact-resnet-164",
    ]


def test_registering_a_name_twice_or_a_foreign_checkpoint_is_refused() -> None:
    config = models.get_model_config("densenet121")
    with pytest.raises(ValueError, match="registered twice"):
        register(config)
    with pytest.raises(ValueError, match="registered for densenet121"):
        ModelConfig(**{**config.__dict__, "name": "densenet121-copy"})


def test_builder_arguments_are_read_only() -> None:
    with pytest.raises(TypeError):
        models.get_model_config("resnet50d").builder_args["layers"] = (1, 1, 1, 1)  # type: ignore[index]


# --- DenseNet: torchvision's legacy key names -------------------------------------------------------------


def legacy_names(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The 2017 file layout: ``norm.1`` for ``norm1`` ..., and no BN counters (they came later)."""
    renamed = {}
    for key, value in state_dict.items():
        if key.endswith("num_batches_tracked"):
            continue
        for part in ("norm1", "norm2", "conv1", "conv2"):
            if ".denselayer" in key and f".{part}." in key:
                key = key.replace(f".{part}.", f".{part[:-1]}.{part[-1]}.")
        renamed[key] = value
    return renamed


def test_legacy_key_renaming_examples() -> None:
    weight = torch.zeros(1)
    renamed = rename_legacy_keys(
        {
            "features.denseblock1.denselayer1.norm.1.weight": weight,
            "features.denseblock3.denselayer12.conv.2.weight": weight,
            "features.denseblock2.denselayer4.norm.2.running_var": weight,
            "features.transition1.norm.weight": weight,
            "features.norm5.bias": weight,
        }
    )
    assert list(renamed) == [
        "features.denseblock1.denselayer1.norm1.weight",
        "features.denseblock3.denselayer12.conv2.weight",
        "features.denseblock2.denselayer4.norm2.running_var",
        "features.transition1.norm.weight",
        "features.norm5.bias",
    ]


def test_densenet_loads_the_legacy_file_layout(tmp_path: Path) -> None:
    """A file in the layout torchvision published (old names, no counters) loads and computes the same."""
    torch.manual_seed(0)
    source = models.create_model("densenet121")
    legacy = legacy_names(source.state_dict())
    assert any(".norm.1." in key for key in legacy)
    missing, unexpected, _ = mismatch(legacy, expected_shapes("densenet121", 1000))
    assert (
        missing and unexpected
    )  # as saved, the file does not fit: the family's key adapter is what makes it
    path = tmp_path / "densenet121-legacy.pth"
    torch.save(legacy, path)
    loaded = models.load_checkpoint(path, arch="densenet121")
    assert loaded.num_classes == 1000 and loaded.state_dict.keys() == legacy.keys()
    model = models.create_model("densenet121", weights=loaded)
    assert torch.equal(logits(model, 64), logits(source, 64))


def test_densenet_checkpoint_in_a_resnet_names_the_fitting_family(tmp_path: Path) -> None:
    path = tmp_path / "dense.pth"
    torch.save(legacy_names(models.create_model("densenet121").state_dict()), path)
    with pytest.raises(CheckpointError) as caught:
        models.create_model("resnet50", weights=path)
    message = str(caught.value)
    assert "does not fit resnet50" in message and "fit densenet121" in message


# --- pre-activation ResNets -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "block", "per_layer"),
    [("preact-resnet-110", "basic", 2), ("preact-resnet-164", "bottleneck", 3)],
)
def test_cifar_preact_depth_and_size_are_the_papers(name: str, block: str, per_layer: int) -> None:
    """Depth = 3 stages x n blocks x (2 or 3) convs + stem + head; the paper's 1.7 M parameters for both."""
    config = models.get_model_config(name)
    args = config.builder_args
    depth = int(name.rsplit("-", 1)[1])
    assert args["block"] == block and per_layer * sum(args["layers"]) + 2 == depth
    assert config.label_set == "cifar10" and config.num_classes == 10 and config.checkpoints == ()
    assert round(config.num_params / 1e6, 1) == 1.7
    assert config.preprocessing.input_size == (3, 32, 32)


@pytest.mark.parametrize("name", ["preact-resnet-110", "preact-resnet-164"])
def test_identity_path_is_clean(name: str) -> None:
    """With its last convolution zeroed a block is exactly the identity (no ReLU or BN after the addition);
    a projecting block then returns the projection of the pre-activated input."""
    model = models.create_model(name)
    stage = model.stages[1]
    first, second = stage.blocks[0], stage.blocks[1]
    assert isinstance(first, (PreActBasic, PreActBottleneck)) and first.downsample is not None
    assert second.downsample is None
    last_conv = "conv2" if isinstance(second, PreActBasic) else "conv3"
    with torch.no_grad():
        for block in (first, second):
            getattr(block, last_conv).weight.zero_()
        x = torch.randn(2, second.norm1.num_features, 16, 16)
        assert torch.equal(second(x), x)
        x = torch.randn(2, first.norm1.num_features, 16, 16)
        assert torch.equal(first(x), first.downsample(first.norm1(x)))


def test_random_deep_preact_stays_in_range() -> None:
    """Each branch's last BN starts at 1/sqrt(blocks): 164 random layers give logits of a few units
    (measured 2.6; with unit gains 4e7, which would make export's random-weight check one-hot)."""
    torch.manual_seed(0)
    out = logits(models.create_model("preact-resnet-164"), 32, batch=4)
    assert torch.isfinite(out).all() and out.abs().max() < 20


def test_conv_head_class_count_is_inferred(tmp_path: Path) -> None:
    """ResNetV2's head is a 1x1 convolution (N x C x 1 x 1): fine-tuned class counts are read from it."""
    source = models.create_model("preact-resnet-110", num_classes=100)
    assert source.state_dict()["head.fc.weight"].shape == (100, 64, 1, 1)
    path = tmp_path / "cifar100.safetensors"
    save_file(source.state_dict(), str(path))
    loaded = models.load_checkpoint(path, arch="preact-resnet-110")
    assert loaded.num_classes == 100
    model = models.create_model("preact-resnet-110", weights=loaded)
    assert torch.equal(logits(model, 32), logits(source, 32))
    assert models.labels_for("preact-resnet-110", 100) is None


def test_timm_preact_hub_spec_from_seeded_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESNET_SERVE_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("RESNET_SERVE_OFFLINE", "1")
    source = models.create_model("resnetv2_50")
    target = tmp_path / "huggingface" / "timm" / "resnetv2_50.a1h_in1k" / "model.safetensors"
    target.parent.mkdir(parents=True)
    save_file(source.state_dict(), str(target))
    loaded = models.load_checkpoint("hf:timm/resnetv2_50.a1h_in1k", arch="resnetv2_50")
    assert loaded.published is not None and loaded.published.tag == "a1h_in1k" and loaded.num_classes == 1000
    model = models.create_model("resnetv2_50", weights=loaded)
    assert torch.equal(logits(model, 64), logits(source, 64))
    pre = models.preprocessing_for("resnetv2_50", loaded)
    assert (pre.resize_size, pre.crop_size, pre.interpolation, pre.mean, pre.std) == (
        235,
        224,
        "bicubic",
        (0.5, 0.5, 0.5),
        (0.5, 0.5, 0.5),
    )


# --- specs naming the new families ---------------------------------------------------------------------


def test_new_family_specs_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESNET_SERVE_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("RESNET_SERVE_OFFLINE", "1")
    expected = {
        "torchvision:densenet121:IMAGENET1K_V1": (
            "https://download.pytorch.org/models/densenet121-a639ec97.pth",
            tmp_path / "densenet121-a639ec97.pth",
        ),
        "torchvision:densenet201:DEFAULT": (
            "https://download.pytorch.org/models/densenet201-c1103571.pth",
            tmp_path / "densenet201-c1103571.pth",
        ),
        "hf:timm/resnet50d.ra4_e3600_r224_in1k": (
            "https://huggingface.co/timm/resnet50d.ra4_e3600_r224_in1k/resolve/main/model.safetensors",
            tmp_path / "huggingface" / "timm" / "resnet50d.ra4_e3600_r224_in1k" / "model.safetensors",
        ),
    }
    for spec, (url, path) in expected.items():
        with pytest.raises(CheckpointError) as caught:
            models.load_checkpoint(spec)
        message = str(caught.value)
        assert url in message and f"drop it at {path}" in message, message
    with pytest.raises(CheckpointError, match="timm architecture"):
        models.load_checkpoint("torchvision:resnetv2_50:IMAGENET1K_V1")
    with pytest.raises(CheckpointError, match="preact-resnet-110 has no published checkpoint 'cifar10'"):
        models.load_checkpoint("cifar10:preact-resnet-110")


@pytest.mark.parametrize(
    ("name", "spec", "expected"),
    [
        ("inception_resnet_v2", "hf:timm/inception_resnet_v2.tf_in1k", (333, 299, "bicubic", 0.5)),
        ("inception_resnet_v2", "hf:timm/inception_resnet_v2.tf_ens_adv_in1k", (333, 299, "bicubic", 0.5)),
        ("resnet50d", "hf:timm/resnet50d.ra4_e3600_r224_in1k", (235, 224, "bicubic", 0.5)),
        ("resnet50d", "hf:timm/resnet50d.a3_in1k", (168, 160, "bicubic", 0.485)),
        ("resnet101d", "hf:timm/resnet101d.ra2_in1k", (269, 256, "bicubic", 0.485)),
        ("densenet161", "torchvision:densenet161:IMAGENET1K_V1", (256, 224, "bilinear", 0.485)),
    ],
)
def test_per_checkpoint_preprocessing(name: str, spec: str, expected: tuple[int, int, str, float]) -> None:
    pre = models.preprocessing_for(name, spec)
    assert (pre.resize_size, pre.crop_size, pre.interpolation, pre.mean[0]) == expected


# --- Inception-ResNet-v2 ---------------------------------------------------------------------------------


def test_inception_resnet_v2_at_its_input_size() -> None:
    """299x299 gives the paper's 8x8x1536 final grid; residual scales 0.17 / 0.10 / 0.20, last one linear."""
    config = models.get_model_config("inception_resnet_v2")
    assert config.preprocessing.input_size == (3, 299, 299) and config.head_name == "classif"
    model = models.create_model("inception_resnet_v2")
    with torch.no_grad():
        features = model.forward_features(torch.randn(1, 3, 299, 299))
    assert features.shape == (1, 1536, 8, 8)
    assert [len(model.repeat), len(model.repeat_1), len(model.repeat_2)] == [10, 20, 9]
    assert (model.repeat[0].scale, model.repeat_1[0].scale, model.repeat_2[0].scale) == (0.17, 0.10, 0.20)
    assert model.block8.act is None and model.block8.scale == 1.0
    assert math.isclose(model.conv2d_1a.bn.eps, 1e-3)
