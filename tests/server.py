"""The real service for tests: started as ``python -m service`` on 127.0.0.1, or in process, and read back.

Usage::

    with run_server(model_repo, "--max-queue-size", "8", wait="ready") as server:
        httpx.get(server.url("/health/ready"))
        server.terminate()          # SIGTERM, as an orchestrator would
        server.wait(timeout=30)

    keyed_server = server_fixture(env={"RESNET_SERVE_API_KEY": KEY})   # a module-scoped fixture

A process gets a free port, logs to a file (shown when startup fails) and is always stopped (SIGTERM,
then SIGKILL) when the block exits. The raw HTTP client and the load generators are in ``load.py``.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import httpx
import pytest
from conftest import shared_path

if TYPE_CHECKING:
    from fastapi.testclient import TestClient

REPO_ROOT = Path(__file__).resolve().parents[1]
#: One sample of the Prometheus text format: name, optional {labels}, value.
SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][\w:]*)(?:\{(?P<labels>.*)\})? (?P<value>\S+)")
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def link_repository(source: Path, target: Path, *names: str) -> Path:
    """A model repository with only ``names`` from ``source`` (symlinks; version 1): faster startups."""
    for name in names:
        link_model(source, name, target)
    return target


def link_model(source: Path, name: str, target: Path, as_name: str | None = None) -> Path:
    """``<target>/<as_name or name>/1/model.onnx``, a symlink to ``source``'s version 1 of ``name``."""
    folder = target / (as_name or name) / "1"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.onnx").symlink_to(source / name / "1" / "model.onnx")
    return folder / "model.onnx"


def photo(name: str) -> bytes:
    """A real photo from ../shared/data/photos (the test skips where it is absent)."""
    return shared_path("data", "photos", name).read_bytes()


def free_port() -> int:
    """A TCP port nobody listens on right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class RunningServer:
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return self.base_url + path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def terminate(self) -> None:
        """Send SIGTERM (graceful shutdown)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> int:
        return self.process.wait(timeout=timeout)

    def alive(self) -> bool:
        return self.process.poll() is None


def metric_sum(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of series ``name`` in Prometheus text whose labels include ``labels`` (0 if none)."""
    total = 0.0
    for line in text.splitlines():
        sample = SAMPLE.match(line)
        if sample is None or sample["name"] != name:
            continue
        found = dict(LABEL.findall(sample["labels"] or ""))
        if all(found.get(key) == value for key, value in labels.items()):
            total += float(sample["value"])
    return total


def metric_value(server: RunningServer | TestClient, name: str, **labels: str) -> float:
    """:func:`metric_sum` over /metrics of a server process or of an in-process app."""
    if isinstance(server, RunningServer):
        return metric_sum(httpx.get(server.url("/metrics"), timeout=10).text, name, **labels)
    return metric_sum(server.get("/metrics").text, name, **labels)


def assert_error(response: httpx.Response, status: int, code: str, *, mentions: str | None = None) -> None:
    """``response`` is /predict's ``{"error": {"code", "message"}}`` with this status and stable code."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) >= {"error"} and body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    if mentions is not None:
        assert mentions in body["error"]["message"], body


def wait_until(predicate: Callable[[], object], timeout_s: float, what: str) -> float:
    """Poll ``predicate`` every 50 ms until it is true: the seconds that took (AssertionError after ``timeout_s``)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if predicate():
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"{what} did not happen within {timeout_s} s")


def _wait_for(server: RunningServer, path: str, deadline: float) -> None:
    last = "no answer yet"
    while time.monotonic() < deadline:
        if not server.alive():
            raise RuntimeError(f"service exited with {server.process.returncode} before {path} answered:\n{server.log()}")
        try:
            response = httpx.get(server.url(path), timeout=2.0)
            if response.status_code == 200:
                return
            last = f"{response.status_code} {response.text[:300]}"
        except httpx.TransportError as exc:
            last = repr(exc)
        time.sleep(0.05)
    raise TimeoutError(f"{path} not 200 in time (last: {last}):\n{server.log()}")


@contextmanager
def run_server(
    model_dir: Path,
    *args: str,
    env: Mapping[str, str] | None = None,
    wait: Literal["ready", "live", "none"] = "ready",
    timeout_s: float = 180.0,
) -> Iterator[RunningServer]:
    """Start ``python -m service`` on a free port and wait until ``/health/<wait>`` answers 200.

    ``args`` are extra CLI flags; ``env`` adds variables (RESNET_SERVE_* from the caller's own
    environment are dropped so the test controls every setting).
    """
    port = free_port()
    child_env = {key: value for key, value in os.environ.items() if not key.startswith("RESNET_SERVE_")}
    child_env["PYTHONUNBUFFERED"] = "1"
    child_env.update(env or {})
    if "--grpc-port" not in args:
        args = ("--grpc-port", "0", *args)  # several servers coexist: no gRPC listener unless a test asks
    command = [
        sys.executable, "-m", "service",
        "--model-dir", str(model_dir), "--host", "127.0.0.1", "--port", str(port), "--no-access-log", *args,
    ]
    with tempfile.NamedTemporaryFile(prefix="resnet-serve-", suffix=".log", delete=False) as log_file:
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=child_env, stdout=log_file, stderr=subprocess.STDOUT)
    server = RunningServer(process, port, Path(log_file.name))
    try:
        if wait != "none":
            _wait_for(server, f"/health/{wait}", time.monotonic() + timeout_s)
        yield server
    finally:
        if server.alive():
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        server.log_path.unlink(missing_ok=True)


@dataclass
class GrpcServer:
    """A running server with its V2 gRPC port: a channel and tritonclient's stock stub on it."""

    server: RunningServer
    grpc_port: int
    max_message_bytes: int | None = None
    channel: Any = field(init=False)
    stub: Any = field(init=False)

    def __post_init__(self) -> None:
        import grpc  # only the gRPC tests pay for these imports
        from tritonclient.grpc import service_pb2_grpc

        options = []
        if self.max_message_bytes is not None:
            options = [("grpc.max_send_message_length", self.max_message_bytes),
                       ("grpc.max_receive_message_length", self.max_message_bytes)]
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.grpc_port}", options=options)
        self.stub = service_pb2_grpc.GRPCInferenceServiceStub(self.channel)

    def address(self, transport: str) -> str:
        """host:port of the REST door (``"http"``, any case) or of the gRPC door (anything else)."""
        return f"127.0.0.1:{self.server.port if transport.lower() == 'http' else self.grpc_port}"

    def client(self, transport: str) -> Any:
        """tritonclient's own InferenceServerClient for ``"http"`` or ``"grpc"``."""
        if transport.lower() == "http":
            import tritonclient.http as module
        else:
            import tritonclient.grpc as module  # type: ignore[no-redef]
        return module.InferenceServerClient(self.address(transport))


