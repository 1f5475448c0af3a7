"""Bring your own ONNX: classifiers made here (torch.onnx.export, the onnx helper API), imported, served
by a real server and compared with onnxruntime on the original file; what cannot be wrapped is refused."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import CIFAR_SAMPLE_ACCURACY, REPO_ROOT, cifar_checkpoint, quiet, shared_path
from onnx import TensorProto
from onnx_files import LABELS, MEAN, SPEC, STD, make_files, torch_to_onnx
from PIL import Image
from server import run_server

import models
from export.onnx_import import import_onnx
from export.presets import PreprocessingSpec
from servable.card import INPUT_NAME, OUTPUT_NAME
from servable.images import preprocess_image
from servable.preprocessing import IMAGENET_MEAN, IMAGENET_STD


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_files(tmp_path_factory.mktemp("onnx_files"))


def original_probabilities(path: Path, pixels: np.ndarray, logits: bool) -> np.ndarray:
    """onnxruntime on the original file, one image at a time, textbook normalisation, softmax if logits."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = (
        pixels.transpose(0, 3, 1, 2).astype(np.float32) / 255.0 - np.float32(MEAN).reshape(1, 3, 1, 1)
    ) / np.float32(STD).reshape(1, 3, 1, 1)
    rows = np.concatenate([session.run(None, {"pixel_values": x[i : i + 1]})[0] for i in range(len(x))])
    if logits:
        rows = np.exp(rows - rows.max(1, keepdims=True))
        rows /= rows.sum(1, keepdims=True)
    return rows


def photos() -> list[Path]:
    return sorted(p for p in shared_path("data", "photos").iterdir() if p.suffix in (".jpg", ".png"))


@pytest.mark.parametrize(("variant", "logits"), [("fixed", True), ("probs", False)])
def test_imported_classifier_served_over_http_equals_onnxruntime_on_the_original(
    variant: str, logits: bool, files: dict[str, Path], tmp_path: Path
) -> None:
    result = import_onnx(
        files[variant],
        model_dir=tmp_path,
        name=f"tiny-{variant}",
        preprocessing=SPEC,
        labels_file=files["labels"],
        log=quiet,
    )
    card = result.card
    assert card.architecture == f"onnx:{files[variant].stem}" and card.labels == LABELS
    assert card.source.spec == str(files[variant]) and card.export.torch_version is None
    assert (
        card.preprocessing.resize_size,
        card.preprocessing.crop_size,
        card.preprocessing.interpolation,
    ) == (72, 64, "bicubic")
    assert card.export.imported["outputs"] == ("logits" if logits else "probabilities")
    graph = onnx.load(str(result.path))
    assert [n.op_type for n in graph.graph.node].count("Softmax") == 1  # ours for logits, theirs otherwise
    assert graph.graph.input[0].type.tensor_type.elem_type == TensorProto.UINT8

    images = photos()
    with run_server(tmp_path) as server:
        response = httpx.post(
            server.url(f"/predict?model=tiny-{variant}&top_k={len(LABELS)}"),
            files=[("files", (p.name, p.read_bytes())) for p in images],
            timeout=60,
        )
    assert response.status_code == 200, response.text
    served = np.array(
        [
            [{p["label"]: p["score"] for p in r["predictions"]}[label] for label in LABELS]
            for r in response.json()["results"]
        ]
    )
    pixels = np.stack([preprocess_image(p.read_bytes(), card.preprocessing) for p in images])
    expected = original_probabilities(files[variant], pixels, logits)
    np.testing.assert_allclose(served, expected, atol=1e-5)
    np.testing.assert_array_equal(served.argmax(1), expected.argmax(1))
    assert served.max() > 0.5, "the comparison above saw near-uniform answers"


def test_fixed_batch_is_made_dynamic_and_batch_eight_equals_batch_one(
    files: dict[str, Path], tmp_path: Path
) -> None:
    result = import_onnx(files["fixed"], model_dir=tmp_path, name="tiny", preprocessing=SPEC, log=quiet)
    assert result.card.export.imported["batch"] == "fixed 1, made dynamic"
    assert result.verification["batch1_vs_batch8_max_abs_diff"] <= 1e-5
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == ["batch", 64, 64, 3]
    pixels = np.random.default_rng(0).integers(0, 256, (8, 64, 64, 3), dtype=np.uint8)
    eight = session.run(None, {INPUT_NAME: pixels})[0]
    ones = np.concatenate([session.run(None, {INPUT_NAME: pixels[i : i + 1]})[0] for i in range(8)])
    np.testing.assert_allclose(eight, ones, atol=1e-6)
    assert result.card.labels == tuple(f"class_{i}" for i in range(len(LABELS)))


