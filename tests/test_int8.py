"""INT8 export on real weights and images: the accuracy table (onnxruntime and HTTP), the gate, the card."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
from conftest import (
    CIFAR_SAMPLE_ACCURACY,
    REPO_ROOT,
    card_of,
    cifar_checkpoint,
    quiet,
    session_for,
    shared_path,
)
from PIL import Image
from server import run_server

from export import ExportError, export_model
from export.calibration import DEFAULT_CALIBRATION_COUNT, list_images
from export.config import load_config
from servable.card import INPUT_NAME, OUTPUT_NAME, ModelCard

#: The goals of issue 15: INT8 accuracy within this of fp32 on the 1,000 images, agreement at least this.
MAX_ACCURACY_LOSS = 0.5
MIN_AGREEMENT = 0.98
REQUEST_IMAGES = 25





def top1(path: Path, pixels: np.ndarray) -> np.ndarray:
    session = session_for(path)
    rows = [
        session.run([OUTPUT_NAME], {INPUT_NAME: pixels[i : i + 250]})[0] for i in range(0, len(pixels), 250)
    ]
    return np.concatenate(rows).argmax(1)


@pytest.fixture(scope="module")
def sample() -> tuple[list[Path], np.ndarray, np.ndarray]:
    """The 1,000 CIFAR images in the exporter's order (the first 300 calibrate), pixels, true classes."""
    classes = shared_path("labels", "cifar10.txt").read_text().split()
    files = list_images(shared_path("data", "cifar10-sample"), "CIFAR sample")
    pixels = np.stack([np.asarray(Image.open(path).convert("RGB"), dtype=np.uint8) for path in files])
    return files, pixels, np.array([classes.index(path.parent.name) for path in files])


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """resnet20 in fp32 and INT8 (calibrated on the CIFAR sample's first 300, gated on the other 700)."""
    root = tmp_path_factory.mktemp("int8_repository")
    weights = str(cifar_checkpoint("resnet20"))
    sample_dir = shared_path("data", "cifar10-sample")
    export_model("resnet20", weights, model_dir=root, name="resnet20", log=quiet)
    export_model(
        "resnet20",
        weights,
        model_dir=root,
        name="resnet20-int8",
        int8=True,
        calibration=sample_dir,
        log=quiet,
    )
    return root


def model_file(repo: Path, name: str) -> Path:
    return repo / name / "1" / "model.onnx"


def test_int8_accuracy_and_agreement_through_onnxruntime(
    repo: Path, sample: tuple[list[Path], np.ndarray, np.ndarray]
) -> None:
    """Counted on all 1,000 images (the accuracy table of ../shared/README.md) and on the 700 the gate held out."""
    _, pixels, truth = sample
    fp32, int8 = top1(model_file(repo, "resnet20"), pixels), top1(model_file(repo, "resnet20-int8"), pixels)
    fp32_accuracy, int8_accuracy = 100 * np.mean(fp32 == truth), 100 * np.mean(int8 == truth)
    assert abs(fp32_accuracy - CIFAR_SAMPLE_ACCURACY["resnet20"]) <= 0.1
    assert abs(int8_accuracy - fp32_accuracy) <= MAX_ACCURACY_LOSS, (
        f"int8 {int8_accuracy:.1f}% fp32 {fp32_accuracy:.1f}%"
    )
    held = slice(DEFAULT_CALIBRATION_COUNT, None)
    assert np.mean(fp32 == int8) >= MIN_AGREEMENT
    assert np.mean(fp32[held] == int8[held]) >= MIN_AGREEMENT


