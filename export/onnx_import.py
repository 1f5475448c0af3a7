"""Bring your own ONNX: wrap an existing image classifier into the service's contract and publish it.

The user's file takes float32 NCHW pixels already normalised and returns logits or probabilities.
The wrapper graph is written with the onnx helper API around the user's graph (every name of theirs
prefixed with ``user/``, so nothing can clash with ours)::

    images uint8 [N, crop, crop, 3] -> Transpose -> Cast -> Mul/Add (mean/std) -> user/<graph>
        -> Softmax (only if the model emits logits) -> probabilities float32 [N, classes]

A fixed batch axis is made dynamic and the result must give the same answers at batch 8 as at
batch 1; otherwise the import is refused. The reference is the original file in onnxruntime with the
textbook normalisation, so the wrapped file must equal it (max |dprob| <= 1e-4, same top-1).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
import onnxruntime as ort
from google.protobuf.message import DecodeError
from onnx import TensorProto, helper, numpy_helper

from export import int8 as int8_step
from export.errors import ExportError
from export.graph import BATCH_AXIS_NAME, check_graph
from export.labels import read_labels_file
from export.presets import PreprocessingSpec, resolve
from export.publish import ExportResult, fingerprint, publish, target_version, up_to_date
from export.repository import check_name
from export.verify import BATCH_SIZE, Reference, default_image_count, gather_inputs, verify
from servable.card import INPUT_NAME, OUTPUT_NAME, ExportInfo, ModelCard, WeightsSource
from servable.preprocessing import Preprocessing

OutputKind = Literal["auto", "logits", "probabilities"]
OUTPUT_KINDS: tuple[str, ...] = ("auto", "logits", "probabilities")
USER_PREFIX = "user/"
#: Oldest default-domain opset accepted: onnxruntime's floor, and every op the wrapper adds exists there.
MIN_IMPORT_OPSET = 7
#: "auto" calls rows probabilities when every value is >= -this and every row sums to 1 within this.
PROBABILITY_TOLERANCE = 1e-3

Log = Callable[[str], None]


@dataclass(frozen=True)
class Signature:
    """What the importer learned about the user's graph."""

    input_name: str
    output_name: str
    fixed_batch: int | None
    side: int | None
    classes: int | None
    opset: int


