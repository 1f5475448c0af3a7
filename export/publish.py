"""The common end of every export: idempotency by settings fingerprint, the card, the atomic write."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

from export.errors import ExportError
from export.graph import set_metadata
from export.repository import existing_versions, read_card, write_version
from servable.card import ModelCard
from servable.layout import model_path

Log = Callable[[str], None]


@dataclass(frozen=True)
class ExportResult:
    """What an export produced (or found already there, when ``skipped``)."""

    path: Path
    name: str
    version: int
    skipped: bool
    card: ModelCard
    seconds: float
    size_bytes: int

    @property
    def verification(self) -> dict[str, Any]:
        return self.card.verification

    @property
    def fingerprint(self) -> str:
        return str(getattr(self.card.export, "settings_fingerprint", ""))


def fingerprint(settings: dict[str, Any]) -> str:
    canonical = json.dumps(settings, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def target_version(
    model_dir: Path, name: str, version: int | None, settings_fingerprint: str
) -> tuple[int, ModelCard | None]:
    """(version to write, or the existing version's card when it already matches and nothing is to do)."""
    versions = existing_versions(model_dir, name)
    if version is None:
        if not versions:
            return 1, None
        latest = versions[-1]
        card = read_card(model_path(model_dir, name, latest))
        if card is not None and _card_fingerprint(card) == settings_fingerprint:
            return latest, card
        return latest + 1, None
    if version in versions:
        card = read_card(model_path(model_dir, name, version))
        if card is not None and _card_fingerprint(card) == settings_fingerprint:
            return version, card
        raise ExportError(
            f"{model_dir / name / str(version)} already exists with other weights or settings;"
            " pick another --version or leave it out for the next free one"
        )
    return version, None


def up_to_date(
    model_dir: Path, name: str, version: int, card: ModelCard, started: float, prefix: str, log: Log
) -> ExportResult:
    """The result for a version that already holds these weights and settings."""
    path = model_path(model_dir, name, version)
    log(
        f"{prefix} up to date: version {version} already holds these weights and settings ({path});"
        " nothing to do"
    )
    return ExportResult(path, name, version, True, card, time.perf_counter() - started, path.stat().st_size)


def publish(
    graph: onnx.ModelProto,
    card: ModelCard,
    model_dir: Path,
    name: str,
    version: int,
    started: float,
    prefix: str,
    log: Log,
) -> ExportResult:
    """Put the card into ``graph`` and write it as ``<name>/<version>/model.onnx`` atomically."""
    set_metadata(graph, card.to_metadata())
    payload = graph.SerializeToString()
    path = write_version(model_dir, name, version, payload)
    seconds = time.perf_counter() - started
    log(f"{prefix} wrote {path} ({len(payload) / 1e6:.1f} MB) version {version}, total {seconds:.1f} s")
    return ExportResult(path, name, version, False, card, seconds, len(payload))


def _card_fingerprint(card: ModelCard) -> str | None:
    return getattr(card.export, "settings_fingerprint", None)
