"""The service in process under its limits: body, file and pixel limits, a full queue, overload, request
timeouts, readiness while models load or fail, the default model and the API key.

Each test starts its own app (Starlette's TestClient, real lifespan) with the settings it is about,
on real exported models and real images from ../shared.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hostile import encode
from PIL import Image
from server import assert_error, link_repository, metric_value, photo, serve_in_process, wait_ready


@pytest.fixture(scope="module")
def cifar_repo(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return link_repository(model_repo, tmp_path_factory.mktemp("cifar_repo"), "resnet20")


@pytest.fixture(scope="module")
def small_repo(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return link_repository(model_repo, tmp_path_factory.mktemp("small_repo"), "resnet20", "resnet18")


def serving(client: TestClient, name: str) -> Any:
    """The version of ``name`` that unpinned requests get (its batcher and session)."""
    return client.app.state.service.manager.resolve(name)  # type: ignore[attr-defined]


def occupy_instance(client: TestClient, batcher: Any, seconds: float) -> None:
    """Make the batcher's only instance busy for ``seconds``, as a long batch would (on the app's loop)."""

    def take() -> None:
        instance = batcher._idle_instances.popleft()

        def give_back() -> None:
            batcher._idle_instances.append(instance)
            batcher._instance_free.set()

        asyncio.get_running_loop().call_later(seconds, give_back)

    client.portal.call(take)  # type: ignore[union-attr]


def jpeg(width: int, height: int) -> bytes:
    return encode(Image.new("RGB", (width, height), (10, 200, 30)), "JPEG")


def test_size_limits(cifar_repo: Path) -> None:
    small_jpeg = jpeg(64, 64)
    with serve_in_process(cifar_repo, max_upload_bytes=2_000_000, max_files=4, max_image_pixels=1_000_000) as client:
        big = b"\xff" * 2_000_001
        assert_error(
            client.post("/predict?model=resnet20", content=big, headers={"content-type": "image/jpeg"}),
            413, "upload_too_large",
        )

        def chunked() -> Iterator[bytes]:  # no Content-Length: the limit is enforced while counting chunks
            for _ in range(3000):
                yield b"\x00" * 1000

        assert_error(
            client.post("/predict?model=resnet20", content=chunked(), headers={"content-type": "image/jpeg"}),
            413, "upload_too_large",
        )
        too_many = [("files", (f"{i}.jpg", small_jpeg)) for i in range(5)]
        assert_error(client.post("/predict?model=resnet20", files=too_many), 413, "too_many_files")
        assert client.post("/predict?model=resnet20", files=too_many[:4]).status_code == 200
        assert_error(
            client.post("/predict?model=resnet20", files={"file": ("wide.jpg", jpeg(1001, 1000))}),
            413, "image_too_large", mentions="wide.jpg",
        )
        bomb = io.BytesIO()
        Image.new("L", (8000, 8000)).save(bomb, "PNG")  # 64 MP in ~60 KB
        assert_error(
            client.post("/predict?model=resnet20", files={"file": ("bomb.png", bomb.getvalue())}),
            413, "image_too_large", mentions="bomb.png",
        )
        assert metric_value(client, "resnet_serve_rejections_total", model="resnet20", reason="image_too_large") == 2


def test_queue_full_gets_503_with_retry_after(cifar_repo: Path) -> None:
    with serve_in_process(cifar_repo, max_queue_size=4, max_files=4) as client:
        batcher = serving(client, "resnet20").batcher
        batcher.reserve(4)  # four images admitted and decoding: the queue is at its limit
        try:
            response = client.post("/predict?model=resnet20", files={"file": ("a.jpg", photo("chelsea.jpg"))})
            assert_error(response, 503, "queue_full")
            assert response.headers["retry-after"] == "1"
        finally:
            batcher.release(4)
        assert client.post("/predict?model=resnet20", files={"file": ("a.jpg", photo("chelsea.jpg"))}).status_code == 200


def test_overload_gets_only_200_or_503(small_repo: Path) -> None:
    """A flood against a one-image queue: some are refused with 503, every admitted one succeeds."""
    with serve_in_process(small_repo, max_queue_size=1, max_files=1, max_batch_size=1) as client:
        data = photo("astronaut.jpg")

        def send(_: int) -> int:
            response = client.post("/predict?model=resnet18", files={"file": ("a.jpg", data)})
            if response.status_code == 503:
                assert response.json()["error"]["code"] == "queue_full" and "retry-after" in response.headers
            return response.status_code

        with ThreadPoolExecutor(16) as pool:
            statuses = list(pool.map(send, range(48)))
        assert set(statuses) <= {200, 503} and 200 in statuses and 503 in statuses, statuses


def test_request_timeout_gets_504_and_the_batcher_recovers(cifar_repo: Path) -> None:
    with serve_in_process(cifar_repo, request_timeout_s=0.5) as client:
        batcher = serving(client, "resnet20").batcher
        images_before = metric_value(client, "resnet_serve_images_total", model="resnet20")
        occupy_instance(client, batcher, 1.5)  # the only inference instance is busy past the timeout
        started = time.monotonic()
        response = client.post("/predict?model=resnet20", files={"file": ("a.jpg", photo("chelsea.jpg"))})
        assert_error(response, 504, "timeout")
        assert time.monotonic() - started < 1.4
        time.sleep(1.2)
        assert client.post("/predict?model=resnet20", files={"file": ("a.jpg", photo("chelsea.jpg"))}).status_code == 200
        # The timed-out image was dropped before inference: only the second request's image ran.
        assert metric_value(client, "resnet_serve_images_total", model="resnet20") == images_before + 1


# --- readiness and configuration -----------------------------------------------------------------


def test_not_ready_until_models_are_warm(small_repo: Path) -> None:
    with serve_in_process(small_repo, ready=False) as client:
        assert client.get("/health/live").status_code == 200
        first = client.get("/health/ready")
        assert first.status_code == 503 and first.json()["error"]["code"] == "not_ready"
        assert "loading" in first.json()["reason"]
        body = wait_ready(client)
        assert all(status == "ready" for status in body["models"].values())
        manager = client.app.state.service.manager  # type: ignore[attr-defined]
        assert all(version.model.warmup_seconds > 0 for version in manager.served_versions())
        assert serving(client, "resnet18").model.buckets == (1, 2, 4, 8, 16, 32)


def test_a_broken_model_keeps_the_service_not_ready_but_others_serve(model_repo: Path, tmp_path: Path) -> None:
    repo = link_repository(model_repo, tmp_path / "repo", "resnet20")
    (repo / "broken" / "3").mkdir(parents=True)
    (repo / "broken" / "3" / "model.onnx").write_bytes(b"this is not an onnx file")
    with serve_in_process(repo, ready=False) as client:
        deadline = time.monotonic() + 60
        while "loading" in (ready := client.get("/health/ready")).json()["reason"]:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert ready.status_code == 503 and "broken" in ready.json()["reason"]
        assert client.post("/predict?model=resnet20", files={"file": ("a.jpg", photo("chelsea.jpg"))}).status_code == 200
        assert_error(client.post("/predict?model=broken", files={"file": ("a.jpg", photo("chelsea.jpg"))}), 503, "model_unavailable")


def test_the_only_model_is_the_default_and_highest_version_wins(model_repo: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    for version in ("1", "7", "latest"):
        (repo / "cifar" / version).mkdir(parents=True)
    source = model_repo / "resnet20" / "1" / "model.onnx"
    (repo / "cifar" / "1" / "model.onnx").write_bytes(b"old and broken")
    (repo / "cifar" / "7" / "model.onnx").write_bytes(source.read_bytes())
    with serve_in_process(repo) as client:
        body = client.post("/predict", files={"file": ("a.jpg", photo("chelsea.jpg"))}).json()
        assert body["model"] == "cifar" and body["version"] == 7
        assert client.get("/models").json()["default_model"] == "cifar"


def test_api_key_protects_predict_and_models_but_not_probes(model_repo: Path, tmp_path: Path) -> None:
    repo = link_repository(model_repo, tmp_path / "repo", "resnet20")
    with serve_in_process(repo, api_key="s3cret") as client:
        assert client.get("/health/ready").status_code == 200
        assert_error(client.get("/models"), 401, "unauthorized")
        assert_error(client.post("/predict", files={"file": ("a.jpg", photo("chelsea.jpg"))}), 401, "unauthorized")
        assert_error(
            client.post("/predict", files={"file": ("a", photo("chelsea.jpg"))}, headers={"authorization": "Bearer nope"}),
            401, "unauthorized",
        )
        authorised = {"authorization": "Bearer s3cret"}
        assert client.get("/models", headers=authorised).status_code == 200
        assert client.post("/predict", files={"file": ("a", photo("chelsea.jpg"))}, headers=authorised).status_code == 200
