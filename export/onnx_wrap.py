"""The user's ONNX classifier as a graph: read it, learn its signature, wrap it into the service's contract.

The wrapper is written with the onnx helper API around the user's graph (every name of theirs
prefixed with ``user/``, so nothing can clash with ours)::

    images uint8 [N, crop, crop, 3] -> Cast -> Transpose -> Mul/Add (mean/std) -> user/<graph>
        -> Softmax (only if the model emits logits) -> probabilities float32 [N, classes]

The Cast comes first for the reason :mod:`export.graph` gives (TensorRT takes a UINT8 input only when it
feeds a Cast directly); :data:`WRAP_REVISION` records the prologue in the settings fingerprint.

What cannot be wrapped (several inputs, NHWC, non-square, external weights ...) is refused here
with the reason, before anything runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import TensorProto, helper, numpy_helper

from export.errors import ExportError
from export.graph import BATCH_AXIS_NAME, default_opset
from servable.card import INPUT_NAME, OUTPUT_NAME
from servable.preprocessing import Preprocessing

USER_PREFIX = "user/"
#: Oldest default-domain opset accepted: onnxruntime's floor, and every op the wrapper adds exists there.
MIN_IMPORT_OPSET = 7
#: Bumped whenever the wrapper changes what an imported file holds (the settings fingerprint includes it,
#: so re-importing after a change writes a new version instead of saying "unchanged").
WRAP_REVISION = 2  # 2: Cast before Transpose


@dataclass(frozen=True)
class Signature:
    """What the importer learned about the user's graph; None where the graph leaves a size dynamic.

    ``fixed_batch``: a batch size the file pins (the wrapper makes it dynamic); ``side``: the square
    input's H == W; ``classes``: the output's second axis; ``opset``: the default domain's.
    """

    input_name: str
    output_name: str
    fixed_batch: int | None
    side: int | None
    classes: int | None
    opset: int


def read_model(path: Path) -> tuple[bytes, onnx.ModelProto]:
    """The file's bytes (for its hash and the reference session) and the parsed model, or a clear refusal."""
    try:
        payload = Path(path).read_bytes()
    except OSError as exc:
        raise ExportError(f"cannot read {path}: {exc}") from None
    try:
        model = onnx.load_from_string(payload)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise ExportError(f"{path} is not an ONNX model: {exc}") from None
    if not model.graph.node:
        raise ExportError(f"{path} is not an ONNX model (no graph nodes)")
    if any(init.data_location == TensorProto.EXTERNAL for init in model.graph.initializer):
        raise ExportError(
            f"{path} keeps its weights in external data files; save it as one file"
            " (onnx.save(model, path, save_as_external_data=False))"
        )
    return payload, model


def inspect_signature(model: onnx.ModelProto, output_name: str | None) -> Signature:
    """Check the graph is a single-input float32 NCHW classifier; refuse clearly what cannot be wrapped."""
    graph = model.graph
    opset = default_opset(model)
    if opset < MIN_IMPORT_OPSET:
        raise ExportError(f"the model uses opset {opset}; the importer needs opset >= {MIN_IMPORT_OPSET}")
    initializers = {init.name for init in graph.initializer}
    inputs = [value for value in graph.input if value.name not in initializers]
    if len(inputs) != 1:
        found = ", ".join(repr(value.name) for value in inputs) or "none"
        raise ExportError(
            f"the model has {len(inputs)} inputs ({found});"
            " only single-input image classifiers can be wrapped"
        )
    (image,) = inputs
    if not image.type.HasField("tensor_type") or image.type.tensor_type.elem_type != TensorProto.FLOAT:
        raise ExportError(
            f"input {image.name!r} is {_type_name(image.type)}; only float32 NCHW inputs can be wrapped"
        )
    dims = list(image.type.tensor_type.shape.dim)
    if not image.type.tensor_type.HasField("shape") or len(dims) != 4:
        raise ExportError(f"input {image.name!r} has shape {_dims(dims)}; expected [N, 3, H, W]")
    batch, channels, height, width = (d.dim_value if d.HasField("dim_value") else None for d in dims)
    if channels != 3:
        layout = " (is it NHWC? the importer wraps NCHW)" if width == 3 else ""
        raise ExportError(f"input {image.name!r} has shape {_dims(dims)}: expected 3 channels second{layout}")
    if (height is None) != (width is None) or (height is not None and height != width):
        raise ExportError(
            f"input {image.name!r} has shape {_dims(dims)}: the service feeds square crops"
            " (H == W, both fixed"
            " or both dynamic)"
        )
    output = _pick_output(graph, output_name)
    out_type = output.type.tensor_type
    if not output.type.HasField("tensor_type") or out_type.elem_type != TensorProto.FLOAT:
        raise ExportError(
            f"output {output.name!r} is {_type_name(output.type)}; expected float32 [N, classes]"
        )
    out_dims = list(out_type.shape.dim)
    if out_type.HasField("shape") and len(out_dims) != 2:
        raise ExportError(f"output {output.name!r} has shape {_dims(out_dims)}; expected [N, classes]")
    classes = out_dims[1].dim_value if len(out_dims) == 2 and out_dims[1].HasField("dim_value") else None
    return Signature(image.name, output.name, batch or None, height, classes or None, opset)


