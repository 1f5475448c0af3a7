"""fp32 wrapper graph -> static INT8 graph with onnxruntime's own tooling, calibrated on real pixels.

The recipe below was chosen by measurement, first on a 2-core AVX-512 VNNI Xeon, then checked on a
2-core AMD EPYC (Zen 3, AVX2, no VNNI); onnxruntime 1.31.1, the service's session options, timings
taken while other jobs ran, best of interleaved runs:

* **7-bit weights** (``reduce_range``: int8 weights in [-64, 64]), so the file computes the same on
  every x86 CPU. Without VNNI, onnxruntime's U8S8 kernels add each pair of uint8 x int8 products in
  16 bits (``vpmaddubsw``), which saturates once a pair passes 32,767 (255 x 127 x 2 = 64,770): a
  ResNet-20 file whose gate measured 99.1 % top-1 agreement on the Xeon agreed on 91.6 % when served on
  the EPYC (resnet32/44/56: 93.1/94.9/91.9 %). With 7-bit weights a pair is at most 255 x 64 x 2 =
  32,640, so VNNI, AVX2 and AVX-512BW kernels all compute exactly and the gate's figure holds wherever
  the file is served: held-out agreement on the EPYC resnet20/32/44/56 98.3/98.3/98.3/98.0 %, at the
  full-range file's speed (ResNet-50 35.5 against 36.6 img/s at batch 16; fp32 20.0).
* **MinMax over a moving average** of each calibration batch's range (``CalibMovingAverage``) rather
  than the extremes of all of them: an outlier image no longer stretches a tensor's scale. The gate's
  700 held-out images move by 0.14 points an image, too coarse to choose by, so the candidates were
  also compared on 4,200 label-free variants of them (flips, 2-pixel shifts), agreement with fp32,
  resnet20/32/44/56 on the EPYC: 7-bit weights with plain MinMax 97.3/97.7/97.9/97.8 %, with the
  moving average 97.5/97.9/98.0/98.4 % (held-out 700: 98.6/98.1/98.1/98.0 %). Measured and not taken:
  uint8 weights (U8U8, exact too) 98.1/98.3/98.1/98.1 % but 25.5 img/s on the EPYC and fp32 speed
  on the Xeon; the first convolution also left in float 97.5/98.4/98.4/98.3 % at 33.0 img/s here and
  30 % slower on the Xeon (below). Entropy calibration gave MinMax's figures exactly; Distribution
  collapsed to chance (10 % accuracy).
* **Bias correction** after quantize_static (export/bias_correction.py): each convolution's mean
  output shift from rounding its weights, measured on the calibration images, is taken out of its
  int32 bias. Rounding to 7 bits is what costs agreement here: with float weights and quantized
  activations resnet20 agreed with fp32 on 98.3 % of the 4,200 variants, with quantized weights and
  float activations on 97.6 %, both on 97.4 % (graph optimisations off, the QDQ semantics). Corrected,
  resnet20/32/44/56 on the variants: 97.29/97.71/98.00/98.33 -> 97.90/97.98/98.17/98.14 %; on all 1,000
  images 98.0/98.0/97.8/98.1 -> 99.3/98.4/98.0/98.3 %. Same weights, ranges and speed; the export takes
  one more pass over the calibration images (resnet20 0.7 s; ResNet-50 about 0.2 s an image).
* ``quant_pre_process`` first (symbolic shape inference + onnxruntime's basic graph optimisation).
  Without it the same quantization of ResNet-50 ran at 20.9 img/s against 27.7 fp32 (batch 8): slower
  than float. With it: 98.4 img/s (Xeon).
* QDQ format, uint8 activations, int8 weights (U8S8). int8 activations (S8S8) ran at fp32 speed
  (29.5 img/s ResNet-50, batch 8, Xeon) because onnxruntime's fast VNNI kernels take unsigned
  activations; QOperator ran as fast as QDQ (105 vs 98 img/s, within noise) and QDQ is what TensorRT
  reads too.
* Symmetric int8 weights (zero point 0, quantize_static's default). The Xeon also has AMX-INT8, and
  onnxruntime 1.31 has an AMX kernel for its generic U8S8 GEMM (a 2048^3 MatMulInteger runs it,
  ``tdpbusd`` hot under perf), but symmetric-weight convolutions take the VNNI "ConvSym" kernels. Asymmetric
  weights (``WeightSymmetric: False``) still ran VNNI code under perf and measured 64-72 against 66-81
  img/s (ResNet-50, batch 16, three interleaved rounds).
* Per-channel weights: CIFAR held-out top-1 agreement with fp32, resnet20/32/44/56, 99.1/98.0/98.7/98.7 %
  against 99.1/97.7/98.1/97.9 % per-tensor (Xeon, 8-bit): per-tensor fails the 98 % gate on deeper nets.
* MinMax calibration (Xeon, 8-bit weights): Entropy came out identical to MinMax on all four;
  Percentile (99.999) mixed, 98.7/98.4/98.7/98.7 %, within the ~0.5 point noise of 700 images.
  onnxruntime's histogram calibrators also hold every activation of every image of a collection pass
  in memory (tens of GB for 300 ResNet-50 images in one pass); MinMax keeps two numbers per tensor.
* Left in float: the uint8 -> normalised-float prologue (Transpose, Cast, Mul, Add: a few hundred
  thousand element-wise ops per image); the classifier head (Gemm/MatMul: 0.05 % of ResNet-50's
  arithmetic; float, resnet20's held-out agreement 98.7 -> 99.1 %); and the Softmax (quantized,
  probabilities come in steps of 1/256; max |dprob| rose 0.27 -> 0.32 on resnet20). Quantizing the
  prologue and softmax too, or only Conv and Gemm (float residual Adds, a Q/DQ pair around each),
  measured slower: 41.8 and 37.7 against 79.5 img/s (ResNet-50, batch 8, busy machine).
* The first convolution is quantized although it costs agreement: float, its input being the image
  (8 bits per tensor are coarser than the 8 bits per channel the pixels had), held-out agreement
  resnet20/32/44/56 went 99.1/98.0/98.7/98.7 -> 98.9/99.0/99.4/98.4 % (Xeon), but ResNet-50 then needed
  26.6 instead of 20.4 CPU ms per image (x2.29 instead of x2.99 fp32 at batch 8): onnxruntime runs the
  float conv in NCHW(c) and reorders, quantizes and max-pools its 112x112x64 output outside the NHWC
  int8 path.
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
    """Feeds the calibration pixels to onnxruntime's calibrator in batches."""

    def __init__(self, pixels: np.ndarray) -> None:
        size = _calibration_batch(pixels)
        self._batches = iter([pixels[i : i + size] for i in range(0, len(pixels), size)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
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


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


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


def quantize(model_bytes: bytes, calibration: np.ndarray) -> Quantized:
    """The static INT8 version of ``model_bytes``; ExportError if it fails."""
    source = onnx.load_from_string(model_bytes)
    if _opset(source) < MIN_OPSET:
        raise ExportError(
            f"INT8 needs opset >= {MIN_OPSET} (per-channel QDQ), the graph has {_opset(source)}"
        )
    with tempfile.TemporaryDirectory(prefix="resnet-serve-int8-") as tmp, _quiet_quantizer():
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
                str(pre_path),
                str(int8_path),
                _PixelReader(calibration),
                quant_format=QUANT_FORMAT,
                per_channel=PER_CHANNEL,
                reduce_range=REDUCE_RANGE,
                activation_type=ACTIVATION_TYPE,
                weight_type=WEIGHT_TYPE,
                calibrate_method=CALIBRATION_METHOD,
                nodes_to_exclude=kept,
                extra_options={"CalibMovingAverage": MOVING_AVERAGE},
            )
        except Exception as exc:
            raise ExportError(f"onnxruntime's quantize_static failed: {type(exc).__name__}: {exc}") from exc
        quantized = onnx.load(str(int8_path))
    correction = None
    if BIAS_CORRECTION:
        weights = {tensor.name: numpy_helper.to_array(tensor) for tensor in prepared.graph.initializer}
        try:
            correction = correct_biases(quantized, weights, calibration, _calibration_batch(calibration))
        except Exception as exc:  # onnxruntime refusing the measuring graph: say so, write nothing
            raise ExportError(f"bias correction failed: {type(exc).__name__}: {exc}") from exc
    quantized.producer_name = source.producer_name
    return Quantized(quantized, kept, correction)
