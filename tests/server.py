"""Run the real service (``python -m service``) as a uvicorn process on 127.0.0.1 for tests.

Usage::

    with run_server(model_repo, "--max-queue-size", "8", wait="ready") as server:
        httpx.get(server.url("/health/ready"))
        server.terminate()          # SIGTERM, as an orchestrator would
        server.wait(timeout=30)

The process gets a free port, logs to a file (shown when startup fails) and is always stopped
(SIGTERM, then SIGKILL) when the block exits.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]


def link_repository(source: Path, target: Path, *names: str) -> Path:
    """A model repository with only ``names`` from ``source`` (symlinks; version 1): faster startups."""
    for name in names:
        (target / name / "1").mkdir(parents=True)
        (target / name / "1" / "model.onnx").symlink_to(source / name / "1" / "model.onnx")
    return target


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


def metric_value(server: RunningServer, name: str, **labels: str) -> float:
    """The sum of a Prometheus series from the server's /metrics over the samples matching ``labels``."""
    text = httpx.get(server.url("/metrics"), timeout=10).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


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
    log_file = tempfile.NamedTemporaryFile(prefix="resnet-serve-", suffix=".log", delete=False)
    if "--grpc-port" not in args:
        args = ("--grpc-port", "0", *args)  # several servers coexist: no gRPC listener unless a test asks
    command = [
        sys.executable, "-m", "service",
        "--model-dir", str(model_dir), "--host", "127.0.0.1", "--port", str(port), "--no-access-log", *args,
    ]
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
        log_file.close()
        Path(log_file.name).unlink(missing_ok=True)


@dataclass
class GrpcServer:
    """A running server with a channel and tritonclient's stock stub on its V2 gRPC port."""

    server: RunningServer
    grpc_port: int
    max_message_bytes: int | None = None

    def __post_init__(self) -> None:
        import grpc  # only the gRPC tests pay for these imports
        from tritonclient.grpc import service_pb2_grpc

        options = []
        if self.max_message_bytes is not None:
            options = [("grpc.max_send_message_length", self.max_message_bytes),
                       ("grpc.max_receive_message_length", self.max_message_bytes)]
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.grpc_port}", options=options)
        self.stub = service_pb2_grpc.GRPCInferenceServiceStub(self.channel)


@contextmanager
def run_grpc_server(
    model_repo: Path, workdir: Path, *args: str, env: Mapping[str, str] | None = None,
    max_message_bytes: int | None = None, models: tuple[str, ...] = ("resnet20",),
) -> Iterator[GrpcServer]:
    """:func:`run_server` on ``models`` linked from ``model_repo`` into ``workdir``, with gRPC on a free port."""
    repo = link_repository(model_repo, workdir, *models)
    port = free_port()
    with run_server(repo, "--grpc-port", str(port), *args, env=env) as server:
        running = GrpcServer(server, port, max_message_bytes)
        try:
            yield running
        finally:
            running.channel.close()


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
