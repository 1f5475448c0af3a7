"""Bias correction on a real INT8 resnet20: the shift it measures is the one the file had, and it is gone."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import CountingProgress, cifar_checkpoint, quiet, shared_path
from PIL import Image

import export.quantize as quantize_module
from export import export_model
from export.bias_correction import dequantize_weight, output_shifts
from export.calibration import DEFAULT_CALIBRATION_COUNT, list_images
from export.quantize import Quantized, quantize

BATCH = 50


@pytest.fixture(scope="module")
def floats_and_pixels(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, dict[str, np.ndarray], np.ndarray]:
    """resnet20's verified fp32 graph, its float weights by name, and the 1,000 CIFAR images (the exporter's
    order: the first 300 calibrate)."""
    root = tmp_path_factory.mktemp("bias_correction")
    export_model("resnet20", str(cifar_checkpoint("resnet20")), model_dir=root, name="m", log=quiet)
    graph = (root / "m" / "1" / "model.onnx").read_bytes()
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load_from_string(graph).graph.initializer}
    files = list_images(shared_path("data", "cifar10-sample"), "CIFAR sample")
    pixels = np.stack([np.asarray(Image.open(path).convert("RGB"), dtype=np.uint8) for path in files])
    return graph, weights, pixels


@pytest.fixture(scope="module")
def corrected_progress() -> CountingProgress:
    """What the bias-corrected quantization below showed of its steps."""
    return CountingProgress()


@pytest.fixture(scope="module")
def both(
    floats_and_pixels: tuple[bytes, dict[str, np.ndarray], np.ndarray], corrected_progress: CountingProgress
) -> tuple[Quantized, Quantized]:
    """The same quantization without and with bias correction."""
    graph, _, pixels = floats_and_pixels
    pixels = pixels[:DEFAULT_CALIBRATION_COUNT]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(quantize_module, "BIAS_CORRECTION", False)
        plain = quantize(graph, pixels)
    return plain, quantize(graph, pixels, corrected_progress)


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


def test_calibration_and_bias_correction_show_every_image_they_run(
    both: tuple[Quantized, Quantized], corrected_progress: CountingProgress
) -> None:
    """Each step counts the images onnxruntime ran, as they run: a bar reaches its total and no further."""
    count = DEFAULT_CALIBRATION_COUNT
    assert corrected_progress.steps == {
        "INT8 calibration": (count, "images", count),
        "INT8 bias correction": (count, "images", count),
    }


def test_the_measured_shift_is_taken_out(
    both: tuple[Quantized, Quantized], floats_and_pixels: tuple[bytes, dict[str, np.ndarray], np.ndarray]
) -> None:
    """Each convolution's mean output error against its float weights (``(W_q - W) x`` plus what the
    correction moved the bias), in the bias's own steps, measured again on the corrected file: the first
    convolution (whose input the correction cannot change) is left within rounding, the rest far below
    (later inputs move with the corrections above them)."""
    _, weights, pixels = floats_and_pixels
    pixels = pixels[:DEFAULT_CALIBRATION_COUNT]
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


def test_the_shift_is_measured_as_torch_computes_it(
    both: tuple[Quantized, Quantized], floats_and_pixels: tuple[bytes, dict[str, np.ndarray], np.ndarray]
) -> None:
    """An independent measurement: each conv's input taken from the INT8 graph, W_q dequantized here, W
    from the fp32 graph's convs in order, torch's conv2d of the difference, averaged: output_shifts's figure
    per channel, in order (a flipped sign, a wrong scale or axis, channels out of order all fail)."""
    graph, _, pixels = floats_and_pixels
    pixels = pixels[:100]
    plain = both[0].model
    init = {t.name: onnx.numpy_helper.to_array(t) for t in plain.graph.initializer}
    producer = {out: n for n in plain.graph.node for out in n.output}
    fp32 = onnx.load_from_string(graph)
    fp32_init = {t.name: onnx.numpy_helper.to_array(t) for t in fp32.graph.initializer}
    fp32_weights = [fp32_init[n.input[1]] for n in fp32.graph.node if n.op_type == "Conv"]
    convs = [n for n in plain.graph.node if n.op_type == "Conv"]
    assert len(convs) == len(fp32_weights) == 19
    probe = onnx.ModelProto()
    probe.CopyFrom(plain)
    probe.graph.output.extend(onnx.helper.make_tensor_value_info(n.input[0], onnx.TensorProto.FLOAT, None) for n in convs)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    inputs = session.run([n.input[0] for n in convs], {"images": pixels})
    expected = []
    for node, x, weight in zip(convs, inputs, fp32_weights, strict=True):
        dq = producer[node.input[1]]
        quantized = init[dq.input[0]].astype(np.float64) * init[dq.input[1]].reshape(-1, 1, 1, 1)
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        pads = attrs.get("pads", [0, 0, 0, 0])
        assert pads[:2] == pads[2:]  # symmetric, as torch's padding argument needs
        shifted = torch.nn.functional.conv2d(
            torch.from_numpy(x.astype(np.float64)),
            torch.from_numpy(quantized - weight.astype(np.float64)),
            stride=tuple(attrs.get("strides", [1, 1])),
            padding=tuple(pads[:2]),
            groups=attrs.get("group", 1),
        )
        expected.append(shifted.mean(dim=(0, 2, 3)).numpy())
    measured = list(output_shifts(plain, floats_and_pixels[1], pixels, BATCH).values())
    assert len(measured) == len(expected)
    for found, wanted in zip(measured, expected, strict=True):
        np.testing.assert_allclose(found, wanted, rtol=1e-3, atol=1e-4 * np.abs(wanted).max())


def test_the_corrected_file_agrees_with_fp32_more_often(
    both: tuple[Quantized, Quantized], floats_and_pixels: tuple[bytes, dict[str, np.ndarray], np.ndarray]
) -> None:
    """What it is for, on the 700 images neither calibration nor correction saw (measured 98.6 -> 99.7 %)."""
    graph, _, pixels = floats_and_pixels
    held_out = pixels[DEFAULT_CALIBRATION_COUNT:]

    def top1(model: bytes) -> np.ndarray:
        session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
        return np.asarray(session.run(["probabilities"], {"images": held_out})[0]).argmax(axis=1)

    reference = top1(graph)
    plain, corrected = (np.mean(top1(q.model.SerializeToString()) == reference) for q in both)
    assert corrected > plain, (plain, corrected)


_VALUES = np.arange(-8, 8, dtype=np.int8).reshape(4, 1, 2, 2)  # 4 output channels


@pytest.mark.parametrize(
    ("scale", "zero", "attributes", "expected"),
    [
        pytest.param([0.5], None, {}, 0.5 * _VALUES, id="one scale"),
        pytest.param([0.5], [2], {}, 0.5 * (_VALUES - 2.0), id="one scale, zero point"),
        pytest.param(
            [1, 2, 3, 4], [0, 1, 0, -1], {"axis": 0},
            (_VALUES - np.array([0, 1, 0, -1.0]).reshape(-1, 1, 1, 1)) * np.arange(1, 5).reshape(-1, 1, 1, 1),
            id="per output channel",
        ),
        pytest.param([1, 2, 3, 4], None, {"axis": -4}, _VALUES * np.arange(1, 5.0).reshape(-1, 1, 1, 1), id="axis -4"),
        pytest.param([1, 2], None, {"axis": 2}, None, id="another axis: left alone"),
        pytest.param([1, 2, 3, 4], None, {"axis": 1}, None, id="input channels: left alone"),
        pytest.param([1, 2, 3, 4], None, {"axis": 0, "block_size": 2}, None, id="blocked: left alone"),
    ],
)
def test_weights_are_dequantized_as_the_node_says_or_left_alone(
    scale: list[float], zero: list[int] | None, attributes: dict[str, int], expected: np.ndarray | None
) -> None:
    inits = {"s": onnx.numpy_helper.from_array(np.array(scale if len(scale) > 1 else scale[0], np.float32), "s")}
    inputs = ["w", "s"]
    if zero is not None:
        inits["z"] = onnx.numpy_helper.from_array(np.array(zero if len(zero) > 1 else zero[0], np.int8), "z")
        inputs.append("z")
    node = onnx.helper.make_node("DequantizeLinear", inputs, ["out"])
    node.attribute.extend(onnx.helper.make_attribute(key, value) for key, value in attributes.items())
    found = dequantize_weight(node, _VALUES.astype(np.float32), inits)
    if expected is None:
        assert found is None
    else:
        assert found is not None
        np.testing.assert_allclose(found, expected)
