"""The service in process (Starlette's TestClient drives the real app and lifespan) on real exported models:
answers, batching, introspection and the errors a request can get.

Everything here runs real onnxruntime sessions on the `model_repo` fixture's models (CIFAR ResNets
with their trained weights, resnet18 with random weights) and real images from ../shared. Limits,
overload, timeouts and readiness are in test_service_limits.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import CIFAR_SAMPLE_ACCURACY, cifar_sample, shared_path
from fastapi.testclient import TestClient
from server import assert_error, metric_value, photo, serve_in_process

PHOTOS = (
    "astronaut.jpg", "chelsea.jpg", "chelsea.png", "coffee.jpg", "rocket.jpg", "motorcycle_left.jpg",
    "camera-grayscale.png", "logo-rgba.png",
)


@pytest.fixture(scope="module")
def client(model_repo: Path) -> Iterator[TestClient]:
    """The whole session repository served in process (10 ms batch delay)."""
    with serve_in_process(model_repo, max_batch_delay_ms=10) as in_process:
        yield in_process


def files(*names: str) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("files", (name, photo(name), "application/octet-stream")) for name in names]


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
    batches_before = metric_value(client, "resnet_serve_batch_size_count", model="resnet56")
    singles_before = metric_value(client, "resnet_serve_batch_size_bucket", model="resnet56", le="1.0")

    def send(path: Path) -> list[dict[str, Any]]:
        response = client.post("/predict?model=resnet56&top_k=3", files={"file": (path.name, path.read_bytes())})
        assert response.status_code == 200, response.text
        return response.json()["predictions"]

    with ThreadPoolExecutor(16) as pool:
        together = dict(zip(cifar, pool.map(send, cifar)))
    batches = metric_value(client, "resnet_serve_batch_size_count", model="resnet56") - batches_before
    singles = metric_value(client, "resnet_serve_batch_size_bucket", model="resnet56", le="1.0") - singles_before
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
    assert metric_value(client, "resnet_serve_requests_total", model="resnet20", status="200") >= 1

    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    predict = spec["paths"]["/predict"]["post"]
    assert {"multipart/form-data", "image/*"} <= set(predict["requestBody"]["content"])
    assert {"200", "404", "413", "415", "422", "503", "504"} <= set(predict["responses"])
    assert "PredictResponse" in spec["components"]["schemas"] and "ErrorResponse" in spec["components"]["schemas"]


# --- errors ------------------------------------------------------------------------------------


def refused_requests(good: bytes) -> list[tuple[str, str, dict[str, Any], int, str]]:
    """(method, URL, request keywords, status, stable code) for requests /predict refuses before any image."""
    one = {"files": {"file": ("a.jpg", good)}}

    def raw(body: bytes, content_type: str | None) -> dict[str, Any]:
        return {"content": body, "headers": {"content-type": content_type} if content_type else {}}

    form = "multipart/form-data; boundary=xyz"
    unterminated = b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n\r\n' + good
    return [
        ("POST", "/predict?model=nope", one, 404, "unknown_model"),
        ("POST", "/predict", one, 422, "model_required"),
        *[("POST", f"/predict?model=resnet20&top_k={k}", one, 422, "invalid_request") for k in ("0", "-1", "abc", "1.5")],
        ("POST", "/predict?model=resnet20&top_k=11", one, 422, "bad_top_k"),
        ("POST", "/predict?model=resnet20", {"files": {"image": ("a.jpg", good)}}, 422, "unexpected_field"),
        ("POST", "/predict?model=resnet20", {"data": {"file": "text"}}, 415, "unsupported_content_type"),
        ("POST", "/predict?model=resnet20", {"files": [("file", ("a", good)), ("file", ("b", good))]}, 422, "bad_form"),
        ("POST", "/predict?model=resnet20", raw(good, None), 415, "unsupported_content_type"),
        ("POST", "/predict?model=resnet20", raw(good, "text/plain"), 415, "unsupported_content_type"),
        ("POST", "/predict?model=resnet20", raw(b"--x\r\n", "multipart/form-data"), 422, "bad_multipart"),
        ("POST", "/predict?model=resnet20", raw(unterminated, form), 422, "bad_multipart"),
        ("POST", "/predict?model=resnet20", raw(b"--xyz--\r\n", form), 422, "no_image"),
        ("GET", "/predict", {}, 405, "method_not_allowed"),
        ("GET", "/no/such/path", {}, 404, "not_found"),
    ]


def test_request_errors_get_documented_json(client: TestClient) -> None:
    for method, url, options, status, code in refused_requests(photo("chelsea.jpg")):
        assert_error(client.request(method, url, **options), status, code)


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
