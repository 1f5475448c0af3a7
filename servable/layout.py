"""The model repository on disk: ``<model_dir>/<name>/<version>/model.onnx`` and ``<name>/config.toml``.

The exporter writes it and the service reads it, so both take every rule from here: which folder
names are models, which are versions, what the files are called, and how a version appears. A
version appears in one ``rename`` of a fully written, fsynced hidden staging folder (``.3.partial-*``,
never a version number), so a reader sees either the whole ``<version>/model.onnx`` or no version.

Everything here is blocking file-system work; the service calls it on a worker thread.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

MODEL_FILE = "model.onnx"
CONFIG_FILE = "config.toml"
#: ``<name>/export-failure.json``: the exporter could not export this model of its config (why, and what to
#: do); the service reports it as not exported. Publishing a version removes it.
EXPORT_FAILURE_FILE = "export-failure.json"
#: Largest failure record read: one message.
MAX_FAILURE_BYTES = 16 * 1024
#: Model names become folder names and URL segments: letters, digits, '.', '_', '-' (matched whole,
#: so a trailing newline is not a name).
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
#: Version folders are positive integers of at most this many digits (``latest`` or ``v2`` are not).
MAX_VERSION_DIGITS = 9

#: (inode, size, mtime in ns) of a file: a folder replaced under the same number changes it.
Fingerprint = tuple[int, int, int]


class RepositoryMissing(OSError):
    """The model directory does not exist or is not a directory."""


class UnreadableFile(OSError):
    """A repository file that is not a regular file, or whose read did not finish in time."""


@dataclass(frozen=True)
class VersionFile:
    """One version's model file as found on disk; ``problem`` says why it cannot be served unread."""

    name: str
    version: int
    path: Path
    fingerprint: Fingerprint = (0, 0, 0)
    problem: str | None = None

    @property
    def shown(self) -> str:
        """The file's place in the repository, as messages show it (never the server's absolute path)."""
        return f"{self.name}/{self.version}/{MODEL_FILE}"


