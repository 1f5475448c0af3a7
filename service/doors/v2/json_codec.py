"""The V2 REST wire format: an infer request's JSON header and binary tensor data in, the answer out.

Every parser here is total: whatever a client sends becomes an :class:`InferCall` or a 400 that says
which field is wrong, before its data is decoded (``check`` vets each input's declared name,
datatype and shape against the model first).
"""

from __future__ import annotations

import json
from typing import Any

from fastapi.responses import Response

from service.doors.v2.protocol import InferCall, InputCheck, RequestedOutput
from service.doors.v2.tensors import (
    Tensor,
    check_count,
    from_json,
    from_raw,
    parse_datatype,
    parse_shape,
    to_json,
    to_raw,
)
from service.errors import ServiceError
from service.parsing import json_int, shown

HEADER_LENGTH = "inference-header-content-length"


_REQUEST_KEYS = frozenset({"id", "inputs", "outputs", "parameters"})


def parse_json(raw: bytes | bytearray | memoryview, where: str) -> Any:
    try:
        return json.loads(bytes(raw))
    except (ValueError, RecursionError, UnicodeDecodeError) as exc:
        raise ServiceError(400, "invalid_request", f"{where} is not valid JSON: {str(exc)[:200]}") from None


def parse_infer_request(
    raw: bytes | bytearray, header_length: int | None, check: InputCheck | None = None
) -> InferCall:
    """The JSON header and its binary tensor data -> an :class:`InferCall` (every field checked).

    ``check(index, name, datatype, shape)`` vets each input against the model before its data is decoded.
    """
    if header_length is not None and header_length > len(raw):
        raise ServiceError(
            400, "invalid_request", f"{HEADER_LENGTH} is {header_length} but the body has only {len(raw)} bytes"
        )
    view = memoryview(raw)
    split = len(raw) if header_length is None else header_length
    document = parse_json(view[:split], "the inference request")
    binary = view[split:]
    if not isinstance(document, dict):
        raise ServiceError(400, "invalid_request", "the inference request must be a JSON object")
    unknown = [key for key in document if key not in _REQUEST_KEYS]
    if unknown:
        raise ServiceError(400, "invalid_request", f"unknown field {shown(unknown[0], 60)} in the inference request")
    request_id = document.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise ServiceError(400, "invalid_request", "id must be a string")
    parameters = _parameters(document.get("parameters"), "parameters")
    raw_inputs = document.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise ServiceError(400, "invalid_request", "inputs must be a non-empty list")
    inputs: list[Tensor] = []
    offset = 0
    for index, item in enumerate(raw_inputs):
        tensor, used = _input(item, binary[offset:], f"inputs[{index}]", json_budget=split, check=check, index=index)
        inputs.append(tensor)
        offset += used
    if offset != len(binary):
        raise ServiceError(
            400, "invalid_request",
            f"{len(binary) - offset} bytes of binary data are not claimed by any input's binary_data_size",
        )
    outputs = None
    if "outputs" in document:
        raw_outputs = document["outputs"]
        if not isinstance(raw_outputs, list):
            raise ServiceError(400, "invalid_request", "outputs must be a list")
        outputs = [_requested_output(item, f"outputs[{i}]") for i, item in enumerate(raw_outputs)]
    binary_output = parameters.get("binary_data_output", False)
    if not isinstance(binary_output, bool):
        raise ServiceError(400, "invalid_request", "parameters.binary_data_output must be true or false")
    return InferCall(inputs, outputs, request_id, binary_output, parameters)


def _parameters(raw: object, where: str) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ServiceError(400, "invalid_request", f"{where} must be an object")
    return raw


def _input(
    item: object, binary: memoryview, where: str, *, json_budget: int, check: InputCheck | None, index: int
) -> tuple[Tensor, int]:
    """One entry of ``inputs``; returns it and how many binary bytes it took."""
    if not isinstance(item, dict):
        raise ServiceError(400, "invalid_request", f"{where} must be an object")
    name = item.get("name")
    if not isinstance(name, str):
        raise ServiceError(400, "invalid_request", f"{where}.name must be a string")
    datatype = parse_datatype(item.get("datatype"), where=f"{where}.datatype")
    shape = parse_shape(item.get("shape"), where=where)
    if check is not None:
        check(index, name, datatype, shape)
    parameters = _parameters(item.get("parameters"), f"{where}.parameters")
    if "binary_data_size" in parameters:
        if "data" in item:
            raise ServiceError(400, "invalid_request", f"{where} has both data and binary_data_size")
        size = json_int(parameters["binary_data_size"], field=f"{where}.parameters.binary_data_size")
        if size > len(binary):
            raise ServiceError(
                400, "invalid_request",
                f"{where}.parameters.binary_data_size is {size} but only {len(binary)} bytes of binary data remain",
            )
        return from_raw(name, datatype, shape, binary[:size], where=where), size
    if "data" not in item:
        raise ServiceError(400, "invalid_request", f"{where} has neither data nor parameters.binary_data_size")
    check_count(shape, json_budget, where=where)  # every JSON value takes at least one byte
    base64_bytes = parameters.get("content_type") == "base64"
    return from_json(name, datatype, shape, item["data"], where=where, base64_bytes=base64_bytes), 0


def _requested_output(item: object, where: str) -> RequestedOutput:
    if not isinstance(item, dict) or not isinstance(item.get("name"), str):
        raise ServiceError(400, "invalid_request", f"{where} must be an object with a name")
    parameters = _parameters(item.get("parameters"), f"{where}.parameters")
    classification = parameters.get("classification", 0)
    classification = json_int(classification, field=f"{where}.parameters.classification", maximum=1 << 30)
    binary = parameters.get("binary_data")
    if binary is not None and not isinstance(binary, bool):
        raise ServiceError(400, "invalid_request", f"{where}.parameters.binary_data must be true or false")
    return RequestedOutput(item["name"], classification, binary)


def encode_response(model_name: str, version: int, call: InferCall, outputs: list[tuple[Tensor, RequestedOutput]]) -> Response:
    header: dict[str, Any] = {"model_name": model_name, "model_version": str(version), "outputs": []}
    if call.id is not None:
        header["id"] = call.id
    blobs: list[bytes] = []
    for tensor, requested in outputs:
        binary = requested.binary if requested.binary is not None else call.binary_output
        if binary:
            blob = to_raw(tensor)
            blobs.append(blob)
            header["outputs"].append(
                {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape),
                 "parameters": {"binary_data_size": len(blob)}}
            )
        else:
            header["outputs"].append(to_json(tensor))
    encoded = json.dumps(header, separators=(",", ":")).encode()
    if not blobs:
        return Response(encoded, media_type="application/json")
    return Response(
        b"".join([encoded, *blobs]),
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(len(encoded))},
    )