@contextmanager
def run_grpc_server(
    model_dir: Path, *args: str, env: Mapping[str, str] | None = None, max_message_bytes: int | None = None
) -> Iterator[GrpcServer]:
    """:func:`run_server` with the V2 gRPC door on a free port."""
    port = free_port()
    with run_server(model_dir, "--grpc-port", str(port), *args, env=env) as server:
        running = GrpcServer(server, port, max_message_bytes)
        try:
            yield running
        finally:
            running.channel.close()


def server_fixture(*args: str, models: Sequence[str] = ("resnet20",), env: Mapping[str, str] | None = None) -> Any:
    """A module-scoped fixture (named by the variable it is assigned to): a :class:`RunningServer` with
    ``args`` on ``models`` linked from the session's ``model_repo``."""

    @pytest.fixture(scope="module")
    def running(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
        repo = link_repository(model_repo, tmp_path_factory.mktemp("repository"), *models)
        with run_server(repo, *args, env=env) as server:
            yield server

    return running


def grpc_server_fixture(
    *args: str, models: Sequence[str] = ("resnet20",), env: Mapping[str, str] | None = None,
    max_message_bytes: int | None = None,
) -> Any:
    """:func:`server_fixture` with the V2 gRPC door: the fixture is a :class:`GrpcServer`."""

    @pytest.fixture(scope="module")
    def running(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GrpcServer]:
        repo = link_repository(model_repo, tmp_path_factory.mktemp("repository"), *models)
        with run_grpc_server(repo, *args, env=env, max_message_bytes=max_message_bytes) as server:
            yield server

    return running


def wait_ready(client: TestClient, timeout_s: float = 180.0) -> dict[str, Any]:
    """Poll /health/ready of an in-process app until it is 200: its JSON."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        response = client.get("/health/ready")
        if response.status_code == 200:
            return dict(response.json())
        time.sleep(0.05)
    raise AssertionError(f"not ready in {timeout_s} s: {client.get('/health/ready').json()}")


@contextmanager
def serve_in_process(model_dir: Path, *, ready: bool = True, **settings: Any) -> Iterator[TestClient]:
    """The real app with its lifespan running under Starlette's TestClient; ``settings`` override the defaults."""
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import Settings

    settings.setdefault("grpc_port", 0)  # in-process apps coexist: no gRPC listener unless a test asks
    app = create_app(Settings(model_dir=model_dir, **settings))
    with TestClient(app, raise_server_exceptions=False) as client:
        if ready:
            wait_ready(client)
        yield client


def worker_pids(server: RunningServer) -> list[int]:
    """The worker processes of a ``--workers N`` server: the children of its parent process."""
    path = Path(f"/proc/{server.process.pid}/task/{server.process.pid}/children")
    return [int(pid) for pid in path.read_text().split()] if path.exists() else []


def connection_owners(port: int, pids: list[int]) -> dict[int, int]:
    """{client port: server pid} for every established connection to ``port`` that one of ``pids`` holds.

    From the kernel's own tables: the server end of each connection in /proc/net/tcp{,6} (its inode),
    and which process has that socket open (/proc/<pid>/fd).
    """
    inodes: dict[str, int] = {}
    for table in (Path("/proc/net/tcp"), Path("/proc/net/tcp6")):
        for row in table.read_text().splitlines()[1:] if table.exists() else ():
            fields = row.split()
            local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
            if state == "01" and int(local.rsplit(":", 1)[1], 16) == port:
                inodes[inode] = int(remote.rsplit(":", 1)[1], 16)
    owners = {}
    for pid in pids:
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(fd)
            except OSError:  # closed meanwhile
                continue
            if link.startswith("socket:[") and link[8:-1] in inodes:
                owners[inodes[link[8:-1]]] = pid
    return owners
