"""What the worker processes of one service share: a run directory, and how a worker learns its place.

The parent creates the directory (under ``TMPDIR``) and removes it on exit. In it:

- ``metrics/``: prometheus_client's multiprocess files (``PROMETHEUS_MULTIPROC_DIR`` of every worker);
- ``workers/<slot>.json``: each worker's published state (readiness and why, what it serves, the
  explicit-control requests it applied), replaced atomically; the parent writes a slot whose worker died;
- ``control.json``: the explicit load/unload requests every worker must apply (see
  :mod:`service.workers.link`), changed under ``control.lock``.

Only the standard library here: the parent imports this module and nothing that loads models.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

#: The environment variable through which the parent tells a worker process who it is.
WORKER_ENV = "_RESNET_SERVE_WORKER"

Status = dict[str, Any]
Control = dict[str, Any]


@dataclass(frozen=True)
class WorkerSpec:
    """One worker process's place: its slot (1..workers), the run directory, its listening sockets."""

    slot: int
    workers: int
    run_dir: str
    fds: tuple[int, ...]
    parent: int
    #: Join the port only once the models are loaded: a sibling serves it meanwhile.
    late: bool
    #: How the worker this one replaces ended ("SIGKILL", "exit 1"), None for the first of its slot.
    replaces: str | None = None

    def to_env(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_environment(cls) -> WorkerSpec | None:
        raw = os.environ.get(WORKER_ENV)
        if not raw:
            return None
        fields = json.loads(raw)
        fields["fds"] = tuple(fields["fds"])
        return cls(**fields)


@dataclass(frozen=True)
class RunDir:
    root: Path

    @classmethod
    def create(cls) -> RunDir:
        run = cls(Path(tempfile.mkdtemp(prefix="resnet-serve-")))
        run.metrics.mkdir()
        (run.root / "workers").mkdir()
        return run

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    @property
    def metrics(self) -> Path:
        return self.root / "metrics"

    def status_path(self, slot: int) -> Path:
        return self.root / "workers" / f"{slot}.json"

    @property
    def control_path(self) -> Path:
        return self.root / "control.json"

    def write_status(self, slot: int, status: Status) -> None:
        _write_json(self.status_path(slot), status)

    def read_status(self, slot: int) -> Status | None:
        return _read_json(self.status_path(slot))

    def read_control(self) -> Control:
        return _read_json(self.control_path) or {"generation": 0, "models": {}}

    def control_stamp(self) -> int:
        """Changes whenever ``control.json`` is replaced (cheap enough to check several times a second)."""
        try:
            return os.stat(self.control_path).st_mtime_ns
        except FileNotFoundError:
            return 0

    def update_control(self, change: Callable[[Control], None]) -> Control:
        """Read, ``change`` and write ``control.json`` under an exclusive lock (workers may race)."""
        with self._locked():
            control = self.read_control()
            change(control)
            _write_json(self.control_path, control)
        return control

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.root / "control.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


def alive(pid: object) -> bool:
    """Whether ``pid`` names a running process (a zombie counts until its parent reaps it)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _write_json(path: Path, document: object) -> None:
    """Write whole or not at all: readers never see half a file."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    temporary.write_text(json.dumps(document, sort_keys=True))
    os.replace(temporary, path)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
