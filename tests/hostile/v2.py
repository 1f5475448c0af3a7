"""Hostile requests to the KServe V2 REST door: framing lies (binary_data_size, Inference-Header-Content-Length,
BYTES length prefixes), hostile shapes, datatypes and JSON, image bombs through the encoded companion, and
hostile model names and versions in the URL."""

from __future__ import annotations

import base64
import dataclasses
import gzip
import json
import struct

from bombs import progressive_scan_bomb

from .case import BODY_TIMEOUT_S, HTTP_SHAPE, MAX_UPLOAD_BYTES, V2_ENCODED, V2_MODEL, V2_SHAPE, HostileCase
from .images import encode, gradient, jpeg_claiming, png_bomb, png_with_ztxt_bomb
from .predict import socket_request


def framed(*elements: bytes) -> bytes:
    """BYTES elements in the binary extension's framing: a 4-byte little-endian length before each."""
    return b"".join(struct.pack("<I", len(element)) + element for element in elements)


def v2_tensor(name: str = "images", datatype: str = "UINT8", shape: object = (1, 32, 32, 3), **extra: object) -> dict:
    return {"name": name, "datatype": datatype, "shape": list(shape) if isinstance(shape, tuple) else shape, **extra}


def infer_path(model: str = V2_MODEL, version: str | None = None) -> str:
    return f"/v2/models/{model}" + (f"/versions/{version}" if version is not None else "") + "/infer"


def v2_json(name: str, status: int, words: str | None, why: str, document: object, model: str = V2_MODEL,
            **options: object) -> HostileCase:
    """A JSON inference request (``document`` as JSON, or already-encoded bytes)."""
    body = document if isinstance(document, bytes) else json.dumps(document).encode()
    return HostileCase(name, status, None, why, body, {"content-type": "application/json"}, query="",
                       path=infer_path(model), shape=V2_SHAPE, words=words, **options)  # type: ignore[arg-type]


def v2_binary(name: str, status: int, words: str | None, why: str, header: dict, tail: bytes, model: str = V2_MODEL,
              header_length: str | None = None) -> HostileCase:
    """A binary-extension request: JSON header, then raw tensor bytes; the header's length may lie."""
    encoded = json.dumps(header).encode()
    headers = {"content-type": "application/octet-stream",
               "inference-header-content-length": header_length if header_length is not None else str(len(encoded))}
    return HostileCase(name, status, None, why, encoded + tail, headers, query="", path=infer_path(model),
                       shape=V2_SHAPE, words=words)


def one_input(tensor: dict, **extra: object) -> dict:
    return {"inputs": [tensor], **extra}


