"""Hostile request headers on a real server with an API key: Authorization values no client sends,
repeated credentials, and a header far larger than any request needs.

test_hostile_auth.py covers wrong keys and schemes; this covers what an attacker writes on the wire:
100 KB and 1 MB credentials, bytes that are not UTF-8 or not ASCII, 10,000 Authorization headers,
NUL and obsolete line folding (refused by the HTTP layer), gRPC metadata past grpc's 16 KiB limit.
Each gets a 4xx (401 with ``WWW-Authenticate: Bearer`` once the application sees it), never a 5xx.
"""

from __future__ import annotations

import asyncio
import json

import grpc
import pytest
from hostile import HTTP_SHAPE, PREDICT_SHAPE, V2_SHAPE, encode, error_problem, gradient
from load import RawAnswer, as_file, send_early
from server import GrpcServer, grpc_server_fixture
from tritonclient.grpc import service_pb2
from watch import watched

KEY = "hostile-headers-key-0123456789"
PIXELS = bytes(32 * 32 * 3)
V2_HEADER = (b'{"inputs":[{"name":"images","datatype":"UINT8","shape":[1,32,32,3],'
             b'"parameters":{"binary_data_size":3072}}]}')


keyed_grpc_server = grpc_server_fixture(env={"RESNET_SERVE_API_KEY": KEY})


def request(door: str, header_lines: list[bytes]) -> bytes:
    """A whole POST to /predict (a small JPEG) or V2 infer (one image of pixels) with these extra header lines."""
    if door == "predict":
        body, headers = as_file(encode(gradient(40, 40), "JPEG"))
        target, content_type = b"/predict", headers["content-type"].encode()
    else:
        body, target, content_type = V2_HEADER + PIXELS, b"/v2/models/resnet20/infer", b"application/octet-stream"
        header_lines = [b"Inference-Header-Content-Length: %d" % len(V2_HEADER), *header_lines]
    head = [b"POST " + target + b" HTTP/1.1", b"Host: 127.0.0.1", b"Connection: close",
            b"Content-Length: %d" % len(body), b"Content-Type: " + content_type, *header_lines]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def send(server: GrpcServer, door: str, header_lines: list[bytes]) -> RawAnswer:
    return asyncio.run(send_early(server.server.port, request(door, header_lines), 60))


def parsed(answer: RawAnswer) -> object:
    try:
        return json.loads(answer.body)
    except ValueError:
        return None


def auth(value: bytes) -> list[bytes]:
    return [b"Authorization: " + value]


#: Authorization values the application sees: each is a wrong credential (401).
WRONG = {
    "10 KB bearer": auth(b"Bearer " + b"a" * 10_000),
    "invalid utf-8": auth(b"Bearer \xff\xfe\xfd"),
    "latin-1 byte in the key": auth(b"Bearer " + KEY.encode()[:-1] + b"\xe9"),
    "the key and a latin-1 byte": auth(b"Bearer " + KEY.encode() + b"\xe9"),
    "empty value": auth(b""),
    "the key without a scheme": auth(KEY.encode()),
    "tab instead of a space": auth(b"Bearer\t" + KEY.encode()),
}
#: Heads past service.doors.http.MAX_HEAD_BYTES: 431 before the application runs, whether they arrive in
#: one read or many.
HUGE = {
    "100 KB bearer": auth(b"Bearer " + b"a" * 100_000),
    "1 MB bearer": auth(b"Bearer " + b"a" * 1_000_000),
    "10,000 wrong Authorization headers": auth(b"Bearer wrong") * 10_000,
}
#: Header bytes the HTTP layer refuses before the application runs (its plain-text 400).
MALFORMED = {
    "NUL in the value": auth(b"Bearer " + KEY.encode()[:4] + b"\x00" + KEY.encode()[4:]),
    "obsolete line folding": [b"Authorization: Bearer", b" " + KEY.encode()],
    "no colon": [b"Authorization Bearer " + KEY.encode()],
}


@pytest.mark.parametrize("door", ["predict", "v2"])
@pytest.mark.parametrize("lines", WRONG.values(), ids=list(WRONG))
def test_hostile_credentials_get_401(keyed_grpc_server: GrpcServer, door: str, lines: list[bytes]) -> None:
    answer = send(keyed_grpc_server, door, lines)
    assert answer.status == 401, (answer.status, answer.error, answer.body[:200])
    assert answer.headers.get("www-authenticate") == "Bearer"
    assert error_problem(PREDICT_SHAPE if door == "predict" else V2_SHAPE, parsed(answer), answer.body) is None
    assert KEY.encode() not in answer.body


@pytest.mark.parametrize("door", ["predict", "v2"])
@pytest.mark.parametrize("lines", HUGE.values(), ids=list(HUGE))
def test_huge_request_heads_are_refused_before_the_application(keyed_grpc_server: GrpcServer, door: str, lines: list[bytes]) -> None:
    answer = send(keyed_grpc_server, door, lines)
    assert answer.status == 431, (answer.status, answer.error, answer.body[:200])
    assert KEY.encode() not in answer.body
    assert keyed_grpc_server.server.alive()


@pytest.mark.parametrize("door", ["predict", "v2"])
@pytest.mark.parametrize("lines", MALFORMED.values(), ids=list(MALFORMED))
def test_malformed_header_lines_are_refused_by_the_http_layer(keyed_grpc_server: GrpcServer, door: str, lines: list[bytes]) -> None:
    answer = send(keyed_grpc_server, door, lines)
    assert answer.status == 400, (answer.status, answer.error, answer.body[:200])
    assert error_problem(HTTP_SHAPE, parsed(answer), answer.body) is None