def test_reimport_is_unchanged_and_new_preprocessing_is_a_new_version(
    files: dict[str, Path], tmp_path: Path
) -> None:
    first = import_onnx(files["probs"], model_dir=tmp_path, name="m", preprocessing=SPEC, log=quiet)
    lines: list[str] = []
    again = import_onnx(files["probs"], model_dir=tmp_path, name="m", preprocessing=SPEC, log=lines.append)
    assert (first.skipped, again.skipped, again.version) == (False, True, 1)
    assert any("nothing to do" in line for line in lines)
    other = PreprocessingSpec(resize=64, crop=64, mean=MEAN, std=STD)
    changed = import_onnx(files["probs"], model_dir=tmp_path, name="m", preprocessing=other, log=quiet)
    assert (changed.skipped, changed.version) == (False, 2)


@pytest.fixture(scope="module")
def resnet20_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real CIFAR resnet20 as its owner would export it: plain float32 NCHW in, logits out."""
    network = models.create_model(
        "resnet20",
        num_classes=10,
        weights=models.load_checkpoint(str(cifar_checkpoint("resnet20")), arch="resnet20"),
    )
    return torch_to_onnx(
        network, tmp_path_factory.mktemp("owner") / "owner-resnet20.onnx", side=32, dynamic=True
    )


@pytest.fixture(scope="module")
def cifar() -> tuple[np.ndarray, np.ndarray]:
    classes = shared_path("labels", "cifar10.txt").read_text().split()
    root = shared_path("data", "cifar10-sample")
    sample = [(p, i) for i, c in enumerate(classes) for p in sorted((root / c).glob("*.jpg"))]
    pixels = np.stack([np.asarray(Image.open(p).convert("RGB"), dtype=np.uint8) for p, _ in sample])
    return pixels, np.array([i for _, i in sample])


def accuracy(path: Path, pixels: np.ndarray, truth: np.ndarray) -> float:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rows = np.concatenate(
        [session.run([OUTPUT_NAME], {INPUT_NAME: pixels[i : i + 250]})[0] for i in range(0, 1000, 250)]
    )
    return 100.0 * float(np.mean(rows.argmax(1) == truth))


def test_cli_imports_a_real_fine_tuned_model_and_it_keeps_its_accuracy(
    resnet20_onnx: Path, cifar: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    labels = shared_path("labels", "cifar10.txt")
    command = [
        sys.executable,
        "-m",
        "export",
        "--onnx",
        str(resnet20_onnx),
        "--name",
        "owner-cifar",
        "--labels",
        str(labels),
        "--mean",
        *map(str, IMAGENET_MEAN),
        "--std",
        *map(str, IMAGENET_STD),
        "--model-dir",
        str(tmp_path),
    ]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "logits (auto)" in result.stdout and "verified against the original" in result.stdout
    path = tmp_path / "owner-cifar" / "1" / "model.onnx"
    assert abs(accuracy(path, *cifar) - CIFAR_SAMPLE_ACCURACY["resnet20"]) <= 0.1
    rerun = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0 and "nothing to do" in rerun.stdout


def test_int8_of_an_imported_model_passes_the_gate_and_keeps_accuracy(
    resnet20_onnx: Path, cifar: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    from export.int8 import Int8Options

    result = import_onnx(
        resnet20_onnx,
        model_dir=tmp_path,
        name="owner-int8",
        preprocessing=PreprocessingSpec(mean=IMAGENET_MEAN, std=IMAGENET_STD),
        int8=True,
        int8_options=Int8Options(calibration=shared_path("data", "cifar10-sample")),
        log=quiet,
    )
    quantization = result.card.export.quantization
    assert result.card.export.precision == "int8" and quantization.top1_agreement >= 0.98
    assert quantization.reference.startswith("onnxruntime") and "wrap/Softmax" in quantization.float_nodes
    assert abs(accuracy(result.path, *cifar) - CIFAR_SAMPLE_ACCURACY["resnet20"]) <= 0.5
