"""fp32 wrapper graph -> static INT8 graph with onnxruntime's own tooling, calibrated on real pixels.

Each choice says why, with the figure that decided it; the measurements behind them (CPUs, versions,
the candidates not taken) are in benchmarks/README.md, "The INT8 recipe, measured".

* **7-bit weights** (``reduce_range``: int8 weights in [-64, 64]), so the file computes the same on
  every x86 CPU. Without VNNI, onnxruntime's U8S8 kernels add each pair of uint8 x int8 products in
  16 bits (``vpmaddubsw``), which saturates past 32,767 (255 x 127 x 2 = 64,770; with 7 bits at most
  255 x 64 x 2 = 32,640): a full-range resnet20 whose gate measured 99.1 % agreement on a VNNI Xeon
  agreed on 91.6 % served on an AVX2 EPYC. The speed is the full-range file's.
* **MinMax over a moving average** of each calibration batch's range (``CalibMovingAverage``), so an
  outlier image does not stretch a tensor's scale: agreement with fp32 on 4,200 label-free variants of
  the held-out CIFAR images, resnet20/32/44/56, 97.5/97.9/98.0/98.4 % against 97.3/97.7/97.9/97.8 %.
* **Bias correction** after quantize_static (export/bias_correction.py): rounding the weights is what
  costs agreement, and taking each convolution's mean output shift out of its bias brings all-1,000
  agreement to 99.3/98.4/98.0/98.3 % (98.0/98.0/97.8/98.1 % without), same weights, ranges and speed.
* ``quant_pre_process`` first (symbolic shape inference + basic graph optimisation): without it INT8
  ResNet-50 ran slower than fp32 (20.9 against 27.7 img/s).
* QDQ format, uint8 activations, int8 weights (U8S8): onnxruntime's fast VNNI kernels take unsigned
  activations (S8S8 ran at fp32 speed); QDQ runs as fast as QOperator and is what TensorRT reads.
* Symmetric per-channel weights: symmetric ones take the VNNI "ConvSym" kernels (asymmetric ones were
  no faster); per-tensor weights fail the 98 % gate on the deeper CIFAR nets (resnet32: 97.7 %).
* Left in float: the uint8 -> normalised-float prologue, the classifier head (0.05 % of ResNet-50's
  arithmetic, and resnet20's agreement is 99.1 % with it float against 98.7 %) and the softmax
  (quantized, probabilities come in steps of 1/256). Quantizing more ran slower (41.8 against 79.5
  img/s, ResNet-50, batch 8).
* The first convolution is quantized although float would agree better: float, ResNet-50 needs 26.6
  instead of 20.4 CPU ms an image (onnxruntime runs it outside the NHWC int8 path).
"""
from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from export.bias_correction import BiasCorrection, correct_biases
from export.errors import ExportError
from export.graph import default_opset
from models.progress import SILENT, Advance, Progress
from servable.card import INPUT_NAME

QUANT_FORMAT = QuantFormat.QDQ
ACTIVATION_TYPE = QuantType.QUInt8
WEIGHT_TYPE = QuantType.QInt8
PER_CHANNEL = True
#: onnxruntime's ``reduce_range``: weights in [-64, 64], exact on CPUs without VNNI (module docstring).
REDUCE_RANGE = True
WEIGHT_BITS = 7 if REDUCE_RANGE else 8  # onnxruntime offers these two
MOVING_AVERAGE = True
#: One round of empirical bias correction after quantize_static (export/bias_correction.py).
BIAS_CORRECTION = True
CALIBRATION_METHOD = CalibrationMethod.MinMax
#: The recipe above as quantize_static's keyword arguments.
RECIPE_OPTIONS = {
    "quant_format": QUANT_FORMAT, "per_channel": PER_CHANNEL, "reduce_range": REDUCE_RANGE,
    "activation_type": ACTIVATION_TYPE, "weight_type": WEIGHT_TYPE, "calibrate_method": CALIBRATION_METHOD,
    "extra_options": {"CalibMovingAverage": MOVING_AVERAGE},
}
#: QuantizeLinear/DequantizeLinear with a per-channel axis exist from opset 13.
MIN_OPSET = 13
#: Images per calibration run: bounded memory for 224 px inputs, few runs for 32 px ones.
_CALIBRATION_BATCH = {True: 32, False: 8}

_PROLOGUE_OPS = frozenset({"Transpose", "Cast", "Mul", "Add", "Sub", "Div", "Identity"})
_SOFTMAX_OPS = frozenset({"Softmax", "LogSoftmax"})
_HEAD_PASS_THROUGH = frozenset({"Add", "Flatten", "Reshape", "Squeeze", "Identity", "Cast"})
_HEAD_OPS = frozenset({"Gemm", "MatMul"})


#: Bumped whenever the recipe changes what a file holds (the settings fingerprint includes it, so a
#: re-export after a change writes a new version instead of saying "unchanged").
RECIPE_REVISION = 3  # 2: 7-bit weights, moving-average MinMax; 3: bias correction