def test_the_right_key_still_works_on_both_transports(keyed_grpc_server: GrpcServer) -> None:
    for door in ("predict", "v2"):
        assert send(keyed_grpc_server, door, auth(b"Bearer " + KEY.encode())).status == 200, door
    assert infer_over_grpc(keyed_grpc_server, (("authorization", f"Bearer {KEY}"),)) == grpc.StatusCode.OK


def infer_over_grpc(keyed_grpc_server: GrpcServer, metadata: tuple[tuple[str, str | bytes], ...]) -> grpc.StatusCode:
    message = service_pb2.ModelInferRequest(model_name="resnet20")
    message.inputs.add(name="images", datatype="UINT8", shape=[1, 32, 32, 3])
    message.raw_input_contents.append(PIXELS)
    try:
        keyed_grpc_server.stub.ModelInfer(message, metadata=metadata, timeout=30)
    except grpc.RpcError as error:
        return error.code()
    return grpc.StatusCode.OK


GRPC_METADATA = {
    "7 KB wrong key": ((("authorization", "Bearer " + "a" * 7000),), grpc.StatusCode.UNAUTHENTICATED),
    "100 KB key": ((("authorization", "Bearer " + "a" * 100_000),), grpc.StatusCode.RESOURCE_EXHAUSTED),
    "binary metadata": ((("authorization-bin", b"\xff\xfe" + KEY.encode()),), grpc.StatusCode.UNAUTHENTICATED),
    "no scheme": ((("authorization", KEY),), grpc.StatusCode.UNAUTHENTICATED),
}


@pytest.mark.parametrize(("metadata", "expected"), GRPC_METADATA.values(), ids=list(GRPC_METADATA))
def test_hostile_grpc_credentials_are_refused(keyed_grpc_server: GrpcServer, metadata: tuple, expected: grpc.StatusCode) -> None:
    """100 KB of metadata is refused by grpc itself (16 KiB hard limit); the rest by the API key check."""
    assert infer_over_grpc(keyed_grpc_server, metadata) == expected
    assert keyed_grpc_server.server.alive()


# Two credentials are ambiguous (RFC 9110: Authorization is not a list header): both doors refuse them.
@pytest.mark.parametrize("door", ["rest", "grpc"])
def test_repeated_credentials_are_refused(keyed_grpc_server: GrpcServer, door: str) -> None:
    if door == "rest":
        answer = send(keyed_grpc_server, "predict", auth(b"Bearer " + KEY.encode()) + auth(b"Bearer wrong"))
        assert answer.status == 401, answer.body[:200]
    else:
        metadata = (("authorization", "Bearer wrong"), ("authorization", f"Bearer {KEY}"))
        assert infer_over_grpc(keyed_grpc_server, metadata) == grpc.StatusCode.UNAUTHENTICATED


HEADER_BYTES = 48_000_000


# service/http.py bounds the request head (uvicorn's httptools protocol has no limit of its own): 431.
def test_a_huge_header_is_refused_without_being_buffered(keyed_grpc_server: GrpcServer) -> None:
    with watched(keyed_grpc_server.server) as watch:
        answer = send(keyed_grpc_server, "predict", [b"X-Padding: " + b"p" * HEADER_BYTES])
    print(f"\n{HEADER_BYTES / 1e6:.0f} MB header: status {answer.status}, RSS +{watch.rss_growth / 1e6:.0f} MB, "
          f"/health/live waited up to {watch.stall_s * 1000:.0f} ms")
    assert keyed_grpc_server.server.alive()
    assert answer.status == 0 or 400 <= answer.status < 500, answer.status  # refused, or the connection closed
    assert watch.stall_s < 1.0, f"the event loop was unavailable for {watch.stall_s:.1f} s"
    assert watch.rss_growth < 16_000_000, f"RSS grew {watch.rss_growth / 1e6:.0f} MB"


#: Requests the HTTP layer refuses from their head, each followed by a 3 MB body the server never reads.
REFUSED_HEADS = {
    "url over the head limit": (b"POST /predict?model=" + b"%E0%A3%92" * 12_000 + b" HTTP/1.1", (400, 431)),
    "header over the head limit": (b"POST /predict HTTP/1.1\r\nX-Padding: " + b"p" * 100_000, (431,)),
    "unparsable header line": (b"POST /predict HTTP/1.1\r\nBad Header Line", (400,)),
}


@pytest.mark.parametrize("head, statuses", REFUSED_HEADS.values(), ids=list(REFUSED_HEADS))
def test_a_refusal_reaches_a_client_that_is_still_sending(keyed_grpc_server: GrpcServer, head: bytes,
                                                          statuses: tuple[int, ...]) -> None:
    """The connection is closed lingering (service/http.py): a plain close with 3 MB unread makes the
    kernel reset it, and the client lost the answer in 133 of 150 tries."""
    body = b"x" * 3_000_000
    request = head + b"\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    answers = [asyncio.run(send_early(keyed_grpc_server.server.port, request, 30)) for _ in range(15)]
    assert [(a.status in statuses, a.error) for a in answers] == [(True, None)] * len(answers), \
        [(a.status, a.error) for a in answers]
    assert keyed_grpc_server.server.alive()
