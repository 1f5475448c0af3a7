"""Bring your own ONNX, what is refused: graphs that cannot be wrapped, files that are not ONNX, mistakes in
models.toml and on the command line, each with a message that says what to do; nothing is written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import onnxruntime as ort
import pytest
from conftest import REPO_ROOT, quiet
from onnx import TensorProto
from onnx_files import LABELS, MEAN, SPEC, STD, helper_model, make_files

from export import ExportError
from export.config import ImportRequest, load_config
from export.onnx_import import import_onnx
from export.presets import PreprocessingSpec
from servable.card import ModelCard


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_files(tmp_path_factory.mktemp("onnx_files"))


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