@dataclass(frozen=True)
class Recipe:
    """The settings that go into the card (and the settings fingerprint)."""

    tool: str
    revision: int = RECIPE_REVISION
    format: str = "QDQ"
    activations: str = "uint8"
    weights: str = "int8"
    per_channel: bool = PER_CHANNEL
    weight_bits: int = WEIGHT_BITS
    calibration_method: str = "MinMax"
    calibration_moving_average: bool = MOVING_AVERAGE
    bias_correction: bool = BIAS_CORRECTION


def recipe() -> Recipe:
    return Recipe(tool=f"onnxruntime {ort.__version__} quant_pre_process + quantize_static")


def _calibration_batch(pixels: np.ndarray) -> int:
    return _CALIBRATION_BATCH[pixels.shape[1] <= 64]


class _PixelReader(CalibrationDataReader):
    """Feeds the calibration pixels to onnxruntime's calibrator in batches, counting them on ``advance``."""

    def __init__(self, pixels: np.ndarray, advance: Advance) -> None:
        size = _calibration_batch(pixels)
        self._batches = iter([pixels[i : i + size] for i in range(0, len(pixels), size)])
        self._advance = advance
        self._fed = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        self._advance(self._fed)  # the batch handed out last time has been run by now
        batch = next(self._batches, None)
        self._fed = 0 if batch is None else len(batch)
        return None if batch is None else {INPUT_NAME: np.ascontiguousarray(batch)}


def float_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes to keep in float: input prologue, softmax and the classifier head."""
    nodes = list(model.graph.node)
    consumers: dict[str, list[onnx.NodeProto]] = {}
    producer: dict[str, onnx.NodeProto] = {}
    for node in nodes:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
        for name in node.output:
            producer[name] = node
    keep: list[str] = []
    # Prologue: the element-wise chain from the uint8 input up to the first real layer.
    frontier = consumers.get(INPUT_NAME, [])
    while len(frontier) == 1 and frontier[0].op_type in _PROLOGUE_OPS:
        keep.append(frontier[0].name)
        frontier = [c for out in frontier[0].output for c in consumers.get(out, [])]
    # Softmax, and the head that feeds it (through bias Adds, flattening and reshapes).
    for node in nodes:
        if node.op_type not in _SOFTMAX_OPS:
            continue
        keep.append(node.name)
        walked: list[str] = []
        current = producer.get(node.input[0])
        while current is not None and current.op_type in _HEAD_PASS_THROUGH:
            walked.append(current.name)
            current = producer.get(current.input[0])
        if current is not None and current.op_type in _HEAD_OPS:
            keep.extend([*walked, current.name])
    return list(dict.fromkeys(name for name in keep if name))


@contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """onnxruntime.quantization logs advice on the root logger; our log says what happened."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


@dataclass(frozen=True)
class Quantized:
    """quantize's result: the graph, the nodes left in float, what bias correction did."""

    model: onnx.ModelProto
    float_nodes: list[str]
    bias_correction: BiasCorrection | None


def quantize(model_bytes: bytes, calibration: np.ndarray, progress: Progress = SILENT) -> Quantized:
    """The static INT8 version of ``model_bytes``; ExportError if it fails.

    ``progress`` shows the calibration images as onnxruntime runs them, then bias correction's.
    """
    source = onnx.load_from_string(model_bytes)
    if default_opset(source) < MIN_OPSET:
        raise ExportError(
            f"INT8 needs opset >= {MIN_OPSET} (per-channel QDQ), the graph has {default_opset(source)}"
        )
    with (
        tempfile.TemporaryDirectory(prefix="resnet-serve-int8-") as tmp,
        _quiet_quantizer(),
        progress.step("INT8 calibration", len(calibration), "images") as advance,
    ):
        folder = Path(tmp)
        fp32_path, pre_path, int8_path = folder / "fp32.onnx", folder / "pre.onnx", folder / "int8.onnx"
        fp32_path.write_bytes(model_bytes)
        try:
            quant_pre_process(str(fp32_path), str(pre_path))
        except Exception as exc:
            raise ExportError(f"onnxruntime's quant_pre_process failed: {type(exc).__name__}: {exc}") from exc
        prepared = onnx.load(str(pre_path))
        kept = float_nodes(prepared)
        try:
            quantize_static(
                str(pre_path), str(int8_path), _PixelReader(calibration, advance), nodes_to_exclude=kept,
                **RECIPE_OPTIONS,
            )
        except Exception as exc:
            raise ExportError(f"onnxruntime's quantize_static failed: {type(exc).__name__}: {exc}") from exc
        quantized = onnx.load(str(int8_path))
    correction = None
    if BIAS_CORRECTION:
        weights = {tensor.name: numpy_helper.to_array(tensor) for tensor in prepared.graph.initializer}
        try:
            batch = _calibration_batch(calibration)
            with progress.step("INT8 bias correction", len(calibration), "images") as advance:
                correction = correct_biases(quantized, weights, calibration, batch, advance)
        except Exception as exc:  # onnxruntime refusing the measuring graph: say so, write nothing
            raise ExportError(f"bias correction failed: {type(exc).__name__}: {exc}") from exc
    quantized.producer_name = source.producer_name
    return Quantized(quantized, kept, correction)
