"""The service as a real uvicorn process on 127.0.0.1: CLI/env settings, limits enforced on the wire, SIGTERM."""

from __future__ import annotations

import json
import select
import socket
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
from server import RunningServer, link_repository, metric_value, photo, run_server, server_fixture

#: Settings from flags and from the environment (the flag wins where both are given).
configured_server = server_fixture(
    "--max-batch-size", "8", "--max-upload-bytes", "1000000", "--log-format", "json",
    env={"RESNET_SERVE_DEFAULT_TOP_K": "3", "RESNET_SERVE_MAX_BATCH_SIZE": "16"},
    models=("resnet20", "resnet18"),
)


def test_flags_and_environment_configure_the_process(configured_server: RunningServer) -> None:
    models = {m["name"]: m for m in httpx.get(configured_server.url("/models")).json()["models"]}
    assert models["resnet18"]["batching"]["max_batch_size"] == 8  # the flag beats the environment
    response = httpx.post(configured_server.url("/predict?model=resnet18"), files={"file": ("coffee.jpg", photo("coffee.jpg"))})
    assert response.status_code == 200 and len(response.json()["predictions"]) == 3  # from the environment
    records = [json.loads(line) for line in configured_server.log().splitlines() if line.startswith("{")]
    assert any("ready: serving" in record["message"] for record in records), configured_server.log()


def test_upload_limit_is_enforced_while_the_body_streams(configured_server: RunningServer) -> None:
    """A chunked body with no end in sight gets 413 once 1 MB has arrived, not when it finishes."""
    with socket.create_connection(("127.0.0.1", configured_server.port), timeout=10) as connection:
        connection.sendall(
            b"POST /predict?model=resnet20 HTTP/1.1\r\nHost: test\r\nContent-Type: image/jpeg\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        chunk = b"10000\r\n" + b"\xff" * 0x10000 + b"\r\n"
        sent = 0
        answer = b""
        while sent < 50_000_000:  # the body never ends by itself: only the server's 413 stops it
            readable, _, _ = select.select([connection], [], [], 0.02)
            if readable:
                answer = connection.recv(65536)
                break
            try:
                connection.sendall(chunk)
            except OSError:
                break
            sent += 0x10000
        connection.settimeout(10)
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            more = connection.recv(65536)
            if not more:
                break
            answer += more
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), answer[:300]
    assert json.loads(body)["error"]["code"] == "upload_too_large"
    assert sent < 4_000_000, f"the server read {sent} bytes before refusing"


def test_declared_oversize_is_refused_before_reading(configured_server: RunningServer) -> None:
    with socket.create_connection(("127.0.0.1", configured_server.port), timeout=10) as connection:
        connection.sendall(
            b"POST /predict?model=resnet20 HTTP/1.1\r\nHost: test\r\nContent-Type: image/jpeg\r\n"
            b"Content-Length: 5000000000\r\n\r\n"
        )
        answer = connection.recv(65536)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:300]


def test_sigterm_under_load_finishes_every_accepted_request(model_repo: Path, tmp_path: Path) -> None:
    photos = [photo(name) for name in ("astronaut.jpg", "chelsea.jpg", "coffee.jpg")]
    repo = link_repository(model_repo, tmp_path / "repo", "resnet18")
    with run_server(repo, "--shutdown-grace-s", "60", "--max-queue-size", "256") as server:
        statuses: list[int | str] = []
        lock = threading.Lock()

        def client(index: int) -> None:
            files = [("files", (f"{index}-{n}.jpg", data)) for n, data in enumerate(photos)]
            try:
                response = httpx.post(server.url("/predict?model=resnet18"), files=files, timeout=60)
                outcome: int | str = response.status_code
                if response.status_code == 200:
                    assert len(response.json()["results"]) == 3
            except httpx.HTTPError as exc:
                outcome = repr(exc)
            with lock:
                statuses.append(outcome)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(24)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 30  # wait until the server holds work in its queue
        while _work_started(server) == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.2)  # every client has connected and sent its request by now
        with lock:
            assert len(statuses) < len(threads), "the load finished before SIGTERM; nothing was tested"
        server.terminate()
        try:
            readiness: int | str = httpx.get(server.url("/health/ready"), timeout=5).status_code
        except httpx.TransportError as exc:  # uvicorn may already have closed its listening socket
            readiness = repr(exc)
        assert readiness != 200, "still ready after SIGTERM"
        for thread in threads:
            thread.join(timeout=90)
        try:
            code = server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"did not exit within the grace period:\n{server.log()}")
        log = server.log()
    assert statuses == [200] * len(threads), (statuses, log[-3000:])
    assert code in (0, -15), log[-3000:]
    assert "SIGTERM" in log


def _work_started(server: RunningServer) -> float:
    """Images queued plus batches run so far: non-zero once the server holds or did work."""
    return metric_value(server, "resnet_serve_queue_depth") + metric_value(server, "resnet_serve_batch_size_count")
