"""Every V2 error case on both transports: the right 4xx (REST, ``{"error": msg}``) and gRPC status, never 5xx.

Each case is one row of data: the request (model, version, inputs as (name, datatype, shape, raw
bytes), outputs) and what REST and gRPC must answer. REST requests are sent as raw binary-extension
bodies (so framing can lie), gRPC ones with tritonclient's own generated stub.
"""

from __future__ import annotations

import io
import json
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
from conftest import shared_path
from hostile import framed, slow_jpeg
from PIL import Image
from server import GrpcServer, grpc_server_fixture, link_repository, metric_value, run_grpc_server
from tritonclient.grpc import service_pb2

MAX_UPLOAD = 1_000_000
MAX_FILES = 4
MAX_QUEUE = 16


#: resnet20 with small limits (body, files, queue) that the error cases run into, on both transports.
small_limits_server = grpc_server_fixture(
    "--max-upload-bytes", str(MAX_UPLOAD), "--max-files", str(MAX_FILES), "--max-queue-size", str(MAX_QUEUE)
)


def jpeg() -> bytes:
    return shared_path("data", "cifar10-sample", "cat", "0000.jpg").read_bytes()


PIXELS = np.zeros((1, 32, 32, 3), np.uint8).tobytes()


@dataclass(frozen=True)
class Case:
    name: str
    rest_status: int
    grpc_code: grpc.StatusCode
    words: str
    model: str = "resnet20"
    version: str = ""
    inputs: tuple[tuple[str, str, tuple[int, ...], bytes], ...] = (("images", "UINT8", (1, 32, 32, 3), PIXELS),)
    outputs: tuple[tuple[str, int], ...] = ()
    rest_lie: int = 0  # bytes added to the first input's binary_data_size in the REST header (a lying size)


INVALID = grpc.StatusCode.INVALID_ARGUMENT
CASES = [
    Case("bad datatype", 400, INVALID, "expects UINT8", inputs=(("images", "FP32", (1, 32, 32, 3), bytes(4 * 3072)),)),
    Case("wrong shape", 400, INVALID, "expected [N, 32, 32, 3]", inputs=(("images", "UINT8", (1, 31, 32, 3),
                                                                           bytes(31 * 32 * 3)),)),
    Case("size mismatch", 400, INVALID, "bytes of data for shape", inputs=(("images", "UINT8", (2, 32, 32, 3), PIXELS),)),
    Case("missing input", 400, INVALID, "input", inputs=()),
    Case("two inputs", 400, INVALID, "exactly one input", inputs=(("images", "UINT8", (1, 32, 32, 3), PIXELS),) * 2),
    Case("unknown input", 400, INVALID, "unknown input", inputs=(("pixels", "UINT8", (1, 32, 32, 3), PIXELS),)),
    Case("encoded bytes to the pixel model", 400, INVALID, "resnet20-encoded",
         inputs=(("images", "BYTES", (1,), framed(b"x")),)),
    Case("unknown model", 404, grpc.StatusCode.NOT_FOUND, "no model named", model="no-such-model"),
    Case("unknown version", 404, grpc.StatusCode.NOT_FOUND, "no version 9 loaded", version="9"),
    Case("non-numeric version", 400, INVALID, "model version", version="latest"),
    Case("zero-image batch", 400, INVALID, "expected [N, 32, 32, 3]", inputs=(("images", "UINT8", (0, 32, 32, 3), b""),)),
    Case("more images than the queue", 413, INVALID, "exceed the queue size",
         inputs=(("images", "UINT8", (MAX_QUEUE + 1, 32, 32, 3), bytes((MAX_QUEUE + 1) * 3072)),)),
    Case("unknown output", 400, INVALID, "unknown output", outputs=(("scores", 0),)),
    Case("classification beyond the classes", 400, INVALID, "classification must be between 1 and 10",
         outputs=(("probabilities", 11),)),
    Case("huge shape", 413, INVALID, "exceed the queue size", inputs=(("images", "UINT8", (10**9, 32, 32, 3), PIXELS),)),
    Case("negative-looking dimension", 400, INVALID, "shape", inputs=(("images", "UINT8", (2**40, 1, 1, 3), PIXELS),)),
    Case("BYTES prefix past the end", 400, INVALID, "claims", model="resnet20-encoded",
         inputs=(("image_bytes", "BYTES", (1, 1), struct.pack("<I", 999) + b"abc"),)),
    Case("BYTES count mismatch", 400, INVALID, "BYTES elements for a shape of 2", model="resnet20-encoded",
         inputs=(("image_bytes", "BYTES", (2, 1), framed(b"abc")),)),
    Case("not an image", 415, INVALID, "not an image", model="resnet20-encoded",
         inputs=(("image_bytes", "BYTES", (1, 1), framed(b"hello, world")),)),
    Case("empty image", 422, INVALID, "empty", model="resnet20-encoded",
         inputs=(("image_bytes", "BYTES", (1, 1), framed(b"")),)),
    Case("truncated JPEG", 422, INVALID, "cannot decode", model="resnet20-encoded",
         inputs=(("image_bytes", "BYTES", (1, 1), framed(jpeg()[:400])),)),
    Case("more encoded images than MAX_FILES", 413, INVALID, "images in one request", model="resnet20-encoded",
         inputs=(("image_bytes", "BYTES", (MAX_FILES + 1, 1), framed(*([b"x"] * (MAX_FILES + 1)))),)),
]


