"""The service in process (Starlette's TestClient drives the real app and lifespan) on real exported models.

Everything here runs real onnxruntime sessions on the `model_repo` fixture's models (CIFAR ResNets
with their trained weights, resnet18 with random weights) and real images from ../shared.
"""

from __future__ import annotations

import asyncio
import io
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import CIFAR_SAMPLE_ACCURACY, cifar_sample, shared_path
from fastapi.testclient import TestClient
from PIL import Image
from server import link_repository

from service.app import create_app
from service.settings import Settings

PHOTOS = (
    "astronaut.jpg", "chelsea.jpg", "chelsea.png", "coffee.jpg", "rocket.jpg", "motorcycle_left.jpg",
    "camera-grayscale.png", "logo-rgba.png",
)


def wait_ready(client: TestClient, timeout_s: float = 180.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        response = client.get("/health/ready")
        if response.status_code == 200:
            return response.json()
        time.sleep(0.05)
    raise AssertionError(f"not ready in {timeout_s} s: {client.get('/health/ready').json()}")


@contextmanager
def service(model_dir: Path, *, ready: bool = True, **settings: Any) -> Iterator[TestClient]:
    """The real app with its lifespan running; ``settings`` override the defaults."""
    settings.setdefault("grpc_port", 0)  # in-process apps coexist: no gRPC listener unless a test asks
    app = create_app(Settings(model_dir=model_dir, **settings))
    with TestClient(app, raise_server_exceptions=False) as client:
        if ready:
            wait_ready(client)
        yield client


@pytest.fixture(scope="module")
def client(model_repo: Path) -> Iterator[TestClient]:
    with service(model_repo, max_batch_delay_ms=10) as client:
        yield client


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


def photo(name: str) -> bytes:
    return shared_path("data", "photos", name).read_bytes()


def files(*names: str) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("files", (name, photo(name), "application/octet-stream")) for name in names]


def metric(client: TestClient, name: str, **labels: str) -> float:
    """The value of one Prometheus sample (0 when absent)."""
    wanted = {key: value for key, value in labels.items()}
    for line in client.get("/metrics").text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0])) if "{" in line else {}
        if all(found.get(key) == value for key, value in wanted.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def assert_error(response: Any, status: int, code: str, *, mentions: str | None = None) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) >= {"error"} and body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    if mentions is not None:
        assert mentions in body["error"]["message"], body


# --- correctness -------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", sorted(CIFAR_SAMPLE_ACCURACY))
def test_cifar_sample_accuracy_through_http(client: TestClient, arch: str) -> None:
    """The accuracy table of ../shared/README.md, reproduced through POST /predict (25 images a request)."""
    sample = cifar_sample()
    assert len(sample) == 1000
    chunks = [sample[start : start + 25] for start in range(0, len(sample), 25)]

    def classify(chunk: list[tuple[Path, int]]) -> int:
        response = client.post(
            f"/predict?model={arch}&top_k=1",
            files=[("files", (path.name, path.read_bytes(), "image/jpeg")) for path, _ in chunk],
        )
        assert response.status_code == 200, response.text
        results = response.json()["results"]
        assert [r["filename"] for r in results] == [path.name for path, _ in chunk]
        return sum(r["predictions"][0]["index"] == label for r, (_, label) in zip(results, chunk))

    with ThreadPoolExecutor(4) as pool:  # 4 x 25 images in flight stay within the queue of 128
        correct = sum(pool.map(classify, chunks))
    accuracy = 100.0 * correct / len(sample)
    assert abs(accuracy - CIFAR_SAMPLE_ACCURACY[arch]) <= 0.1, f"{arch}: {accuracy:.1f}%"


def test_single_image_response_shape_and_order(client: TestClient) -> None:
    response = client.post("/predict?model=resnet18", files={"file": ("chelsea.jpg", photo("chelsea.jpg"), "image/jpeg")})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "resnet18" and body["version"] == 1 and set(body) == {"model", "version", "predictions"}
    predictions = body["predictions"]
    assert len(predictions) == 5  # DEFAULT_TOP_K
    scores = [p["score"] for p in predictions]
    assert scores == sorted(scores, reverse=True) and all(0.0 <= s <= 1.0 for s in scores)
    labels = shared_path("labels", "imagenet1k.txt").read_text().splitlines()
    assert all(labels[p["index"]] == p["label"] for p in predictions)

    everything = client.post("/predict?model=resnet18&top_k=1000", files={"file": ("c", photo("chelsea.jpg"))}).json()
    assert len(everything["predictions"]) == 1000
    assert abs(sum(p["score"] for p in everything["predictions"]) - 1.0) < 1e-3
    assert everything["predictions"][:5] == predictions

    raw = client.post("/predict?model=resnet18", content=photo("chelsea.jpg"), headers={"content-type": "image/jpeg"})
    assert raw.status_code == 200 and raw.json()["predictions"] == predictions