def test_int8_accuracy_through_http_equals_onnxruntime(
    repo: Path, sample: tuple[list[Path], np.ndarray, np.ndarray]
) -> None:
    files, pixels, truth = sample
    classes = shared_path("labels", "cifar10.txt").read_text().split()
    answers: dict[str, list[int]] = {"resnet20": [], "resnet20-int8": []}
    with run_server(repo) as server, httpx.Client(timeout=60) as client:
        models_info = {m["name"]: m for m in client.get(server.url("/models")).json()["models"]}
        assert set(models_info) == set(answers)
        # An operator sees what is served: the precision and the accuracy gate the export recorded.
        int8_info, fp32_info = models_info["resnet20-int8"], models_info["resnet20"]
        assert int8_info["precision"] == "int8" and fp32_info["precision"] == "fp32"
        gate = int8_info["verification"]
        assert gate["top1_agreement"] >= gate["min_agreement"] >= MIN_AGREEMENT
        assert gate["holdout_images"] >= 50 and gate["calibration_images"] >= 1 and gate["max_abs_diff"] > 0
        # 7-bit weights compute on this CPU exactly what the gate measured, VNNI or not.
        assert gate["weight_bits"] == 7 and gate["exact_on_this_cpu"] is True
        assert "exact_on_this_cpu" not in fp32_info["verification"]
        assert int8_info["versions"][0]["precision"] == "int8"
        for name, found in answers.items():
            for start in range(0, len(files), REQUEST_IMAGES):
                chunk = files[start : start + REQUEST_IMAGES]
                response = client.post(
                    server.url(f"/predict?model={name}&top_k=1"),
                    files=[("files", (p.name, p.read_bytes(), "image/jpeg")) for p in chunk],
                )
                assert response.status_code == 200, response.text
                found += [classes.index(r["predictions"][0]["label"]) for r in response.json()["results"]]
    fp32, int8 = np.array(answers["resnet20"]), np.array(answers["resnet20-int8"])
    np.testing.assert_array_equal(int8, top1(model_file(repo, "resnet20-int8"), pixels))
    assert abs(100 * np.mean(int8 == truth) - 100 * np.mean(fp32 == truth)) <= MAX_ACCURACY_LOSS
    assert np.mean(fp32 == int8) >= MIN_AGREEMENT


