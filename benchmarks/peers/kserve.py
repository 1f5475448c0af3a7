"""KServe V2 (Triton) inference requests with the binary tensor data extension.

The body is a JSON header followed by raw tensor bytes; ``Inference-Header-Content-Length`` says
where the JSON ends. A ``BYTES`` tensor's raw data is each element as a 4-byte little-endian length
followed by its bytes. Built once per benchmark, so the load client only posts it.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

import numpy as np

from benchmarks.loadgen import Body

HEADER_LENGTH = "Inference-Header-Content-Length"
CONTENT_TYPE = "application/octet-stream"


class KServeError(ValueError):
    """A V2 response that is not what the request asked for."""


@dataclass(frozen=True)
class V2Body:
    content: bytes
    header_length: int
    images: int = 1

    @property
    def headers(self) -> dict[str, str]:
        return {"Content-Type": CONTENT_TYPE, HEADER_LENGTH: str(self.header_length)}

    @property
    def body(self) -> Body:
        """What wrk posts (``benchmarks/multipart.lua`` sends any prebuilt body)."""
        return Body(self.content, CONTENT_TYPE, self.images)

    @property
    def wrk_env(self) -> dict[str, str]:
        """The script's environment for the header the binary extension needs."""
        return {"BENCH_INFERENCE_HEADER_LENGTH": str(self.header_length)}


def bytes_request(input_name: str, data: bytes, *, output_name: str, binary_output: bool = True) -> V2Body:
    """One request whose ``input_name`` is a [1, 1] BYTES tensor holding ``data`` (an encoded JPEG)."""
    raw = struct.pack("<I", len(data)) + data
    header = {
        "inputs": [
            {"name": input_name, "shape": [1, 1], "datatype": "BYTES", "parameters": {"binary_data_size": len(raw)}}
        ],
        "outputs": [{"name": output_name, "parameters": {"binary_data": binary_output}}],
    }
    encoded = json.dumps(header, separators=(",", ":")).encode()
    return V2Body(encoded + raw, len(encoded))


def fp32_output(body: bytes, header_length: int | None, output_name: str) -> np.ndarray:
    """The named FP32 output of a V2 response, as (batch, ...) float32 (binary or JSON data)."""
    json_end = len(body) if header_length is None else header_length
    try:
        header = json.loads(body[:json_end])
    except (ValueError, UnicodeDecodeError) as exc:
        raise KServeError(f"response header is not JSON: {exc}") from None
    offset = json_end
    for output in header.get("outputs", []):
        size = (output.get("parameters") or {}).get("binary_data_size")
        if output.get("name") == output_name:
            if output.get("datatype") != "FP32":
                raise KServeError(f"{output_name} has datatype {output.get('datatype')}, expected FP32")
            shape = tuple(int(d) for d in output["shape"])
            if size is None:
                return np.asarray(output["data"], dtype=np.float32).reshape(shape)
            return np.frombuffer(body[offset : offset + size], dtype="<f4").reshape(shape)
        offset += size or 0
    raise KServeError(f"no output {output_name!r} in the response: {header}")
