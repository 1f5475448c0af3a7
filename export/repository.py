"""The exporter's side of the model repository: names, the next version, the card already there.

The layout itself (names, folders, the atomic publish) is :mod:`servable.layout`'s; this module turns
its answers into :class:`ExportError` messages and reads the card of an existing file to decide
whether an export has anything to do.
"""

from __future__ import annotations

from pathlib import Path

import onnx

from export.errors import ExportError
from servable.card import InvalidModelCard, ModelCard
from servable.layout import is_model_name, publish_version, version_folders


def check_name(name: str) -> str:
    """Model names become directory names and URL parts: letters, digits, '.', '_', '-' only."""
    if not is_model_name(name):
        raise ExportError(
            f"invalid model name {name!r}: use letters, digits, '.', '_' or '-',"
            " starting with a letter or digit"
        )
    return name


def existing_versions(model_dir: Path, name: str) -> list[int]:
    """Version numbers present for ``name``, ascending (a version folder counts even while empty)."""
    return list(version_folders(model_dir / name))


def read_card(path: Path) -> ModelCard | None:
    """The card inside an existing model file, or None when it has none we can read."""
    try:
        model = onnx.load(str(path), load_external_data=False)
        return ModelCard.from_metadata({p.key: p.value for p in model.metadata_props})
    except (OSError, InvalidModelCard):
        return None
    except Exception:  # noqa: BLE001 - protobuf's DecodeError and friends: not a model file we wrote.
        return None


def write_version(model_dir: Path, name: str, version: int, payload: bytes) -> Path:
    """Publish ``payload`` as ``<name>/<version>/model.onnx``; an existing version is refused."""
    try:
        return publish_version(model_dir, name, version, payload)
    except FileExistsError as exc:
        raise ExportError(f"{exc}; pass another --version or leave it out") from exc