def v2_cases() -> list[HostileCase]:
    """Framing lies, hostile shapes and datatypes, hostile JSON and image bombs through the V2 REST door."""
    pixels = bytes(3072)
    size = {"binary_data_size": 3072}
    ok_pixels = v2_tensor(parameters=size)

    def sized(count: int) -> dict:
        return {"binary_data_size": count}

    def encoded_tensor(shape: tuple[int, ...], count: int) -> dict:
        return v2_tensor("image_bytes", "BYTES", shape, parameters=sized(count))

    def encoded(name: str, status: int, words: str | None, why: str, data: bytes, shape: tuple[int, ...] = (1, 1)) -> HostileCase:
        return v2_binary(name, status, words, why, one_input(encoded_tensor(shape, len(data))), data, model=V2_ENCODED)

    def json_pixels(name: str, words: str, why: str, data: object, datatype: str = "UINT8",
                    shape: tuple[int, ...] = (1, 32, 32, 3)) -> HostileCase:
        """The model's own shape (checked first) with hostile values among 3,072 (a flat list is padded)."""
        if isinstance(data, list) and all(not isinstance(v, list) for v in data):
            data = data + [0] * (3072 - len(data))
        return v2_json(name, 400, words, why, one_input(v2_tensor(datatype=datatype, shape=shape, data=data)))

    def raw_json(name: str, status: int, words: str, why: str, text: bytes, model: str = V2_MODEL) -> HostileCase:
        return v2_json(name, status, words, why, text, model=model)

    zeros = [0] * 3072
    jpeg = encode(gradient(64, 64), "JPEG", quality=90)
    # The largest JSON body the door reads is MAX_UPLOAD_BYTES: [[],[],...] builds ~26 bytes of Python
    # objects per byte (charged 32x in the byte budget), about 215 MB for 8 MiB, then it is refused.
    empties = (MAX_UPLOAD_BYTES - 16) // 3
    under_limit = b"[" + b"[]," * (empties - 1) + b"[]]"
    over_limit = b"[" + b"[]," * (empties + 8) + b"[]]"
    bytes_flood = (1024 * 1024) // 4  # 262,144 empty BYTES elements in 1 MiB
    cases = [
        v2_binary("v2 valid binary pixels", 200, None, "control: the binary door works", one_input(ok_pixels), pixels),
        v2_json("v2 valid json pixels", 200, None, "control: the JSON door works",
                one_input(v2_tensor(data=zeros))),
        encoded("v2 valid encoded jpeg", 200, None, "control: the encoded companion decodes like /predict", framed(jpeg)),
        encoded("v2 encoded jpeg scan bomb", 422, "more than 500 scans", "the encoded door takes the same bound",
                framed(progressive_scan_bomb(2000, 2000, 1000))),
        # binary_data_size lies
        v2_binary("v2 binary_data_size bigger than the data", 400, "only 3072 bytes of binary data remain", "lying size",
                  one_input(v2_tensor(parameters=sized(3073))), pixels),
        v2_binary("v2 binary_data_size smaller than the data", 400, "3071 bytes of data for shape", "lying size",
                  one_input(v2_tensor(parameters=sized(3071))), pixels),
        v2_binary("v2 binary_data_size negative", 400, "outside 0..", "a negative size",
                  one_input(v2_tensor(parameters=sized(-1))), pixels),
        v2_binary("v2 binary_data_size 10^30", 400, "outside 0..", "above int64",
                  one_input(v2_tensor(parameters=sized(10**30))), pixels),
        v2_binary("v2 binary_data_size 4,000 digits", 400, "(4000 characters)", "echo cut",
                  one_input(v2_tensor(parameters=sized(10**3999))), pixels),
        v2_binary("v2 binary_data_size float", 400, "expected an integer", "3072.0 is not an integer",
                  one_input(v2_tensor(parameters={"binary_data_size": 3072.0})), pixels),
        v2_binary("v2 binary_data_size string", 400, "expected an integer", "'3072' is not an integer",
                  one_input(v2_tensor(parameters={"binary_data_size": "3072"})), pixels),
        v2_binary("v2 binary data left over", 400, "not claimed by any input", "trailing bytes",
                  one_input(ok_pixels), pixels + b"extra"),
        # Inference-Header-Content-Length lies
        v2_binary("v2 header length past the body", 400, "the body has only", "claims 1 MB of JSON",
                  one_input(ok_pixels), pixels, header_length="1000000"),
        v2_binary("v2 header length cuts the JSON", 400, "not valid JSON", "the JSON split in two",
                  one_input(ok_pixels), pixels, header_length="10"),
        v2_binary("v2 header length zero", 400, "not valid JSON", "an empty JSON header", one_input(ok_pixels), pixels,
                  header_length="0"),
        v2_binary("v2 header length not a number", 400, "must be a decimal number", "garbage",
                  one_input(ok_pixels), pixels, header_length="abc"),
        v2_binary("v2 header length negative", 400, "must be a decimal number", "a sign",
                  one_input(ok_pixels), pixels, header_length="-5"),
        v2_binary("v2 header length 5,000 digits", 400, "must be a decimal number", "no int() on it",
                  one_input(ok_pixels), pixels, header_length="9" * 5000),
        v2_binary("v2 header length arabic-indic digit", 400, "must be a decimal number", "ASCII digits only",
                  one_input(ok_pixels), pixels, header_length="\u0663"),
        v2_binary("v2 header length over the JSON limit", 413, "the JSON header exceeds", "refused before reading",
                  one_input(ok_pixels), pixels, header_length=str(2**40)),
        # BYTES framing lies (the encoded companion)
        encoded("v2 bytes prefix past the end", 400, "claims 999 bytes", "length prefix past the data",
                struct.pack("<I", 999) + b"abc"),
        encoded("v2 bytes prefix 4 GiB", 400, "claims 4294967295 bytes", "the largest prefix",
                b"\xff\xff\xff\xff" + b"abcd"),
        encoded("v2 bytes prefix cut off", 400, "length prefix is cut off", "two bytes of a prefix", b"\x05\x00"),
        encoded("v2 bytes fewer elements than the shape", 400, "1 BYTES elements for a shape of 3",
                "shape [3, 1], one element", framed(b"abc"), shape=(3, 1)),
        encoded("v2 bytes more elements than the shape", 400, "after the last of 1 elements", "shape [1, 1], two",
                framed(b"abc", b"def")),
        encoded("v2 bytes 262,144 empty elements", 413, "images in one request", "1 MiB of zero-length prefixes",
                bytes(4 * bytes_flood), shape=(bytes_flood, 1)),
        encoded("v2 bytes shape of 8 x 2^31-1", 400, "expected [N] or [N, 1]", "a 76-digit element count",
                framed(b"abc"), shape=(2**31 - 1,) * 8),
        # shapes
        v2_binary("v2 shape negative", 400, "outside 0..2147483647", "-1 as a dimension",
                  one_input(v2_tensor(shape=(-1, 32, 32, 3), parameters=size)), pixels),
        v2_binary("v2 shape 2^63", 400, "outside 0..2147483647", "above int64",
                  one_input(v2_tensor(shape=(2**63, 32, 32, 3), parameters=size)), pixels),
        v2_binary("v2 shape 10^9 elements", 400, "expected [N, 32, 32, 3]", "refused from the shape, nothing allocated",
                  one_input(v2_tensor(shape=(10**9, 1, 1, 1), parameters=size)), pixels),
        v2_json("v2 json shape 10^9 elements", 400, "expected [N, 32, 32, 3]", "3 values for 10^9",
                one_input(v2_tensor(shape=(1000, 1000, 1000, 1), data=[1, 2, 3]))),
        v2_binary("v2 shape 8 x 2^31-1", 400, "expected [N, 32, 32, 3]", "a 76-digit element count",
                  one_input(v2_tensor(shape=(2**31 - 1,) * 8, parameters=size)), pixels),
        v2_binary("v2 shape 9 dimensions", 400, "9 dimensions", "at most 8",
                  one_input(v2_tensor(shape=(1,) * 9, parameters=sized(1))), b"\x00"),
        v2_binary("v2 shape float dimension", 400, "expected an integer", "1.0 is not an integer",
                  one_input(v2_tensor(shape=[1.0, 32, 32, 3], parameters=size)), pixels),
        v2_binary("v2 shape a string", 400, "shape must be a list", "'1,32,32,3'",
                  one_input(v2_tensor(shape="1,32,32,3", parameters=size)), pixels),
        v2_binary("v2 shape nested", 400, "expected an integer", "[[1], 32, 32, 3]",
                  one_input(v2_tensor(shape=[[1], 32, 32, 3], parameters=size)), pixels),
        raw_json("v2 shape 4,000-digit dimension", 400, "(4000 characters)", "echo cut",
                 b'{"inputs":[{"name":"images","datatype":"UINT8","shape":[' + b"9" * 4000 + b'],"data":[1]}]}'),
        v2_binary("v2 zero images", 400, "expected [N, 32, 32, 3]", "shape [0, 32, 32, 3]",
                  one_input(v2_tensor(shape=(0, 32, 32, 3), parameters=sized(0))), b""),
        # datatypes
        v2_binary("v2 wrong datatype", 400, "expects UINT8", "FP32 pixels",
                  one_input(v2_tensor(datatype="FP32", parameters=sized(4 * 3072))), bytes(4 * 3072)),
        v2_binary("v2 BF16", 400, "expects UINT8", "a protocol datatype the model does not take",
                  one_input(v2_tensor(datatype="BF16", parameters=sized(2 * 3072))), bytes(2 * 3072)),
        v2_binary("v2 unknown datatype", 400, "unknown datatype", "UINT7",
                  one_input(v2_tensor(datatype="UINT7", parameters=size)), pixels),
        v2_binary("v2 lower-case datatype", 400, "unknown datatype", "uint8: names are exact",
                  one_input(v2_tensor(datatype="uint8", parameters=size)), pixels),
        v2_binary("v2 datatype null", 400, "unknown datatype", "null",
                  one_input(v2_tensor(datatype=None, parameters=size)), pixels),  # type: ignore[arg-type]
        v2_binary("v2 encoded bytes to the pixel model", 400, "resnet20-encoded", "BYTES to resnet20",
                  one_input(v2_tensor(datatype="BYTES", shape=(1, 1), parameters=sized(len(framed(jpeg))))), framed(jpeg)),
        v2_binary("v2 pixels to the encoded model", 400, "expects BYTES", "UINT8 to resnet20-encoded",
                  one_input(v2_tensor("image_bytes", parameters=size)), pixels, model=V2_ENCODED),
        # JSON data
        json_pixels("v2 json ragged data", "rectangular", "3,071 values, then 1", [[0] * 3071, [0]]),
        json_pixels("v2 json strings as UINT8", "must be integers", "'a'", ["a", "b", "c"]),
        json_pixels("v2 json floats as UINT8", "must be integers", "no silent truncation", [1.5, 2, 3]),
        json_pixels("v2 json 256 as UINT8", "outside the range of UINT8", "no wrap-around", [1, 2, 256]),
        json_pixels("v2 json -1 as UINT8", "outside the range of UINT8", "no wrap-around", [1, 2, -1]),
        json_pixels("v2 json 2^70 as UINT8", "must be integers", "beyond int64: an object array", [1, 2, 2**70]),
        json_pixels("v2 json nulls", "must be integers", "null", [1, 2, None]),
        json_pixels("v2 json booleans as UINT8", "not true/false", "true is not 1 here", [True, False, True]),
        json_pixels("v2 json objects", "must be integers", "{}", [{}, {}, {}]),
        raw_json("v2 json NaN as FP32", 400, "expects UINT8", "NaN parses; FP32 is refused by the model",
                 b'{"inputs":[{"name":"images","datatype":"FP32","shape":[1],"data":[NaN]}]}'),
        raw_json("v2 json Infinity as UINT8", 400, "must be integers", "Infinity is a float",
                 b'{"inputs":[{"name":"images","datatype":"UINT8","shape":[1,32,32,3],"data":[Infinity' + b",0" * 3071
                 + b"]}]}"),
        raw_json("v2 json nested 100,000 levels", 400, "not valid JSON", "json.loads' recursion limit",
                 b'{"inputs":[{"name":"images","datatype":"UINT8","shape":[1],"data":'
                 + b"[" * 100_000 + b"1" + b"]" * 100_000 + b"}]}"),
        raw_json("v2 json data nested 900 levels", 400, "rectangular", "deeper than NumPy's 64 dimensions",
                 b'{"inputs":[{"name":"images","datatype":"UINT8","shape":[1,32,32,3],"data":' + b"[" * 900
                 + b"1" + b",0" * 3071 + b"]" * 900 + b"}]}"),
        raw_json("v2 json 100,000-digit integer", 400, "not valid JSON", "beyond int()'s 4,300-digit limit",
                 b'{"inputs":[{"name":"images","datatype":"UINT8","shape":[1],"data":[' + b"9" * 100_000 + b"]}]}"),
        raw_json("v2 json 4,000-digit integer", 400, "must be integers", "parses; refused as data",
                 b'{"inputs":[{"name":"images","datatype":"UINT8","shape":[1,32,32,3],"data":[' + b"9" * 4000
                 + b",0" * 3071 + b"]}]}"),
        raw_json("v2 json not an object", 400, "must be a JSON object", "null", b"null"),
        raw_json("v2 json empty body", 400, "not valid JSON", "no body", b""),
        raw_json("v2 json invalid utf-8", 400, "not valid JSON", "\\xff in a name",
                 b'{"inputs":[{"name":"\xff\xfe","datatype":"UINT8","shape":[1],"data":[1]}]}'),
        raw_json("v2 json lone surrogate", 400, "unknown input", "\\ud800 as a name: echoed escaped",
                 b'{"inputs":[{"name":"\\ud800","datatype":"UINT8","shape":[1,32,32,3],"data":'
                 + json.dumps(zeros).encode() + b"}]}"),
        v2_json("v2 json unknown field of 100,000 characters", 400, "unknown field", "echo cut",
                {"k" * 100_000: 1, "inputs": []}),
        v2_json("v2 json input name of 100,000 characters", 400, "unknown input", "echo cut",
                one_input(v2_tensor("n" * 100_000, data=zeros))),
        v2_json("v2 json output name of 100,000 characters", 400, "unknown output", "echo cut",
                one_input(v2_tensor(data=zeros), outputs=[{"name": "o" * 100_000}])),
        v2_json("v2 json classification 4,000 digits", 400, "(4000 characters)", "echo cut",
                one_input(v2_tensor(data=zeros), outputs=[{"name": "probabilities",
                                                           "parameters": {"classification": 10**3999}}])),
        v2_json("v2 json classification negative", 400, "outside 0..", "-1",
                one_input(v2_tensor(data=zeros), outputs=[{"name": "probabilities", "parameters": {"classification": -1}}])),
        v2_json("v2 json bad base64", 400, "not valid base64", "'!!!'",
                one_input(v2_tensor("image_bytes", "BYTES", (1, 1), data=["!!!"], parameters={"content_type": "base64"})),
                model=V2_ENCODED),
        raw_json("v2 json just under the body limit of [[],[],...]", 400, "must be a JSON object",
                 "8 MiB of empty lists: ~215 MB of Python objects, charged 256 MiB in the byte budget, then refused",
                 under_limit),
        raw_json("v2 json over the body limit of [[],[],...]", 413, "exceeds the limit", "refused from Content-Length",
                 over_limit),
        v2_json("v2 chunked json over the body limit", 413, "exceeds the limit", "no Content-Length: counted and charged "
                "32x while it streams", over_limit, kind="chunked"),
        HostileCase("v2 gzip content-encoding", 415, None, "compressed bodies are refused (no decompression bomb)",
                    gzip.compress(json.dumps(one_input(v2_tensor(data=zeros))).encode()),
                    {"content-type": "application/json", "content-encoding": "gzip"}, query="", path=infer_path(),
                    shape=V2_SHAPE, words="Content-Encoding"),
        HostileCase("v2 stalled upload", 408, None, f"half the body, then silence: cut off after {BODY_TIMEOUT_S:g} s",
                    json.dumps(one_input(v2_tensor(data=zeros))).encode(), {"content-type": "application/json"},
                    kind="stall", query="", path=infer_path(), shape=V2_SHAPE, words="stalled"),
        # image bombs through the encoded companion: refused from the header, as on /predict
        encoded("v2 png bomb 30000x30000", 413, "more pixels than the limit", "900 MP in ~100 KB", framed(png_bomb())),
        encoded("v2 jpeg claiming 65535x65535", 413, "more pixels than the limit", "4.3 GP in the header",
                framed(jpeg_claiming(65535, 65535))),
        encoded("v2 png zTXt metadata bomb", 413, "metadata decompresses beyond the limit", "64 MB of text in 64 KB", framed(png_with_ztxt_bomb(64 << 20))),
        v2_json("v2 json base64 jpeg claiming 65535x65535", 413, "more pixels than the limit", "the JSON form too",
                one_input(v2_tensor("image_bytes", "BYTES", (1, 1),
                                    data=[base64.b64encode(jpeg_claiming(65535, 65535)).decode()],
                                    parameters={"content_type": "base64"})), model=V2_ENCODED),
        v2_binary("v2 encoded: not an image", 415, "not an image", "text in a BYTES element",
                  one_input(encoded_tensor((1, 1), len(framed(b"hello")))), framed(b"hello"), model=V2_ENCODED),
    ]
    cases += v2_path_cases(pixels)
    return cases


