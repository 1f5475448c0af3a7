"""The V2 wire parsers are total: every malformed request is a 400 that names the field, never a crash.

Cases are data: (name, JSON header, binary tail, expected words in the message). Also checks the
JSON expansion bound the REST door charges against the byte budget, on hostile JSON shapes.
"""

from __future__ import annotations

import json
import struct
import tracemalloc

import numpy as np
import pytest

from service.doors.v2.json_codec import parse_infer_request
from service.doors.v2.rest import JSON_EXPANSION
from service.doors.v2.tensors import join_bytes_elements, split_bytes_elements
from service.errors import ServiceError
from service.parsing import parse_int, shown


def tensor(name: str = "images", datatype: str = "UINT8", shape: object = (1, 2, 2, 3), **extra: object) -> dict:
    return {"name": name, "datatype": datatype, "shape": list(shape) if isinstance(shape, tuple) else shape, **extra}


def body(*inputs: dict, **extra: object) -> bytes:
    return json.dumps({"inputs": list(inputs), **extra}).encode()


def binary(header: bytes, tail: bytes) -> tuple[bytes, int]:
    return header + tail, len(header)


PIXELS = list(range(12))
JPEG_LIKE = b"\xff\xd8 not really a jpeg"
FRAMED = struct.pack("<I", len(JPEG_LIKE)) + JPEG_LIKE

MALFORMED: list[tuple[str, bytes, int | None, str]] = [
    ("not json", b"{inputs: nope", None, "not valid JSON"),
    ("deeply nested json", b"[" * 100_000 + b"]" * 100_000, None, "not valid JSON"),
    ("huge integer", b'{"inputs": [{"shape": [' + b"9" * 5000 + b"]}]}", None, "not valid JSON"),
    ("not an object", b"[1, 2]", None, "must be a JSON object"),
    ("unknown top-level field", body(tensor(data=PIXELS), typo=1), None, "unknown field"),
    ("no inputs", b"{}", None, "inputs must be a non-empty list"),
    ("inputs not a list", json.dumps({"inputs": {"a": 1}}).encode(), None, "inputs must be a non-empty list"),
    ("input not an object", body("images"), None, "must be an object"),  # type: ignore[arg-type]
    ("name missing", json.dumps({"inputs": [{"datatype": "UINT8", "shape": [1], "data": [1]}]}).encode(), None,
     "name must be a string"),
    ("unknown datatype", body(tensor(datatype="STRING", data=PIXELS)), None, "unknown datatype"),
    ("datatype not a string", body(tensor(datatype=7, data=PIXELS)), None, "unknown datatype"),
    ("shape not a list", body(tensor(shape="1,2", data=PIXELS)), None, "shape must be a list"),
    ("negative dimension", body(tensor(shape=[-1, 2, 2, 3], data=PIXELS)), None, "outside 0.."),
    ("float dimension", body(tensor(shape=[1.5, 2, 2, 3], data=PIXELS)), None, "expected an integer"),
    ("bool dimension", body(tensor(shape=[True, 2, 2, 3], data=PIXELS)), None, "expected an integer"),
    ("too many dimensions", body(tensor(shape=[1] * 9, data=[1])), None, "dimensions"),
    ("10^9 elements, little data", body(tensor(shape=[1000, 1000, 1000, 1], data=PIXELS)), None,
     "more than the request can carry"),
    ("data size mismatch", body(tensor(data=PIXELS[:-1])), None, "values for shape"),
    ("ragged data", body(tensor(shape=[2, 2], data=[[1, 2], [3]])), None, "rectangular"),
    ("strings as UINT8", body(tensor(shape=[2], data=["a", "b"])), None, "must be integers"),
    ("floats as UINT8", body(tensor(shape=[2], data=[1.5, 2.0])), None, "must be integers"),
    ("UINT8 out of range", body(tensor(shape=[2], data=[0, 256])), None, "outside the range"),
    ("int beyond int64", body(tensor(shape=[1], datatype="INT64", data=[2**70])), None, "data"),
    ("both data and binary", *binary(body(tensor(data=PIXELS, parameters={"binary_data_size": 12})), bytes(12)),
     "both data and binary_data_size"),
    ("neither data nor binary", body(tensor()), None, "neither data nor parameters.binary_data_size"),
    ("lying binary_data_size (too big)", *binary(body(tensor(parameters={"binary_data_size": 99})), bytes(12)),
     "only 12 bytes of binary data remain"),
    ("lying binary_data_size (too small)", *binary(body(tensor(parameters={"binary_data_size": 6})), bytes(12)),
     "bytes of data for shape"),
    ("binary left over", *binary(body(tensor(parameters={"binary_data_size": 12})), bytes(20)),
     "not claimed by any input"),
    ("negative binary_data_size", *binary(body(tensor(parameters={"binary_data_size": -1})), bytes(12)), "outside 0.."),
    ("header length past the end", body(tensor(data=PIXELS)), 10**6, "body has only"),
    ("length prefix past the end", *binary(body(tensor("image_bytes", "BYTES", [1], parameters={"binary_data_size": 10})),
                                           struct.pack("<I", 1000) + b"abcdef"), "claims 1000 bytes"),
    ("length prefix cut off", *binary(body(tensor("image_bytes", "BYTES", [1], parameters={"binary_data_size": 2})),
                                      b"\x05\x00"), "length prefix is cut off"),
    ("fewer BYTES elements than shape", *binary(body(tensor("image_bytes", "BYTES", [2], parameters={
        "binary_data_size": len(FRAMED)})), FRAMED), "1 BYTES elements for a shape of 2"),
    ("more BYTES elements than shape", *binary(body(tensor("image_bytes", "BYTES", [1], parameters={
        "binary_data_size": 2 * len(FRAMED)})), FRAMED * 2), "after the last of 1 elements"),
    ("BYTES JSON not strings", body(tensor("image_bytes", "BYTES", [1], data=[3])), None, "must be strings"),
    ("bad base64", body(tensor("image_bytes", "BYTES", [1], data=["***"], parameters={"content_type": "base64"})),
     None, "not valid base64"),
    ("outputs not a list", body(tensor(data=PIXELS), outputs={"name": "probabilities"}), None, "outputs must be a list"),
    ("output without name", body(tensor(data=PIXELS), outputs=[{}]), None, "must be an object with a name"),
    ("classification not an int", body(tensor(data=PIXELS), outputs=[{"name": "p", "parameters": {
        "classification": "3"}}]), None, "expected an integer"),
    ("binary_data not a bool", body(tensor(data=PIXELS), outputs=[{"name": "p", "parameters": {
        "binary_data": "yes"}}]), None, "must be true or false"),
    ("binary_data_output not a bool", body(tensor(data=PIXELS), parameters={"binary_data_output": 1}), None,
     "must be true or false"),
    ("id not a string", body(tensor(data=PIXELS), id=5), None, "id must be a string"),
]


