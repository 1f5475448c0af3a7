"""PyTorch classifier -> ONNX graph that takes the service's uint8 pixels and returns probabilities.

Everything numeric happens inside the graph so the service never does float math per request:
cast to float, NHWC->NCHW transpose, ``/255`` and mean/std folded into one Mul + Add, the network (exported in eval mode, so the exporter folds BatchNorm into the convolutions),
and a float32 softmax. The fp16 variant casts to half right after normalising and back before softmax,
so its input and output types are the same as the fp32 graph's.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence

import onnx
import torch
from torch import nn

from export.errors import ExportError
from servable.card import INPUT_NAME, OUTPUT_NAME

#: Newest opset the TorchScript exporter writes that onnxruntime and TensorRT both read.
DEFAULT_OPSET = 17
BATCH_AXIS_NAME = "batch"
#: Bumped whenever the wrapper changes what an exported file holds (the settings fingerprint includes it,
#: so re-exporting after a change writes a new version once instead of saying "unchanged").
GRAPH_REVISION = 2  # 2: Cast before Transpose


class PixelsToProbabilities(nn.Module):
    """uint8 [N, H, W, 3] RGB -> float32 [N, classes] probabilities around ``network``."""

    scale: torch.Tensor
    shift: torch.Tensor

    def __init__(
        self,
        network: nn.Module,
        mean: Sequence[float],
        std: Sequence[float],
        compute_dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        self.network = network
        self.compute_dtype = compute_dtype
        mean_t = torch.tensor(mean, dtype=torch.float64).view(1, 3, 1, 1)
        std_t = torch.tensor(std, dtype=torch.float64).view(1, 3, 1, 1)
        # (x / 255 - mean) / std == x * scale + shift: one Mul and one Add in the graph.
        self.register_buffer("scale", (1.0 / (255.0 * std_t)).to(torch.float32), persistent=False)
        self.register_buffer("shift", (-mean_t / std_t).to(torch.float32), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # Cast before transposing: TensorRT takes a UINT8 network input only when it feeds a Cast
        # directly (NVIDIA/TensorRT#3985); a Transpose on uint8 leaves the node, and the input's
        # optimisation profiles, outside TensorRT. The CPU pays nothing for the order (benchmarks/README.md).
        pixels = images.to(torch.float32).permute(0, 3, 1, 2)
        normalised = pixels * self.scale + self.shift
        if self.compute_dtype != torch.float32:  # Decided at trace time: no Cast node in fp32 graphs.
            normalised = normalised.to(self.compute_dtype)
        logits = self.network(normalised)
        if logits.dtype != torch.float32:
            logits = logits.to(torch.float32)
        return torch.softmax(logits, dim=1)


def trace_to_onnx(wrapper: PixelsToProbabilities, crop_size: int, opset: int) -> onnx.ModelProto:
    """Export ``wrapper`` with a dynamic batch axis, constant-folded, and check it with onnx.checker."""
    example = torch.zeros((2, crop_size, crop_size, 3), dtype=torch.uint8)
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            # The TorchScript exporter is deprecated but simpler and faster for plain CNNs.
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", message="Constant folding", category=UserWarning)
            torch.onnx.export(
                wrapper.eval(),
                (example,),
                buffer,  # type: ignore[arg-type]  # a file object works; the stubs name only paths
                dynamo=False,
                export_params=True,
                opset_version=opset,
                do_constant_folding=True,
                training=torch.onnx.TrainingMode.EVAL,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: BATCH_AXIS_NAME}, OUTPUT_NAME: {0: BATCH_AXIS_NAME}},
            )
    except Exception as exc:
        raise ExportError(f"torch.onnx.export failed at opset {opset}: {type(exc).__name__}: {exc}") from exc
    model = onnx.load_from_string(buffer.getvalue())
    model.producer_name = "resnet-serve export"
    check_graph(model)
    return model


def check_graph(model: onnx.ModelProto) -> None:
    """onnx.checker with shape inference; a failure here means the exporter produced a broken file."""
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ExportError(f"the exported graph fails onnx.checker: {exc}") from exc


def set_metadata(model: onnx.ModelProto, props: dict[str, str]) -> None:
    """Replace the graph's ``metadata_props`` with ``props`` (the model card)."""
    del model.metadata_props[:]
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key = key
        entry.value = value


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    """How many nodes of each op type: shows at a glance that BatchNorm was folded away."""
    counts: dict[str, int] = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def default_opset(model: onnx.ModelProto) -> int:
    """The graph's default-domain opset (0 when it names none)."""
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