def rest_body(case: Case) -> tuple[bytes, int]:
    header = {
        "id": "case",
        "inputs": [
            {"name": name, "datatype": datatype, "shape": list(shape),
             "parameters": {"binary_data_size": len(raw) + (case.rest_lie if i == 0 else 0)}}
            for i, (name, datatype, shape, raw) in enumerate(case.inputs)
        ],
    }
    if case.outputs:
        header["outputs"] = [{"name": n, "parameters": {"classification": k}} if k else {"name": n}
                             for n, k in case.outputs]
    encoded = json.dumps(header).encode()
    return encoded + b"".join(raw for *_, raw in case.inputs), len(encoded)


def rest_send(grpc_server: GrpcServer, case: Case) -> httpx.Response:
    body, header_length = rest_body(case)
    path = f"/v2/models/{case.model}" + (f"/versions/{case.version}" if case.version else "") + "/infer"
    return httpx.post(grpc_server.server.url(path), content=body, timeout=30,
                      headers={"Inference-Header-Content-Length": str(header_length),
                               "Content-Type": "application/octet-stream"})


def grpc_send(grpc_server: GrpcServer, case: Case) -> grpc.RpcError | service_pb2.ModelInferResponse:
    request = service_pb2.ModelInferRequest(model_name=case.model, model_version=case.version, id="case")
    for name, datatype, shape, raw in case.inputs:
        request.inputs.add(name=name, datatype=datatype, shape=list(shape))
        request.raw_input_contents.append(raw)
    for name, k in case.outputs:
        output = request.outputs.add(name=name)
        if k:
            output.parameters["classification"].int64_param = k
    return grpc_call(grpc_server, request)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_error_case_on_rest(small_limits_server: GrpcServer, case: Case) -> None:
    response = rest_send(small_limits_server, case)
    assert response.status_code == case.rest_status, response.text
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str), body
    assert case.words in body["error"], body["error"]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_error_case_on_grpc(small_limits_server: GrpcServer, case: Case) -> None:
    answer = grpc_send(small_limits_server, case)
    assert isinstance(answer, grpc.RpcError), f"{case.name}: answered {answer}"
    assert answer.code() == case.grpc_code, (answer.code(), answer.details())
    assert case.words in (answer.details() or ""), answer.details()


def test_rest_framing_lies_are_400(small_limits_server: GrpcServer) -> None:
    for lie in (1, -1, 10**6):
        case = Case("lying binary_data_size", 400, INVALID, "", rest_lie=lie)
        response = rest_send(small_limits_server, case)
        assert response.status_code == 400, (lie, response.text)
    for length in ("abc", "-5", "9" * 40, "99999"):
        response = httpx.post(small_limits_server.server.url("/v2/models/resnet20/infer"), content=b"{}", timeout=30,
                              headers={"Inference-Header-Content-Length": length})
        assert response.status_code in (400, 413), (length, response.text)
        assert "error" in response.json()
    response = httpx.post(small_limits_server.server.url("/v2/models/resnet20/infer"), content=b"{not json", timeout=30)
    assert response.status_code == 400 and "not valid JSON" in response.json()["error"]
    response = httpx.post(small_limits_server.server.url("/v2/models/resnet20/infer"), content=b"{}", timeout=30,
                          headers={"Content-Encoding": "gzip"})
    assert response.status_code == 415