def test_several_images_keep_request_order(client: TestClient) -> None:
    response = client.post("/predict?model=resnet18&top_k=3", files=files(*PHOTOS))
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["filename"] for r in results] == list(PHOTOS)
    for name, result in zip(PHOTOS, results):
        alone = client.post("/predict?model=resnet18&top_k=3", files={"file": (name, photo(name))}).json()
        assert [p["index"] for p in result["predictions"]] == [p["index"] for p in alone["predictions"]]
        assert np.allclose([p["score"] for p in result["predictions"]], [p["score"] for p in alone["predictions"]], atol=1e-5)


def test_concurrent_requests_are_batched_and_answers_match_single_requests(client: TestClient) -> None:
    """Simultaneous one-image requests share batches, and each answer equals the one-at-a-time answer."""
    cifar = [path for path, _ in cifar_sample()[::25]]  # 40 images across all classes
    alone = {}
    for path in cifar:
        response = client.post("/predict?model=resnet56&top_k=3", files={"file": (path.name, path.read_bytes())})
        alone[path] = response.json()["predictions"]
    batches_before = metric(client, "resnet_serve_batch_size_count", model="resnet56")
    singles_before = metric(client, "resnet_serve_batch_size_bucket", model="resnet56", le="1.0")

    def send(path: Path) -> list[dict[str, Any]]:
        response = client.post("/predict?model=resnet56&top_k=3", files={"file": (path.name, path.read_bytes())})
        assert response.status_code == 200, response.text
        return response.json()["predictions"]

    with ThreadPoolExecutor(16) as pool:
        together = dict(zip(cifar, pool.map(send, cifar)))
    batches = metric(client, "resnet_serve_batch_size_count", model="resnet56") - batches_before
    singles = metric(client, "resnet_serve_batch_size_bucket", model="resnet56", le="1.0") - singles_before
    assert batches < len(cifar), "no request shared a batch"
    assert singles < batches, "every batch held a single image"
    for path in cifar:
        assert [p["index"] for p in together[path]] == [p["index"] for p in alone[path]], path
        assert np.allclose([p["score"] for p in together[path]], [p["score"] for p in alone[path]], atol=1e-5)


# --- introspection -----------------------------------------------------------------------------


def test_health_models_metrics_and_docs(client: TestClient) -> None:
    assert client.get("/health/live").json() == {"status": "alive"}
    ready = client.get("/health/ready")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    assert set(ready.json()["models"]) == {"resnet18", *CIFAR_SAMPLE_ACCURACY}

    models = {m["name"]: m for m in client.get("/models").json()["models"]}
    assert set(models) == {"resnet18", *CIFAR_SAMPLE_ACCURACY}
    resnet18, resnet20 = models["resnet18"], models["resnet20"]
    assert resnet18["num_classes"] == 1000 and resnet18["input_size"] == [224, 224, 3]
    assert resnet20["num_classes"] == 10 and resnet20["input_size"] == [32, 32, 3]
    assert resnet20["architecture"] == "resnet20" and resnet20["version"] == 1
    assert resnet18["preprocessing"]["crop_size"] == 224
    assert "CPUExecutionProvider" in resnet18["active_providers"] and resnet18["gpu_fallback"] is False
    assert resnet18["nodes_per_provider"]["CPUExecutionProvider"] > 20 and resnet18["provider_notes"] == []
    assert resnet18["batching"]["max_batch_size"] == 32 and resnet18["batching"]["max_batch_delay_ms"] == 10
    assert resnet18["load_seconds"] > 0 and resnet18["warmup_seconds"] > 0

    client.post("/predict?model=resnet20", files={"file": ("x.jpg", photo("chelsea.jpg"))})
    text = client.get("/metrics").text
    for family in (
        "resnet_serve_requests_total", "resnet_serve_request_seconds_bucket", "resnet_serve_queue_wait_seconds_bucket",
        "resnet_serve_preprocess_seconds_bucket", "resnet_serve_inference_seconds_bucket",
        "resnet_serve_batch_size_bucket", "resnet_serve_queue_depth", "resnet_serve_rejections_total",
        "resnet_serve_model_info", "resnet_serve_provider_info", "resnet_serve_ready 1.0",
    ):
        assert family in text, family
    assert metric(client, "resnet_serve_requests_total", model="resnet20", status="200") >= 1

    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    predict = spec["paths"]["/predict"]["post"]
    assert {"multipart/form-data", "image/*"} <= set(predict["requestBody"]["content"])
    assert {"200", "404", "413", "415", "422", "503", "504"} <= set(predict["responses"])
    assert "PredictResponse" in spec["components"]["schemas"] and "ErrorResponse" in spec["components"]["schemas"]


# --- errors ------------------------------------------------------------------------------------


def jpeg(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (10, 200, 30)).save(buffer, "JPEG")
    return buffer.getvalue()


