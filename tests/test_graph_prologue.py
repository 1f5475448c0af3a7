"""The exported graph casts the uint8 pixels before it transposes them (TensorRT takes a UINT8 input only
when it feeds a Cast directly), and the order changes no answer: the same graph with the old order
(``benchmarks.prologue.transpose_first``) gives the same probabilities, and both match PyTorch."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from benchmarks.prologue import PrologueNotFound, transpose_first
from export.graph import DEFAULT_OPSET, PixelsToProbabilities, trace_to_onnx
from servable.card import INPUT_NAME, OUTPUT_NAME

SIDE = 16


def tiny_network() -> nn.Module:
    """A small classifier with asymmetric weights, so a wrong channel order would change its answers."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))


def run(model: onnx.ModelProto, pixels: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run([OUTPUT_NAME], {INPUT_NAME: pixels})[0]


@pytest.fixture(scope="module")
def pixels() -> np.ndarray:
    return np.random.default_rng(3).integers(0, 256, (4, SIDE, SIDE, 3), dtype=np.uint8)


@pytest.mark.parametrize(("dtype", "atol"), [(torch.float32, 1e-6), (torch.float16, 2e-3)])
def test_the_input_feeds_a_cast_then_the_transpose_and_answers_are_unchanged(
    pixels: np.ndarray, dtype: torch.dtype, atol: float
) -> None:
    network = tiny_network().to(dtype)  # as the exporter does for fp16
    wrapper = PixelsToProbabilities(network, mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3), compute_dtype=dtype)
    model = trace_to_onnx(wrapper, SIDE, DEFAULT_OPSET)
    readers = [node for node in model.graph.node if INPUT_NAME in node.input]
    assert [(node.op_type, onnx.helper.get_attribute_value(node.attribute[0])) for node in readers] == [
        ("Cast", onnx.TensorProto.FLOAT)
    ], "the uint8 input must feed a Cast and nothing else"
    (after,) = [node for node in model.graph.node if readers[0].output[0] in node.input]
    assert after.op_type == "Transpose" and list(after.attribute[0].ints) == [0, 3, 1, 2]

    new, old = run(model, pixels), run(transpose_first(model), pixels)
    np.testing.assert_allclose(new, old, rtol=0, atol=1e-6)
    with torch.no_grad():
        expected = wrapper(torch.from_numpy(pixels)).float().numpy()
    np.testing.assert_allclose(new, expected, rtol=0, atol=atol)
    assert not np.allclose(new, run(model, pixels[..., ::-1].copy()), atol=1e-4), "channel order must matter"


def test_the_old_order_rewrite_refuses_a_graph_without_the_prologue() -> None:
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", [INPUT_NAME], [OUTPUT_NAME])], "g",
        [onnx.helper.make_tensor_value_info(INPUT_NAME, onnx.TensorProto.UINT8, [1])],
        [onnx.helper.make_tensor_value_info(OUTPUT_NAME, onnx.TensorProto.UINT8, [1])],
    )
    with pytest.raises(PrologueNotFound):
        transpose_first(onnx.helper.make_model(graph))