def test_oversize_messages_are_refused_on_both_transports(small_limits_server: GrpcServer) -> None:
    big = bytes(MAX_UPLOAD + 1)
    response = httpx.post(small_limits_server.server.url("/v2/models/resnet20/infer"), content=big, timeout=30)
    assert response.status_code == 413 and "error" in response.json()
    request = service_pb2.ModelInferRequest(model_name="resnet20")
    request.inputs.add(name="images", datatype="UINT8", shape=[len(big) // 3072, 32, 32, 3])
    request.raw_input_contents.append(big * 2)
    with pytest.raises(grpc.RpcError) as refused:
        small_limits_server.stub.ModelInfer(request, timeout=30)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_a_full_queue_is_resource_exhausted_with_a_retry_hint(small_limits_server: GrpcServer) -> None:
    """A flood of 4-image requests against a 16-image queue: some are refused with the retry hint."""
    from concurrent.futures import ThreadPoolExecutor

    photo = np.asarray(Image.open(io.BytesIO(jpeg())).convert("RGB"))
    request = service_pb2.ModelInferRequest(model_name="resnet20")
    request.inputs.add(name="images", datatype="UINT8", shape=[MAX_QUEUE // 2, 32, 32, 3])
    request.raw_input_contents.append(np.stack([photo] * (MAX_QUEUE // 2)).tobytes())

    def send(_: int) -> tuple[grpc.StatusCode, dict[str, str]]:
        try:
            small_limits_server.stub.ModelInfer(request, timeout=30)
            return grpc.StatusCode.OK, {}
        except grpc.RpcError as error:
            return error.code(), dict(error.trailing_metadata() or ())

    with ThreadPoolExecutor(24) as pool:
        answers = list(pool.map(send, range(240)))
    codes = {code for code, _ in answers}
    assert codes <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}, codes
    exhausted = [metadata for code, metadata in answers if code == grpc.StatusCode.RESOURCE_EXHAUSTED]
    assert exhausted and all(metadata.get("retry-after") == "1" for metadata in exhausted)
    assert grpc.StatusCode.OK in codes


def test_api_key_is_required_on_both_transports(model_repo: Path, tmp_path: Path) -> None:
    repo = link_repository(model_repo, tmp_path / "repo", "resnet20")
    with run_grpc_server(repo, "--api-key", "s3cret") as keyed_server:
        case = Case("ok", 200, grpc.StatusCode.OK, "")
        assert rest_send(keyed_server, case).status_code == 401
        answer = grpc_send(keyed_server, case)
        assert isinstance(answer, grpc.RpcError) and answer.code() == grpc.StatusCode.UNAUTHENTICATED
        request = service_pb2.ModelInferRequest(model_name="resnet20")
        request.inputs.add(name="images", datatype="UINT8", shape=[1, 32, 32, 3])
        request.raw_input_contents.append(PIXELS)
        response = keyed_server.stub.ModelInfer(request, metadata=(("authorization", "Bearer s3cret"),), timeout=30)
        assert response.model_name == "resnet20"
        assert keyed_server.stub.ServerLive(service_pb2.ServerLiveRequest()).live  # probes stay open
        with pytest.raises(grpc.RpcError) as denied:
            keyed_server.stub.ModelMetadata(service_pb2.ModelMetadataRequest(name="resnet20"))
        assert denied.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_draining_server_refuses_new_rpcs_as_unavailable_and_finishes_accepted_ones(
    model_repo: Path, tmp_path: Path
) -> None:
    repo = link_repository(model_repo, tmp_path / "repo", "resnet18")
    with run_grpc_server(repo, "--shutdown-grace-s", "20") as draining_server:
        request = service_pb2.ModelInferRequest(model_name="resnet18")
        request.inputs.add(name="images", datatype="UINT8", shape=[16, 224, 224, 3])
        request.raw_input_contents.append(bytes(16 * 224 * 224 * 3))
        results: list[object] = []
        inflight = threading.Thread(target=lambda: results.append(grpc_call(draining_server, request)))
        inflight.start()
        time.sleep(0.3)  # the 16-image batch is running (about a second on 2 cores)
        draining_server.server.terminate()
        time.sleep(0.3)
        late = grpc_call(draining_server, request)
        inflight.join(timeout=60)
        assert isinstance(results[0], service_pb2.ModelInferResponse), results
        assert isinstance(late, grpc.RpcError) and late.code() == grpc.StatusCode.UNAVAILABLE, late
        assert draining_server.server.wait(timeout=30) is not None


def grpc_call(grpc_server: GrpcServer, request: service_pb2.ModelInferRequest) -> Any:
    """The response, or the RpcError it ended with."""
    try:
        return grpc_server.stub.ModelInfer(request, timeout=60)
    except grpc.RpcError as error:
        return error


def _grpc_count(grpc_server: GrpcServer, status: str) -> float:
    return metric_value(grpc_server.server, "resnet_serve_requests_total", protocol="v2-grpc", status=status)


def test_a_cancelled_rpc_counts_as_client_closed_not_as_a_server_error(small_limits_server: GrpcServer) -> None:
    """A client that cancels while its image decodes is a 499 in the metrics: 5xx alerts mean server faults."""
    jpeg = slow_jpeg()
    assert len(jpeg) < MAX_UPLOAD
    request = service_pb2.ModelInferRequest(model_name="resnet20-encoded")
    request.inputs.add(name="image_bytes", datatype="BYTES", shape=[1, 1])
    request.raw_input_contents.append(framed(jpeg))
    errors_before, closed_before = _grpc_count(small_limits_server, "500"), _grpc_count(small_limits_server, "499")
    call = small_limits_server.stub.ModelInfer.future(request, timeout=30)
    deadline = time.monotonic() + 10
    while metric_value(small_limits_server.server, "resnet_serve_inflight_images") == 0 and time.monotonic() < deadline:  # admitted: reserved and decoding
        time.sleep(0.01)
    assert call.cancel()
    deadline = time.monotonic() + 10
    while _grpc_count(small_limits_server, "499") == closed_before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _grpc_count(small_limits_server, "499") == closed_before + 1
    assert _grpc_count(small_limits_server, "500") == errors_before
    assert small_limits_server.stub.ModelReady(service_pb2.ModelReadyRequest(name="resnet20"), timeout=10).ready
