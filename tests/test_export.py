"""export_model on real checkpoints and images: accuracy through onnxruntime, graph contract, failures."""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import (
    CIFAR_SAMPLE_ACCURACY,
    card_of,
    cifar_checkpoint,
    cifar_sample,
    quiet,
    session_for,
    shared_path,
)
from PIL import Image

import export.verify
import models
from export import ExportError, ExportResult, export_model, import_onnx
from export.graph import set_metadata
from export.presets import PreprocessingSpec
from export.publish import fingerprint
from servable.card import INPUT_NAME, OUTPUT_NAME, ExportInfo, ModelCard

IMAGENET_SHAPED = ["resnet50", "resnext50_32x4d", "seresnet50"]





def repository_files(root: Path) -> list[Path]:
    """Every file and folder under ``root``: failed exports must leave none behind."""
    return sorted(root.rglob("*"))


@pytest.fixture(scope="module")
def cifar_pixels() -> tuple[np.ndarray, np.ndarray]:
    """The 1,000 sample images as uint8 [N, 32, 32, 3] (decoded, nothing else) and their classes."""
    sample = cifar_sample()
    pixels = np.stack([np.asarray(Image.open(path).convert("RGB"), dtype=np.uint8) for path, _ in sample])
    return pixels, np.array([label for _, label in sample])


@pytest.mark.parametrize("arch", sorted(CIFAR_SAMPLE_ACCURACY))
def test_cifar_export_reproduces_the_sample_accuracy(
    arch: str, model_repo: Path, cifar_pixels: tuple[np.ndarray, np.ndarray]
) -> None:
    session = session_for(model_repo / arch / "1" / "model.onnx")
    pixels, truth = cifar_pixels
    probabilities = np.concatenate(
        [session.run([OUTPUT_NAME], {INPUT_NAME: pixels[i : i + 250]})[0] for i in range(0, len(pixels), 250)]
    )
    accuracy = 100.0 * float(np.mean(probabilities.argmax(1) == truth))
    assert abs(accuracy - CIFAR_SAMPLE_ACCURACY[arch]) <= 0.1, f"{arch}: {accuracy:.2f}%"


@pytest.mark.parametrize("arch", sorted(CIFAR_SAMPLE_ACCURACY))
def test_cifar_card_records_source_labels_and_verification(arch: str, model_repo: Path) -> None:
    card = card_of(model_repo / arch / "1" / "model.onnx")
    checkpoint = cifar_checkpoint(arch)
    assert card.architecture == arch
    assert card.labels == tuple(shared_path("labels", "cifar10.txt").read_text().split())
    assert card.source.spec == str(checkpoint)
    assert card.source.sha256 is not None and card.source.sha256.startswith(checkpoint.stem.split("-")[1])
    assert (card.preprocessing.resize_size, card.preprocessing.crop_size) == (32, 32)
    assert card.export.precision == "fp32"
    figures = card.verification
    assert figures["passed"] is True
    assert figures["real_images"] == figures["images"] >= 100
    assert figures["max_abs_diff"] <= 1e-4
    assert figures["top1_mismatches"] == 0


def test_graph_takes_uint8_nhwc_with_dynamic_batch_and_has_batchnorm_folded(model_repo: Path) -> None:
    path = model_repo / "resnet20" / "1" / "model.onnx"
    graph = onnx.load(str(path))
    (image_input,) = graph.graph.input
    (output,) = graph.graph.output
    assert image_input.name == INPUT_NAME and output.name == OUTPUT_NAME
    assert image_input.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert output.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    dims = image_input.type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [32, 32, 3]
    assert not [node for node in graph.graph.node if node.op_type == "BatchNormalization"]

    session = session_for(path)
    pixels = np.random.default_rng(1).integers(0, 256, size=(3, 32, 32, 3), dtype=np.uint8)
    probabilities = session.run(None, {INPUT_NAME: pixels})[0]
    assert probabilities.shape == (3, 10) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(1), 1.0, atol=1e-5)


def test_random_init_imagenet_model_in_the_session_repository(model_repo: Path) -> None:
    card = card_of(model_repo / "resnet18" / "1" / "model.onnx")
    assert card.num_classes == 1000 and card.labels[0] == "tench"
    assert card.source.sha256 is None and "random" in card.source.spec
    assert card.verification["passed"] is True