def import_onnx(
    path: Path,
    *,
    model_dir: Path,
    name: str,
    preprocessing: PreprocessingSpec,
    labels_file: Path | None = None,
    outputs: str = "auto",
    output_name: str | None = None,
    version: int | None = None,
    int8: bool = False,
    int8_options: int8_step.Int8Options | None = None,
    log: Log = print,
) -> ExportResult:
    """Wrap the classifier in ``path``, verify it against the original and publish it as ``name``.

    Raises :class:`ExportError` (and writes nothing) for anything it cannot wrap or that fails to verify.
    """
    started = time.perf_counter()
    model_dir = Path(model_dir)
    name = check_name(name)
    prefix = f"[{name}]"
    if outputs not in OUTPUT_KINDS:
        raise ExportError(f"--outputs must be one of {', '.join(OUTPUT_KINDS)}, got {outputs!r}")
    payload = _read(path)
    sha256 = hashlib.sha256(payload).hexdigest()
    model = _parse(payload, path)
    signature = inspect_signature(model, output_name)
    resolved = resolve(preprocessing, signature.side)
    labels = read_labels_file(labels_file) if labels_file is not None else None
    if labels is not None and signature.classes is not None and len(labels) != signature.classes:
        raise ExportError(
            f"{labels_file} has {len(labels)} labels but the model has {signature.classes} classes"
        )
    if int8 and signature.opset < 13:
        raise ExportError(f"INT8 needs opset >= 13 (per-channel QDQ); {path} uses opset {signature.opset}")
    plan = int8_step.plan_int8(int8_options or int8_step.Int8Options(None), resolved) if int8 else None
    precision = "int8" if int8 else "fp32"
    settings: dict[str, Any] = {
        "source": "onnx",
        "source_sha256": sha256,
        "precision": precision,
        "output_name": signature.output_name,
        "outputs": outputs,
        "labels_sha256": hashlib.sha256("\n".join(labels).encode()).hexdigest() if labels else "placeholders",
        "preprocessing": resolved.model_dump(mode="json"),
    }
    if plan is not None:
        settings["int8"] = plan.settings()
    settings_fingerprint = fingerprint(settings)
    target, previous = target_version(model_dir, name, version, settings_fingerprint)
    if previous is not None:
        return up_to_date(model_dir, name, target, previous, started, prefix, log)

    log(
        f"{prefix} importing {path} (sha256 {sha256}): input {signature.input_name!r}"
        f" {'batch ' + str(signature.fixed_batch) if signature.fixed_batch else 'dynamic batch'},"
        f" output {signature.output_name!r}, opset {signature.opset};"
        f" preprocessing resize {resolved.resize_size} crop {resolved.crop_size} {resolved.interpolation},"
        f" mean {list(resolved.mean)} std {list(resolved.std)}"
    )
    original = _session(payload, f"onnxruntime cannot load {path}")
    inputs = gather_inputs(resolved, default_image_count(resolved))
    raw = _run_original(original, signature, resolved, inputs.pixels, path)
    if raw.ndim != 2 or raw.shape[0] != len(inputs.pixels):
        raise ExportError(
            f"output {signature.output_name!r} has shape {list(raw.shape)} for {len(inputs.pixels)} images:"
            " expected [N, classes]"
        )
    classes = raw.shape[1]
    kind = _output_kind(outputs, raw)
    log(
        f"{prefix} output {signature.output_name!r}: {classes} classes,"
        f" {kind}{' (auto)' if outputs == 'auto' else ''}"
    )
    if labels is not None and len(labels) != classes:
        raise ExportError(f"{labels_file} has {len(labels)} labels but the model has {classes} classes")
    if labels is None:
        log(f"{prefix} labels: none given, placeholders class_0..class_{classes - 1}")
    names = labels or tuple(f"class_{index}" for index in range(classes))

    wrapped = wrap(model, signature, resolved, classes, apply_softmax=kind == "logits")
    check_graph(wrapped)
    wrapped_bytes = wrapped.SerializeToString()
    reference = _original_reference(original, signature, resolved, kind, path)
    reference_name = f"onnxruntime {ort.__version__} on the original {path.name}"
    _check_batch_eight(wrapped_bytes, inputs.pixels, signature)
    figures = verify(wrapped_bytes, reference, reference_name, "fp32", inputs)
    log(
        f"{prefix} verified against the original: {inputs.description}: max |Δprob|"
        f" {figures['max_abs_diff']:.1e}, top-1 agreement {figures['top1_agreement']:.1%},"
        f" batch 1 vs 8 max |Δprob| {figures['batch1_vs_batch8_max_abs_diff']:.1e}"
    )
    graph = wrapped
    quantization = None
    if plan is not None:
        graph, quantization, gate = int8_step.run_int8(
            plan, wrapped_bytes, resolved, reference, reference_name, prefix=prefix, log=log
        )
        figures = {**gate, "fp32_graph": figures}

    card = ModelCard(
        architecture=f"onnx:{path.stem}",
        num_classes=classes,
        labels=names,
        preprocessing=resolved,
        source=WeightsSource(spec=str(path), sha256=sha256),
        export=ExportInfo(
            torch_version=None,
            onnx_version=onnx.__version__,
            opset=signature.opset,
            precision=precision,
            exported_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            quantization=quantization,
            settings=settings,
            settings_fingerprint=settings_fingerprint,
            imported={
                "graph_name": model.graph.name,
                "producer": f"{model.producer_name} {model.producer_version}".strip(),
                "input": signature.input_name,
                "output": signature.output_name,
                "outputs": kind,
                "batch": "dynamic"
                if signature.fixed_batch is None
                else f"fixed {signature.fixed_batch}, made dynamic",
                "preprocessing_spec": preprocessing.as_settings(),
            },
        ),
        verification=figures,
    )
    return publish(graph, card, model_dir, name, target, started, prefix, log)


def inspect_signature(model: onnx.ModelProto, output_name: str | None) -> Signature:
    """Check the graph is a single-input float32 NCHW classifier; refuse clearly what cannot be wrapped."""
    graph = model.graph
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
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
        helper.make_node(
            "Transpose", [INPUT_NAME], ["wrap/nchw_uint8"], name="wrap/Transpose", perm=[0, 3, 1, 2]
        ),
        helper.make_node("Cast", ["wrap/nchw_uint8"], ["wrap/nchw"], name="wrap/Cast", to=TensorProto.FLOAT),
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