def v2_path_cases(pixels: bytes) -> list[HostileCase]:
    """Hostile model names and versions in the V2 URL (path parameters)."""
    header = one_input(v2_tensor(parameters={"binary_data_size": 3072}))

    def at(name: str, status: int, words: str, why: str, model: str, version: str | None = None) -> HostileCase:
        case = v2_binary(name, status, words, why, header, pixels)
        return dataclasses.replace(case, path=infer_path(model, version))

    big_version = "9" * 100_000
    raw = socket_request(infer_path(V2_MODEL, big_version), b"{}", ["Content-Length: 2"])
    return [
        at("v2 model 60,000 characters", 404, "(60000 characters)", "echo cut to 200", "m" * 60_000),
        at("v2 model NUL", 404, "no model named", "%00", "%00"),
        at("v2 model cjk", 404, "no model named", "UTF-8 name", "%E7%8C%AB"),
        at("v2 model invalid utf-8", 404, "no model named", "replacement characters", "%FF%FE"),
        at("v2 model with an encoded slash", 404, "Not Found", "%2F decodes to a path separator: no route", "a%2Fb"),
        at("v2 model dot-dot", 404, "no model named", "looked up by name, never a path", "%2E%2E"),
        at("v2 model broken percent-escape", 404, "no model named '%zz'", "stays literal", "%zz"),
        at("v2 version zero", 400, "model version", "versions start at 1", V2_MODEL, "0"),
        at("v2 version negative", 400, "model version", "a sign", V2_MODEL, "-1"),
        at("v2 version 10^30", 400, "model version", "above int64", V2_MODEL, "1" + "0" * 30),
        at("v2 version 5,000 digits", 400, "(5000 characters)", "no int() on it", V2_MODEL, "9" * 5000),
        at("v2 version arabic-indic digit", 400, "model version", "ASCII digits only", V2_MODEL, "%D9%A3"),
        at("v2 version NUL", 400, "model version", "%00", V2_MODEL, "%00"),
        at("v2 version not loaded", 404, "no version 99", "well-formed, not served", V2_MODEL, "99"),
        at("v2 version empty", 404, "Not Found", "versions//infer: no route", V2_MODEL, ""),
        HostileCase("v2 version 100 KB", 400, None, "a 100 KB target: refused by the HTTP layer", raw, kind="socket",
                    query="", path=infer_path(V2_MODEL, "9..."), shape=HTTP_SHAPE),
    ]
