"""Bias correction on a real INT8 resnet20: the shift it measures is the one the file had, and it is gone."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import cifar_checkpoint, shared_path
from PIL import Image

import export.quantize as quantize_module
from export import export_model
from export.bias_correction import output_shifts
from export.calibration import DEFAULT_CALIBRATION_COUNT, list_images
from export.quantize import Quantized, quantize

BATCH = 50


def quiet(_line: str) -> None:
    """Export log sink."""


@pytest.fixture(scope="module")
def floats_and_pixels(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, dict[str, np.ndarray], np.ndarray]:
    """resnet20's verified fp32 graph, its float weights by name, and the 300 calibration images."""
    root = tmp_path_factory.mktemp("bias_correction")
    export_model("resnet20", str(cifar_checkpoint("resnet20")), model_dir=root, name="m", log=quiet)
    graph = (root / "m" / "1" / "model.onnx").read_bytes()
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load_from_string(graph).graph.initializer}
    files = list_images(shared_path("data", "cifar10-sample"), "CIFAR sample")[:DEFAULT_CALIBRATION_COUNT]
    pixels = np.stack([np.asarray(Image.open(path).convert("RGB"), dtype=np.uint8) for path in files])
    return graph, weights, pixels


@pytest.fixture(scope="module")
def both(floats_and_pixels: tuple[bytes, dict[str, np.ndarray], np.ndarray]) -> tuple[Quantized, Quantized]:
    """The same quantization without and with bias correction."""
    graph, _, pixels = floats_and_pixels
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(quantize_module, "BIAS_CORRECTION", False)
        plain = quantize(graph, pixels)
    return plain, quantize(graph, pixels)


def bias_steps(model: onnx.ModelProto) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each int32 bias (by name) with the scale of its DequantizeLinear."""
    init = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    return {
        n.input[0]: (init[n.input[0]], init[n.input[1]])
        for n in model.graph.node
        if n.op_type == "DequantizeLinear" and init.get(n.input[0], np.zeros(0, np.int8)).dtype == np.int32
    }


def test_every_convolution_is_corrected_and_only_its_bias_changes(both: tuple[Quantized, Quantized]) -> None:
    plain, corrected = both
    assert plain.bias_correction is None
    assert corrected.bias_correction is not None
    assert corrected.bias_correction.corrected == corrected.bias_correction.convolutions == 19
    before = {t.name: onnx.numpy_helper.to_array(t) for t in plain.model.graph.initializer}
    after = {t.name: onnx.numpy_helper.to_array(t) for t in corrected.model.graph.initializer}
    assert before.keys() == after.keys()
    changed = {name for name in before if not np.array_equal(before[name], after[name])}
    assert changed and changed <= set(bias_steps(corrected.model))  # weights and ranges untouched
    assert [n.op_type for n in plain.model.graph.node] == [n.op_type for n in corrected.model.graph.node]


def test_the_measured_shift_is_taken_out(
    both: tuple[Quantized, Quantized], floats_and_pixels: tuple[bytes, dict[str, np.ndarray], np.ndarray]
) -> None:
    """Each convolution's mean output error against its float weights (``(W_q - W) x`` plus what the
    correction moved the bias), in the bias's own steps, measured again on the corrected file: the first
    convolution (whose input the correction cannot change) is left within rounding, the rest far below
    (later inputs move with the corrections above them)."""
    _, weights, pixels = floats_and_pixels
    plain, corrected = both
    plain_biases, corrected_biases = bias_steps(plain.model), bias_steps(corrected.model)
    before = output_shifts(plain.model, weights, pixels, BATCH)
    after = output_shifts(corrected.model, weights, pixels, BATCH)
    assert before.keys() == after.keys() == plain_biases.keys() and len(before) == 19

    def residual(name: str) -> np.ndarray:
        (old, scale), (new, _) = plain_biases[name], corrected_biases[name]
        return after[name] / scale + (new.astype(np.int64) - old)

    first = next(iter(before))
    np.testing.assert_array_equal(before[first], after[first])  # same input, same weights
    assert np.abs(before[first] / plain_biases[first][1]).max() > 1  # there was a shift to take out
    assert np.abs(residual(first)).max() <= 0.5 + 1e-3
    mean_before = np.mean([np.abs(before[k] / plain_biases[k][1]).mean() for k in before])
    mean_after = np.mean([np.abs(residual(k)).mean() for k in after])
    assert mean_after < 0.05 * mean_before, (mean_before, mean_after)  # measured: 55 -> 0.7 steps
