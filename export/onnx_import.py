"""Bring your own ONNX: wrap an existing image classifier into the service's contract and publish it.

The user's file takes float32 NCHW pixels already normalised and returns logits or probabilities;
:mod:`export.onnx_wrap` reads it and builds the wrapper graph (uint8 images in, probabilities out).
This module runs the original on real images to learn what it emits, and verifies the wrapper.
A fixed batch axis is made dynamic and the result must give the same answers at batch 8 as at
batch 1; otherwise the import is refused. The reference is the original file in onnxruntime with the
textbook normalisation, so the wrapped file must equal it (max |dprob| <= 1e-4, same top-1).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnxruntime as ort

from export import int8 as int8_step
from export.errors import ExportError
from export.graph import check_graph
from export.labels import read_labels_file
from export.onnx_wrap import WRAP_REVISION, Signature, inspect_signature, read_model, wrap
from export.presets import PreprocessingSpec, resolve
from export.publish import ExportResult, claim_version, publish
from export.repository import check_name
from export.verify import BATCH_SIZE, Reference, default_image_count, gather_inputs, onnx_session, verify
from models.progress import Lines, Prefixed, Progress
from servable.card import INPUT_NAME, OUTPUT_NAME, ModelCard, WeightsSource
from servable.preprocessing import Preprocessing

OutputKind = Literal["auto", "logits", "probabilities"]
OUTPUT_KINDS: tuple[str, ...] = ("auto", "logits", "probabilities")
#: "auto" calls rows probabilities when every value is >= -this and every row sums to 1 within this.
PROBABILITY_TOLERANCE = 1e-3

Log = Callable[[str], None]


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
    progress: Progress | None = None,
) -> ExportResult:
    """Wrap the classifier in ``path``, verify it against the original and publish it as ``name``.

    Raises :class:`ExportError` (and writes nothing) for anything it cannot wrap or that fails to verify.
    ``log`` and ``progress`` report as :func:`export.export_model`'s do.
    """
    started = time.perf_counter()
    model_dir = Path(model_dir)
    name = check_name(name)
    prefix = f"[{name}]"
    steps = Prefixed(progress if progress is not None else Lines(log), prefix)
    if outputs not in OUTPUT_KINDS:
        raise ExportError(f"--outputs must be one of {', '.join(OUTPUT_KINDS)}, got {outputs!r}")
    payload, model = read_model(path)
    sha256 = hashlib.sha256(payload).hexdigest()
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
        "graph_revision": WRAP_REVISION,
        "source_sha256": sha256,
        "precision": precision,
        "output_name": signature.output_name,
        "outputs": outputs,
        "labels_sha256": hashlib.sha256("\n".join(labels).encode()).hexdigest() if labels else "placeholders",
        "preprocessing": resolved.model_dump(mode="json"),
    }
    slot = claim_version(model_dir, name, version, settings, plan, started=started, log=log)
    if slot.existing is not None:
        return slot.existing

    log(
        f"{prefix} importing {path} (sha256 {sha256}): input {signature.input_name!r}"
        f" {'batch ' + str(signature.fixed_batch) if signature.fixed_batch else 'dynamic batch'},"
        f" output {signature.output_name!r}, opset {signature.opset};"
        f" preprocessing resize {resolved.resize_size} crop {resolved.crop_size} {resolved.interpolation},"
        f" mean {list(resolved.mean)} std {list(resolved.std)}"
    )
    original = onnx_session(payload, f"onnxruntime cannot load {path}")
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
    with steps.step("verifying against the original", len(inputs.pixels), "images") as advance:
        figures = verify(wrapped_bytes, reference, reference_name, "fp32", inputs, advance)
    log(
        f"{prefix} verified against the original: {inputs.description}: max |Δprob|"
        f" {figures['max_abs_diff']:.1e}, top-1 agreement {figures['top1_agreement']:.1%},"
        f" batch 1 vs 8 max |Δprob| {figures['batch1_vs_batch8_max_abs_diff']:.1e}"
    )
    graph = wrapped
    quantization = None
    if plan is not None:
        graph, quantization, gate = int8_step.run_int8(
            plan, wrapped_bytes, resolved, reference, reference_name, prefix=prefix, log=log, progress=steps
        )
        figures = {**gate, "fp32_graph": figures}

    card = ModelCard(
        architecture=f"onnx:{path.stem}",
        num_classes=classes,
        labels=names,
        preprocessing=resolved,
        source=WeightsSource(spec=str(path), sha256=sha256),
        export=slot.export_info(
            torch_version=None,
            opset=signature.opset,
            precision=precision,
            quantization=quantization,
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
    return publish(graph, card, slot)


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
            raise ExportError(f"onnxruntime cannot run {path} on {list(chunk.shape)} input: {exc}") from exc
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
    session = onnx_session(wrapped_bytes, "onnxruntime cannot load the wrapped graph")
    batch = np.ascontiguousarray(np.resize(pixels, (BATCH_SIZE, *pixels.shape[1:])))
    try:
        (out,) = session.run([OUTPUT_NAME], {INPUT_NAME: batch})
    except Exception as exc:  # noqa: BLE001 - onnxruntime's errors share no base class; the text is the point
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
