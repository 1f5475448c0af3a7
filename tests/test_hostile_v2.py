"""Hostile KServe V2 traffic on a real server: gRPC ModelInfer messages, and what one request may cost.

* gRPC: hostile ``ModelInferRequest`` messages built with tritonclient's own generated stub (lying
  ``raw_input_contents`` counts, typed contents with wrong counts or out-of-range values, 10^9-element
  and 8 x (2^31-1) shapes, huge or mistyped classification parameters, 60,000-character names) get
  INVALID_ARGUMENT or NOT_FOUND with a short message, never INTERNAL or UNKNOWN; the server stays
  up, ready and serving, and its RSS stays bounded. Messages protobuf cannot even decode (invalid
  UTF-8 in a string field, truncated or garbage bytes) are sent raw through a generic stub.
* Cost: one request at a time, on both transports, the RSS it adds must stay within what the byte
  budget charged it (``BODY_OVERHEAD`` x charge + :data:`RSS_SLACK`): the budget is what bounds the
  process under concurrency (``service.limits.budget.rss_bound``), so a request that holds 50x its charge
  breaks that bound N-fold with N such requests in flight.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from dataclasses import dataclass

import grpc
import httpx
import pytest
from hostile import MAX_MESSAGE_CHARS, encode, framed, gradient, jpeg_claiming, png_bomb
from server import GrpcServer, grpc_server_fixture
from tritonclient.grpc import service_pb2, service_pb2_grpc
from watch import watched

from service.doors.v2.grpc_codec import TYPED_ELEMENT_BYTES
from service.doors.v2.rest import JSON_EXPANSION
from service.limits.budget import BODY_OVERHEAD

MAX_UPLOAD = 8 * 1024 * 1024
MAX_FILES = 16
PEAK_RSS_LIMIT = 1_500_000_000
#: RSS noise one request may add beyond its charge (allocator granularity, response, bookkeeping).
RSS_SLACK = 32 * 1024 * 1024
#: The longest the event loop may be unavailable while one hostile body is handled.
MAX_STALL_S = 1.0
PIXELS = bytes(32 * 32 * 3)
INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
Request = service_pb2.ModelInferRequest


#: resnet20 with the hostile corpus's limits; the client's channel takes messages of up to 64 MiB.
hostile_grpc_server = grpc_server_fixture(
    "--max-upload-bytes", str(MAX_UPLOAD), "--max-files", str(MAX_FILES), "--max-batch-delay-ms", "2",
    max_message_bytes=64 << 20,
)


def infer(model: str = "resnet20", name: str = "images", datatype: str = "UINT8",
          shape: tuple[int, ...] = (1, 32, 32, 3), raw: list[bytes] | None = None, version: str = "",
          classification: tuple[str, object] | None = None, **contents: list[object]) -> Request:
    """A ModelInferRequest with one input: raw contents (``raw``) or typed ``contents`` fields."""
    request = Request(model_name=model, model_version=version)
    tensor = request.inputs.add(name=name, datatype=datatype, shape=list(shape))
    for field_name, items in contents.items():
        getattr(tensor.contents, field_name).extend(items)
    for blob in raw or []:
        request.raw_input_contents.append(blob)
    if classification is not None:
        kind, value = classification
        output = request.outputs.add(name="probabilities")
        setattr(output.parameters["classification"], kind, value)
    return request


def encoded(*images: bytes, shape: tuple[int, ...] | None = None) -> Request:
    return infer("resnet20-encoded", "image_bytes", "BYTES", shape or (len(images), 1), raw=[framed(*images)])


MAX_DIMS = (2**31 - 1,) * 8
#: (name, request, expected status code, words in the details)
GRPC_CASES: list[tuple[str, Request, grpc.StatusCode, str]] = [
    ("two raw contents for one input", infer(raw=[PIXELS, PIXELS]), INVALID, "2 raw_input_contents for 1 inputs"),
    ("raw contents one byte short", infer(raw=[PIXELS[:-1]]), INVALID, "3071 bytes of data"),
    ("raw contents one byte long", infer(raw=[PIXELS + b"x"]), INVALID, "3073 bytes of data"),
    ("typed: 10 values for 3,072", infer(uint_contents=[1] * 10), INVALID, "10 uint_contents for a shape of 3072"),
    ("typed: 300 as UINT8", infer(uint_contents=[300] * 3072), INVALID, "outside the range of UINT8"),
    ("typed: 2^32-1 as UINT8", infer(uint_contents=[2**32 - 1] * 3072), INVALID, "outside the range of UINT8"),
    ("typed: the wrong contents field", infer(fp32_contents=[0.5] * 3072), INVALID, "0 uint_contents"),
    ("typed: 2^64-1 as UINT64", infer(datatype="UINT64", uint64_contents=[2**64 - 1] * 3072), INVALID,
     "expects UINT8"),  # refused from its declared datatype, before 3,072 values are converted
    ("typed: NaN FP32 pixels", infer(datatype="FP32", fp32_contents=[float("nan")] * 3072), INVALID, "expects UINT8"),
    ("typed: 1 bytes_contents for 2", infer("resnet20-encoded", "image_bytes", "BYTES", (2, 1), bytes_contents=[b"x"]),
     INVALID, "1 bytes_contents for a shape of 2"),
    ("typed: 100,000 empty images", infer("resnet20-encoded", "image_bytes", "BYTES", (100_000, 1),
                                          bytes_contents=[b""] * 100_000), INVALID, "more than 16 images"),
    # Shapes are checked against the model before any data is looked at.
    ("shape 10^9 images, raw", infer(shape=(10**9, 32, 32, 3), raw=[PIXELS]), INVALID, "exceed the queue size"),
    ("shape 10^9 elements, typed", infer(shape=(10**9, 1, 1, 1), uint_contents=[1]), INVALID,
     "expected [N, 32, 32, 3]"),
    ("shape 8 x (2^31-1), raw", infer(shape=MAX_DIMS, raw=[PIXELS]), INVALID, "expected [N, 32, 32, 3]"),
    ("shape 8 x (2^31-1), typed", infer(shape=MAX_DIMS, uint_contents=[1]), INVALID, "expected [N, 32, 32, 3]"),
    ("shape 8 x (2^31-1), bytes", infer("resnet20-encoded", "image_bytes", "BYTES", MAX_DIMS, bytes_contents=[b"x"]),
     INVALID, "expected [N] or [N, 1]"),
    ("shape negative", infer(shape=(-1, 32, 32, 3), raw=[PIXELS]), INVALID, "outside 0..2147483647"),
    ("shape int64 max", infer(shape=(2**63 - 1, 32, 32, 3), raw=[PIXELS]), INVALID, "outside 0..2147483647"),
    ("shape 9 dimensions", infer(shape=(1,) * 9, raw=[b"\x00"]), INVALID, "9 dimensions"),
    ("datatype FP32", infer(datatype="FP32", raw=[bytes(4 * 3072)]), INVALID, "expects UINT8"),
    ("datatype unknown", infer(datatype="UINT7", raw=[PIXELS]), INVALID, "unknown datatype"),
    ("datatype empty", infer(datatype="", raw=[PIXELS]), INVALID, "unknown datatype"),
    ("classification int64 max", infer(raw=[PIXELS], classification=("int64_param", 2**63 - 1)), INVALID,
     "classification must be between 1 and 10"),
    ("classification uint64 max", infer(raw=[PIXELS], classification=("uint64_param", 2**64 - 1)), INVALID,
     "classification must be between 1 and 10"),
    ("classification negative", infer(raw=[PIXELS], classification=("int64_param", -5)), INVALID, "must be positive"),
    ("classification a string", infer(raw=[PIXELS], classification=("string_param", "3")), INVALID,
     "must be an integer"),
    ("classification a bool", infer(raw=[PIXELS], classification=("bool_param", True)), INVALID, "must be an integer"),
    ("classification a double", infer(raw=[PIXELS], classification=("double_param", 3.0)), INVALID,
     "must be an integer"),
    ("model 60,000 characters", infer(model="m" * 60_000, raw=[PIXELS]), NOT_FOUND, "(60000 characters)"),
    ("model NUL", infer(model="\x00", raw=[PIXELS]), NOT_FOUND, "no model named"),
    ("model 1,000 CJK characters", infer(model="\u732b" * 1000, raw=[PIXELS]), NOT_FOUND, "(1000 characters)"),
    ("model empty", infer(model="", raw=[PIXELS]), NOT_FOUND, "no model named ''"),
    ("version 60,000 characters", infer(version="x" * 60_000, raw=[PIXELS]), INVALID, "(60000 characters)"),
    ("version arabic-indic digit", infer(version="\u0663", raw=[PIXELS]), INVALID, "model version"),
    ("version 10^30", infer(version="1" + "0" * 30, raw=[PIXELS]), INVALID, "model version"),
    ("version not loaded", infer(version="7", raw=[PIXELS]), NOT_FOUND, "no version 7"),
    ("bytes prefix 4 GiB", infer("resnet20-encoded", "image_bytes", "BYTES", (1, 1),
                                 raw=[struct.pack("<I", 2**32 - 1) + b"abc"]), INVALID, "claims 4294967295 bytes"),
    ("bytes prefix cut off", infer("resnet20-encoded", "image_bytes", "BYTES", (1, 1), raw=[b"\x05\x00"]), INVALID,
     "length prefix is cut off"),
    ("png bomb 30000x30000", encoded(png_bomb()), INVALID, "more pixels than the limit"),
    ("jpeg claiming 65535x65535", encoded(jpeg_claiming(65535, 65535)), INVALID, "more pixels than the limit"),
    ("no input", Request(model_name="resnet20"), INVALID, "exactly one input"),
]


def call(stub: service_pb2_grpc.GRPCInferenceServiceStub, request: Request) -> tuple[grpc.StatusCode, str]:
    try:
        stub.ModelInfer(request, timeout=60)
    except grpc.RpcError as error:
        return error.code(), error.details() or ""
    return grpc.StatusCode.OK, ""


def valid_request() -> Request:
    return encoded(encode(gradient(64, 64), "JPEG"))


def test_hostile_grpc_messages_get_documented_codes_and_the_server_stays_ready(
    hostile_grpc_server: GrpcServer,
) -> None:
    server, stub = hostile_grpc_server.server, hostile_grpc_server.stub
    log_start = len(server.log())
    problems = []
    with watched(server, liveness=False) as watch:
        for name, request, expected, words in GRPC_CASES:
            code, details = call(stub, request)
            if code != expected or words not in details or len(details) > MAX_MESSAGE_CHARS:
                problems.append(f"{name}: {code.name} {details[:200]!r} (expected {expected.name}, {words!r})")
            if call(stub, valid_request())[0] != grpc.StatusCode.OK:  # the door still serves after each
                problems.append(f"after {name}: a valid request failed")
    print(f"\nRSS before {watch.rss_before / 1e6:.0f} MB, peak {watch.rss_peak / 1e6:.0f} MB over "
          f"{len(GRPC_CASES)} gRPC cases")
    assert not problems, "\n".join(problems)
    assert server.alive() and stub.ServerReady(service_pb2.ServerReadyRequest(), timeout=10).ready
    assert watch.rss_peak < PEAK_RSS_LIMIT
    log = server.log()[log_start:]
    assert "Traceback" not in log, log[-3000:]


#: Wire bytes protobuf cannot parse into a ModelInferRequest (proto3 string fields must be UTF-8).
UNDECODABLE = {
    "invalid utf-8 model name": b"\x0a\x02\xff\xfe",  # field 1 (model_name), 2 bytes
    "invalid utf-8 input name": b"\x0a\x08resnet20" + b"\x2a\x04\x0a\x02\xc3\x28",  # inputs[0].name = C3 28
    "truncated message": infer(raw=[PIXELS]).SerializeToString()[:-100],
    "garbage": b"\xff" * 64,
}


# Requests are parsed inside the handler's error mapping: undecodable bytes are INVALID_ARGUMENT.
@pytest.mark.parametrize("wire", UNDECODABLE.values(), ids=list(UNDECODABLE))
def test_undecodable_messages_are_invalid_argument(hostile_grpc_server: GrpcServer, wire: bytes) -> None:
    raw_infer = hostile_grpc_server.channel.unary_unary(
        "/inference.GRPCInferenceService/ModelInfer", request_serializer=lambda blob: blob,
        response_deserializer=lambda blob: blob,
    )
    with pytest.raises(grpc.RpcError) as refused:
        raw_infer(wire, timeout=30)
    assert refused.value.code() == INVALID, (refused.value.code(), refused.value.details())
    assert "DecodeError" not in hostile_grpc_server.server.log()


# --- what one request costs -------------------------------------------------------------------------


@dataclass(frozen=True)
class Costly:
    """One large hostile request and what the byte budget charges it."""

    name: str
    send: Callable[[GrpcServer], object]
    charge: int
    bounded_stall: bool = False  # also assert the event loop stays available (MAX_STALL_S)


def rest(path: str, body: bytes, header_length: int | None = None) -> Callable[[GrpcServer], object]:
    headers = {"content-type": "application/json" if header_length is None else "application/octet-stream"}
    if header_length is not None:
        headers["inference-header-content-length"] = str(header_length)
    return lambda target: httpx.post(target.server.url(path), content=body, headers=headers, timeout=120).status_code


def binary(tensor: dict, tail: bytes) -> tuple[bytes, int]:
    header = json.dumps({"inputs": [tensor]}).encode()
    return header + tail, len(header)


def grpc_send(request: Request) -> Callable[[GrpcServer], object]:
    return lambda target: call(target.stub, request)[0]


MB4 = 4 * 1024 * 1024
EMPTY_ELEMENTS = MB4 // 4  # 1,048,576 zero-length BYTES elements in 4 MiB
EMPTY_LISTS = b"[" + b"[]," * (MB4 // 3 - 1) + b"[]]"
JSON_ZEROS = b'{"inputs":[{"name":"images","datatype":"UINT8","shape":[682,32,32,3],"data":[' + b"0," * (
    682 * 3072 - 1) + b"0]}]}"
PIXEL_BODY, PIXEL_HEADER = binary({"name": "images", "datatype": "UINT8", "shape": [1365, 32, 32, 3],
                                               "parameters": {"binary_data_size": 1365 * 3072}}, bytes(1365 * 3072))
BYTES_BODY, BYTES_HEADER = binary({
    "name": "image_bytes", "datatype": "BYTES", "shape": [EMPTY_ELEMENTS, 1],
    "parameters": {"binary_data_size": 4 * EMPTY_ELEMENTS}}, bytes(4 * EMPTY_ELEMENTS))
TYPED_ZEROS = infer(shape=(2604, 32, 32, 3), uint_contents=[0] * (2604 * 3072))
GRPC_EMPTY = infer("resnet20-encoded", "image_bytes", "BYTES", (EMPTY_ELEMENTS, 1), raw=[bytes(4 * EMPTY_ELEMENTS)])

COSTLY = [
    Costly("REST JSON 4 MiB of [[],[],...]", rest("/v2/models/resnet20/infer", EMPTY_LISTS), JSON_EXPANSION * len(
        EMPTY_LISTS)),
    Costly("REST JSON 2 M zero pixels", rest("/v2/models/resnet20/infer", JSON_ZEROS), JSON_EXPANSION * len(JSON_ZEROS)),
    Costly("REST binary 4 MiB of pixels", rest("/v2/models/resnet20/infer", PIXEL_BODY, PIXEL_HEADER),
           JSON_EXPANSION * PIXEL_HEADER + len(PIXEL_BODY) - PIXEL_HEADER),
    # Input shapes are checked against the model before BYTES are split or typed contents converted.
    Costly("REST binary 1 M empty BYTES elements", rest("/v2/models/resnet20-encoded/infer", BYTES_BODY, BYTES_HEADER),
           JSON_EXPANSION * BYTES_HEADER + len(BYTES_BODY) - BYTES_HEADER, bounded_stall=True),
    Costly("gRPC raw 1 M empty BYTES elements", grpc_send(GRPC_EMPTY), 4 * EMPTY_ELEMENTS, bounded_stall=True),
    # Typed contents are charged per value (TYPED_ELEMENT_BYTES) on top of the message's bytes.
    Costly("gRPC typed 8 M zero pixels", grpc_send(TYPED_ZEROS),
           TYPED_ZEROS.ByteSize() + TYPED_ELEMENT_BYTES * len(TYPED_ZEROS.inputs[0].contents.uint_contents)),
]


@pytest.mark.parametrize("costly", COSTLY, ids=lambda c: c.name)
def test_one_request_holds_no_more_than_its_byte_budget_charge(
    hostile_grpc_server: GrpcServer, costly: Costly
) -> None:
    with watched(hostile_grpc_server.server, interval_s=0.005) as watch:
        answer = costly.send(hostile_grpc_server)
    grown = watch.rss_growth
    bound = BODY_OVERHEAD * costly.charge + RSS_SLACK
    print(f"\n{costly.name}: answer {answer}, charged {costly.charge / 1e6:.1f} MB, RSS +{grown / 1e6:.0f} MB "
          f"(bound {bound / 1e6:.0f} MB), /health/live waited up to {watch.stall_s * 1000:.0f} ms")
    assert answer not in (500, 503, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), answer
    assert grown <= bound, f"RSS grew {grown / 1e6:.0f} MB for a {costly.charge / 1e6:.1f} MB charge"
    if costly.bounded_stall:
        assert watch.stall_s <= MAX_STALL_S, f"the event loop was unavailable for {watch.stall_s:.1f} s"
    assert hostile_grpc_server.server.alive()
