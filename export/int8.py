"""INT8 as one step of an export: pick the images, quantize the verified fp32 graph, gate it, record it."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import onnx

from export.calibration import (
    DEFAULT_CALIBRATION_COUNT,
    MIN_HOLDOUT_IMAGES,
    default_holdout_count,
    files_sha256,
    load_images,
    select,
)
from export.errors import ExportError
from export.graph import check_graph, op_counts
from export.quantize import quantize, recipe
from export.verify import INT8_MIN_TOP1_AGREEMENT, Reference, verify_quantized
from models.progress import Progress
from servable.card import Quantization
from servable.preprocessing import Preprocessing

Log = Callable[[str], None]


@dataclass(frozen=True)
class Int8Options:
    """What the caller asks for (``--calibration``, ``--calibration-count``, ``--holdout``, ...)."""

    calibration: Path | None
    calibration_count: int = DEFAULT_CALIBRATION_COUNT
    holdout: Path | None = None
    holdout_count: int | None = None
    min_agreement: float = INT8_MIN_TOP1_AGREEMENT


@dataclass(frozen=True)
class Int8Plan:
    """The chosen files, fixed before any work so the settings fingerprint can include the data."""

    options: Int8Options
    calibration_files: tuple[Path, ...]
    holdout_files: tuple[Path, ...]
    calibration_source: str
    holdout_source: str
    calibration_sha256: str

    def settings(self) -> dict[str, Any]:
        """What decides the INT8 file's content (the held-out images and the threshold do not)."""
        return {
            "recipe": asdict(recipe()),
            "calibration_images": len(self.calibration_files),
            "calibration_sha256": self.calibration_sha256,
        }


def plan_int8(options: Int8Options, preprocessing: Preprocessing) -> Int8Plan:
    """Check the options and choose the calibration and held-out files; ExportError on anything off."""
    if not 0.0 <= options.min_agreement <= 1.0:
        raise ExportError(f"--min-agreement must be between 0 and 1, got {options.min_agreement}")
    holdout_count = (
        default_holdout_count(preprocessing) if options.holdout_count is None else options.holdout_count
    )
    calibration, holdout, calibration_source, holdout_source = select(
        options.calibration,
        options.calibration_count,
        options.holdout,
        holdout_count,
        min_holdout=MIN_HOLDOUT_IMAGES if options.min_agreement > 0 else 1,
    )
    sha256 = files_sha256(calibration)
    return Int8Plan(options, tuple(calibration), tuple(holdout), calibration_source, holdout_source, sha256)


def run_int8(
    plan: Int8Plan,
    float_bytes: bytes,
    preprocessing: Preprocessing,
    reference: Reference,
    reference_name: str,
    *,
    prefix: str,
    log: Log,
    progress: Progress,
) -> tuple[onnx.ModelProto, Quantization, dict[str, Any]]:
    """Quantize ``float_bytes`` and hold it to the gate; (INT8 graph, its card record, gate figures).

    ``progress`` shows calibration, bias correction and the gate as they run; ``log`` says how each went.
    """
    started = time.perf_counter()
    calibration = load_images(plan.calibration_files, preprocessing, plan.calibration_source)
    result = quantize(float_bytes, calibration.pixels, progress)
    quantized, kept = result.model, result.float_nodes
    check_graph(quantized)
    counts = op_counts(quantized)
    log(
        f"{prefix} INT8: calibrated on {plan.calibration_source},"
        f" quantized in {time.perf_counter() - started:.1f} s"
        f" ({counts.get('QuantizeLinear', 0)} QuantizeLinear, {counts.get('DequantizeLinear', 0)}"
        f" DequantizeLinear; float: {', '.join(kept) or 'nothing'})"
    )
    if result.bias_correction is not None:
        done = result.bias_correction
        log(
            f"{prefix} INT8: bias correction on {done.corrected} of {done.convolutions} convolutions"
            f" ({done.seconds:.1f} s)"
        )
    gate_started = time.perf_counter()
    with progress.step("INT8 gate", len(plan.holdout_files), "images") as advance:
        holdout = load_images(plan.holdout_files, preprocessing, plan.holdout_source)
        figures = verify_quantized(
            quantized.SerializeToString(),
            reference,
            reference_name,
            holdout.pixels,
            plan.holdout_source,
            plan.options.min_agreement,
            advance,
        )
    figures["seconds"] = round(time.perf_counter() - gate_started, 2)
    log(
        f"{prefix} INT8 gate passed: top-1 agreement {figures['top1_agreement']:.2%} with {reference_name}"
        f" ({figures['top1_mismatches']} of {figures['images']} held-out images differ,"
        f" threshold {plan.options.min_agreement:.2%}), max |Δprob| {figures['max_abs_diff']:.3f},"
        f" mean {figures['mean_abs_diff']:.1e} ({figures['seconds']:.1f} s)"
    )
    if plan.options.min_agreement == 0:
        log(f"{prefix} INT8: --min-agreement 0: no accuracy gate, for benchmarks only")
    settings = asdict(recipe())
    # The card says what happened: a graph none of whose convolutions could be corrected says false.
    settings["bias_correction"] = result.bias_correction is not None and result.bias_correction.corrected > 0
    record = Quantization(
        **settings,
        calibration_images=len(plan.calibration_files),
        calibration_source=plan.calibration_source,
        calibration_sha256=plan.calibration_sha256,
        float_nodes=tuple(kept),
        reference=reference_name,
        holdout_images=figures["images"],
        holdout_source=plan.holdout_source,
        top1_agreement=figures["top1_agreement"],
        max_abs_diff=figures["max_abs_diff"],
        min_agreement=plan.options.min_agreement,
    )
    return quantized, record, figures
