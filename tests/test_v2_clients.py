"""KServe V2 over REST and gRPC with the ecosystem's own client (tritonclient) against a real server.

The client matrix (transport x input form x output form x batch size) is generated; every answer is
compared with what /predict says for the same images: the same top-k labels, scores within 1e-6.
UINT8 pixels are made with the service's own preprocessing (as a client that preprocesses would),
encoded images are the JPEG files' bytes.
"""

from __future__ import annotations

import itertools
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from conftest import cifar_sample
from server import GrpcServer, RunningServer, grpc_server_fixture, photo
from tritonclient.utils import InferenceServerException

from servable.images import preprocess_image
from servable.preprocessing import Preprocessing

CIFAR = Preprocessing(resize_size=32, crop_size=32)
IMAGENET = Preprocessing(resize_size=256, crop_size=224)


#: A CIFAR and an ImageNet-sized model, both doors.
two_door_server = grpc_server_fixture("--max-batch-delay-ms", "5", models=("resnet20", "resnet18"))


def cifar_images(count: int) -> list[tuple[str, bytes]]:
    sample = cifar_sample()
    chosen = sample[:: len(sample) // count][:count]
    return [(path.name, path.read_bytes()) for path, _ in chosen]


def predict(server: RunningServer, model: str, images: list[tuple[str, bytes]], k: int) -> list[list[dict[str, Any]]]:
    files = [("files", (name, data, "image/jpeg")) for name, data in images]
    response = httpx.post(server.url(f"/predict?model={model}&top_k={k}"), files=files, timeout=60)
    assert response.status_code == 200, response.text
    return [result["predictions"] for result in response.json()["results"]]


def infer(
    client: Any, module: Any, model: str, images: list[tuple[str, bytes]], form: str, *,
    preprocessing: Preprocessing, binary_in: bool, binary_out: bool, classes: int,
) -> np.ndarray:
    if form == "pixels":
        data = np.stack([preprocess_image(blob, preprocessing) for _, blob in images])
        name, datatype, target = "images", "UINT8", model
    else:
        data = np.array([[blob] for _, blob in images], dtype=np.object_)
        name, datatype, target = "image_bytes", "BYTES", f"{model}-encoded"
    tensor = module.InferInput(name, list(data.shape), datatype)
    if module is httpclient:
        tensor.set_data_from_numpy(data, binary_data=binary_in)
        output = module.InferRequestedOutput("probabilities", binary_data=binary_out, class_count=classes)
    else:
        tensor.set_data_from_numpy(data)
        output = module.InferRequestedOutput("probabilities", class_count=classes)
    result = client.infer(target, [tensor], outputs=[output], request_id="matrix")
    response = result.get_response()
    assert (response["model_name"] if module is httpclient else response.model_name) == target
    return result.as_numpy("probabilities")


def text(entry: bytes | str) -> str:
    """A classification element: bytes from binary outputs, str from JSON ones (as tritonclient returns them)."""
    return entry.decode() if isinstance(entry, bytes) else entry


MATRIX = [
    case for case in itertools.product(("http", "grpc"), ("pixels", "encoded"), ("json", "binary"), (0, 3), (1, 16))
    if not (case[0] == "grpc" and case[2] == "json")  # gRPC carries raw bytes only
]


@pytest.mark.parametrize(
    ("transport", "form", "encoding", "classes", "batch"), MATRIX,
    ids=["-".join(map(str, case)) for case in MATRIX],
)
def test_client_matrix_answers_equal_predict(
    two_door_server: GrpcServer, transport: str, form: str, encoding: str, classes: int, batch: int
) -> None:
    images = cifar_images(batch)
    module = httpclient if transport == "http" else grpcclient
    binary = encoding == "binary"
    # tritonclient sends encoded image bytes only as binary data ("Failed to encode ... using UTF-8"
    # otherwise), so for them the JSON/binary axis is the output's.
    answer = infer(
        two_door_server.client(transport), module, "resnet20", images, form,
        preprocessing=CIFAR, binary_in=binary or form == "encoded", binary_out=binary, classes=classes,
    )
    expected = predict(two_door_server.server, "resnet20", images, k=classes or 10)
    if classes:
        assert answer.shape == (batch, classes)
        for row, wanted in zip(answer, expected, strict=True):
            parsed = [text(entry).split(":", 2) for entry in row]
            assert [label for _, _, label in parsed] == [p["label"] for p in wanted]
            assert [int(index) for _, index, _ in parsed] == [p["index"] for p in wanted]
            assert np.allclose([float(score) for score, _, _ in parsed], [p["score"] for p in wanted], atol=1e-6, rtol=0)
    else:
        assert answer.shape == (batch, 10) and answer.dtype == np.float32
        for row, wanted in zip(answer, expected, strict=True):
            order = np.argsort(-row, kind="stable")
            assert [int(i) for i in order] == [p["index"] for p in wanted]
            assert np.allclose(row[order], [p["score"] for p in wanted], atol=1e-6, rtol=0)


@pytest.mark.parametrize("transport", ["http", "grpc"])
@pytest.mark.parametrize("form", ["pixels", "encoded"])
def test_imagenet_sized_model_answers_equal_predict(two_door_server: GrpcServer, transport: str, form: str) -> None:
    photos = [(name, photo(name)) for name in ("chelsea.jpg", "coffee.jpg")]
    module = httpclient if transport == "http" else grpcclient
    answer = infer(
        two_door_server.client(transport), module, "resnet18", photos, form,
        preprocessing=IMAGENET, binary_in=True, binary_out=True, classes=5,
    )
    expected = predict(two_door_server.server, "resnet18", photos, k=5)
    for row, wanted in zip(answer, expected, strict=True):
        assert [text(entry).split(":", 2)[2] for entry in row] == [p["label"] for p in wanted]


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_health_metadata_config_and_repository_index(two_door_server: GrpcServer, transport: str) -> None:
    client = two_door_server.client(transport)
    assert client.is_server_live() and client.is_server_ready()
    for model in ("resnet20", "resnet20-encoded", "resnet18"):
        assert client.is_model_ready(model) and client.is_model_ready(model, "1")
    assert not client.is_model_ready("resnet20", "7")
    grpc = transport == "grpc"
    server = client.get_server_metadata(as_json=True) if grpc else client.get_server_metadata()
    assert server["name"] == "resnet-serve" and "classification" in server["extensions"]
    meta = client.get_model_metadata("resnet20", as_json=True) if grpc else client.get_model_metadata("resnet20")
    assert meta["platform"] == "onnxruntime_onnx" and meta["versions"] == ["1"]
    assert [(t["name"], t["datatype"], [int(d) for d in t["shape"]]) for t in meta["inputs"]] == [
        ("images", "UINT8", [-1, 32, 32, 3])
    ]
    assert [(t["name"], t["datatype"], [int(d) for d in t["shape"]]) for t in meta["outputs"]] == [
        ("probabilities", "FP32", [-1, 10])
    ]
    encoded = client.get_model_metadata("resnet20-encoded", as_json=True) if grpc else client.get_model_metadata(
        "resnet20-encoded")
    assert [(t["name"], t["datatype"]) for t in encoded["inputs"]] == [("image_bytes", "BYTES")]
    config = client.get_model_config("resnet18", as_json=True) if grpc else client.get_model_config("resnet18")
    config = config.get("config", config)
    assert int(config["max_batch_size"]) == 32
    (model_input,) = config["input"]
    assert model_input["format"] == "FORMAT_NHWC" and [int(d) for d in model_input["dims"]] == [224, 224, 3]
    assert model_input["data_type"] == "TYPE_UINT8"
    assert [int(d) for d in config["output"][0]["dims"]] == [1000]
    assert "dynamic_batching" in config
    index = client.get_model_repository_index(as_json=True) if grpc else client.get_model_repository_index()
    rows = index.get("models", index) if isinstance(index, dict) else index
    assert {(row["name"], row["state"]) for row in rows} >= {
        ("resnet20", "READY"), ("resnet20-encoded", "READY"), ("resnet18", "READY"), ("resnet18-encoded", "READY")
    }


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_unknown_model_and_version_are_not_found(two_door_server: GrpcServer, transport: str) -> None:
    client = two_door_server.client(transport)
    module = httpclient if transport == "http" else grpcclient
    tensor = module.InferInput("images", [1, 32, 32, 3], "UINT8")
    tensor.set_data_from_numpy(np.zeros((1, 32, 32, 3), np.uint8))
    with pytest.raises(InferenceServerException) as unknown:
        client.infer("no-such-model", [tensor])
    with pytest.raises(InferenceServerException) as version:
        client.infer("resnet20", [tensor], model_version="9")
    if transport == "http":
        assert unknown.value.status() == "404" and version.value.status() == "404"
    else:
        assert unknown.value.status() == "StatusCode.NOT_FOUND" and version.value.status() == "StatusCode.NOT_FOUND"
    assert "no-such-model" in unknown.value.message() and "no version 9" in version.value.message()
