"""``export_model``: checkpoint -> verified ONNX with its model card, written into the model repository."""

from __future__ import annotations

import copy
import hashlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

import models
from export import int8 as int8_step
from export.calibration import DEFAULT_CALIBRATION_COUNT
from export.errors import ExportError
from export.graph import DEFAULT_OPSET, GRAPH_REVISION, PixelsToProbabilities, op_counts, trace_to_onnx
from export.labels import ResolvedLabels, resolve_labels
from export.publish import ExportResult, claim_version, publish
from export.quantize import MIN_OPSET as INT8_MIN_OPSET
from export.repository import check_name
from export.verify import INT8_MIN_TOP1_AGREEMENT, default_image_count, gather_inputs, torch_reference
from export.verify import verify as verify_graph
from models.progress import Lines, Prefixed, Progress
from servable.card import ModelCard, WeightsSource
from servable.preprocessing import Preprocessing

#: Seed for random-init exports, so re-running one is reproducible (and idempotent).
RANDOM_INIT_SEED = 0
RANDOM_INIT_SPEC = f"random-init (seed {RANDOM_INIT_SEED})"

Log = Callable[[str], None]

__all__ = ["RANDOM_INIT_SEED", "RANDOM_INIT_SPEC", "ExportResult", "export_model"]


def export_model(
    arch: str,
    weights: str | None,
    *,
    model_dir: Path,
    name: str | None = None,
    version: int | None = None,
    labels_file: Path | None = None,
    fp16: bool = False,
    opset: int = DEFAULT_OPSET,
    verify: bool = True,
    num_classes: int | None = None,
    int8: bool = False,
    calibration: Path | None = None,
    calibration_count: int = DEFAULT_CALIBRATION_COUNT,
    holdout: Path | None = None,
    holdout_count: int | None = None,
    min_agreement: float = INT8_MIN_TOP1_AGREEMENT,
    log: Log = print,
    progress: Progress | None = None,
) -> ExportResult:
    """Export ``arch`` with ``weights`` (a checkpoint spec, or None for seeded random init).

    Writes ``<model_dir>/<name>/<version>/model.onnx`` only after verification passed. When the
    latest version (or the requested one) already holds the same source hash and settings, nothing
    is done and the result says ``skipped``. Raises :class:`ExportError` for anything to fix.

    ``int8``: static INT8 calibrated on ``calibration`` (a folder of images), then held to top-1
    agreement >= ``min_agreement`` with the fp32 PyTorch model on held-out images (``holdout``, or the
    calibration folder's images not used for calibration); below it nothing is written.

    ``log`` gets one line per step, saying what it did; ``progress`` shows the long steps while they run
    (download, tracing, verification, INT8), by default as one ``log`` line when each starts.
    """
    started = time.perf_counter()
    model_dir = Path(model_dir)
    name = check_name(name or arch)
    precision = "int8" if int8 else "fp16" if fp16 else "fp32"
    _check_request(arch, version, opset, num_classes)
    _check_precision(int8, fp16, verify, opset)
    prefix = f"[{name}]"
    steps = Prefixed(progress if progress is not None else Lines(log), prefix)

    checkpoint = _load_checkpoint(arch, weights, steps)
    classes = _num_classes(arch, checkpoint, num_classes)
    sha256 = checkpoint.sha256 if checkpoint is not None else None
    if checkpoint is not None:
        log(f"{prefix} loaded {weights} -> {checkpoint.path or checkpoint.source} (sha256 {sha256})")
    else:
        log(f"{prefix} no weights given: {RANDOM_INIT_SPEC}, for tests and benchmarks only")
    labels = resolve_labels(arch, classes, labels_file)
    if labels.labels[0] == "class_0":
        log(f"{prefix} labels: {labels.origin}")
    preprocessing = models.preprocessing_for(arch, checkpoint)
    plan = (
        int8_step.plan_int8(
            int8_step.Int8Options(calibration, calibration_count, holdout, holdout_count, min_agreement),
            preprocessing,
        )
        if int8
        else None
    )
    settings = _settings(arch, weights, sha256, precision, opset, classes, labels, preprocessing)
    slot = claim_version(model_dir, name, version, settings, plan, started=started, log=log)
    if slot.existing is not None:
        return slot.existing

    network = _build_network(arch, classes, checkpoint)
    log(
        f"{prefix} {arch}: {_count_params(network) / 1e6:.2f} M parameters, {classes} classes,"
        f" labels {labels.origin},"
        f" input {preprocessing.crop_size}x{preprocessing.crop_size}"
        f" (resize {preprocessing.resize_size} {preprocessing.interpolation})"
    )

    export_started = time.perf_counter()
    exported = copy.deepcopy(network).half() if fp16 else network
    wrapper = PixelsToProbabilities(
        exported, preprocessing.mean, preprocessing.std, torch.float16 if fp16 else torch.float32
    )
    traced = "fp16" if fp16 else "fp32"
    with steps.step(f"tracing to ONNX (opset {opset}, {traced})"):
        graph = trace_to_onnx(wrapper, preprocessing.crop_size, opset)
    ops = op_counts(graph)
    log(
        f"{prefix} exported ONNX opset {opset} {traced} in {time.perf_counter() - export_started:.1f} s:"
        f" {sum(ops.values())} nodes ({ops.get('Conv', 0)} Conv,"
        f" {ops.get('BatchNormalization', 0)} BatchNorm left)"
    )

    reference, reference_name = torch_reference(network, preprocessing)
    figures: dict[str, Any] = {"skipped": True, "reason": "--no-verify"}
    if verify:
        verify_started = time.perf_counter()
        count = default_image_count(preprocessing)
        with steps.step(f"verifying against {reference_name}", count, "images") as advance:
            inputs = gather_inputs(preprocessing, count)
            figures = verify_graph(
                graph.SerializeToString(), reference, reference_name, traced, inputs, advance
            )
        figures["seconds"] = round(time.perf_counter() - verify_started, 2)
        log(f"{prefix} verified{' the fp32 graph' if int8 else ''}: {describe_figures(figures)}")
    else:
        log(f"{prefix} verification skipped (--no-verify)")

    quantization = None
    if plan is not None:
        graph, quantization, gate = int8_step.run_int8(
            plan, graph.SerializeToString(), preprocessing, reference, reference_name,
            prefix=prefix, log=log, progress=steps,
        )
        figures = {**gate, "fp32_graph": figures}

    card = ModelCard(
        architecture=arch,
        num_classes=classes,
        labels=labels.labels,
        preprocessing=preprocessing,
        source=WeightsSource(spec=weights if weights is not None else RANDOM_INIT_SPEC, sha256=sha256),
        export=slot.export_info(
            torch_version=torch.__version__, opset=opset, precision=precision, quantization=quantization
        ),
        verification=figures,
    )
    return publish(graph, card, slot)