def peaked_random_checkpoint(arch: str, folder: Path) -> Path:
    """Random weights whose head is scaled until the softmax is peaked, saved as a plain state_dict.

    Freshly initialised ImageNet models answer nearly uniform probabilities (~1/1000 each), where a
    1e-4 tolerance proves little; spread logits make every probability difference count.
    """
    torch.manual_seed(0)
    network = models.create_model(arch)
    with torch.no_grad():
        logits = network(torch.randn(4, 3, 224, 224))
        gain = 4.0 / float(logits.std())
        network.head.weight.mul_(gain)
        network.head.bias.mul_(gain)
    path = folder / f"{arch}-peaked-random.pth"
    torch.save(network.state_dict(), path)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("arch", IMAGENET_SHAPED)
def test_imagenet_shaped_architectures_export_and_verify(arch: str, tmp_path: Path) -> None:
    weights = peaked_random_checkpoint(arch, tmp_path)
    result = export_model(arch, str(weights), model_dir=tmp_path / "repo", log=quiet)
    figures = result.verification
    assert figures["passed"] is True and figures["max_abs_diff"] <= 1e-4
    assert figures["top1_mismatches"] == 0
    assert figures["batch1_vs_batch8_max_abs_diff"] <= 1e-5
    session = session_for(result.path)
    assert session.get_inputs()[0].shape[1:] == [224, 224, 3]
    assert session.get_outputs()[0].shape[1:] == [1000]
    assert card_of(result.path) == result.card
    photo = np.stack(
        [
            np.asarray(
                Image.open(shared_path("data", "photos", "chelsea.png")).convert("RGB").resize((224, 224))
            )
        ]
    )
    assert session.run(None, {INPUT_NAME: photo})[0].max() > 0.01, (
        "the check above compared near-uniform outputs"
    )


def test_fp16_export_keeps_io_types_and_agrees_with_fp32(tmp_path: Path) -> None:
    result = export_model(
        "resnet20", str(cifar_checkpoint("resnet20")), model_dir=tmp_path, fp16=True, log=quiet
    )
    assert result.card.export.precision == "fp16"
    assert result.verification["top1_agreement"] >= 0.99
    graph = onnx.load(str(result.path))
    conv_weights = {node.input[1] for node in graph.graph.node if node.op_type == "Conv"}
    weight_types = {init.data_type for init in graph.graph.initializer if init.name in conv_weights}
    assert weight_types == {onnx.TensorProto.FLOAT16}
    session = session_for(result.path)
    assert session.get_inputs()[0].type == "tensor(uint8)"
    assert session.get_outputs()[0].type == "tensor(float)"


def test_rerun_with_same_weights_and_settings_does_nothing(tmp_path: Path) -> None:
    weights = str(cifar_checkpoint("resnet20"))
    first = export_model("resnet20", weights, model_dir=tmp_path, name="cifar", log=quiet)
    lines: list[str] = []
    again = export_model("resnet20", weights, model_dir=tmp_path, name="cifar", log=lines.append)
    assert (first.skipped, again.skipped) == (False, True)
    assert again.version == first.version == 1 and again.path == first.path
    assert any("nothing to do" in line for line in lines)
    changed = export_model(
        "resnet20", weights, model_dir=tmp_path, name="cifar", opset=18, verify=False, log=quiet
    )
    assert (changed.skipped, changed.version) == (False, 2)


def owner_resnet20_onnx(folder: Path) -> Path:
    """The CIFAR resnet20 as its owner would export it for ``--onnx``: float32 NCHW in, logits out."""
    network = models.create_model("resnet20", weights=cifar_checkpoint("resnet20"))
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(network, (torch.zeros(1, 3, 32, 32),), buffer, dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["logits"], dynamic_axes={"x": {0: "n"}})
    path = folder / "owner-resnet20.onnx"
    path.write_bytes(buffer.getvalue())
    return path


#: The two ways into the repository, each writing model "m" into a repository folder with a log.
EXPORTS: dict[str, Callable[[Path, Callable[[str], None]], ExportResult]] = {
    "pytorch": lambda repo, log: export_model(
        "resnet20", str(cifar_checkpoint("resnet20")), model_dir=repo, name="m", log=log
    ),
    "onnx import": lambda repo, log: import_onnx(
        owner_resnet20_onnx(repo.parent), model_dir=repo, name="m", log=log,
        preprocessing=PreprocessingSpec(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), crop=32),
    ),
}


