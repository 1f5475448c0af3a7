"""Fuzzing every query and path parameter against a real server (hypothesis, derandomized, CI-sized).

/predict's ``model``, ``version`` and ``top_k`` (repeated, unknown names too) and the KServe V2
path parameters (model name, version) get random text: any unicode, unicode digits, NUL and the
separators, huge digit strings, long values, invalid UTF-8 bytes. Every answer must be one that
the request deserves (an oracle derives the set of errors from the documented rules: the service
may report any one of them), in the protocol's JSON error shape, with a message of at most
:data:`~hostile.MAX_MESSAGE_CHARS` characters; a request that deserves no error must
succeed. Targets past httptools' 64 KiB limit get the HTTP layer's plain-text 400 instead.

Why a real server and not Starlette's TestClient: at a few milliseconds per request over a
keep-alive connection the budget below costs a few seconds either way, and only the real process
puts uvicorn/httptools' own URL handling (percent-decoding of the path, the 64 KiB target limit,
what reaches ``scope["query_string"]``) in front of the parsers, as in production.

Budget: :data:`EXAMPLES` examples per property (``RESNET_SERVE_FUZZ_EXAMPLES`` widens it locally).
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Iterator
from urllib.parse import parse_qsl, quote, unquote

import httpx
import pytest
from hostile import HTTP_SHAPE, MAX_TARGET_BYTES, PREDICT_SHAPE, V2_SHAPE, encode, error_problem, gradient
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from load import as_file, raw_http_request, send_early
from server import RunningServer, server_fixture

EXAMPLES = int(os.environ.get("RESNET_SERVE_FUZZ_EXAMPLES", "300"))
FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)
MODEL = "resnet20"
CLASSES = 10
DEFAULT_TOP_K = 5
MAX_TOP_K = 1_000_000  # service.doors.predict.MAX_TOP_K
MAX_INT64 = 2**63 - 1
ASCII_DIGITS = re.compile(r"[0-9]+")
PIXELS = bytes(32 * 32 * 3)

#: The message bound the fuzz holds the service to: echoes are cut after escaping (service.parsing.shown).
ESCAPED_ECHO_LIMIT = 400

Deserved = set[tuple[int, str]]


fuzz_server = server_fixture("--max-batch-delay-ms", "1", models=(MODEL,))


@pytest.fixture(scope="module")
def client(fuzz_server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fuzz_server.base_url, timeout=30) as session:
        yield session


# --- what to send ------------------------------------------------------------------------------------

#: Text values: anything, digits of any script, separators and NUL, huge and long values, near-misses.
values: st.SearchStrategy[str | bytes] = st.one_of(
    st.text(max_size=24),
    st.text(st.characters(categories=["Nd"]), min_size=1, max_size=6),
    st.from_regex(r"[0-9]{1,40}", fullmatch=True),
    st.integers(-100, 10**7).map(str),
    st.text(st.sampled_from("\x00\t\r\n %&=+#;/?.\\_-0123456789"), max_size=12),
    st.builds(lambda digit, count: digit * count, st.sampled_from("0179"), st.integers(4_000, 6_000)),
    st.builds(lambda char, count: char * count, st.characters(codec="utf-8"), st.integers(1_000, 25_000)),
    st.binary(max_size=12),  # percent-encoded as is: invalid UTF-8 reaches the parsers as U+FFFD
    st.sampled_from([MODEL, MODEL + "-encoded", "1", "2", "3", "10", "11", "", "007", "01"]),
)
parameter_names = st.one_of(st.sampled_from(["model", "version", "top_k"]), st.text(max_size=8))
parameters = st.lists(st.tuples(parameter_names, values), max_size=5)


def encoded(value: str | bytes) -> str:
    """Percent-encode everything but unreserved characters; dots too, so no client normalises '..'."""
    return quote(value, safe="").replace(".", "%2E")


def plain_int(raw: str) -> int | None:
    """What the service's integer parser accepts: ASCII digits only (None for anything else)."""
    return int(raw) if ASCII_DIGITS.fullmatch(raw) and len(raw) <= 19 else None


# --- what the answer may be ------------------------------------------------------------------------


