"""Real server processes for the load tests: start on a free 127.0.0.1 port, wait until ready, stop."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path

import httpx

from benchmarks.workload import REPO_ROOT


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerFailed(RuntimeError):
    """The server process exited or never became ready; the message carries its log tail."""


@contextmanager
def running_server(
    argv: list[str], env: Mapping[str, str], ready_url: str, *, log_path: Path, timeout_s: float = 180.0,
    cwd: Path = REPO_ROOT,
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``argv`` until the block ends; ``ready_url`` must answer 200 before the block starts.

    The process leads its own session; stopping it stops that whole process group, so servers that
    fork helpers (Triton's server and backend stubs, TorchServe's Java frontend and Python workers)
    leave nothing behind.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            argv, cwd=cwd, env={**os.environ, **env}, stdout=log_file, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            _wait_ready(process, ready_url, timeout_s, log_path)
            yield process
        finally:
            _stop(process)


def _wait_ready(process: subprocess.Popen[bytes], url: str, timeout_s: float, log_path: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServerFailed(f"server exited with {process.returncode}:\n{_tail(log_path)}")
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise ServerFailed(f"server not ready after {timeout_s:.0f} s:\n{_tail(log_path)}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    _stop_group(process.pid)


@contextmanager
def paused(pgid: int | None) -> Iterator[bool]:
    """Stop every process of group ``pgid`` (SIGSTOP) for the block, then let it go on (SIGCONT); the
    block gets whether the group was stopped.

    The peer benchmark freezes the idle server while the other is measured: an idle LitServe took
    0.19-0.22 of this box's two cores during the service's slices (its worker polls), the idle
    service none; frozen, neither can take the other's cores. SIGCONT is sent however the block ends
    (a harness killed by SIGKILL leaves the group stopped, as it would leave it running before)."""
    if pgid is None:
        yield False
        return
    try:
        os.killpg(pgid, signal.SIGSTOP)
    except (ProcessLookupError, PermissionError):
        yield False
        return
    try:
        yield True
    finally:
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGCONT)


def _stop_group(pgid: int) -> None:
    """TERM, then KILL, whatever is left in the server's own process group (its helpers)."""
    for sig, grace_s in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            return
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except (ProcessLookupError, PermissionError):
                return
            time.sleep(0.1)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def python() -> str:
    return sys.executable