@pytest.mark.parametrize(("raw", "header_length", "words"), [c[1:] for c in MALFORMED], ids=[c[0] for c in MALFORMED])
def test_malformed_requests_are_400_naming_the_problem(raw: bytes, header_length: int | None, words: str) -> None:
    with pytest.raises(ServiceError) as caught:
        parse_infer_request(raw, header_length)
    assert caught.value.status == 400
    assert words in caught.value.message, caught.value.message
    assert len(caught.value.message) < 600


def test_well_formed_json_and_binary_requests_parse() -> None:
    pixels = np.arange(12, dtype=np.uint8).reshape(1, 2, 2, 3)
    as_json = parse_infer_request(body(tensor(data=pixels.tolist()), id="r1"), None)
    raw, length = binary(body(tensor(parameters={"binary_data_size": 12})), pixels.tobytes())
    as_binary = parse_infer_request(raw, length)
    for call in (as_json, as_binary):
        (only,) = call.inputs
        assert only.array is not None and np.array_equal(only.array, pixels) and only.array.dtype == np.uint8
    assert as_json.id == "r1"
    raw, length = binary(
        body(tensor("image_bytes", "BYTES", [2, 1], parameters={"binary_data_size": 2 * len(FRAMED)}),
             outputs=[{"name": "probabilities", "parameters": {"classification": 3, "binary_data": True}}]),
        FRAMED * 2,
    )
    call = parse_infer_request(raw, length)
    assert [bytes(e) for e in call.inputs[0].elements or []] == [JPEG_LIKE, JPEG_LIKE]
    assert call.outputs is not None and call.outputs[0].classification == 3 and call.outputs[0].binary is True


@pytest.mark.parametrize("lengths", [[], [0], [5, 0, 7], [1 << 16]])
def test_bytes_framing_round_trips(lengths: list[int]) -> None:
    elements = [bytes([i % 251]) * n for i, n in enumerate(lengths)]
    framed = join_bytes_elements(elements)
    assert [bytes(e) for e in split_bytes_elements(framed, len(elements), where="x")] == elements


#: JSON shapes that build the most Python objects per byte (the REST door charges JSON_EXPANSION per byte).
HOSTILE_JSON = {
    "small ints": "[" + ",".join(["7"] * 100_000) + "]",
    "nested pixel rows": json.dumps([[[1, 2, 3]] * 100] * 300),
    "empty lists": "[" + ",".join(["[]"] * 100_000) + "]",
    "empty objects": "[" + ",".join(["{}"] * 100_000) + "]",
    "lists of one zero": "[" + ",".join(["[0]"] * 100_000) + "]",
    "floats": "[" + ",".join(["0.5"] * 100_000) + "]",
    "large ints": "[" + ",".join(["100000"] * 100_000) + "]",
    "short strings": "[" + ",".join(['"ab"'] * 100_000) + "]",
    "object keys": "{" + ",".join(f'"{i}":0' for i in range(100_000)) + "}",
}


@pytest.mark.parametrize("text", HOSTILE_JSON.values(), ids=HOSTILE_JSON.keys())
def test_json_expansion_bound_holds_for_hostile_shapes(text: str) -> None:
    tracemalloc.start()
    try:
        parsed = json.loads(text)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    del parsed
    assert peak <= JSON_EXPANSION * len(text), f"{peak / len(text):.1f} bytes per JSON byte"


@pytest.mark.parametrize(
    "raw", ["0", "-1", "", " 7", "7 ", "1_000", "\u0663", "1e3", "9" * 5000, "\x00", "+5", "0x10"],
)
def test_integer_parser_is_total(raw: str) -> None:
    try:
        value = parse_int(raw, field="q", minimum=1, maximum=1000)
    except ServiceError as error:
        assert error.status == 422 and len(error.message) < 300
    else:
        assert 1 <= value <= 1000 and raw.isdigit()


def test_echoed_input_is_cut_to_200_characters() -> None:
    assert len(shown("x" * 60_000)) < 240
    assert shown("short") == "'short'"
