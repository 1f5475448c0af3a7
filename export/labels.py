"""Which class names go into the model card: a labels file, the registry's label set, or placeholders."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import models
from export.errors import ExportError


@dataclass(frozen=True)
class ResolvedLabels:
    """The labels and a few words on where they came from, for the printed summary."""

    labels: tuple[str, ...]
    origin: str


def resolve_labels(arch: str, num_classes: int, labels_file: Path | None) -> ResolvedLabels:
    """``labels_file`` (one per line) wins; else the architecture's label set if it has that many classes."""
    if labels_file is not None:
        labels = read_labels_file(labels_file)
        if len(labels) != num_classes:
            raise ExportError(
                f"{labels_file} has {len(labels)} labels but the model has {num_classes} classes"
            )
        return ResolvedLabels(labels, f"from {labels_file}")
    known = models.labels_for(arch, num_classes)
    if known is not None and len(known) == num_classes:
        return ResolvedLabels(tuple(known), f"{models.get_model_config(arch).label_set}")
    placeholders = tuple(f"class_{index}" for index in range(num_classes))
    return ResolvedLabels(placeholders, f"none known for {num_classes} classes: placeholders class_0..")


def read_labels_file(path: Path) -> tuple[str, ...]:
    """One label per line; blank lines at the end are ignored, blank lines inside are an error."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ExportError(f"cannot read labels file {path}: {exc}") from exc
    lines = [line.strip() for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    if not lines:
        raise ExportError(f"labels file {path} is empty")
    if any(not line for line in lines):
        raise ExportError(f"labels file {path} has a blank line inside; one label per line")
    return tuple(lines)