def _check_precision(int8: bool, fp16: bool, verify: bool, opset: int) -> None:
    if not int8:
        return
    if fp16:
        raise ExportError("--int8 and --fp16 exclude each other: pick one precision")
    if not verify:
        raise ExportError(
            "INT8 exports are always verified (the accuracy gate is the point);"
            " pass --min-agreement 0 to accept any agreement"
        )
    if opset < INT8_MIN_OPSET:
        raise ExportError(f"--int8 needs --opset >= {INT8_MIN_OPSET} (per-channel QDQ), got {opset}")


def _check_request(arch: str, version: int | None, opset: int, num_classes: int | None) -> None:
    known = models.list_models()
    if arch not in known:
        raise ExportError(f"unknown architecture {arch!r}; known: {', '.join(known)}")
    if version is not None and version < 1:
        raise ExportError(f"version must be a positive integer, got {version}")
    if not 11 <= opset <= 20:
        raise ExportError(f"opset {opset} is outside what the exporter writes (11..20)")
    if num_classes is not None and num_classes < 1:
        raise ExportError(f"num_classes must be positive, got {num_classes}")


def _load_checkpoint(arch: str, weights: str | None, progress: Progress) -> Any:
    if weights is None:
        return None
    try:
        return models.load_checkpoint(weights, arch=arch, progress=progress)
    except models.CheckpointError as exc:
        raise ExportError(f"cannot load weights {weights!r} for {arch}: {exc}") from exc


def _num_classes(arch: str, checkpoint: Any, requested: int | None) -> int:
    found = checkpoint.num_classes if checkpoint is not None else None
    if requested is not None and found is not None and requested != found:
        raise ExportError(f"--num-classes {requested} but the checkpoint has {found} classes")
    return int(requested or found or models.get_model_config(arch).num_classes)


def _build_network(arch: str, classes: int, checkpoint: Any) -> nn.Module:
    """The eval-mode network; random init is seeded so the same request gives the same weights."""
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_INIT_SEED)
            network = models.create_model(arch, num_classes=classes, weights=checkpoint)
    except models.CheckpointError as exc:
        raise ExportError(f"the weights do not fit {arch}: {exc}") from exc
    return network.eval().to(torch.float32)


def _settings(
    arch: str,
    weights: str | None,
    sha256: str | None,
    precision: str,
    opset: int,
    classes: int,
    labels: ResolvedLabels,
    preprocessing: Preprocessing,
) -> dict[str, Any]:
    """Everything that decides the exported file's content (not its name, version or timestamp)."""
    labels_digest = hashlib.sha256("\n".join(labels.labels).encode()).hexdigest()
    return {
        "arch": arch,
        "graph_revision": GRAPH_REVISION,
        "source_sha256": sha256 if weights is not None else RANDOM_INIT_SPEC,
        "precision": precision,
        "opset": opset,
        "num_classes": classes,
        "labels_sha256": labels_digest,
        "preprocessing": preprocessing.model_dump(mode="json"),
    }


def _count_params(network: nn.Module) -> int:
    return sum(p.numel() for p in network.parameters())


def describe_figures(figures: dict[str, Any]) -> str:
    return (
        f"{figures['inputs']}: max |Δprob| {figures['max_abs_diff']:.1e},"
        f" top-1 agreement {figures['top1_agreement']:.1%}"
        f" ({figures['top1_mismatches']} differ), batch 1 vs 8 max |Δprob| "
        f"{figures['batch1_vs_batch8_max_abs_diff']:.1e} ({figures['seconds']:.1f} s)"
    )
