"""Both graphs the exporter writes cast the uint8 pixels before they transpose them (TensorRT takes a UINT8
input only when it feeds a Cast directly): the PyTorch path (``export.graph``) and the wrapper around an
imported ONNX classifier (``export.onnx_wrap``). The order changes no answer: the same graph with the old
order (``benchmarks.prologue.transpose_first``) gives the same probabilities, and both match the reference
(PyTorch; for an import, onnxruntime on the original file with the textbook normalisation)."""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from benchmarks.prologue import PrologueNotFound, transpose_first
from export.graph import DEFAULT_OPSET, PixelsToProbabilities, trace_to_onnx
from export.onnx_wrap import inspect_signature, wrap
from servable.card import INPUT_NAME, OUTPUT_NAME
from servable.preprocessing import Preprocessing

SIDE = 16
CLASSES = 5
MEAN, STD = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)

Reference = Callable[[np.ndarray], np.ndarray]


def tiny_network() -> nn.Module:
    """A small classifier with asymmetric weights, so a wrong channel order would change its answers."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, CLASSES)
    )


def run(model: onnx.ModelProto, pixels: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run([OUTPUT_NAME], {INPUT_NAME: pixels})[0]


def pytorch_export(dtype: torch.dtype) -> tuple[onnx.ModelProto, Reference]:
    """``python -m export``'s graph of the tiny network; the reference is the PyTorch wrapper itself."""
    network = tiny_network().to(dtype)  # as the exporter does for fp16
    wrapper = PixelsToProbabilities(network, mean=MEAN, std=STD, compute_dtype=dtype)
    model = trace_to_onnx(wrapper, SIDE, DEFAULT_OPSET)

    def reference(pixels: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return wrapper(torch.from_numpy(pixels)).float().numpy()

    return model, reference


def imported_onnx() -> tuple[onnx.ModelProto, Reference]:
    """``python -m export --onnx``'s wrapper around the tiny network exported as a float32 NCHW file of logits;
    the reference is onnxruntime on that file with the textbook normalisation and a NumPy softmax."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            tiny_network().eval(), (torch.zeros(1, 3, SIDE, SIDE),), buffer, dynamo=False, opset_version=17,
            input_names=["x"], output_names=["logits"], dynamic_axes={"x": {0: "n"}, "logits": {0: "n"}},
        )
    original = onnx.load_from_string(buffer.getvalue())
    preprocessing = Preprocessing(resize_size=SIDE, crop_size=SIDE, mean=MEAN, std=STD)
    model = wrap(original, inspect_signature(original, None), preprocessing, CLASSES, apply_softmax=True)
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])

    def reference(pixels: np.ndarray) -> np.ndarray:
        mean, std = (np.float32(v).reshape(1, 3, 1, 1) for v in (MEAN, STD))
        x = (pixels.transpose(0, 3, 1, 2).astype(np.float32) / 255.0 - mean) / std
        logits = session.run(None, {"x": np.ascontiguousarray(x)})[0].astype(np.float64)
        exp = np.exp(logits - logits.max(1, keepdims=True))
        return exp / exp.sum(1, keepdims=True)

    return model, reference


#: (graph builder, tolerance against its reference)
GRAPHS = {
    "pytorch fp32": (lambda: pytorch_export(torch.float32), 1e-6),
    "pytorch fp16": (lambda: pytorch_export(torch.float16), 2e-3),
    "imported onnx": (imported_onnx, 1e-6),
}


@pytest.fixture(scope="module")
def pixels() -> np.ndarray:
    return np.random.default_rng(3).integers(0, 256, (4, SIDE, SIDE, 3), dtype=np.uint8)


@pytest.mark.parametrize("graph", GRAPHS)
def test_the_input_feeds_a_cast_then_the_transpose_and_answers_are_unchanged(pixels: np.ndarray, graph: str) -> None:
    build, atol = GRAPHS[graph]
    model, reference = build()
    readers = [node for node in model.graph.node if INPUT_NAME in node.input]
    assert [(node.op_type, onnx.helper.get_attribute_value(node.attribute[0])) for node in readers] == [
        ("Cast", onnx.TensorProto.FLOAT)
    ], "the uint8 input must feed a Cast and nothing else"
    (after,) = [node for node in model.graph.node if readers[0].output[0] in node.input]
    assert after.op_type == "Transpose" and list(after.attribute[0].ints) == [0, 3, 1, 2]

    new, old = run(model, pixels), run(transpose_first(model), pixels)
    np.testing.assert_allclose(new, old, rtol=0, atol=1e-6)
    np.testing.assert_allclose(new, reference(pixels), rtol=0, atol=atol)
    assert not np.allclose(new, run(model, pixels[..., ::-1].copy()), atol=1e-4), "channel order must matter"


def test_the_old_order_rewrite_refuses_a_graph_without_the_prologue() -> None:
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", [INPUT_NAME], [OUTPUT_NAME])], "g",
        [onnx.helper.make_tensor_value_info(INPUT_NAME, onnx.TensorProto.UINT8, [1])],
        [onnx.helper.make_tensor_value_info(OUTPUT_NAME, onnx.TensorProto.UINT8, [1])],
    )
    with pytest.raises(PrologueNotFound):
        transpose_first(onnx.helper.make_model(graph))
