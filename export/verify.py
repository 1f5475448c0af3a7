"""Proof that the ONNX file computes what the source model computes, on the pixels the service feeds.

The reference is the plain PyTorch network in fp32 (for an imported ONNX file: the original file in
onnxruntime) with the textbook normalisation ``(x / 255 - mean) / std`` written independently of the
exported wrapper, so a mistake in the wrapper (channel order, scaling) shows up as a difference too.
INT8 files are held to top-1 agreement on held-out images instead (:func:`verify_quantized`).
Inputs are real images from ``../shared/data`` when that folder is there (through the service's own
preprocessing), topped up with synthetic ones.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from export.errors import ExportError
from models.progress import Advance, ignore
from servable.card import INPUT_NAME
from servable.images import preprocess_image
from servable.preprocessing import Preprocessing

#: fp32: largest allowed |probability difference| between onnxruntime and PyTorch.
FP32_MAX_ABS_DIFF = 1e-4
#: fp16: share of images whose top-1 class must match the fp32 PyTorch reference.
FP16_MIN_TOP1_AGREEMENT = 0.99
#: int8: default share of held-out images whose top-1 must match the fp32 reference (``--min-agreement``).
INT8_MIN_TOP1_AGREEMENT = 0.98
#: batch 1 vs batch 8 in onnxruntime: largest allowed difference per precision. INT8 arithmetic is
#: integer and the quantization parameters are static, so its rows come out the same at any batch size
#: (measured 0.0 on resnet20 and resnet50); the float prologue and softmax leave rounding noise at most.
BATCH_MAX_ABS_DIFF = {"fp32": 1e-5, "fp16": 1e-3, "int8": 1e-5}
#: Two reference probabilities closer than this are a tie: either class is a correct top-1.
TIE_MARGIN = 1e-6
BATCH_SIZE = 8
SHARED_DIR_ENV = "RESNET_SERVE_SHARED_DIR"
_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}


@dataclass(frozen=True)
class VerificationInputs:
    """uint8 [N, crop, crop, 3] pixels and where they came from, for the record."""

    pixels: np.ndarray
    real_count: int
    description: str


def shared_data_dir() -> Path | None:
    """``../shared/data`` beside the checkout (or under $RESNET_SERVE_SHARED_DIR), if present."""
    configured = os.environ.get(SHARED_DIR_ENV)
    root = Path(configured) if configured else Path(__file__).resolve().parents[2] / "shared"
    data = root / "data"
    return data if data.is_dir() else None


def default_image_count(preprocessing: Preprocessing) -> int:
    """Small inputs are cheap: 100 CIFAR-sized images, 16 ImageNet-sized ones (~1 s each on 2 cores)."""
    return 100 if preprocessing.crop_size <= 64 else 16


def gather_inputs(preprocessing: Preprocessing, count: int, *, seed: int = 0) -> VerificationInputs:
    """Up to ``count`` real images (those nearest the model's input size first), then synthetic ones."""
    data = shared_data_dir()
    real: list[np.ndarray] = []
    used_folders: list[str] = []
    if data is not None:
        for folder, files in _candidate_files(data, preprocessing.crop_size):
            taken = 0
            for path in files:
                if len(real) >= count:
                    break
                real.append(preprocess_image(path.read_bytes(), preprocessing))
                taken += 1
            if taken:
                used_folders.append(f"{taken} {folder}")
    synthetic = _synthetic_pixels(count - len(real), preprocessing.crop_size, seed)
    pixels = np.stack(real + list(synthetic)) if real else synthetic
    parts = [f"{len(real)} real images ({' + '.join(used_folders)})"] if real else []
    if len(synthetic):
        parts.append(f"{len(synthetic)} synthetic")
    return VerificationInputs(np.ascontiguousarray(pixels), len(real), " + ".join(parts))


def _candidate_files(data: Path, crop_size: int) -> list[tuple[str, list[Path]]]:
    """Photos and the CIFAR sample, the set matching the input size first; CIFAR classes interleaved."""
    photos = sorted(p for p in (data / "photos").glob("*") if p.suffix.lower() in _IMAGE_SUFFIXES)
    class_dirs = sorted(d for d in (data / "cifar10-sample").glob("*") if d.is_dir())
    per_class = [sorted(d.glob("*.jpg")) for d in class_dirs]
    cifar = [
        files[i] for i in range(max(map(len, per_class), default=0)) for files in per_class if i < len(files)
    ]
    sets = [("data/photos", photos), ("data/cifar10-sample", cifar)]
    return sets[::-1] if crop_size <= 64 else sets


def _synthetic_pixels(count: int, crop_size: int, seed: int) -> np.ndarray:
    """Smooth random colour fields plus noise: less degenerate for a CNN than pure noise."""
    rng = np.random.default_rng(seed)
    if count <= 0:
        return np.zeros((0, crop_size, crop_size, 3), dtype=np.uint8)
    coarse = rng.uniform(0, 255, size=(count, 4, 4, 3))
    smooth = np.repeat(np.repeat(coarse, -(-crop_size // 4), axis=1), -(-crop_size // 4), axis=2)
    smooth = smooth[:, :crop_size, :crop_size]
    noisy = smooth + rng.normal(0, 20, size=smooth.shape)
    return np.clip(noisy, 0, 255).astype(np.uint8)


def _batches(pixels: np.ndarray, size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(pixels), size):
        yield pixels[start : start + size]


def reference_batch(pixels: np.ndarray) -> int:
    """Small inputs in batches of 64 (700 CIFAR images: 0.5 s, against 12 s in batches of 8); ResNet-50
    is no faster past 16, so large inputs keep small batches (less memory). A multiple of BATCH_SIZE."""
    return 64 if pixels.shape[1] <= 64 else 16


def reference_probabilities(
    network: nn.Module, pixels: np.ndarray, mean: Sequence[float], std: Sequence[float]
) -> np.ndarray:
    """Softmax of the fp32 PyTorch network on textbook-normalised NCHW input."""
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    outputs = []
    with torch.no_grad():
        for chunk in _batches(pixels, reference_batch(pixels)):
            x = torch.from_numpy(chunk).permute(0, 3, 1, 2).to(torch.float32) / 255.0
            outputs.append(torch.softmax(network((x - mean_t) / std_t), dim=1).numpy())
    return np.concatenate(outputs).astype(np.float32)


def onnx_session(
    model_bytes: bytes, what: str = "onnxruntime cannot load the exported graph"
) -> ort.InferenceSession:
    """A CPU onnxruntime session straight from the serialized model (nothing on disk yet).

    onnxruntime's own log is silenced: a failure is reported in our words, ``what`` and its text.
    """
    options = ort.SessionOptions()
    options.log_severity_level = 4
    try:
        return ort.InferenceSession(model_bytes, sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's exceptions share no base class below Exception
        raise ExportError(f"{what}: {exc}") from exc


def onnx_probabilities(session: ort.InferenceSession, pixels: np.ndarray, batch_size: int) -> np.ndarray:
    outputs = [session.run(None, {INPUT_NAME: chunk})[0] for chunk in _batches(pixels, batch_size)]
    return np.concatenate(outputs)


Reference = Callable[[np.ndarray], np.ndarray]


def torch_reference(network: nn.Module, preprocessing: Preprocessing) -> tuple[Reference, str]:
    """The fp32 PyTorch network as a reference (pixels -> probabilities) and its name for the record."""

    def run(pixels: np.ndarray) -> np.ndarray:
        return reference_probabilities(network, pixels, preprocessing.mean, preprocessing.std)

    return run, f"PyTorch {torch.__version__} fp32"


def compare(
    model_bytes: bytes,
    reference: Reference,
    reference_name: str,
    inputs: VerificationInputs,
    what: str,
    advance: Advance = ignore,
) -> dict[str, Any]:
    """The comparison figures: onnxruntime (in batches of 8, and the first 8 one by one) against ``reference``.

    ``what`` names the graph in the error raised when its output is not float32 probabilities; ``advance``
    hears of each round of images compared.
    """
    session = onnx_session(model_bytes)
    pixels = inputs.pixels
    expected_rounds, actual_rounds = [], []
    # Rounds of the reference's own batch, so every batch on either side is the one a single pass would run.
    for chunk in _batches(pixels, reference_batch(pixels)):
        expected_rounds.append(reference(chunk))
        actual_rounds.append(onnx_probabilities(session, chunk, BATCH_SIZE))
        advance(len(chunk))
    expected, actual = np.concatenate(expected_rounds), np.concatenate(actual_rounds)
    if actual.dtype != np.float32 or actual.shape != expected.shape:
        raise ExportError(
            f"{what} output is {actual.dtype} {actual.shape}, expected float32 {expected.shape}"
        )
    abs_diff = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
    agree, ties = _top1_agreement(expected, actual)
    # ``actual`` was computed in batches of BATCH_SIZE: its first batch is the batched answer.
    batched = actual[: min(BATCH_SIZE, len(pixels))]
    one_by_one = onnx_probabilities(session, pixels[: len(batched)], 1)
    return {
        "inputs": inputs.description,
        "images": len(pixels),
        "real_images": inputs.real_count,
        "reference": reference_name,
        "runtime": f"onnxruntime {ort.__version__} CPUExecutionProvider",
        "max_abs_diff": float(abs_diff.max()),
        "mean_abs_diff": float(abs_diff.mean()),
        "top1_agreement": agree / len(pixels),
        "top1_mismatches": int(len(pixels) - agree),
        "top1_ties": ties,
        "batch1_vs_batch8_max_abs_diff": float(np.max(np.abs(one_by_one - batched))),
        "batch1_vs_batch8_top1_same": bool(np.array_equal(one_by_one.argmax(1), batched.argmax(1))),
    }


def verify(
    model_bytes: bytes,
    reference: Reference,
    reference_name: str,
    precision: str,
    inputs: VerificationInputs,
    advance: Advance = ignore,
) -> dict[str, Any]:
    """Compare onnxruntime with the reference; return the figures, or raise :class:`ExportError` if off."""
    figures = compare(model_bytes, reference, reference_name, inputs, "ONNX", advance)
    failures = _failures(figures, precision)
    if failures:
        raise ExportError("verification failed: " + "; ".join(failures))
    figures["passed"] = True
    return figures


def _top1_agreement(expected: np.ndarray, actual: np.ndarray) -> tuple[int, int]:
    """(images whose top-1 matches, of which decided among tied reference classes)."""
    expected_top = expected.argmax(1)
    actual_top = actual.argmax(1)
    rows = np.arange(len(expected))
    same = expected_top == actual_top
    tied = ~same & (expected[rows, expected_top] - expected[rows, actual_top] <= TIE_MARGIN)
    return int(same.sum() + tied.sum()), int(tied.sum())


def _failures(figures: dict[str, Any], precision: str) -> list[str]:
    problems = []
    if precision == "fp32":
        if figures["max_abs_diff"] > FP32_MAX_ABS_DIFF:
            problems.append(f"max |Δprob| {figures['max_abs_diff']:.2e} > {FP32_MAX_ABS_DIFF:.0e}")
        if figures["top1_mismatches"]:
            problems.append(f"top-1 differs on {figures['top1_mismatches']} of {figures['images']} images")
    elif precision == "fp16" and figures["top1_agreement"] < FP16_MIN_TOP1_AGREEMENT:
        problems.append(
            f"fp16 top-1 agreement {figures['top1_agreement']:.1%} < {FP16_MIN_TOP1_AGREEMENT:.0%}"
        )
    if figures["batch1_vs_batch8_max_abs_diff"] > BATCH_MAX_ABS_DIFF[precision]:
        problems.append(
            f"batch 1 vs batch 8 differ by {figures['batch1_vs_batch8_max_abs_diff']:.2e}"
            f" > {BATCH_MAX_ABS_DIFF[precision]:.0e}"
        )
    if not figures["batch1_vs_batch8_top1_same"]:
        problems.append("batch 1 vs batch 8 give a different top-1")
    return problems


def verify_quantized(
    model_bytes: bytes,
    reference: Reference,
    reference_name: str,
    holdout: np.ndarray,
    holdout_source: str,
    min_agreement: float,
    advance: Advance = ignore,
) -> dict[str, Any]:
    """The INT8 accuracy gate: top-1 agreement with the fp32 ``reference`` on held-out pixels.

    Raises :class:`ExportError` when agreement is below ``min_agreement`` or batch 1 and batch 8 differ.
    """
    inputs = VerificationInputs(holdout, len(holdout), f"held-out: {holdout_source}")
    figures = compare(model_bytes, reference, reference_name, inputs, "INT8", advance)
    figures["min_top1_agreement"] = min_agreement
    problems = []
    if figures["top1_agreement"] < min_agreement:
        problems.append(
            f"INT8 top-1 agreement with the fp32 model is {figures['top1_agreement']:.2%}"
            f" ({figures['top1_mismatches']} of {len(holdout)} held-out images differ),"
            f" below --min-agreement {min_agreement:.2%}; calibrate on more, or more typical, images"
        )
    problems += _failures(figures, "int8")  # batch 1 vs batch 8
    if problems:
        raise ExportError("INT8 accuracy gate failed: " + "; ".join(problems) + "; nothing was written")
    figures["passed"] = True
    return figures
