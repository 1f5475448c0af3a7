"""Triton's own example image client (``image_client.py``, HTTP and gRPC, ``-c 3 -s NONE``) against the service,
and the CIFAR-10 sample accuracy table through V2 REST and gRPC with encoded images.

image_client.py is not published on any package registry (it lives in triton-inference-server/client,
``src/python/examples``); ``../shared/triton-client/src/python/examples`` holds it as published, and
``RESNET_SERVE_TRITON_EXAMPLES`` points elsewhere; the test skips with that reason when it is absent. It preprocesses by resizing to the model's input size (no crop), so its
top-3 is compared with onnxruntime run directly on the served file with exactly those pixels.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from conftest import CIFAR_SAMPLE_ACCURACY, SHARED_DIR, cifar_sample, shared_path
from PIL import Image
from server import GrpcServer, link_repository, run_grpc_server

from servable.card import ModelCard

EXAMPLES = Path(os.environ.get("RESNET_SERVE_TRITON_EXAMPLES", SHARED_DIR / "triton-client/src/python/examples"))
LINE = re.compile(r"^\s+(\S+) \((\d+)\) = (.+)$")


def image_client() -> Path:
    script = EXAMPLES / "image_client.py"
    if not script.is_file():
        pytest.skip(
            f"Triton's image_client.py is not at {script}: it is not on any package registry; set "
            "RESNET_SERVE_TRITON_EXAMPLES to triton-inference-server/client's src/python/examples"
        )
    return script


@pytest.fixture(scope="module")
def image_client_repository(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The four CIFAR ResNets and resnet50 with seeded random weights (an ImageNet-sized model)."""
    from export import export_model

    repo = link_repository(model_repo, tmp_path_factory.mktemp("image_client_repo"), *CIFAR_SAMPLE_ACCURACY)
    export_model("resnet50", None, model_dir=repo, verify=False, log=lambda line: None)
    return repo


@pytest.fixture(scope="module")
def image_client_server(image_client_repository: Path) -> Iterator[GrpcServer]:
    with run_grpc_server(image_client_repository) as server:
        yield server


def run_image_client(model: str, image: Path, protocol: str, url: str) -> list[tuple[float, int, str]]:
    completed = subprocess.run(
        [sys.executable, str(image_client()), "-m", model, "-c", "3", "-s", "NONE", "-i", protocol, "-u", url,
         str(image)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert completed.returncode == 0 and "PASS" in completed.stdout, completed.stdout + completed.stderr
    rows = [LINE.match(line) for line in completed.stdout.splitlines()]
    return [(float(m[1]), int(m[2]), m[3]) for m in rows if m]


def expected_top3(model_file: Path, pixels: np.ndarray) -> list[tuple[float, int, str]]:
    session = ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    card = ModelCard.from_metadata(session.get_modelmeta().custom_metadata_map)
    (probabilities,) = session.run(["probabilities"], {"images": pixels[None]})
    order = np.argsort(-probabilities[0], kind="stable")[:3]
    return [(float(probabilities[0][i]), int(i), card.labels[i]) for i in order]


def top3_both_ways(
    server: GrpcServer, repository: Path, protocol: str, model: str, image: Path, size: int
) -> tuple[list[tuple[float, int, str]], list[tuple[float, int, str]]]:
    """What image_client.py prints for ``image`` and what onnxruntime gives for the pixels it sends
    (resized to ``size`` x ``size``, no crop)."""
    printed = run_image_client(model, image, protocol, server.address(protocol))
    pixels = np.asarray(Image.open(image).convert("RGB").resize((size, size), Image.BILINEAR), dtype=np.uint8)
    return printed, expected_top3(repository / model / "1" / "model.onnx", pixels)


@pytest.mark.parametrize("protocol", ["HTTP", "gRPC"])
def test_image_client_prints_the_right_top3_for_chelsea_on_resnet50(
    image_client_server: GrpcServer, image_client_repository: Path, protocol: str
) -> None:
    photo = shared_path("data", "photos", "chelsea.jpg")
    printed, expected = top3_both_ways(image_client_server, image_client_repository, protocol, "resnet50", photo, 224)
    assert [(i, label) for _, i, label in printed] == [(i, label) for _, i, label in expected]
    assert np.allclose([s for s, _, _ in printed], [s for s, _, _ in expected], atol=1e-6)


@pytest.mark.parametrize("protocol", ["HTTP", "gRPC"])
def test_image_client_prints_the_right_top3_for_cifar_images_on_resnet20(
    image_client_server: GrpcServer, image_client_repository: Path, protocol: str
) -> None:
    classes = shared_path("labels", "cifar10.txt").read_text().split()
    for name in ("cat", "ship", "truck"):
        image = shared_path("data", "cifar10-sample", name, "0001.jpg")  # 32x32: the resize is a no-op
        printed, expected = top3_both_ways(image_client_server, image_client_repository, protocol, "resnet20", image, 32)
        assert printed[0][2] == name == classes[printed[0][1]]
        assert [(i, label) for _, i, label in printed] == [(i, label) for _, i, label in expected]


@pytest.mark.parametrize("transport", ["http", "grpc"])
@pytest.mark.parametrize("arch", list(CIFAR_SAMPLE_ACCURACY))
def test_cifar_sample_accuracy_through_v2_with_encoded_images(
    image_client_server: GrpcServer, transport: str, arch: str
) -> None:
    module = httpclient if transport == "http" else grpcclient
    client = image_client_server.client(transport)
    sample = cifar_sample()
    correct = 0
    for start in range(0, len(sample), 50):
        chunk = sample[start : start + 50]
        data = np.array([[path.read_bytes()] for path, _ in chunk], dtype=np.object_)
        tensor = module.InferInput("image_bytes", list(data.shape), "BYTES")
        if module is httpclient:
            tensor.set_data_from_numpy(data, binary_data=True)
        else:
            tensor.set_data_from_numpy(data)
        result = client.infer(f"{arch}-encoded", [tensor], outputs=[module.InferRequestedOutput("probabilities")])
        predicted = result.as_numpy("probabilities").argmax(axis=1)
        correct += int(sum(int(p) == label for p, (_, label) in zip(predicted, chunk, strict=True)))
    accuracy = 100.0 * correct / len(sample)
    assert abs(accuracy - CIFAR_SAMPLE_ACCURACY[arch]) <= 0.1, f"{arch} over {transport}: {accuracy:.1f} %"
