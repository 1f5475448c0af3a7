"""Bring your own ONNX: classifiers made here (torch.onnx.export, the onnx helper API), imported, served
by a real server and compared with onnxruntime on the original file; what cannot be wrapped is refused."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import httpx
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import CIFAR_SAMPLE_ACCURACY, REPO_ROOT, cifar_checkpoint, shared_path
from onnx import TensorProto, helper, numpy_helper
from PIL import Image
from server import run_server
from torch import nn

import models
from export import ExportError
from export.config import ImportRequest, load_config
from export.onnx_import import import_onnx
from export.presets import PreprocessingSpec
from servable.card import INPUT_NAME, OUTPUT_NAME, ModelCard
from servable.images import preprocess_image

LABELS = ("apple", "bear", "cloud", "dune")
MEAN = (0.45, 0.4, 0.35)
STD = (0.25, 0.26, 0.27)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
SPEC = PreprocessingSpec(resize=72, crop=64, interpolation="bicubic", mean=MEAN, std=STD)


def quiet(_line: str) -> None:
    """Export log sink for tests that do not look at the printed lines."""


class Tiny(nn.Module):
    """A small CNN classifier over 64x64 RGB: logits, or probabilities with ``softmax``."""

    def __init__(self, softmax: bool = False, pin_batch: bool = False) -> None:
        super().__init__()
        self.softmax, self.pin_batch = softmax, pin_batch
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
        )
        self.head = nn.Linear(16, len(LABELS))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.features(x)
        y = y.reshape(1, -1) if self.pin_batch else y.flatten(1)
        logits = self.head(y) * 40.0  # peaked: probability differences then mean something
        return logits.softmax(1) if self.softmax else logits


def torch_to_onnx(network: nn.Module, path: Path, *, side: int, dynamic: bool) -> Path:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            network.eval(),
            (torch.zeros(1, 3, side, side),),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["pixel_values"],
            output_names=["scores"],
            dynamic_axes={"pixel_values": {0: "n"}, "scores": {0: "n"}} if dynamic else None,
        )
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("onnx_files")
    torch.manual_seed(0)
    made = {
        "fixed": torch_to_onnx(Tiny(), folder / "tiny-fixed.onnx", side=64, dynamic=False),
        "probs": torch_to_onnx(Tiny(softmax=True), folder / "tiny-probs.onnx", side=64, dynamic=True),
        "pinned": torch_to_onnx(Tiny(pin_batch=True), folder / "tiny-pinned.onnx", side=64, dynamic=False),
    }
    labels = folder / "labels.txt"
    labels.write_text("\n".join(LABELS) + "\n")
    made["labels"] = labels
    return made


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


def helper_model(
    path: Path,
    *,
    inputs: list[tuple[str, int, list[object]]] | None = None,
    outputs: tuple[str, ...] = ("y",),
    output_shape: list[object] | None = None,
) -> Path:
    """GlobalAveragePool -> Flatten -> Gemm over a float NCHW input: shapes and types as asked."""
    inputs = inputs or [("x", TensorProto.FLOAT, ["n", 3, 32, 32])]
    weight = numpy_helper.from_array(np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32), "w")
    nodes = [
        helper.make_node("GlobalAveragePool", [inputs[0][0]], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("Gemm", ["flat", "w"], [outputs[0]]),
    ]
    nodes += [helper.make_node("Identity", [outputs[0]], [extra]) for extra in outputs[1:]]
    graph = helper.make_graph(
        nodes,
        "helper",
        [helper.make_tensor_value_info(name, kind, shape) for name, kind, shape in inputs],
        [
            helper.make_tensor_value_info(name, TensorProto.FLOAT, output_shape or ["n", 4])
            for name in outputs
        ],
        [weight],
    )
    # ir_version 9: onnx 1.23 writes IR 14 by default, newer than onnxruntime 1.31 reads (13).
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), str(path))
    return path


SPEC32 = PreprocessingSpec(mean=MEAN, std=STD)


@pytest.mark.parametrize(
    ("build", "spec", "extra", "message"),
    [
        (
            {
                "inputs": [
                    ("a", TensorProto.FLOAT, ["n", 3, 32, 32]),
                    ("b", TensorProto.FLOAT, ["n", 3, 32, 32]),
                ]
            },
            SPEC32,
            {},
            r"2 inputs \('a', 'b'\)",
        ),
        (
            {"inputs": [("x", TensorProto.INT64, ["n", 3, 32, 32])]},
            SPEC32,
            {},
            "is a int64 tensor; only float32",
        ),
        ({"inputs": [("x", TensorProto.UINT8, ["n", 3, 32, 32])]}, SPEC32, {}, "uint8 tensor; only float32"),
        ({"inputs": [("x", TensorProto.FLOAT, ["n", 3, "h", "w"])]}, SPEC32, {}, "dynamic: give --crop"),
        ({"inputs": [("x", TensorProto.FLOAT, ["n", 32, 32, 3])]}, SPEC32, {}, "is it NHWC"),
        ({"inputs": [("x", TensorProto.FLOAT, ["n", 3, 32, 48])]}, SPEC32, {}, "square crops"),
        ({"inputs": [("x", TensorProto.FLOAT, ["n", 3, 32])]}, SPEC32, {}, r"expected \[N, 3, H, W\]"),
        ({"outputs": ("y", "z")}, SPEC32, {}, "pick the class scores with --output"),
        ({"outputs": ("y", "z")}, SPEC32, {"output_name": "q"}, "has no output 'q'"),
        ({"output_shape": ["n", 4, 1, 1]}, SPEC32, {}, r"expected \[N, classes\]"),
        ({}, PreprocessingSpec(), {}, "say how the model normalises its input"),
        ({}, PreprocessingSpec(crop=64, mean=MEAN, std=STD), {}, "fixed at 32x32"),
        ({}, PreprocessingSpec(preset="vgg"), {}, "unknown preset"),
        ({}, SPEC32, {"outputs": "probabilities"}, "rows are not probabilities"),
        ({}, SPEC32, {"outputs": "scores"}, "--outputs must be one of"),
    ],
)
def test_what_cannot_be_wrapped_is_refused_clearly_and_nothing_is_written(
    build: dict, spec: PreprocessingSpec, extra: dict, message: str, tmp_path: Path
) -> None:
    path = helper_model(tmp_path / "model.onnx", **build)
    repo = tmp_path / "repo"
    with pytest.raises(ExportError, match=message):
        import_onnx(path, model_dir=repo, name="m", preprocessing=spec, log=quiet, **extra)
    assert not repo.exists() or not list(repo.rglob("*.onnx"))


def test_dynamic_spatial_size_with_a_crop_and_a_named_output_among_several(tmp_path: Path) -> None:
    path = helper_model(
        tmp_path / "model.onnx", inputs=[("x", TensorProto.FLOAT, ["n", 3, "h", "w"])], outputs=("y", "z")
    )
    spec = PreprocessingSpec(preset="timm", crop=48)
    result = import_onnx(
        path, model_dir=tmp_path / "repo", name="m", preprocessing=spec, output_name="z", log=quiet
    )
    p = result.card.preprocessing
    assert (p.crop_size, p.resize_size, p.interpolation) == (48, 54, "bicubic")  # floor(48 / 0.875)
    assert result.card.export.imported["output"] == "z" and result.card.num_classes == 4


def test_preset_inception_gives_timm_inception_resnet_v2_preprocessing(tmp_path: Path) -> None:
    path = helper_model(tmp_path / "model.onnx", inputs=[("x", TensorProto.FLOAT, [1, 3, 299, 299])])
    result = import_onnx(
        path,
        model_dir=tmp_path / "repo",
        name="m",
        preprocessing=PreprocessingSpec(preset="inception"),
        log=quiet,
    )
    p = result.card.preprocessing
    assert (p.resize_size, p.crop_size, p.interpolation, p.mean, p.std) == (
        333,
        299,
        "bicubic",
        (0.5,) * 3,
        (0.5,) * 3,
    )


def test_a_batch_pinned_inside_the_graph_is_refused(files: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="fixed batch size of 1 and does not run at batch 8"):
        import_onnx(files["pinned"], model_dir=tmp_path, name="m", preprocessing=SPEC, log=quiet)
    assert not list(tmp_path.rglob("*.onnx"))


@pytest.mark.parametrize("content", [b"", b"definitely not protobuf \x00\xff" * 10])
def test_a_file_that_is_not_onnx_is_refused(content: bytes, tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(content)
    with pytest.raises(ExportError, match="is not an ONNX model"):
        import_onnx(path, model_dir=tmp_path / "repo", name="m", preprocessing=SPEC32, log=quiet)
    with pytest.raises(ExportError, match="cannot read"):
        import_onnx(
            tmp_path / "absent.onnx", model_dir=tmp_path / "repo", name="m", preprocessing=SPEC32, log=quiet
        )


def test_models_toml_onnx_entry_exports_then_is_unchanged(files: dict[str, Path], tmp_path: Path) -> None:
    config = tmp_path / "models.toml"
    config.write_text(
        f'[[model]]\nname = "tiny"\nonnx = "{files["fixed"]}"\nlabels = "{files["labels"]}"\n'
        'resize = 72\ncrop = 64\ninterpolation = "bicubic"\n'
        f'mean = {list(MEAN)}\nstd = {list(STD)}\noutputs = "logits"\n'
    )
    (request,) = load_config(config)
    assert (
        isinstance(request, ImportRequest) and request.preprocessing == SPEC and request.outputs == "logits"
    )
    first = subprocess.run(
        [sys.executable, "-m", "export", "--config", str(config), "--model-dir", str(tmp_path / "repo")],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert first.returncode == 0, first.stderr
    card = ModelCard.from_metadata(
        ort.InferenceSession(
            str(tmp_path / "repo" / "tiny" / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
        )
        .get_modelmeta()
        .custom_metadata_map
    )
    assert card.labels == LABELS and card.architecture == "onnx:tiny-fixed"
    assert request.run(tmp_path / "repo", log=quiet).skipped


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('onnx = "m.onnx"\narch = "resnet20"\n', "an onnx = entry takes no arch/weights keys"),
        ('onnx = "m.onnx"\nmean = [0.5, 0.5]\n', r"mean must be three numbers"),
        ('onnx = "m.onnx"\noutputs = "scores"\n', "outputs must be one of"),
    ],
)
def test_models_toml_onnx_mistakes_are_reported(text: str, message: str, tmp_path: Path) -> None:
    config = tmp_path / "models.toml"
    config.write_text("[[model]]\n" + text)
    with pytest.raises(ExportError, match=message):
        load_config(config)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["resnet20", "--onnx", "m.onnx"], "ARCH do not apply"),
        (["--onnx", "m.onnx", "--fp16"], "--fp16 do not apply"),
        (["resnet20", "--weights", "random", "--preset", "timm"], "--preset only apply with --onnx"),
        (["resnet20", "--weights", "random", "--calibration", "x"], "--calibration only apply with --int8"),
    ],
)
def test_cli_flag_mistakes(args: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "export", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2 and message in result.stderr
