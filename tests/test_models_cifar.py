"""The paper's CIFAR-10 ResNets reproduce the stated accuracy of the shipped checkpoints on the sample."""

from __future__ import annotations

import shutil
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CIFAR_SAMPLE_ACCURACY, cifar_checkpoint, cifar_sample
from PIL import Image

import models


@lru_cache(maxsize=1)
def sample_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """All sample images as one normalised batch (PIL RGB decode, ToTensor, Normalize) and their classes."""
    pairs = cifar_sample()
    pixels = np.stack(
        [np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0 for path, _ in pairs]
    )
    preprocessing = models.get_model_config("resnet20").preprocessing
    mean = np.asarray(preprocessing.mean, dtype=np.float32)
    std = np.asarray(preprocessing.std, dtype=np.float32)
    images = torch.from_numpy((pixels - mean) / std).permute(0, 3, 1, 2).contiguous()
    return images, torch.tensor([label for _, label in pairs])


@pytest.mark.slow
@pytest.mark.parametrize("arch", sorted(CIFAR_SAMPLE_ACCURACY))
def test_cifar_accuracy_table(arch: str) -> None:
    images, labels = sample_batch()
    assert images.shape == (1000, 3, 32, 32)
    model = models.create_model(arch, weights=cifar_checkpoint(arch))
    with torch.no_grad():
        predictions = torch.cat([model(chunk).argmax(1) for chunk in images.split(250)])
    accuracy = (predictions == labels).double().mean().item() * 100
    assert accuracy == pytest.approx(CIFAR_SAMPLE_ACCURACY[arch], abs=0.1)


def test_named_spec_and_file_give_the_same_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``cifar10:resnet32`` from a cache seeded with the shipped file equals loading the file itself
    (resnet20's named spec takes the copy embedded in the package, tests/test_checkpoints.py)."""
    cache = tmp_path / "cache"
    cache.mkdir()
    shutil.copy(cifar_checkpoint("resnet32"), cache)
    monkeypatch.setenv("RESNET_SERVE_CACHE_DIR", str(cache))
    monkeypatch.setenv("RESNET_SERVE_OFFLINE", "1")
    images, _ = sample_batch()
    with torch.no_grad():
        by_name = models.create_model("resnet32", weights="cifar10:resnet32")(images[:16])
        by_file = models.create_model("resnet32", weights=cifar_checkpoint("resnet32"))(images[:16])
    assert torch.equal(by_name, by_file)