def test_request_errors_get_documented_json(client: TestClient) -> None:
    good = photo("chelsea.jpg")
    assert_error(client.post("/predict?model=nope", files={"file": ("a.jpg", good)}), 404, "unknown_model")
    assert_error(client.post("/predict", files={"file": ("a.jpg", good)}), 422, "model_required")
    for top_k in ("0", "-1", "abc", "1.5"):
        assert_error(client.post(f"/predict?model=resnet20&top_k={top_k}", files={"file": ("a", good)}), 422, "invalid_request")
    assert_error(client.post("/predict?model=resnet20&top_k=11", files={"file": ("a", good)}), 422, "bad_top_k")
    assert_error(client.post("/predict?model=resnet20", files={"image": ("a.jpg", good)}), 422, "unexpected_field")
    assert_error(client.post("/predict?model=resnet20", data={"file": "text"}), 415, "unsupported_content_type")
    assert_error(
        client.post("/predict?model=resnet20", files=[("file", ("a", good)), ("file", ("b", good))]), 422, "bad_form"
    )
    assert_error(client.post("/predict?model=resnet20", content=good), 415, "unsupported_content_type")
    assert_error(
        client.post("/predict?model=resnet20", content=good, headers={"content-type": "text/plain"}),
        415, "unsupported_content_type",
    )
    assert_error(
        client.post("/predict?model=resnet20", content=b"--x\r\n", headers={"content-type": "multipart/form-data"}),
        422, "bad_multipart",
    )
    unterminated = b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n\r\n' + good
    assert_error(
        client.post("/predict?model=resnet20", content=unterminated, headers={"content-type": "multipart/form-data; boundary=xyz"}),
        422, "bad_multipart",
    )
    assert_error(
        client.post("/predict?model=resnet20", content=b"--xyz--\r\n", headers={"content-type": "multipart/form-data; boundary=xyz"}),
        422, "no_image",
    )
    assert_error(client.get("/predict"), 405, "method_not_allowed")
    assert_error(client.get("/no/such/path"), 404, "not_found")


def test_bad_images_are_named_in_the_error(client: TestClient) -> None:
    good = photo("chelsea.jpg")
    cases = [
        ("empty.jpg", b"", 422, "empty_image"),
        ("truncated.jpg", good[: len(good) // 2], 422, "corrupt_image"),
        ("notes.txt", b"hello, I am text", 415, "unsupported_image"),
        ("page.html", b"<!doctype html><html></html>", 415, "unsupported_image"),
    ]
    for name, data, status, code in cases:
        response = client.post("/predict?model=resnet20", files=[("files", ("ok.jpg", good)), ("files", (name, data))])
        assert_error(response, status, code, mentions=name)
    assert_error(
        client.post("/predict?model=resnet20", content=b"", headers={"content-type": "image/png"}), 422, "empty_image"
    )
    # The pool and batcher are unharmed: the next good request works.
    assert client.post("/predict?model=resnet20", files={"file": ("ok.jpg", good)}).status_code == 200


def test_size_limits(cifar_repo: Path) -> None:
    small_jpeg = jpeg(64, 64)
    with service(cifar_repo, max_upload_bytes=2_000_000, max_files=4, max_image_pixels=1_000_000) as client:
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
        assert metric(client, "resnet_serve_rejections_total", model="resnet20", reason="image_too_large") == 2


def test_queue_full_gets_503_with_retry_after(cifar_repo: Path) -> None:
    with service(cifar_repo, max_queue_size=4, max_files=4) as client:
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
    with service(small_repo, max_queue_size=1, max_files=1, max_batch_size=1) as client:
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
    with service(cifar_repo, request_timeout_s=0.5) as client:
        batcher = serving(client, "resnet20").batcher
        images_before = metric(client, "resnet_serve_images_total", model="resnet20")
        occupy_instance(client, batcher, 1.5)  # the only inference instance is busy past the timeout
        started = time.monotonic()
        response = client.post("/predict?model=resnet20", files={"file": ("a.jpg", photo("chelsea.jpg"))})
        assert_error(response, 504, "timeout")
        assert time.monotonic() - started < 1.4
        time.sleep(1.2)
        assert client.post("/predict?model=resnet20", files={"file": ("a.jpg", photo("chelsea.jpg"))}).status_code == 200
        # The timed-out image was dropped before inference: only the second request's image ran.
        assert metric(client, "resnet_serve_images_total", model="resnet20") == images_before + 1


# --- readiness and configuration -----------------------------------------------------------------


def test_not_ready_until_models_are_warm(small_repo: Path) -> None:
    with service(small_repo, ready=False) as client:
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
    with service(repo, ready=False) as client:
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
    with service(repo) as client:
        body = client.post("/predict", files={"file": ("a.jpg", photo("chelsea.jpg"))}).json()
        assert body["model"] == "cifar" and body["version"] == 7
        assert client.get("/models").json()["default_model"] == "cifar"


def test_api_key_protects_predict_and_models_but_not_probes(model_repo: Path, tmp_path: Path) -> None:
    repo = link_repository(model_repo, tmp_path / "repo", "resnet20")
    with service(repo, api_key="s3cret") as client:
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
