"""``models.toml``: the list of models a deployment exports, one ``[[model]]`` table each.

A table either names an architecture and its weights (``arch`` + ``weights``) or imports an existing
ONNX classifier (``onnx`` + its preprocessing). Paths in the file are relative to the file.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 has no tomllib; the export extra installs tomli there.
    import tomli as tomllib

from export.calibration import DEFAULT_CALIBRATION_COUNT
from export.errors import ExportError
from export.exporter import export_model
from export.graph import DEFAULT_OPSET
from export.int8 import Int8Options
from export.onnx_import import OUTPUT_KINDS, import_onnx
from export.presets import PreprocessingSpec
from export.publish import ExportResult
from export.verify import INT8_MIN_TOP1_AGREEMENT
from models.progress import Progress

Log = Callable[[str], None]

_COMMON_KEYS = {"name", "version", "labels"}
_INT8_KEYS = {"int8", "calibration", "calibration_count", "holdout", "holdout_count", "min_agreement"}
_ARCH_KEYS = {"arch", "weights", "fp16", "opset", "verify", "num_classes"}
_ONNX_KEYS = {
    "onnx",
    "preset",
    "resize",
    "crop",
    "crop_pct",
    "interpolation",
    "mean",
    "std",
    "outputs",
    "output",
}


@dataclass(frozen=True)
class ExportRequest:
    """One ``arch`` entry of models.toml (or the command line): the arguments of one ``export_model`` call."""

    arch: str
    weights: str | None
    name: str
    version: int | None = None
    labels_file: Path | None = None
    fp16: bool = False
    opset: int = DEFAULT_OPSET
    verify: bool = True
    num_classes: int | None = None
    int8: bool = False
    int8_options: Int8Options = field(default_factory=lambda: Int8Options(None))

    def as_kwargs(self) -> dict[str, Any]:
        options = self.int8_options
        return {
            "name": self.name,
            "version": self.version,
            "labels_file": self.labels_file,
            "fp16": self.fp16,
            "opset": self.opset,
            "verify": self.verify,
            "num_classes": self.num_classes,
            "int8": self.int8,
            "calibration": options.calibration,
            "calibration_count": options.calibration_count,
            "holdout": options.holdout,
            "holdout_count": options.holdout_count,
            "min_agreement": options.min_agreement,
        }

    def run(self, model_dir: Path, log: Log = print, progress: Progress | None = None) -> ExportResult:
        return export_model(
            self.arch, self.weights, model_dir=model_dir, log=log, progress=progress, **self.as_kwargs()
        )


@dataclass(frozen=True)
class ImportRequest:
    """One ``onnx`` entry: an existing ONNX classifier to wrap and publish (``import_onnx``)."""

    onnx: Path
    name: str
    preprocessing: PreprocessingSpec
    version: int | None = None
    labels_file: Path | None = None
    outputs: str = "auto"
    output_name: str | None = None
    int8: bool = False
    int8_options: Int8Options = field(default_factory=lambda: Int8Options(None))

    def run(self, model_dir: Path, log: Log = print, progress: Progress | None = None) -> ExportResult:
        return import_onnx(
            self.onnx,
            model_dir=model_dir,
            name=self.name,
            preprocessing=self.preprocessing,
            labels_file=self.labels_file,
            outputs=self.outputs,
            output_name=self.output_name,
            version=self.version,
            int8=self.int8,
            int8_options=self.int8_options,
            log=log,
            progress=progress,
        )


Request = ExportRequest | ImportRequest


def load_config(path: Path) -> list[Request]:
    """Parse and check the whole file first, so a typo in the last entry fails before any export."""
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ExportError(f"cannot read {path}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ExportError(f"{path} is not valid TOML: {exc}") from exc
    entries = document.get("model")
    if not isinstance(entries, list) or not entries:
        raise ExportError(f"{path} lists no models: add [[model]] tables with arch = and weights =")
    requests = [_request(entry, index, path) for index, entry in enumerate(entries, start=1)]
    names = [request.name for request in requests]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ExportError(f"{path}: model names must be unique, repeated: {', '.join(duplicates)}")
    return requests


def _request(entry: Any, index: int, path: Path) -> Request:
    where = f"{path} model #{index}"
    if not isinstance(entry, dict):
        raise ExportError(f"{where}: expected a [[model]] table")
    is_import = "onnx" in entry
    allowed = _COMMON_KEYS | _INT8_KEYS | (_ONNX_KEYS if is_import else _ARCH_KEYS)
    unknown = sorted(set(entry) - allowed)
    if unknown:
        hint = (
            " (an onnx = entry takes no arch/weights keys)" if is_import and set(unknown) & _ARCH_KEYS else ""
        )
        raise ExportError(
            f"{where}: unknown keys {', '.join(unknown)}{hint} (allowed: {', '.join(sorted(allowed))})"
        )
    labels = _typed(entry, "labels", str, where)
    labels_file = (path.parent / labels) if labels else None
    version = _typed(entry, "version", int, where)
    int8 = bool(_typed(entry, "int8", bool, where))
    options = _int8_options(entry, where, path)
    if is_import:
        onnx_path = path.parent / _typed(entry, "onnx", str, where, required=True)
        outputs = _typed(entry, "outputs", str, where) or "auto"
        if outputs not in OUTPUT_KINDS:
            raise ExportError(f"{where}: outputs must be one of {', '.join(OUTPUT_KINDS)}, got {outputs!r}")
        return ImportRequest(
            onnx=onnx_path,
            name=_typed(entry, "name", str, where) or onnx_path.stem,
            preprocessing=PreprocessingSpec(
                preset=_typed(entry, "preset", str, where),
                resize=_typed(entry, "resize", int, where),
                crop=_typed(entry, "crop", int, where),
                crop_pct=_number(entry, "crop_pct", where),
                interpolation=_typed(entry, "interpolation", str, where),
                mean=_triple(entry, "mean", where),
                std=_triple(entry, "std", where),
            ),
            version=version,
            labels_file=labels_file,
            outputs=outputs,
            output_name=_typed(entry, "output", str, where),
            int8=int8,
            int8_options=options,
        )
    arch = _typed(entry, "arch", str, where, required=True)
    weights = _typed(entry, "weights", str, where, required=True)
    return ExportRequest(
        arch=arch,
        weights=None if weights == "random" else weights,
        name=_typed(entry, "name", str, where) or arch,
        version=version,
        labels_file=labels_file,
        fp16=bool(_typed(entry, "fp16", bool, where)),
        opset=_typed(entry, "opset", int, where) or DEFAULT_OPSET,
        verify=_typed(entry, "verify", bool, where) is not False,
        num_classes=_typed(entry, "num_classes", int, where),
        int8=int8,
        int8_options=options,
    )


def _int8_options(entry: dict[str, Any], where: str, path: Path) -> Int8Options:
    calibration = _typed(entry, "calibration", str, where)
    holdout = _typed(entry, "holdout", str, where)
    if not entry.get("int8") and (set(entry) & (_INT8_KEYS - {"int8"})):
        raise ExportError(f"{where}: calibration/holdout/min_agreement keys only apply with int8 = true")
    min_agreement = _number(entry, "min_agreement", where)
    return Int8Options(
        calibration=(path.parent / calibration) if calibration else None,
        calibration_count=_typed(entry, "calibration_count", int, where) or DEFAULT_CALIBRATION_COUNT,
        holdout=(path.parent / holdout) if holdout else None,
        holdout_count=_typed(entry, "holdout_count", int, where),
        min_agreement=INT8_MIN_TOP1_AGREEMENT if min_agreement is None else min_agreement,
    )


def _typed(entry: dict[str, Any], key: str, kind: type, where: str, *, required: bool = False) -> Any:
    value = entry.get(key)
    if value is None:
        if required:
            raise ExportError(f"{where}: missing {key} =")
        return None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ExportError(f"{where}: {key} must be a {kind.__name__}, got {value!r}")
    return value


def _number(entry: dict[str, Any], key: str, where: str) -> float | None:
    value = entry.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ExportError(f"{where}: {key} must be a number, got {value!r}")
    return float(value)


def _triple(entry: dict[str, Any], key: str, where: str) -> tuple[float, float, float] | None:
    value = entry.get(key)
    if value is None:
        return None
    if (
        not isinstance(value, list)
        or len(value) != 3
        or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in value)
    ):
        raise ExportError(f"{where}: {key} must be three numbers [R, G, B], got {value!r}")
    return (float(value[0]), float(value[1]), float(value[2]))
