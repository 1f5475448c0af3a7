"""What the service serves from the repository: each model folder's versions and its ``config.toml``.

The layout (names, version folders, file names, fingerprints) is :mod:`servable.layout`'s, shared with
the exporter; this module adds what only serving cares about: the per-model overrides in
``config.toml`` (batching, queue, instances, version policy) and which versions the policy selects.
Scanning is blocking file-system work: the service runs it on a worker thread. It never opens a path
built from a request: explicit load/unload requests are matched against the names a scan found.
Hidden staging folders (``.3.partial-*``) and anything not a version number are ignored, so an export
in progress is never seen.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from servable.layout import (
    CONFIG_FILE,
    Fingerprint,
    RepositoryMissing,
    UnreadableFile,
    VersionFile,
    config_fingerprint,
    model_folders,
    read_export_failure,
    read_regular_file,
    scan_versions,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

#: Largest config.toml read: it holds a dozen numbers.
MAX_CONFIG_BYTES = 64 * 1024


class RepositoryError(Exception):
    """The model directory cannot be served from (missing, not a directory)."""


class ConfigError(ValueError):
    """A model's config.toml is unreadable or says something invalid."""


@dataclass(frozen=True)
class VersionPolicy:
    """Which versions on disk are served, as Triton's ``version_policy``: latest N, all, or specific."""

    kind: Literal["latest", "all", "specific"] = "latest"
    latest: int = 1
    specific: tuple[int, ...] = ()

    def select(self, available: list[int]) -> list[int]:
        ordered = sorted(available)
        if self.kind == "all":
            return ordered
        if self.kind == "specific":
            return [v for v in ordered if v in self.specific]
        return ordered[-self.latest :]

    def describe(self) -> dict[str, Any]:
        if self.kind == "all":
            return {"all": {}}
        if self.kind == "specific":
            return {"specific": {"versions": list(self.specific)}}
        return {"latest": {"num_versions": self.latest}}


@dataclass(frozen=True)
class ServingConfig:
    """Per-model serving overrides read from ``<name>/config.toml``; ``None`` means "the global setting"."""

    max_batch_size: int | None = None
    max_batch_delay_ms: float | None = None
    max_queue_size: int | None = None
    instances: int | None = None
    batch_buckets: tuple[int, ...] | None = None
    default_top_k: int | None = None
    version_policy: VersionPolicy = field(default_factory=VersionPolicy)


@dataclass(frozen=True)
class ModelFolder:
    """One model's folder: its versions, and its config (or why the config is refused)."""

    name: str
    versions: dict[int, VersionFile]
    config: ServingConfig
    config_error: str | None = None
    config_fingerprint: Fingerprint | None = None
    #: Why the exporter's last run could not export this model (``servable.layout.EXPORT_FAILURE_FILE``).
    export_failure: str | None = None

    def wanted(self) -> list[int]:
        """The version numbers the policy selects from what is on disk, ascending."""
        return self.config.version_policy.select(list(self.versions))


def scan_repository(model_dir: Path, read_timeout_s: float | None = None) -> dict[str, ModelFolder]:
    """Every model folder under ``model_dir`` (also those without a version yet), by name."""
    try:
        folders = model_folders(model_dir)
    except RepositoryMissing as exc:
        raise RepositoryError(str(exc)) from None
    return {name: _scan_model(folder, name, read_timeout_s) for name, folder in folders.items()}


def _scan_model(folder: Path, name: str, read_timeout_s: float | None) -> ModelFolder:
    config, error = ServingConfig(), None
    fingerprint = config_fingerprint(folder)
    if fingerprint is not None:
        try:
            config = read_config(folder / CONFIG_FILE, read_timeout_s)
        except ConfigError as exc:
            error = str(exc)
    return ModelFolder(name, scan_versions(folder, name), config, error, fingerprint, read_export_failure(folder))


def read_config(path: Path, timeout_s: float | None = None) -> ServingConfig:
    """Parse a model's config.toml; every mistake is a :class:`ConfigError` naming the key. Messages
    name the file as ``<model>/config.toml``, never by the server's absolute path."""
    where = f"{path.parent.name}/{path.name}"
    try:
        raw = read_regular_file(path, max_bytes=MAX_CONFIG_BYTES, timeout_s=timeout_s)
    except UnreadableFile as exc:
        raise ConfigError(f"{where}: {exc}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{where}: larger than {MAX_CONFIG_BYTES} bytes")
    try:
        document = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{where}: not valid TOML: {exc}") from None
    return parse_config(document, where=where)


_INT_KEYS = {"max_batch_size": (1, 1024), "max_queue_size": (1, 1 << 20), "instances": (1, 64), "default_top_k": (1, 1 << 20)}
_KEYS = {*_INT_KEYS, "max_batch_delay_ms", "batch_buckets", "version_policy"}


def parse_config(document: dict[str, Any], *, where: str = "config.toml") -> ServingConfig:
    unknown = sorted(set(document) - _KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r} (allowed: {', '.join(sorted(_KEYS))})")
    values: dict[str, Any] = {}
    for key, (low, high) in _INT_KEYS.items():
        if key in document:
            values[key] = _bounded_int(document[key], low, high, f"{where}: {key}")
    if "max_batch_delay_ms" in document:
        delay = document["max_batch_delay_ms"]
        if isinstance(delay, bool) or not isinstance(delay, (int, float)) or not 0 <= delay <= 1000:
            raise ConfigError(f"{where}: max_batch_delay_ms must be a number of milliseconds in 0..1000")
        values["max_batch_delay_ms"] = float(delay)
    if "batch_buckets" in document:
        buckets = document["batch_buckets"]
        if not isinstance(buckets, list) or not buckets:
            raise ConfigError(f"{where}: batch_buckets must be a non-empty list of batch sizes")
        sizes = sorted({_bounded_int(b, 1, 1024, f"{where}: batch_buckets entry") for b in buckets})
        values["batch_buckets"] = tuple(sizes)
    if "version_policy" in document:
        values["version_policy"] = _version_policy(document["version_policy"], where)
    return ServingConfig(**values)


def _version_policy(raw: Any, where: str) -> VersionPolicy:
    if raw == "all":
        return VersionPolicy("all")
    if isinstance(raw, dict) and len(raw) == 1:
        (kind, value), = raw.items()
        if kind == "latest":
            return VersionPolicy("latest", latest=_bounded_int(value, 1, 1 << 20, f"{where}: version_policy.latest"))
        if kind == "specific" and isinstance(value, list) and value:
            versions = tuple(sorted({_bounded_int(v, 1, 10**9 - 1, f"{where}: version_policy.specific") for v in value}))
            return VersionPolicy("specific", specific=versions)
        if kind == "all" and value in (True, {}):
            return VersionPolicy("all")
    raise ConfigError(
        f"{where}: version_policy must be \"all\", {{latest = N}} or {{specific = [versions]}}"
    )


def _bounded_int(value: Any, low: int, high: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"{what} must be an integer in {low}..{high}, got {value!r}"[:300])
    return value
