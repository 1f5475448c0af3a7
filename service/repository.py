"""What is on disk: ``<model_dir>/<name>/<version>/model.onnx`` plus an optional ``<name>/config.toml``.

Scanning is pure and blocking (directory listings, stat, reading a small TOML file): the service runs
it on a worker thread. It never opens a path built from a request: explicit load/unload requests are
matched against the names a scan of ``model_dir`` found.

Version folders must be plain positive integers with a ``model.onnx`` inside; anything else
(``latest``, the exporter's hidden ``.3.partial-*`` staging folders) is ignored, so an export in
progress is never seen. Each version carries a fingerprint (inode, size, mtime of ``model.onnx``):
a folder replaced under the same number is a *changed* version.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

MODEL_FILE = "model.onnx"
CONFIG_FILE = "config.toml"
#: The names the exporter writes (letters, digits, '.', '_', '-'); other folders are not models.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
#: Largest config.toml read: it holds a dozen numbers.
MAX_CONFIG_BYTES = 64 * 1024
_MAX_VERSION_DIGITS = 9

Fingerprint = tuple[int, int, int]


class RepositoryError(Exception):
    """The model directory cannot be served from (missing, not a directory)."""


class ConfigError(ValueError):
    """A model's config.toml is unreadable or says something invalid."""


@dataclass(frozen=True)
class ModelEntry:
    """One servable model file found in the repository."""

    name: str
    version: int
    path: Path
    fingerprint: Fingerprint = (0, 0, 0)


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
class ModelConfig:
    """Per-model overrides read from ``<name>/config.toml``; ``None`` means "the global setting"."""

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
    versions: dict[int, ModelEntry]
    config: ModelConfig
    config_error: str | None = None
    config_fingerprint: Fingerprint | None = None

    def wanted(self) -> list[int]:
        """The version numbers the policy selects from what is on disk, ascending."""
        return self.config.version_policy.select(list(self.versions))


def scan_repository(model_dir: Path) -> dict[str, ModelFolder]:
    """Every model folder under ``model_dir`` (also those without a version yet), by name."""
    if not model_dir.is_dir():
        raise RepositoryError(f"model directory {model_dir} does not exist")
    found: dict[str, ModelFolder] = {}
    for entry in sorted(os.scandir(model_dir), key=lambda e: e.name):
        if NAME_PATTERN.match(entry.name) and entry.is_dir():
            found[entry.name] = _scan_model(Path(entry.path), entry.name)
    return found


def _scan_model(folder: Path, name: str) -> ModelFolder:
    versions: dict[int, ModelEntry] = {}
    try:
        children = list(os.scandir(folder))
    except OSError:
        children = []
    for child in children:
        if not (child.name.isascii() and child.name.isdigit() and len(child.name) <= _MAX_VERSION_DIGITS):
            continue
        version = int(child.name)
        model_file = Path(child.path) / MODEL_FILE
        try:
            stat = model_file.stat()
        except OSError:
            continue
        if version > 0 and child.is_dir():
            versions[version] = ModelEntry(name, version, model_file, (stat.st_ino, stat.st_size, stat.st_mtime_ns))
    config, error, fingerprint = ModelConfig(), None, None
    config_path = folder / CONFIG_FILE
    try:
        stat = config_path.stat()
    except OSError:
        pass
    else:
        fingerprint = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
        try:
            config = read_config(config_path)
        except ConfigError as exc:
            error = str(exc)
    return ModelFolder(name, versions, config, error, fingerprint)


def read_config(path: Path) -> ModelConfig:
    """Parse a model's config.toml; every mistake is a :class:`ConfigError` naming the key."""
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it: {exc}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES} bytes")
    try:
        document = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse_config(document, where=str(path))


_INT_KEYS = {"max_batch_size": (1, 1024), "max_queue_size": (1, 1 << 20), "instances": (1, 64), "default_top_k": (1, 1 << 20)}
_KEYS = {*_INT_KEYS, "max_batch_delay_ms", "batch_buckets", "version_policy"}


def parse_config(document: dict[str, Any], *, where: str = "config.toml") -> ModelConfig:
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
    return ModelConfig(**values)


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
