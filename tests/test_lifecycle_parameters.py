"""What a client may give as its deadline, checked like any other input: every malformed or absurd value
gets the usual 4xx, a value past the server's ceiling changes nothing, and 0 means none (as in Triton).
The lifecycle the deadline drives is tests/test_lifecycle.py's.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from conftest import cifar_sample
from server import GrpcServer, link_repository, run_grpc_server


@pytest.fixture(scope="module")
def lifecycle_server(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GrpcServer]:
    repo = link_repository(model_repo, tmp_path_factory.mktemp("deadline_parameters"), "resnet20")
    with run_grpc_server(repo) as server:
        yield server


# --- what a client may ask for ----------------------------------------------------------------------

#: (case, /predict query, status, code)
PREDICT_TIMEOUTS = [
    ("not a number", "timeout_ms=soon", 422, "invalid_request"),
    ("zero", "timeout_ms=0", 422, "invalid_request"),
    ("negative", "timeout_ms=-300", 422, "invalid_request"),
    ("a fraction", "timeout_ms=1.5", 422, "invalid_request"),
    ("empty", "timeout_ms=", 422, "invalid_request"),
    ("past int64", "timeout_ms=99999999999999999999", 422, "invalid_request"),
    ("given twice", "timeout_ms=300&timeout_ms=400", 422, "invalid_request"),
    ("longer than the ceiling: the ceiling holds", "timeout_ms=9223372036854775807", 200, None),
]


@pytest.mark.parametrize(("query", "status", "code"), [c[1:] for c in PREDICT_TIMEOUTS], ids=[c[0] for c in PREDICT_TIMEOUTS])
def test_predict_timeout_ms_is_checked(lifecycle_server: GrpcServer, query: str, status: int, code: str | None) -> None:
    jpeg = cifar_sample()[0][0].read_bytes()
    response = httpx.post(f"{lifecycle_server.server.base_url}/predict?model=resnet20&{query}", content=jpeg,
                          headers={"Content-Type": "image/jpeg"}, timeout=30)
    assert response.status_code == status, response.text
    if code is not None:
        assert response.json()["error"]["code"] == code and "timeout_ms" in response.json()["error"]["message"]


#: (case, the V2 ``timeout`` parameter as JSON, REST status)
V2_TIMEOUTS = [
    ("a string", '"300000"', 400),
    ("a float", "300000.5", 400),
    ("negative", "-1", 400),
    ("a boolean", "true", 400),
    ("past int64", str(2**64), 400),
    ("zero means none", "0", 200),
    ("a minute: within the ceiling", "60000000", 200),
]


@pytest.mark.parametrize(("value", "status"), [c[1:] for c in V2_TIMEOUTS], ids=[c[0] for c in V2_TIMEOUTS])
def test_v2_rest_timeout_parameter_is_checked(lifecycle_server: GrpcServer, value: str, status: int) -> None:
    pixels = np.zeros((1, 32, 32, 3), np.uint8).tolist()
    body = ('{"inputs": [{"name": "images", "datatype": "UINT8", "shape": [1, 32, 32, 3], "data": '
            + json.dumps(pixels) + '}], "parameters": {"timeout": ' + value + "}}")
    response = httpx.post(f"{lifecycle_server.server.base_url}/v2/models/resnet20/infer", content=body,
                          headers={"Content-Type": "application/json"}, timeout=30)
    assert response.status_code == status, response.text
    if status == 400:
        assert "parameters.timeout" in response.json()["error"]


#: (case, how the gRPC ``timeout`` parameter is set, the gRPC status)
GRPC_TIMEOUTS: list[tuple[str, Callable[[Any], None], str]] = [
    ("a string", lambda p: setattr(p, "string_param", "300000"), "INVALID_ARGUMENT"),
    ("a double", lambda p: setattr(p, "double_param", 0.3), "INVALID_ARGUMENT"),
    ("negative", lambda p: setattr(p, "int64_param", -1), "INVALID_ARGUMENT"),
    ("past int64 as uint64", lambda p: setattr(p, "uint64_param", 2**64 - 1), "INVALID_ARGUMENT"),
    ("zero means none", lambda p: setattr(p, "int64_param", 0), "OK"),
    ("uint64 within the ceiling", lambda p: setattr(p, "uint64_param", 60_000_000), "OK"),
]


@pytest.mark.parametrize(("setting", "code"), [c[1:] for c in GRPC_TIMEOUTS], ids=[c[0] for c in GRPC_TIMEOUTS])
def test_grpc_timeout_parameter_is_checked(lifecycle_server: GrpcServer, setting: Callable[[Any], None], code: str) -> None:
    import grpc
    from tritonclient.grpc import service_pb2

    request = service_pb2.ModelInferRequest(model_name="resnet20")
    request.inputs.add(name="images", datatype="UINT8", shape=[1, 32, 32, 3])
    request.raw_input_contents.append(bytes(32 * 32 * 3))
    setting(request.parameters["timeout"])
    try:
        lifecycle_server.stub.ModelInfer(request, timeout=30)
        outcome = "OK"
    except grpc.RpcError as error:
        outcome = error.code().name
        assert "timeout" in (error.details() or "")
    assert outcome == code
