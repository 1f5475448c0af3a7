"""The model repository on disk: ``<model-dir>/<name>/<version>/model.onnx``, written atomically.

A version directory appears in one ``rename`` of a fully written, fsynced temporary directory whose
name starts with a dot (never a version number), so the service can never see a half-written file:
either ``<version>/model.onnx`` is complete or ``<version>`` does not exist.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

import onnx

from export.errors import ExportError
from service.model_card import InvalidModelCard, ModelCard

MODEL_FILENAME = "model.onnx"
_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def fsync_dir(folder: Path) -> None:
    """Make a rename durable where the platform allows fsync on a directory (here, not models/'s:
    export uses only models/'s public API)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def check_name(name: str) -> str:
    """Model names become directory names and URL parts: letters, digits, '.', '_', '-' only."""
    if not _NAME_PATTERN.match(name) or name in (".", ".."):
        raise ExportError(
            f"invalid model name {name!r}: use letters, digits, '.', '_' or '-',"
            " starting with a letter or digit"
        )
    return name


def existing_versions(model_dir: Path, name: str) -> list[int]:
    """Version numbers present for ``name``, ascending (only directories named by a positive integer)."""
    folder = model_dir / name
    if not folder.is_dir():
        return []
    versions = [int(entry.name) for entry in folder.iterdir() if entry.is_dir() and entry.name.isdigit()]
    return sorted(v for v in versions if v > 0)


def version_path(model_dir: Path, name: str, version: int) -> Path:
    return model_dir / name / str(version) / MODEL_FILENAME


def read_card(path: Path) -> ModelCard | None:
    """The card inside an existing model file, or None when it has none we can read."""
    try:
        model = onnx.load(str(path), load_external_data=False)
        return ModelCard.from_metadata({p.key: p.value for p in model.metadata_props})
    except (OSError, InvalidModelCard):
        return None
    except Exception:  # protobuf's DecodeError and friends: not a model file we wrote.
        return None


def write_version(model_dir: Path, name: str, version: int, payload: bytes) -> Path:
    """Write ``payload`` as ``<name>/<version>/model.onnx`` atomically; refuse an existing version."""
    parent = model_dir / name
    parent.mkdir(parents=True, exist_ok=True)
    final_dir = parent / str(version)
    if final_dir.exists():
        raise ExportError(f"{final_dir} already exists; pass another --version or leave it out")
    staging = Path(tempfile.mkdtemp(prefix=f".{version}.partial-", dir=parent))
    try:
        staged_file = staging / MODEL_FILENAME
        with open(staged_file, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(staging, 0o755)
        fsync_dir(staging)
        try:
            os.rename(staging, final_dir)  # Atomic; fails if another export took this version meanwhile.
        except OSError as exc:
            raise ExportError(f"could not create {final_dir}: {exc}") from exc
        fsync_dir(parent)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return final_dir / MODEL_FILENAME