def as_written_before_graph_revisions(path: Path) -> None:
    """Rewrite ``path``'s card as the release before graph revisions wrote it: its settings name none."""
    model = onnx.load(str(path))
    card = ModelCard.from_metadata({prop.key: prop.value for prop in model.metadata_props})
    settings = {key: value for key, value in card.export.model_dump()["settings"].items() if key != "graph_revision"}
    info = ExportInfo(**{**card.export.model_dump(), "settings": settings, "settings_fingerprint": fingerprint(settings)})
    set_metadata(model, card.model_copy(update={"export": info}).to_metadata())
    onnx.save(model, str(path))


@pytest.mark.parametrize("path", EXPORTS)
def test_a_version_from_before_the_graph_revision_is_replaced_once(path: str, tmp_path: Path) -> None:
    """The graph's revision is in the settings: a repository written with the old prologue is not "up to
    date" for ever; the next run writes a new version, and the run after it has nothing to do."""
    run, repo = EXPORTS[path], tmp_path / "repo"
    first = run(repo, quiet)
    assert first.card.export.model_dump()["settings"]["graph_revision"] >= 2
    assert run(repo, quiet).skipped, "same release, same settings: nothing to do"

    as_written_before_graph_revisions(first.path)
    lines: list[str] = []
    renewed = run(repo, lines.append)
    assert (renewed.skipped, renewed.version) == (False, 2), lines
    again = run(repo, quiet)
    assert (again.skipped, again.version) == (True, 2)


def test_explicit_version_taken_by_other_settings_is_refused(tmp_path: Path) -> None:
    weights = str(cifar_checkpoint("resnet20"))
    export_model("resnet20", weights, model_dir=tmp_path, name="cifar", version=3, verify=False, log=quiet)
    with pytest.raises(ExportError, match="already exists"):
        export_model("resnet20", weights, model_dir=tmp_path, name="cifar", version=3, fp16=True, log=quiet)


def test_mismatched_weights_give_a_clear_error_and_write_nothing(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="resnet20"):
        export_model("resnet20", str(cifar_checkpoint("resnet32")), model_dir=tmp_path, log=quiet)
    assert repository_files(tmp_path) == []


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_weights_give_a_clear_error_and_write_nothing(damage: str, tmp_path: Path) -> None:
    original = cifar_checkpoint("resnet20").read_bytes()
    broken = tmp_path / "broken.th"
    broken.write_bytes(
        b"not a checkpoint at all" * 10 if damage == "garbage" else original[: len(original) // 2]
    )
    repo = tmp_path / "repo"
    with pytest.raises(ExportError, match="cannot load weights"):
        export_model("resnet20", str(broken), model_dir=repo, log=quiet)
    assert repository_files(repo) == [] if repo.exists() else True


def test_failed_verification_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # An impossible tolerance makes the real comparison fail: the file must then never appear.
    monkeypatch.setattr(export.verify, "FP32_MAX_ABS_DIFF", -1.0)
    with pytest.raises(ExportError, match="verification failed"):
        export_model("resnet20", str(cifar_checkpoint("resnet20")), model_dir=tmp_path, log=quiet)
    assert [p for p in repository_files(tmp_path) if p.is_file()] == []
    assert not (tmp_path / "resnet20" / "1").exists()


def test_labels_file_overrides_and_placeholders_fill_in(tmp_path: Path) -> None:
    # Labels do not depend on verification: skip it to keep the test fast.
    placeholder = export_model(
        "resnet20", None, model_dir=tmp_path, name="three", num_classes=3, verify=False, log=quiet
    )
    assert placeholder.card.labels == ("class_0", "class_1", "class_2")
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\nbird\n")
    named = export_model(
        "resnet20",
        None,
        model_dir=tmp_path,
        name="three",
        num_classes=3,
        labels_file=labels,
        verify=False,
        log=quiet,
    )
    assert named.card.labels == ("cat", "dog", "bird") and named.version == 2
    labels.write_text("cat\ndog\n")
    with pytest.raises(ExportError, match="2 labels but the model has 3 classes"):
        export_model(
            "resnet20", None, model_dir=tmp_path, name="three", num_classes=3, labels_file=labels, log=quiet
        )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"arch": "resnet9000"}, "unknown architecture"),
        ({"name": "../escape"}, "invalid model name"),
        ({"version": 0}, "positive integer"),
    ],
)
def test_bad_requests_are_refused_before_any_work(kwargs: dict, message: str, tmp_path: Path) -> None:
    arguments = {"arch": "resnet20", "weights": None, "model_dir": tmp_path, "log": quiet, **kwargs}
    with pytest.raises(ExportError, match=message):
        export_model(**arguments)
    assert repository_files(tmp_path) == []