_FILE_KINDS = (
    (stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
)


def not_regular(status: os.stat_result) -> str | None:
    """Why a file (after following links) cannot be read as data: a FIFO or a device never ends or
    blocks its reader; None for a regular file."""
    if stat.S_ISREG(status.st_mode):
        return None
    kind = next((name for test, name in _FILE_KINDS if test(status.st_mode)), "a special file")
    return f"{kind}, not a regular file"


def read_regular_file(path: Path, *, max_bytes: int | None = None, timeout_s: float | None = None) -> bytes:
    """The bytes of a regular file, read within ``timeout_s`` (at most ``max_bytes`` + 1 of them).

    Opened without blocking (a FIFO's open would wait for a writer) and checked with ``fstat`` on the
    open descriptor, so a file swapped for a FIFO or a device after a scan is refused too. The read runs
    on a daemon thread: on a mount that stops answering it is left behind, not waited for, and the
    caller gets :class:`UnreadableFile`.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise UnreadableFile(f"cannot open it: {exc.strerror or exc}") from None
    result: list[bytes | BaseException] = []

    def read() -> None:
        try:
            with os.fdopen(fd, "rb") as handle:
                problem = not_regular(os.fstat(handle.fileno()))
                if problem is not None:
                    raise UnreadableFile(problem)
                os.set_blocking(handle.fileno(), True)
                result.append(handle.read() if max_bytes is None else handle.read(max_bytes + 1))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller, who re-raises it
            result.append(exc)

    if timeout_s is None:
        read()
    else:
        reader = threading.Thread(target=read, name=f"read {path.name}", daemon=True)
        reader.start()
        reader.join(timeout_s)
    if not result:
        raise UnreadableFile(f"reading it took more than {timeout_s:g} s")
    outcome = result[0]
    if isinstance(outcome, UnreadableFile):
        raise outcome
    if isinstance(outcome, OSError):
        raise UnreadableFile(f"cannot read it: {outcome.strerror or outcome}") from None
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


def is_model_name(name: str) -> bool:
    return NAME_PATTERN.fullmatch(name) is not None and name not in (".", "..")


def version_number(folder_name: str) -> int | None:
    """The version a folder name stands for, or None when it is not a version folder."""
    if folder_name.isascii() and folder_name.isdigit() and len(folder_name) <= MAX_VERSION_DIGITS:
        return int(folder_name) or None
    return None


def model_path(model_dir: Path, name: str, version: int) -> Path:
    return model_dir / name / str(version) / MODEL_FILE


def fingerprint(status: os.stat_result) -> Fingerprint:
    return (status.st_ino, status.st_size, status.st_mtime_ns)


def model_folders(model_dir: Path) -> dict[str, Path]:
    """Every folder under ``model_dir`` whose name is a model name, by name (sorted)."""
    if not model_dir.is_dir():
        raise RepositoryMissing(f"model directory {model_dir} does not exist")
    return {
        entry.name: Path(entry.path)
        for entry in sorted(os.scandir(model_dir), key=lambda e: e.name)
        if is_model_name(entry.name) and entry.is_dir()
    }


def version_folders(folder: Path) -> dict[int, Path]:
    """The version folders of one model, whether or not they hold a model file yet."""
    try:
        children = list(os.scandir(folder))
    except OSError:
        return {}
    found = {}
    for child in children:
        version = version_number(child.name)
        if version is not None and child.is_dir():
            found[version] = Path(child.path)
    return dict(sorted(found.items()))


def scan_versions(folder: Path, name: str) -> dict[int, VersionFile]:
    """The versions of one model that hold a model file, with each file's fingerprint."""
    versions = {}
    for version, path in version_folders(folder).items():
        model_file = path / MODEL_FILE
        try:
            status = model_file.stat()
        except OSError:
            continue
        versions[version] = VersionFile(name, version, model_file, fingerprint(status), not_regular(status))
    return versions


def config_fingerprint(folder: Path) -> Fingerprint | None:
    """The fingerprint of ``<folder>/config.toml``, None when there is none."""
    try:
        return fingerprint((folder / CONFIG_FILE).stat())
    except OSError:
        return None


def publish_version(model_dir: Path, name: str, version: int, payload: bytes) -> Path:
    """Write ``payload`` as ``<name>/<version>/model.onnx`` atomically and durably.

    Raises :class:`FileExistsError` when that version exists (or another writer took it meanwhile).
    """
    parent = model_dir / name
    parent.mkdir(parents=True, exist_ok=True)
    final_dir = parent / str(version)
    if final_dir.exists():
        raise FileExistsError(f"{final_dir} already exists")
    staging = Path(tempfile.mkdtemp(prefix=f".{version}.partial-", dir=parent))
    try:
        with open(staging / MODEL_FILE, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(staging, 0o755)
        fsync_dir(staging)
        try:
            os.rename(staging, final_dir)  # fails if another export took this version meanwhile
        except OSError as exc:
            raise FileExistsError(f"could not create {final_dir}: {exc}") from exc
        fsync_dir(parent)
        clear_export_failure(model_dir, name)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return final_dir / MODEL_FILE


def record_export_failure(model_dir: Path, name: str, reason: str) -> None:
    """Say in the repository why ``name`` was not exported (written whole: a reader never sees half)."""
    folder = model_dir / name
    folder.mkdir(parents=True, exist_ok=True)
    record = json.dumps({"reason": reason[: MAX_FAILURE_BYTES // 2], "at": time.time()})
    descriptor, temp_name = tempfile.mkstemp(dir=folder, prefix=f".{EXPORT_FAILURE_FILE}.")
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(record)
    os.chmod(temp_name, 0o644)
    os.replace(temp_name, folder / EXPORT_FAILURE_FILE)


def clear_export_failure(model_dir: Path, name: str) -> None:
    (model_dir / name / EXPORT_FAILURE_FILE).unlink(missing_ok=True)


def read_export_failure(folder: Path) -> str | None:
    """Why the exporter could not export the model in ``folder``; None when it did (or never tried)."""
    path = folder / EXPORT_FAILURE_FILE
    if not path.exists():
        return None
    try:
        raw = read_regular_file(path, max_bytes=MAX_FAILURE_BYTES)  # a FIFO here must not hang the scan
    except UnreadableFile:
        return f"the export failed ({EXPORT_FAILURE_FILE} is unreadable)"
    try:
        reason = json.loads(raw.decode("utf-8"))["reason"]
    except (ValueError, KeyError, TypeError):
        return f"the export failed ({EXPORT_FAILURE_FILE} is unreadable)"
    return str(reason)


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable where the platform allows fsync on a directory (the
    checkpoint download cache in models/ publishes its files the same way)."""
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
