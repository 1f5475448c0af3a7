"""RESNET_SERVE_API_KEY on a real server, and the guarantee that no request can load a model.

Decision: with a key set, /predict and /models need ``Authorization: Bearer <key>`` (scheme in any
case, key compared with ``hmac.compare_digest``); /health/live, /health/ready and /metrics stay open
so probes and Prometheus work without secrets (/metrics holds counters only; keep its port on the
internal network). /openapi.json and /docs stay open too: they describe, they do not serve.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from hostile import encode, gradient
from load import as_file
from server import RunningServer, server_fixture

KEY = "k3y-with-Ünicode-and-long-enough-0123456789"
#: Every route the service has; anything new must be reviewed for "loads a model from a request".
KNOWN_ROUTES = {
    ("POST", "/predict"), ("GET", "/models"), ("GET", "/metrics"), ("GET", "/health/live"), ("GET", "/health/ready"),
    # KServe V2: the same model lookups by name; load/unload take a name from MODEL_DIR's own listing.
    ("GET", "/v2"), ("GET", "/v2/health/live"), ("GET", "/v2/health/ready"),
    ("GET", "/v2/models/{model_name}"), ("GET", "/v2/models/{model_name}/versions/{version}"),
    ("GET", "/v2/models/{model_name}/ready"), ("GET", "/v2/models/{model_name}/versions/{version}/ready"),
    ("GET", "/v2/models/{model_name}/config"), ("GET", "/v2/models/{model_name}/versions/{version}/config"),
    ("POST", "/v2/models/{model_name}/infer"), ("POST", "/v2/models/{model_name}/versions/{version}/infer"),
    ("POST", "/v2/repository/index"), ("POST", "/v2/repository/models/{model_name}/load"),
    ("POST", "/v2/repository/models/{model_name}/unload"),
}


keyed_server = server_fixture(env={"RESNET_SERVE_API_KEY": KEY})


def post_image(server: RunningServer, headers: dict[str, bytes], params: dict[str, str] | None = None) -> httpx.Response:
    body, multipart_headers = as_file(encode(gradient(40, 40), "JPEG"), "a.jpg")
    return httpx.post(
        server.url("/predict"), content=body, headers={**multipart_headers, **headers}, params=params, timeout=30
    )


def bearer(value: str) -> dict[str, bytes]:
    """An Authorization header as raw UTF-8 bytes (the key is not ASCII)."""
    return {"authorization": value.encode()}


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Bearer wrong", f"Basic {KEY}", f"Bearer {KEY}x", f"Bearer {KEY[:-1]}", KEY,
     f"Token {KEY}"],
)
def test_predict_and_models_refuse_a_missing_or_wrong_key(keyed_server: RunningServer, authorization: str | None) -> None:
    headers = {} if authorization is None else bearer(authorization)
    for response in (post_image(keyed_server, headers), httpx.get(keyed_server.url("/models"), headers=headers)):
        assert response.status_code == 401, response.text
        assert response.headers["www-authenticate"] == "Bearer"
        assert response.json()["error"]["code"] == "unauthorized"
        assert KEY not in response.text


def test_the_right_key_is_accepted_in_any_scheme_case(keyed_server: RunningServer) -> None:
    for scheme in ("Bearer", "bearer", "BEARER"):
        headers = bearer(f"{scheme} {KEY}")
        assert post_image(keyed_server, headers).status_code == 200
        assert httpx.get(keyed_server.url("/models"), headers=headers).status_code == 200


def test_probes_metrics_and_schema_stay_open(keyed_server: RunningServer) -> None:
    for path in ("/health/live", "/health/ready", "/metrics", "/openapi.json", "/v2", "/v2/health/live",
                 "/v2/health/ready"):
        assert httpx.get(keyed_server.url(path)).status_code == 200, path


def test_a_refused_upload_is_not_read(keyed_server: RunningServer) -> None:
    """401 comes before the body: a huge unauthenticated upload costs nothing."""
    response = httpx.post(
        keyed_server.url("/predict"), content=b"\0" * 4_000_000, headers={"content-type": "image/jpeg"}, timeout=30
    )
    assert response.status_code == 401


def test_no_route_loads_a_model_from_the_request(keyed_server: RunningServer, model_repo: Path) -> None:
    schema = httpx.get(keyed_server.url("/openapi.json")).json()
    routes = {(method.upper(), path) for path, item in schema["paths"].items() for method in item}
    assert routes == KNOWN_ROUTES, routes
    headers = bearer(f"Bearer {KEY}")
    real_model = model_repo / "resnet18" / "1" / "model.onnx"  # a valid ONNX file this server does not serve
    for model in (str(real_model), str(real_model.parent.parent), "resnet18", "/etc/passwd", "file:///etc/passwd", "http://127.0.0.1:9/model.onnx", "../resnet20"):
        response = post_image(keyed_server, headers, params={"model": model})
        assert response.status_code == 404 and response.json()["error"]["code"] == "unknown_model", model
    for model in ("resnet18", "..", "%2e%2e", str(real_model).replace("/", "%2F")):
        for action in ("load", "unload"):
            response = httpx.post(keyed_server.url(f"/v2/repository/models/{model}/{action}"), headers=headers)
            assert 400 <= response.status_code < 500, (model, action, response.text)
    models = httpx.get(keyed_server.url("/models"), headers=headers).json()["models"]
    assert [model["name"] for model in models] == ["resnet20"]
