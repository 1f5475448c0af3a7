"""The download cache: where files go, fetching them once, checking their hash, writing them atomically.

Downloads land in ``$RESNET_SERVE_CACHE_DIR`` (default ``~/.cache/resnet-serve``) under the URL's
basename (Hugging Face files under ``huggingface/<org>/<repo>/``), so a folder of published files can
seed the cache. They are written to a temporary file in the same folder, checked, fsynced and renamed:
a partial or wrong file never sits under the final name. ``RESNET_SERVE_OFFLINE=1`` forbids downloads.

A download reports its bytes to the :class:`~models.progress.Progress` it is given (none by default).

A published file shipped inside the package (``models/weights/<source>/<basename>``: the 1.1 MB CIFAR-10
ResNet-20, so the default config exports with no network) is taken before the cache, hash-checked alike.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from models.checkpoints.errors import CheckpointError
from models.config import PublishedCheckpoint
from models.progress import SILENT, Progress
from servable.layout import fsync_dir

CACHE_DIR_ENV = "RESNET_SERVE_CACHE_DIR"
OFFLINE_ENV = "RESNET_SERVE_OFFLINE"
TIMEOUT_ENV = "RESNET_SERVE_DOWNLOAD_TIMEOUT"
DEFAULT_TIMEOUT_S = 60.0
_CHUNK = 1 << 20
#: Published checkpoints shipped with the package, each beside its licence and attribution.
EMBEDDED_DIR = Path(__file__).resolve().parents[1] / "weights"


@dataclass(frozen=True)
class Remote:
    """A file to fetch: where from, what hash it must have (None: unknown), which publication it is."""

    url: str
    expected_sha256: str | None
    published: PublishedCheckpoint | None

    @property
    def cache_path(self) -> Path:
        return cache_path_for(self.url)


# --- environment ------------------------------------------------------------------------------------


def cache_dir() -> Path:
    """Where downloads go; read at every call so tests and deployments can point it elsewhere."""
    configured = os.environ.get(CACHE_DIR_ENV)
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "resnet-serve"


def downloads_allowed() -> bool:
    return os.environ.get(OFFLINE_ENV, "").strip().lower() not in ("1", "true", "yes", "on")


def _timeout_s() -> float:
    raw = os.environ.get(TIMEOUT_ENV)
    try:
        return float(raw) if raw else DEFAULT_TIMEOUT_S
    except ValueError:
        raise CheckpointError(f"{TIMEOUT_ENV}={raw!r} is not a number of seconds") from None


def cache_path_for(url: str) -> Path:
    """``<cache>/<basename>``; Hugging Face repos all name their file model.safetensors, so they nest."""
    parsed = urllib.parse.urlsplit(url)
    parts = [urllib.parse.unquote(part) for part in parsed.path.split("/") if part]
    if not parts or parts[-1] in (".", ".."):
        raise CheckpointError(f"cannot name a cache file after {url!r}: its path has no file name")
    if parsed.hostname == "huggingface.co" and len(parts) >= 3 and "resolve" in parts:
        org, repo = parts[0], parts[1]
        return cache_dir() / "huggingface" / org / repo / parts[-1]
    return cache_dir() / parts[-1]


# --- hashes -------------------------------------------------------------------------------------------


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def hash_ok(actual: str, expected: str | None) -> bool:
    """``expected`` may be the full hash or a published prefix; None accepts any file."""
    return expected is None or actual.startswith(expected.lower())


# --- fetching -----------------------------------------------------------------------------------------


def _drop_hint(remote: Remote) -> str:
    return f"download {remote.url} yourself and drop it at {remote.cache_path}"


def embedded_path(remote: Remote) -> Path | None:
    """The copy of a published checkpoint shipped in the package (its URL's basename), or None."""
    if remote.published is None or remote.expected_sha256 is None:
        return None  # only a publication whose hash we know may stand in for its download
    name = cache_path_for(remote.url).name
    return next((path for path in sorted(EMBEDDED_DIR.glob("*/*")) if path.name == name), None)


def fetch(remote: Remote, progress: Progress = SILENT) -> tuple[Path, str]:
    """The embedded or cached file for ``remote`` (downloading it if needed) and its SHA-256."""
    embedded = embedded_path(remote)
    if embedded is not None:
        sha = file_sha256(embedded)
        if not hash_ok(sha, remote.expected_sha256):
            raise CheckpointError(
                f"the embedded {embedded} has SHA-256 {sha}, expected {remote.expected_sha256}: the installation"
                " is damaged; reinstall the package"
            )
        return embedded, sha
    path = remote.cache_path
    if path.is_file():
        sha = file_sha256(path)
        if hash_ok(sha, remote.expected_sha256):
            return path, sha
        if not downloads_allowed():
            raise CheckpointError(
                f"cached {path} has SHA-256 {sha}, expected {remote.expected_sha256}; downloads are off"
                f" ({OFFLINE_ENV}=1): replace it with the right file from {remote.url}"
            )
    elif not downloads_allowed():
        raise CheckpointError(
            f"{remote.url} is not cached and downloads are off ({OFFLINE_ENV}=1): {_drop_hint(remote)}"
        )
    return path, _download(remote, progress)


def _download(remote: Remote, progress: Progress) -> str:
    """Stream ``remote.url`` into a temp file beside the target, check it, rename it into place."""
    target = remote.cache_path
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CheckpointError(f"cannot create the cache folder {target.parent}: {exc}") from None
    request = urllib.request.Request(remote.url, headers={"User-Agent": "resnet-serve"})
    descriptor, temp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    temp_path = Path(temp_name)
    try:
        digest = hashlib.sha256()
        received = 0
        with os.fdopen(descriptor, "wb") as out:
            try:
                with urllib.request.urlopen(request, timeout=_timeout_s()) as response:
                    announced = response.headers.get("Content-Length")
                    total = int(announced) if announced is not None and announced.isdigit() else None
                    source = urllib.parse.urlsplit(remote.url).hostname or remote.url
                    with progress.step(f"downloading {target.name} from {source}", total, "B") as advance:
                        while chunk := response.read(_CHUNK):
                            digest.update(chunk)
                            out.write(chunk)
                            received += len(chunk)
                            advance(len(chunk))
            except urllib.error.HTTPError as exc:
                raise CheckpointError(
                    f"downloading {remote.url} failed: HTTP {exc.code} {exc.reason}; {_drop_hint(remote)}"
                ) from None
            except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
                reason = getattr(exc, "reason", exc)
                raise CheckpointError(
                    f"downloading {remote.url} failed: {reason!s}; {_drop_hint(remote)}"
                ) from None
            if total is not None and received != total:
                raise CheckpointError(
                    f"downloading {remote.url} failed: got {received} of {announced} bytes (connection cut);"
                    f" {_drop_hint(remote)}"
                )
            out.flush()
            os.fsync(out.fileno())
        sha = digest.hexdigest()
        if not hash_ok(sha, remote.expected_sha256):
            raise CheckpointError(
                f"{remote.url} has SHA-256 {sha}, expected {remote.expected_sha256}: refusing the file"
                " (it is corrupt or not the published one)"
            )
        os.replace(temp_path, target)
        fsync_dir(target.parent)
        return sha
    finally:
        temp_path.unlink(missing_ok=True)