def test_int8_card_records_precision_quantization_and_the_gate(repo: Path) -> None:
    path = model_file(repo, "resnet20-int8")
    card = card_of(path)
    assert card.export.precision == "int8" and card.architecture == "resnet20"
    q = card.export.quantization
    assert q is not None
    assert (q.format, q.activations, q.weights, q.weight_bits, q.per_channel, q.calibration_method) == (
        "QDQ",
        "uint8",
        "int8",
        7,
        True,
        "MinMax",
    )
    assert (
        q.calibration_images == DEFAULT_CALIBRATION_COUNT
        and q.holdout_images == 1000 - DEFAULT_CALIBRATION_COUNT
    )
    assert q.min_agreement == MIN_AGREEMENT <= q.top1_agreement
    assert q.bias_correction is True and q.calibration_moving_average is True
    assert 0 < q.max_abs_diff < 1 and q.reference.startswith("PyTorch")
    assert {"/Softmax", "/Transpose", "/Cast"} <= set(q.float_nodes)
    assert any(name.endswith("/Gemm") for name in q.float_nodes)  # the classifier head
    figures = card.verification
    assert figures["passed"] is True and figures["top1_agreement"] == q.top1_agreement
    assert figures["images"] == q.holdout_images and "held-out" in figures["inputs"]
    assert figures["batch1_vs_batch8_max_abs_diff"] <= 1e-5
    assert figures["fp32_graph"]["passed"] is True and figures["fp32_graph"]["max_abs_diff"] <= 1e-4
    # The file: the service's contract (uint8 NHWC in, float32 probabilities out), quantized inside.
    graph = onnx.load(str(path))
    ops = {node.op_type for node in graph.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Softmax"} <= ops
    assert graph.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert graph.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert path.stat().st_size < model_file(repo, "resnet20").stat().st_size / 2
    # 7-bit weights (onnxruntime's symmetric reduced range is [-64, 64]): no pair of products passes
    # 255 x 64 x 2 = 32,640, so no CPU's kernel saturates (test_int8_kernels.py).
    weights = quantized_weights(graph)
    assert len(weights) >= 19  # resnet20's convolutions
    for name, w in weights.items():
        magnitude = np.abs(w.astype(np.int16)).reshape(len(w), -1).max(axis=1)  # per output channel
        assert magnitude.max() <= 64, name
        assert (magnitude[magnitude > 0] == 64).all(), name  # every non-zero channel uses its whole range


def quantized_weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """The int8 initializers that DequantizeLinear nodes read (the quantized weights), by name."""
    initializers = {tensor.name: tensor for tensor in model.graph.initializer}
    found = {}
    for node in model.graph.node:
        tensor = initializers.get(node.input[0]) if node.op_type == "DequantizeLinear" else None
        if tensor is not None and tensor.data_type == onnx.TensorProto.INT8:
            found[tensor.name] = onnx.numpy_helper.to_array(tensor)
    return found


def test_rerun_is_unchanged_and_other_calibration_is_a_new_version(tmp_path: Path) -> None:
    weights = str(cifar_checkpoint("resnet20"))
    sample_dir = shared_path("data", "cifar10-sample")
    # Small calibration sets are quicker but less accurate (120 images: 97.5 % agreement): this test is
    # about the fingerprint, not the gate, so the threshold is lowered; it is not part of the fingerprint.
    common = {"model_dir": tmp_path, "name": "q", "int8": True, "calibration": sample_dir, "log": quiet}
    first = export_model("resnet20", weights, calibration_count=100, min_agreement=0.9, **common)
    again = export_model("resnet20", weights, calibration_count=100, min_agreement=0.95, **common)
    assert (first.skipped, again.skipped, again.version) == (False, True, 1)
    other = export_model("resnet20", weights, calibration_count=120, min_agreement=0.9, **common)
    assert (other.skipped, other.version) == (False, 2)
    assert other.card.export.quantization.calibration_images == 120


def black_folder(folder: Path) -> Path:
    folder.mkdir()
    Image.new("RGB", (32, 32)).save(folder / "black.png")
    return folder


def test_gate_refuses_a_single_black_calibration_image_and_writes_nothing(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    with pytest.raises(
        ExportError, match=r"INT8 accuracy gate failed: INT8 top-1 agreement .* below --min-agreement"
    ):
        export_model(
            "resnet20",
            str(cifar_checkpoint("resnet20")),
            model_dir=repo,
            int8=True,
            calibration=black_folder(tmp_path / "black"),
            holdout=shared_path("data", "cifar10-sample"),
            holdout_count=300,
            log=quiet,
        )
    assert not repo.exists() or not list(repo.rglob("*"))


def test_cli_gate_failure_exits_1_with_the_figure(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "export",
            "resnet20",
            "--weights",
            str(cifar_checkpoint("resnet20")),
            "--int8",
            "--calibration",
            str(black_folder(tmp_path / "black")),
            "--holdout",
            str(shared_path("data", "cifar10-sample")),
            "--holdout-count",
            "200",
            "--model-dir",
            str(repo),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1
    assert (
        result.stderr.startswith("error: INT8 accuracy gate failed")
        and "of 200 held-out images" in result.stderr
    )
    assert "nothing was written" in result.stderr and not list(repo.rglob("*.onnx"))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "INT8 needs calibration images: pass --calibration DIR"),
        ({"calibration": "missing"}, "does not exist"),
        ({"calibration": "empty"}, "holds no images"),
        ({"calibration": "one"}, "too few to split"),
        ({"calibration": "sample", "calibration_count": 0}, "must be positive"),
        ({"calibration": "sample", "holdout": "one"}, "needs at least 50 held-out images"),
        ({"calibration": "sample", "min_agreement": 1.5}, "between 0 and 1"),
        ({"calibration": "sample", "fp16": True}, "exclude each other"),
        ({"calibration": "sample", "verify": False}, "always verified"),
        ({"calibration": "sample", "opset": 12}, "opset >= 13"),
    ],
)
def test_int8_requests_that_cannot_work_are_refused_before_any_work(
    kwargs: dict, message: str, tmp_path: Path
) -> None:
    folders = {"missing": tmp_path / "nowhere", "empty": tmp_path / "empty", "one": tmp_path / "one"}
    folders["empty"].mkdir()
    black_folder(folders["one"])
    folders["sample"] = shared_path("data", "cifar10-sample")
    arguments = {**kwargs, "model_dir": tmp_path / "repo", "int8": True, "log": quiet}
    for key in ("calibration", "holdout"):
        if key in arguments:
            arguments[key] = folders[arguments[key]]
    with pytest.raises(ExportError, match=message):
        export_model("resnet20", None, **arguments)
    assert not (tmp_path / "repo").exists()