def wrap(
    model: onnx.ModelProto,
    signature: Signature,
    preprocessing: Preprocessing,
    classes: int,
    *,
    apply_softmax: bool,
) -> onnx.ModelProto:
    """The user's graph between our uint8 prologue and probabilities epilogue, with a dynamic batch axis."""
    user = onnx.compose.add_prefix(model, USER_PREFIX)
    body = user.graph
    user_input = USER_PREFIX + signature.input_name
    user_output = USER_PREFIX + signature.output_name
    mean = np.asarray(preprocessing.mean, dtype=np.float64).reshape(1, 3, 1, 1)
    std = np.asarray(preprocessing.std, dtype=np.float64).reshape(1, 3, 1, 1)
    # (x / 255 - mean) / std == x * scale + shift, as export/graph.py does for PyTorch models.
    scale = numpy_helper.from_array((1.0 / (255.0 * std)).astype(np.float32), "wrap/scale")
    shift = numpy_helper.from_array((-mean / std).astype(np.float32), "wrap/shift")
    prologue = [
        helper.make_node("Cast", [INPUT_NAME], ["wrap/nhwc"], name="wrap/Cast", to=TensorProto.FLOAT),
        helper.make_node("Transpose", ["wrap/nhwc"], ["wrap/nchw"], name="wrap/Transpose", perm=[0, 3, 1, 2]),
        helper.make_node("Mul", ["wrap/nchw", "wrap/scale"], ["wrap/scaled"], name="wrap/Mul"),
        helper.make_node("Add", ["wrap/scaled", "wrap/shift"], [user_input], name="wrap/Add"),
    ]
    if apply_softmax:
        epilogue = helper.make_node("Softmax", [user_output], [OUTPUT_NAME], name="wrap/Softmax", axis=1)
    else:
        epilogue = helper.make_node("Identity", [user_output], [OUTPUT_NAME], name="wrap/Identity")
    side = preprocessing.crop_size
    graph = helper.make_graph(
        [*prologue, *body.node, epilogue],
        body.name or "imported",
        inputs=[
            helper.make_tensor_value_info(INPUT_NAME, TensorProto.UINT8, [BATCH_AXIS_NAME, side, side, 3])
        ],
        outputs=[helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, [BATCH_AXIS_NAME, classes])],
        initializer=[*body.initializer, scale, shift],
        sparse_initializer=list(body.sparse_initializer),
        # The user's value_info is dropped: its shapes may pin the old fixed batch size.
    )
    wrapped = helper.make_model(
        graph,
        opset_imports=list(user.opset_import),
        ir_version=max(user.ir_version, 4),  # initializers need not be graph inputs from IR 4 on
        functions=list(user.functions),
        producer_name="resnet-serve export (imported ONNX)",
    )
    return wrapped


def _pick_output(graph: onnx.GraphProto, output_name: str | None) -> onnx.ValueInfoProto:
    names = [value.name for value in graph.output]
    if output_name is not None:
        for value in graph.output:
            if value.name == output_name:
                return value
        raise ExportError(f"the model has no output {output_name!r}; its outputs: {', '.join(names)}")
    if len(graph.output) != 1:
        raise ExportError(
            f"the model has {len(names)} outputs ({', '.join(names)}):"
            " pick the class scores with --output NAME"
        )
    return graph.output[0]


def _dims(dims: list[onnx.TensorShapeProto.Dimension]) -> str:
    return (
        "["
        + ", ".join(str(d.dim_value) if d.HasField("dim_value") else (d.dim_param or "?") for d in dims)
        + "]"
    )


def _type_name(value_type: onnx.TypeProto) -> str:
    if value_type.HasField("tensor_type"):
        return f"a {TensorProto.DataType.Name(value_type.tensor_type.elem_type).lower()} tensor"
    return f"not a tensor ({value_type.WhichOneof('value')})"