def predict_deserves(pairs: list[tuple[str, str]]) -> Deserved:
    """The errors /predict may answer for these decoded query pairs (empty: it must succeed)."""
    given_values: dict[str, list[str]] = {}
    for name, value in pairs:
        given_values.setdefault(name, []).append(value)
    deserved: Deserved = set()
    for name in ("model", "version", "top_k"):
        if len(given_values.get(name, [])) > 1:
            deserved.add((422, "invalid_request"))
    model = given_values.get("model", [""])
    if len(model) == 1 and model[0] not in ("", MODEL):
        deserved.add((404, "unknown_model"))
    version = given_values.get("version", [])
    if len(version) == 1:
        number = plain_int(version[0])
        if number is None or not 1 <= number <= MAX_INT64:
            deserved.add((422, "invalid_request"))
        elif number != 1:
            deserved.add((404, "unknown_version"))
    top_k = given_values.get("top_k", [])
    if len(top_k) == 1:  # service.parsing.parse_int's order: not digits, too large, too small; then the classes
        raw = top_k[0]
        if not ASCII_DIGITS.fullmatch(raw):
            deserved.add((422, "invalid_request"))
        elif len(raw) > 19 or int(raw) > MAX_TOP_K:
            deserved.add((422, "bad_top_k"))
        elif int(raw) < 1:
            deserved.add((422, "invalid_request"))
        elif int(raw) > CLASSES:
            deserved.add((422, "bad_top_k"))
    return deserved


def v2_deserves(model: str, version: str | None, infer: bool) -> Deserved | None:
    """The V2 errors for these decoded path parameters; None when routing itself is in play."""
    if not model or "/" in model or version is not None and (not version or "/" in version):
        return None  # an empty segment or a decoded '/' changes which route (if any) matches
    deserved: Deserved = set()
    if model not in (MODEL, MODEL + "-encoded"):
        deserved.add((404, ""))
    elif model != MODEL and infer:
        deserved.add((400, ""))  # the encoded companion takes BYTES, not the pixels sent
    if version is not None:
        number = plain_int(version)
        if number is None or not 1 <= number <= MAX_INT64:
            deserved.add((400, ""))
        elif number != 1:
            deserved.add((404, ""))
    return deserved


def check(response: httpx.Response, deserved: Deserved, shape: str) -> None:
    """``response`` is one of the ``deserved`` errors in ``shape`` (or a success when none is deserved)."""
    status = response.status_code
    event(f"status {status}")  # --hypothesis-show-statistics shows the mix
    assert status < 500, f"{status}: {response.text[:300]}"
    if not deserved:
        assert status == 200, f"expected success, got {status}: {response.text[:300]}"
        return
    try:
        body: object = response.json()
    except ValueError:
        body = None
    problem = error_problem(shape, body, response.content, max_message=ESCAPED_ECHO_LIMIT)
    assert problem is None, f"{status}: {problem}"
    code = body["error"]["code"] if shape == PREDICT_SHAPE else ""  # type: ignore[index]
    assert (status, code) in deserved, f"got {status} {code!r}, deserved one of {sorted(deserved)}: {response.text[:300]}"


# --- the properties -----------------------------------------------------------------------------------


@FUZZ_SETTINGS
@given(pairs=parameters)
@example(pairs=[("model", MODEL), ("version", "1"), ("top_k", "10")])
@example(pairs=[("top_k", "9" * 5000)])  # was a 500
def test_predict_query_parameters_get_only_deserved_answers(client: httpx.Client, pairs: list[tuple[str, str | bytes]]
                                                            ) -> None:
    query = "&".join(f"{encoded(name)}={encoded(value)}" for name, value in pairs)
    body, headers = as_file(small_jpeg(), "fuzz.jpg")
    target = "/predict" + ("?" + query if query else "")
    if len(target) > MAX_TARGET_BYTES:
        event("target over 64 KiB")
        assert_refused_by_the_http_layer(client, "POST", target, body, headers)
        return
    request = client.build_request("POST", target, content=body, headers=headers)
    assert request.url.query == query.encode()  # httpx sent the query exactly as built
    response = client.send(request)
    decoded = parse_qsl(query.encode().decode("latin-1"), keep_blank_values=True)  # as Starlette decodes it
    deserved = predict_deserves(decoded)
    check(response, deserved, PREDICT_SHAPE)
    if not deserved:
        top_k = dict(decoded).get("top_k")
        assert len(response.json()["predictions"]) == (int(top_k) if top_k else DEFAULT_TOP_K)


ENDPOINTS = ["infer", "metadata", "ready", "config"]


@FUZZ_SETTINGS
@given(model=st.one_of(st.just(MODEL), st.just(MODEL + "-encoded"), values), version=st.one_of(st.none(), values),
       endpoint=st.sampled_from(ENDPOINTS))
