"""One small member of each family exports to a verified ONNX file that computes what PyTorch computes.

``export_model(arch, None)`` builds the seeded random-init model; its own verification compares
probabilities with an absolute tolerance, which near-uniform random probabilities pass easily, so
this test also compares the ONNX output with the same PyTorch model to a *relative* 1e-3 on a real
photo, through the card's preprocessing (mean/std 0.5 for the timm a1h/TF checkpoints).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from conftest import shared_path

import models
from export import export_model
from export.exporter import RANDOM_INIT_SEED
from servable.card import INPUT_NAME, ModelCard
from servable.images import preprocess_image

#: The smallest name of each family (ResNet-D stands for the resnet family's new names).
ONE_PER_FAMILY = {
    "resnet": "resnet26d",
    "preact_resnet": "preact-resnet-110",
    "densenet": "densenet121",
    "inception_resnet": "inception_resnet_v2",
}


def test_one_per_family_covers_every_family() -> None:
    assert sorted(ONE_PER_FAMILY) == models.list_families()
    for family, name in ONE_PER_FAMILY.items():
        assert models.get_model_config(name).family == family


@pytest.mark.slow
@pytest.mark.parametrize("arch", sorted(ONE_PER_FAMILY.values()))
def test_family_exports_and_verifies(arch: str, tmp_path: Path) -> None:
    config = models.get_model_config(arch)
    result = export_model(arch, None, model_dir=tmp_path, log=lambda _: None)
    figures = result.verification
    assert figures["passed"] is True and figures["top1_mismatches"] == 0
    assert figures["max_abs_diff"] <= 1e-4 and figures["batch1_vs_batch8_max_abs_diff"] <= 1e-5

    card = result.card
    pre = config.preprocessing
    assert (card.preprocessing.resize_size, card.preprocessing.crop_size) == (pre.resize_size, pre.crop_size)
    assert tuple(card.preprocessing.mean) == pre.mean and tuple(card.preprocessing.std) == pre.std
    assert card.num_classes == config.num_classes and len(card.labels) == config.num_classes

    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[1:] == [pre.crop_size, pre.crop_size, 3]
    assert ModelCard.from_metadata(session.get_modelmeta().custom_metadata_map) == card

    photo = shared_path("data", "photos", "chelsea.jpg").read_bytes()
    pixels = preprocess_image(photo, card.preprocessing)[None]
    onnx_probabilities = session.run(None, {INPUT_NAME: pixels})[0]

    torch.manual_seed(RANDOM_INIT_SEED)
    network = models.create_model(arch)
    x = (torch.tensor(pixels, dtype=torch.float32) / 255 - torch.tensor(pre.mean)) / torch.tensor(pre.std)
    with torch.no_grad():
        reference = torch.softmax(network(x.permute(0, 3, 1, 2)), 1).numpy()
    np.testing.assert_allclose(onnx_probabilities, reference, rtol=1e-3, atol=0)
    assert int(onnx_probabilities.argmax()) == int(reference.argmax())
