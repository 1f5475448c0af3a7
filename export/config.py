"""``models.toml``: the list of models a deployment exports, one ``[[model]]`` table each."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 has no tomllib; the export extra installs tomli there.
    import tomli as tomllib

from export.errors import ExportError
from export.graph import DEFAULT_OPSET

_KEYS = {"name", "arch", "weights", "version", "labels", "fp16", "opset", "verify", "num_classes"}


@dataclass(frozen=True)
class ExportRequest:
    """One entry of models.toml: the arguments of one ``export_model`` call."""

    arch: str
    weights: str | None
    name: str
    version: int | None = None
    labels_file: Path | None = None
    fp16: bool = False
    opset: int = DEFAULT_OPSET
    verify: bool = True
    num_classes: int | None = None

    def as_kwargs(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "labels_file": self.labels_file,
            "fp16": self.fp16,
            "opset": self.opset,
            "verify": self.verify,
            "num_classes": self.num_classes,
        }


def load_config(path: Path) -> list[ExportRequest]:
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


def _request(entry: Any, index: int, path: Path) -> ExportRequest:
    where = f"{path} model #{index}"
    if not isinstance(entry, dict):
        raise ExportError(f"{where}: expected a [[model]] table")
    unknown = sorted(set(entry) - _KEYS)
    if unknown:
        raise ExportError(f"{where}: unknown keys {', '.join(unknown)} (allowed: {', '.join(sorted(_KEYS))})")
    arch = _typed(entry, "arch", str, where, required=True)
    weights = _typed(entry, "weights", str, where, required=True)
    labels = _typed(entry, "labels", str, where)
    return ExportRequest(
        arch=arch,
        weights=None if weights == "random" else weights,
        name=_typed(entry, "name", str, where) or arch,
        version=_typed(entry, "version", int, where),
        labels_file=(path.parent / labels) if labels else None,
        fp16=bool(_typed(entry, "fp16", bool, where)),
        opset=_typed(entry, "opset", int, where) or DEFAULT_OPSET,
        verify=_typed(entry, "verify", bool, where) is not False,
        num_classes=_typed(entry, "num_classes", int, where),
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
