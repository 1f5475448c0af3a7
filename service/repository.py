"""Find the models to serve: ``<model_dir>/<name>/<version>/model.onnx``, highest integer version wins."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

MODEL_FILE = "model.onnx"


@dataclass(frozen=True)
class ModelEntry:
    """One servable model file found in the repository."""

    name: str
    version: int
    path: Path


class RepositoryError(Exception):
    """The model directory cannot be served from (missing, empty)."""


def scan_repository(model_dir: Path) -> list[ModelEntry]:
    """The highest version of every model in ``model_dir``, sorted by name.

    Version folders must be plain non-negative integers with a ``model.onnx`` inside; anything else
    (``latest``, half-written ``3.tmp``) is ignored so an export in progress never gets served.
    """
    if not model_dir.is_dir():
        raise RepositoryError(f"model directory {model_dir} does not exist")
    entries: list[ModelEntry] = []
    for model_folder in sorted(path for path in model_dir.iterdir() if path.is_dir()):
        versions = [
            int(folder.name)
            for folder in model_folder.iterdir()
            if folder.is_dir() and folder.name.isdigit() and (folder / MODEL_FILE).is_file()
        ]
        if versions:
            best = max(versions)
            entries.append(ModelEntry(model_folder.name, best, model_folder / str(best) / MODEL_FILE))
    if not entries:
        raise RepositoryError(f"no <name>/<version>/{MODEL_FILE} under {model_dir}")
    return entries
