"""Faults on a real server: corrupt model files at start, and a model that fails inside a batch.

Decisions these tests pin down (docs/hardening.md):

* A model file that cannot be loaded keeps the service not ready (503 on /health/ready naming the
  model and why; the log says the same); the models that did load are still served by name.
  ``RESNET_SERVE_ALLOW_PARTIAL=true`` makes the service ready with the models that loaded.
* An inference error fails exactly the waiters of that batch with **500 ``inference_failed``** (it
  is a server fault: retrying the same input will not help, so not 503); the batcher goes on.
"""

from __future__ import annotations

import io
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image
from server import link_repository, run_server

from servable.card import INPUT_NAME, OUTPUT_NAME

#: Classes of the CIFAR card the broken model borrows.
CLASSES = 10


def flaky_model(card_source: Path, destination: Path) -> None:
    """A valid-looking CIFAR model whose graph fails at run time on bright images.

    output[n] = one_hot(images[n, 0, 0, 0]) via Gather on a 10x10 table: a first pixel value v < 10
    gives class v with probability 1, anything brighter is an out-of-range index and onnxruntime
    raises for the whole batch. Warm-up (all zeros) passes. The card is copied from a real export.
    """
    card = {prop.key: prop.value for prop in onnx.load(str(card_source), load_external_data=False).metadata_props}
    table = numpy_helper.from_array(np.eye(CLASSES, dtype=np.float32), "table")
    flat_shape = numpy_helper.from_array(np.array([-1, 32 * 32 * 3], dtype=np.int64), "flat_shape")
    first = numpy_helper.from_array(np.array(0, dtype=np.int64), "first")
    nodes = [
        helper.make_node("Cast", [INPUT_NAME], ["wide"], to=TensorProto.INT64),
        helper.make_node("Reshape", ["wide", "flat_shape"], ["flat"]),
        helper.make_node("Gather", ["flat", "first"], ["index"], axis=1),
        helper.make_node("Gather", ["table", "index"], [OUTPUT_NAME], axis=0),
    ]
    graph = helper.make_graph(
        nodes,
        "flaky",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.UINT8, ["N", 32, 32, 3])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N", CLASSES])],
        initializer=[table, flat_shape, first],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, card)
    onnx.checker.check_model(model)
    destination.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(destination))


def flat_png(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (value, value, value)).save(buffer, "PNG")
    return buffer.getvalue()


def test_an_inference_error_fails_its_batch_and_the_batcher_keeps_serving(model_repo: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    flaky_model(model_repo / "resnet20" / "1" / "model.onnx", repo / "flaky" / "1" / "model.onnx")
    dark = {value: flat_png(value) for value in range(CLASSES)}
    bright = flat_png(200)
    with run_server(repo, "--max-batch-size", "8", "--max-batch-delay-ms", "50") as server:
        url = server.url("/predict")
        with httpx.Client(timeout=30) as client:
            first = client.post(url, files={"file": ("d3.png", dark[3])}).json()
            assert first["predictions"][0] == {"label": first["predictions"][0]["label"], "index": 3, "score": 1.0}

            # One request, one batch: three good images and one bad one -> the whole request fails.
            mixed = [("files", (f"d{v}.png", dark[v])) for v in (1, 2, 3)] + [("files", ("bright.png", bright))]
            failed = client.post(url, files=mixed)
            assert failed.status_code == 500, failed.text
            assert failed.json() == {"error": {"code": "inference_failed", "message": failed.json()["error"]["message"]}}

        # Concurrent single-image requests: whoever shares a batch with a bright image fails with it.
        def send(index: int) -> tuple[int, int, dict]:
            value = index % CLASSES
            data = bright if index % 4 == 0 else dark[value]
            response = httpx.post(url, files={"file": (f"{index}.png", data)}, timeout=30)
            return index, response.status_code, response.json()

        with ThreadPoolExecutor(12) as pool:
            results = list(pool.map(send, range(36)))
        failures = 0
        for index, status, body in results:
            if index % 4 == 0:
                assert status == 500 and body["error"]["code"] == "inference_failed", (index, status, body)
            else:
                assert status in (200, 500), (index, status, body)
                if status == 200:
                    assert body["predictions"][0]["index"] == index % CLASSES
                else:
                    assert body["error"]["code"] == "inference_failed"
            failures += status == 500
        # Every failed waiter belongs to a batch the log reports as failed, and nothing else failed.
        failed_batches = [int(size) for size in re.findall(r"inference failed for a batch of (\d+)", server.log())]
        assert sum(failed_batches) == failures + 4, (failed_batches, failures)  # + the 4 images of `mixed`

        # The batcher is alive: readiness holds and later requests are answered correctly.
        assert httpx.get(server.url("/health/ready")).status_code == 200
        for value in (0, 9):
            later = httpx.post(url, files={"file": ("later.png", dark[value])}, timeout=30)
            assert later.status_code == 200 and later.json()["predictions"][0]["index"] == value
        assert server.alive()


def broken_repository(model_repo: Path, repo: Path) -> None:
    """resnet20 intact, plus a truncated ONNX file, a non-ONNX file and an empty file."""
    link_repository(model_repo, repo, "resnet20")
    good = (model_repo / "resnet20" / "1" / "model.onnx").read_bytes()
    for name, data in {"truncated": good[: len(good) // 2], "garbage": b"\x00not onnx" * 100, "empty": b""}.items():
        (repo / name / "1").mkdir(parents=True)
        (repo / name / "1" / "model.onnx").write_bytes(data)


@pytest.mark.parametrize("allow_partial", [False, True])
def test_corrupt_model_files_at_start(model_repo: Path, tmp_path: Path, allow_partial: bool) -> None:
    repo = tmp_path / "repo"
    broken_repository(model_repo, repo)
    flags = ["--allow-partial"] if allow_partial else []
    with run_server(repo, *flags, wait="live") as server:
        deadline = time.monotonic() + 120
        models: dict[str, str] = {}
        while time.monotonic() < deadline:  # live at once; wait until every model has an outcome
            models = httpx.get(server.url("/health/ready")).json()["models"]
            if models and "loading" not in models.values():
                break
            time.sleep(0.1)
        assert models["resnet20"] == "ready"
        for name in ("truncated", "garbage", "empty"):
            assert models[name].startswith("failed:") and "model.onnx" in models[name], models[name]
            assert f"model {name} not served" in server.log()
        ready = httpx.get(server.url("/health/ready"))
        if allow_partial:
            assert ready.status_code == 200 and ready.json()["ready"] is True
        else:
            assert ready.status_code == 503
            body = ready.json()
            assert body["error"]["code"] == "not_ready" and body["ready"] is False
            assert all(name in body["reason"] for name in ("truncated", "garbage", "empty"))
            assert "not ready" in server.log()
        # The model that loaded is served either way; the broken ones answer 503 with their reason.
        image = flat_png(120)
        served = httpx.post(server.url("/predict?model=resnet20"), files={"file": ("a.png", image)})
        assert served.status_code == 200, served.text
        refused = httpx.post(server.url("/predict?model=truncated"), files={"file": ("a.png", image)})
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "model_unavailable"