def test_undecodable_calibration_image_is_named(tmp_path: Path) -> None:
    folder = tmp_path / "calibration"
    folder.mkdir()
    for index in range(4):
        Image.new("RGB", (32, 32), (index * 60, 0, 0)).save(folder / f"{index}.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(ExportError, match="broken.jpg"):
        export_model(
            "resnet20",
            str(cifar_checkpoint("resnet20")),
            model_dir=tmp_path / "repo",
            int8=True,
            calibration=folder,
            min_agreement=0.0,
            log=quiet,
        )


@pytest.mark.slow
def test_resnet50_int8_on_random_weights_exports_for_benchmarks_with_no_gate(tmp_path: Path) -> None:
    """Only 8 photos exist here and resnet50 has random weights: --min-agreement 0 exports it anyway."""
    photos = shared_path("data", "photos")
    with pytest.raises(ExportError, match="needs at least 50 held-out images"):
        export_model("resnet50", None, model_dir=tmp_path, int8=True, calibration=photos, log=quiet)
    result = export_model(
        "resnet50", None, model_dir=tmp_path, int8=True, calibration=photos, min_agreement=0.0, log=quiet
    )
    q = result.card.export.quantization
    assert (q.calibration_images, q.holdout_images, q.min_agreement) == (4, 4, 0.0)
    assert any(name.endswith("/Gemm") for name in q.float_nodes)  # the classifier head stays float
    session = session_for(result.path)
    assert session.get_inputs()[0].shape[1:] == [224, 224, 3] and session.get_outputs()[0].shape[1:] == [1000]
    out = session.run(None, {INPUT_NAME: np.zeros((2, 224, 224, 3), np.uint8)})[0]
    assert out.shape == (2, 1000) and np.allclose(out.sum(1), 1.0, atol=1e-4)


def test_models_toml_int8_keys(tmp_path: Path) -> None:
    config = tmp_path / "models.toml"
    config.write_text(
        '[[model]]\nname = "q"\narch = "resnet20"\nweights = "random"\nint8 = true\n'
        'calibration = "images"\ncalibration_count = 50\nmin_agreement = 0.9\n'
    )
    (request,) = load_config(config)
    assert request.int8 and request.int8_options.calibration == tmp_path / "images"
    assert (request.int8_options.calibration_count, request.int8_options.min_agreement) == (50, 0.9)
    config.write_text('[[model]]\narch = "resnet20"\nweights = "random"\ncalibration = "images"\n')
    with pytest.raises(ExportError, match="only apply with int8 = true"):
        load_config(config)
    config.write_text(
        '[[model]]\narch = "resnet20"\nweights = "random"\nint8 = true\nmin_agreement = "high"\n'
    )
    with pytest.raises(ExportError, match="min_agreement must be a number"):
        load_config(config)


def _card_props(**export: object) -> dict[str, str]:
    base = {
        "format": "resnet-serve/1",
        "architecture": "resnet20",
        "num_classes": "2",
        "labels": '["a","b"]',
        "preprocessing": '{"resize_size":32,"crop_size":32}',
        "source": '{"spec":"x"}',
    }
    return {**base, "export": json.dumps({"onnx_version": "1", "opset": 17, "exported_at": "t", **export})}


def test_card_contract_old_cards_still_parse_and_int8_needs_its_record() -> None:
    old = ModelCard.from_metadata(_card_props(torch_version="2.4.0", precision="fp16"))
    assert old.export.precision == "fp16" and old.export.quantization is None
    assert ModelCard.from_metadata(_card_props()).export.torch_version is None  # an imported file's card
    with pytest.raises(ValueError, match="quantization record"):
        ModelCard.from_metadata(_card_props(precision="int8"))
    record = {
        "tool": "onnxruntime",
        "calibration_images": 1,
        "calibration_source": "s",
        "calibration_sha256": "0",
        "reference": "r",
        "holdout_images": 1,
        "top1_agreement": 1.0,
        "max_abs_diff": 0.0,
        "min_agreement": 0.98,
    }
    with pytest.raises(ValueError, match="quantization record"):
        ModelCard.from_metadata(_card_props(precision="fp32", quantization=record))
    card = ModelCard.from_metadata(_card_props(precision="int8", quantization=record))
    assert card.export.quantization.top1_agreement == 1.0
    assert card.export.quantization.weight_bits == 8  # a file from before the field: full-range weights
    assert card.export.quantization.bias_correction is False  # and biases as quantize_static left them
    assert ModelCard.from_metadata(card.to_metadata()) == card