def _read(path: Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ExportError(f"cannot read {path}: {exc}") from None


def _parse(payload: bytes, path: Path) -> onnx.ModelProto:
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
    return model


def _session(payload: bytes, what: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 4  # a failing run is reported in our own words (the exception's text)
    try:
        return ort.InferenceSession(payload, sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ExportError(f"{what}: {exc}") from None


def _normalised(pixels: np.ndarray, preprocessing: Preprocessing) -> np.ndarray:
    """The textbook ``(x / 255 - mean) / std`` in NCHW float32, independent of the wrapper's Mul/Add."""
    mean = np.asarray(preprocessing.mean, dtype=np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(preprocessing.std, dtype=np.float32).reshape(1, 3, 1, 1)
    return np.ascontiguousarray(((pixels.transpose(0, 3, 1, 2).astype(np.float32) / 255.0) - mean) / std)


def _run_original(
    session: ort.InferenceSession,
    signature: Signature,
    preprocessing: Preprocessing,
    pixels: np.ndarray,
    path: Path,
) -> np.ndarray:
    """The original file's output for ``pixels``, in chunks of its fixed batch size (padded) if it has one."""
    size = signature.fixed_batch or BATCH_SIZE
    x = _normalised(pixels, preprocessing)
    rows = []
    for start in range(0, len(x), size):
        chunk = x[start : start + size]
        count = len(chunk)
        if signature.fixed_batch and count < size:
            chunk = np.concatenate([chunk, np.zeros((size - count, *chunk.shape[1:]), np.float32)])
        try:
            (out,) = session.run([signature.output_name], {signature.input_name: chunk})
        except Exception as exc:
            raise ExportError(f"onnxruntime cannot run {path} on {list(chunk.shape)} input: {exc}") from None
        out = np.asarray(out)
        if out.ndim != 2:
            raise ExportError(
                f"output {signature.output_name!r} has shape {list(out.shape)}; expected [N, classes]"
            )
        rows.append(out[:count])
    return np.concatenate(rows).astype(np.float32)


def _output_kind(requested: str, raw: np.ndarray) -> str:
    """'logits' or 'probabilities'; "auto" decides on the real outputs, an explicit choice is checked."""
    looks_like_probabilities = bool(
        np.all(raw >= -PROBABILITY_TOLERANCE) and np.allclose(raw.sum(1), 1.0, atol=PROBABILITY_TOLERANCE)
    )
    if requested == "auto":
        return "probabilities" if looks_like_probabilities else "logits"
    if requested == "probabilities" and not looks_like_probabilities:
        raise ExportError(
            "--outputs probabilities, but the model's rows are not probabilities (negative values or sums"
            f" {float(raw.sum(1).min()):.3f}..{float(raw.sum(1).max()):.3f}); use --outputs logits or auto"
        )
    return requested


def _original_reference(
    session: ort.InferenceSession, signature: Signature, preprocessing: Preprocessing, kind: str, path: Path
) -> Reference:
    def run(pixels: np.ndarray) -> np.ndarray:
        raw = _run_original(session, signature, preprocessing, pixels, path).astype(np.float64)
        if kind == "logits":
            raw = np.exp(raw - raw.max(1, keepdims=True))
            raw /= raw.sum(1, keepdims=True)
        return raw.astype(np.float32)

    return run


def _check_batch_eight(wrapped_bytes: bytes, pixels: np.ndarray, signature: Signature) -> None:
    """A fixed batch axis made dynamic can still be pinned inside (a Reshape to [1, -1]): say so clearly."""
    session = _session(wrapped_bytes, "onnxruntime cannot load the wrapped graph")
    batch = np.ascontiguousarray(np.resize(pixels, (BATCH_SIZE, *pixels.shape[1:])))
    try:
        (out,) = session.run([OUTPUT_NAME], {INPUT_NAME: batch})
    except Exception as exc:
        out, error = None, str(exc)
    else:
        error = "" if out.shape[0] == BATCH_SIZE else f"it answered shape {list(out.shape)}"
    if not error:
        return
    if signature.fixed_batch:
        raise ExportError(
            f"the model has a fixed batch size of {signature.fixed_batch} and does not run at batch"
            f" {BATCH_SIZE} once its batch axis is made dynamic ({error}); re-export it with a dynamic"
            " batch axis (torch.onnx.export(..., dynamic_axes={'input': {0: 'batch'}}))"
        )
    raise ExportError(f"the wrapped model does not run at batch {BATCH_SIZE}: {error}")


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