@example(model=MODEL, version=None, endpoint="infer")  # the successes the oracle expects, whatever is generated
@example(model=MODEL, version="1", endpoint="infer")
@example(model=MODEL + "-encoded", version="01", endpoint="metadata")
@example(model=MODEL, version="2", endpoint="ready")
def test_v2_path_parameters_get_only_deserved_answers(
    client: httpx.Client, model: str | bytes, version: str | bytes | None, endpoint: str
) -> None:
    path = f"/v2/models/{encoded(model)}" + (f"/versions/{encoded(version)}" if version is not None else "")
    path += {"infer": "/infer", "metadata": "", "ready": "/ready", "config": "/config"}[endpoint]
    method, body, headers = ("GET", b"", {})
    if endpoint == "infer":
        method, body = "POST", INFER_HEADER + PIXELS
        headers = {"inference-header-content-length": str(len(INFER_HEADER)), "content-type": "application/octet-stream"}
    if len(path) > MAX_TARGET_BYTES:
        event("target over 64 KiB")
        assert_refused_by_the_http_layer(client, method, path, body, headers)
        return
    request = client.build_request(method, path, content=body, headers=headers)
    assert request.url.raw_path == path.encode()  # httpx did not normalise or re-encode the path
    response = client.send(request)
    decode = lambda value: unquote(encoded(value), errors="replace")
    deserved = v2_deserves(decode(model), None if version is None else decode(version), endpoint == "infer")
    if deserved is None:  # routing decides: any non-5xx answer in the V2 shape
        event(f"routing: status {response.status_code}")
        assert response.status_code < 500, response.text[:300]
        if response.status_code >= 400:
            problem = error_problem(V2_SHAPE, response.json(), response.content, max_message=ESCAPED_ECHO_LIMIT)
            assert problem is None, problem
        return
    if endpoint == "ready" and response.status_code == 400 and response.json().get("ready") is False:
        assert (404, "") in deserved, response.text[:300]  # a well-formed version that is not loaded: "not ready"
        return
    check(response, deserved, V2_SHAPE)


INFER_HEADER = (b'{"inputs":[{"name":"images","datatype":"UINT8","shape":[1,32,32,3],'
                b'"parameters":{"binary_data_size":3072}}]}')
_JPEG: list[bytes] = []


def assert_refused_by_the_http_layer(client: httpx.Client, method: str, target: str, body: bytes,
                                     headers: dict[str, str]) -> None:
    """A target past 64 KiB (httpx will not send one): over a raw socket, httptools' plain-text 400."""
    port = int(str(client.base_url).rstrip("/").rsplit(":", 1)[1])
    answer = asyncio.run(send_early(port, raw_http_request(port, target, body, headers, method), 30))
    # httptools' own URL limit (400) or service/http.py's head limit (431), whichever sees it first.
    assert answer.status in (400, 431), (answer.status, answer.error, answer.body[:200])
    assert error_problem(HTTP_SHAPE, None, answer.body) is None


def small_jpeg() -> bytes:
    if not _JPEG:
        _JPEG.append(encode(gradient(40, 40), "JPEG"))
    return _JPEG[0]


def test_the_oracle_knows_the_documented_rules() -> None:
    """The oracle itself, on the cases the corpus pins (so a wrong oracle cannot pass silently)."""
    assert predict_deserves([]) == set()
    assert predict_deserves([("top_k", "3"), ("version", "1"), ("model", MODEL)]) == set()
    assert predict_deserves([("top_k", "9" * 5000)]) == {(422, "bad_top_k")}
    assert predict_deserves([("top_k", "\u0663")]) == {(422, "invalid_request")}
    assert predict_deserves([("top_k", "0")]) == {(422, "invalid_request")}
    assert predict_deserves([("top_k", "11")]) == {(422, "bad_top_k")}
    assert predict_deserves([("top_k", "1"), ("top_k", "1")]) == {(422, "invalid_request")}
    assert predict_deserves([("version", "99")]) == {(404, "unknown_version")}
    assert predict_deserves([("version", "9" * 30)]) == {(422, "invalid_request")}
    assert predict_deserves([("model", "m" * 60_000)]) == {(404, "unknown_model")}
    assert v2_deserves(MODEL, None, True) == set()
    assert v2_deserves("x", "0", False) == {(404, ""), (400, "")}
    assert v2_deserves(MODEL, "a/b", True) is None
