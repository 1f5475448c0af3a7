"""INT8 arithmetic on this CPU: where onnxruntime's uint8 x int8 kernels saturate, and that the service knows.

Without VNNI, x86 kernels add each pair of uint8 x int8 products in 16 bits (``vpmaddubsw``), which
clips above 32,767; the exporter's 7-bit weights keep every pair below that. Each case runs a real
onnxruntime session on a one-node graph with worst-case operands and compares with exact integer
arithmetic: 7-bit weights must be exact everywhere, full-range weights exactly where
``int8_pairs_saturate`` says this CPU does not saturate (so the detection is checked against the
kernels themselves on whichever CPU runs the suite).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from servable.card import ModelCard
from service.engine.runtime import int8_exactness
from service.limits.cpus import int8_pairs_saturate

#: (weight value, its bits): the largest magnitudes the exporter's range ([-64, 64], onnxruntime's
#: symmetric reduced range) and the full int8 range allow.
WEIGHTS = [(64, 7), (-64, 7), (127, 8), (-128, 8)]
CHANNELS = 64


def _session(nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto], initializers: list[onnx.TensorProto],
             output: str, elem_type: int) -> ort.InferenceSession:
    graph = helper.make_graph(nodes, "probe", inputs, [helper.make_tensor_value_info(output, elem_type, None)],
                              initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def matmul_integer(weight: int) -> tuple[int, int]:
    """(onnxruntime's, exact) sum of 255 x ``weight`` over 256 products: the GEMM kernel."""
    a = np.full((4, 256), 255, np.uint8)
    b = np.full((256, 8), weight, np.int8)
    session = _session(
        [helper.make_node("MatMulInteger", ["a", "b"], ["c"])],
        [helper.make_tensor_value_info("a", TensorProto.UINT8, list(a.shape))],
        [numpy_helper.from_array(b, "b")], "c", TensorProto.INT32,
    )
    return int(session.run(None, {"a": a})[0][0, 0]), 255 * weight * 256


def qlinear_conv(weight: int) -> tuple[int, int]:
    """(onnxruntime's, exact) centre output of a 3x3 QLinearConv over 64 channels of 255: the conv kernel.

    The output scale 2^18 and zero point 128 map every exact sum (at most 255 x 128 x 576 = 18.8 M in
    magnitude) into 56..200 without clipping, so a saturated pair (half the sum) shows as another value.
    """
    x = np.full((1, CHANNELS, 5, 5), 255, np.uint8)
    w = np.full((CHANNELS, CHANNELS, 3, 3), weight, np.int8)
    scalars = {"xs": (1.0, np.float32), "xz": (0, np.uint8), "ws": (1.0, np.float32), "wz": (0, np.int8),
               "ys": (2.0**18, np.float32), "yz": (128, np.uint8)}
    session = _session(
        [helper.make_node("QLinearConv", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz"], ["y"], pads=[1, 1, 1, 1])],
        [helper.make_tensor_value_info("x", TensorProto.UINT8, list(x.shape))],
        [numpy_helper.from_array(w, "w"),
         *(numpy_helper.from_array(np.array(value, dtype), name) for name, (value, dtype) in scalars.items())],
        "y", TensorProto.UINT8,
    )
    exact = 255 * weight * CHANNELS * 9
    return int(session.run(None, {"x": x})[0][0, 0, 2, 2]), round(exact / 2.0**18) + 128


@pytest.mark.parametrize("kernel", [matmul_integer, qlinear_conv], ids=["gemm", "conv"])
@pytest.mark.parametrize(("weight", "bits"), WEIGHTS, ids=[f"{w}({b}bit)" for w, b in WEIGHTS])
def test_kernels_are_exact_for_7_bit_weights_and_where_the_service_says_for_8(kernel, weight: int, bits: int) -> None:
    saturates = int8_pairs_saturate()
    if saturates is None:
        pytest.skip("this CPU's flags are unreadable: nothing to check the detection against")
    computed, exact = kernel(weight)
    if bits == 7 or not saturates:
        assert computed == exact
    else:
        assert computed != exact, "full-range weights computed exactly on a CPU detected as saturating"


CPUINFO_CASES = [
    ("EPYC Zen 3 (AVX2)", "x86_64", "flags\t\t: fpu sse4_2 avx avx2 fma\n", True),
    ("Skylake-SP (AVX-512BW, no VNNI)", "x86_64", "flags\t\t: avx2 avx512f avx512bw\n", True),
    ("Cascade Lake (AVX-512 VNNI)", "x86_64", "flags\t\t: avx2 avx512f avx512bw avx512_vnni\n", False),
    ("Alder Lake (AVX-VNNI)", "x86_64", "flags\t\t: avx2 avx_vnni\n", False),
    ("two processors, flags twice", "x86_64", "processor\t: 0\nflags\t: avx2\n\nprocessor\t: 1\nflags\t: avx2\n", True),
    ("no flags line", "x86_64", "processor\t: 0\n", None),
    ("arm64: widening multiplies are exact", "aarch64", "Features\t: fp asimd\n", False),
]


@pytest.mark.parametrize(("machine", "text", "expected"), [c[1:] for c in CPUINFO_CASES], ids=[c[0] for c in CPUINFO_CASES])
def test_saturation_detected_from_cpuinfo(tmp_path: Path, machine: str, text: str, expected: bool | None) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(text)
    assert int8_pairs_saturate(cpuinfo, machine) is expected


def test_unreadable_cpuinfo_is_unknown(tmp_path: Path) -> None:
    assert int8_pairs_saturate(tmp_path / "missing", "x86_64") is None


def _int8_card(weight_bits: int | None) -> ModelCard:
    record = {"tool": "t", "calibration_images": 1, "calibration_source": "s", "calibration_sha256": "0",
              "reference": "r", "holdout_images": 1, "top1_agreement": 1.0, "max_abs_diff": 0.0, "min_agreement": 0.98}
    if weight_bits is not None:
        record["weight_bits"] = weight_bits
    return ModelCard.model_validate({
        "architecture": "resnet20", "num_classes": 1, "labels": ["x"],
        "preprocessing": {"resize_size": 32, "crop_size": 32}, "source": {"spec": "s"},
        "export": {"onnx_version": "1", "opset": 17, "exported_at": "t", "precision": "int8", "quantization": record},
    })


def test_service_calls_old_full_range_files_exact_only_without_saturation() -> None:
    saturates = int8_pairs_saturate()
    assert int8_exactness(_int8_card(7)) is True
    expected = None if saturates is None else not saturates
    assert int8_exactness(_int8_card(None)) is expected  # a card from before weight_bits: 8-bit weights
    assert int8_exactness(_int8_card(8)) is expected
