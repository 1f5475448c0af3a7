"""The common end of every export: idempotency by settings fingerprint, the card, the atomic write."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnx

from export.errors import ExportError
from export.graph import set_metadata
from export.repository import existing_versions, read_card, write_version
from servable.card import ExportInfo, ModelCard
from servable.layout import model_path

if TYPE_CHECKING:
    from export.int8 import Int8Plan

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


@dataclass(frozen=True)
class Slot:
    """Where one export goes, decided before any work: the version to write, with the settings that decide
    its content and their fingerprint; ``existing`` is the result when a version already holds them."""

    model_dir: Path
    name: str
    version: int
    settings: dict[str, Any]
    fingerprint: str
    existing: ExportResult | None
    started: float
    log: Log

    @property
    def prefix(self) -> str:
        """What every log line of this export starts with."""
        return f"[{self.name}]"

    def export_info(self, **fields: Any) -> ExportInfo:
        """The card's export record: ``fields`` plus the settings, their fingerprint and the time."""
        return ExportInfo(
            onnx_version=onnx.__version__,
            exported_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            settings=self.settings,
            settings_fingerprint=self.fingerprint,
            **fields,
        )


def claim_version(
    model_dir: Path,
    name: str,
    version: int | None,
    settings: dict[str, Any],
    int8: Int8Plan | None,
    *,
    started: float,
    log: Log,
) -> Slot:
    """Settings (with the INT8 plan's) -> fingerprint -> the version to write, or the one already up to date.

    Raises :class:`ExportError` when the requested ``version`` exists with other settings.
    """
    if int8 is not None:
        settings = {**settings, "int8": int8.settings()}
    settings_fingerprint = fingerprint(settings)
    target, previous = _target_version(model_dir, name, version, settings_fingerprint)
    slot = Slot(model_dir, name, target, settings, settings_fingerprint, None, started, log)
    if previous is None:
        return slot
    path = model_path(model_dir, name, target)
    log(
        f"{slot.prefix} up to date: version {target} already holds these weights and settings ({path});"
        " nothing to do"
    )
    seconds = time.perf_counter() - started
    existing = ExportResult(path, name, target, True, previous, seconds, path.stat().st_size)
    return replace(slot, existing=existing)


def _target_version(
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


def publish(graph: onnx.ModelProto, card: ModelCard, slot: Slot) -> ExportResult:
    """Put the card into ``graph`` and write it as ``<name>/<version>/model.onnx`` atomically."""
    set_metadata(graph, card.to_metadata())
    payload = graph.SerializeToString()
    path = write_version(slot.model_dir, slot.name, slot.version, payload)
    seconds = time.perf_counter() - slot.started
    slot.log(
        f"{slot.prefix} wrote {path} ({len(payload) / 1e6:.1f} MB) version {slot.version}, total {seconds:.1f} s"
    )
    return ExportResult(path, slot.name, slot.version, False, card, seconds, len(payload))


def _card_fingerprint(card: ModelCard) -> str | None:
    return getattr(card.export, "settings_fingerprint", None)
