"""The KServe V2 REST door (same port as /predict): health, metadata, config, repository, infer.

Requests are JSON, or JSON plus binary tensor data (``Inference-Header-Content-Length`` gives the
JSON header's length, inputs say ``binary_data_size``); answers follow the same rules. Errors use
the protocol's ``{"error": "<message>"}`` body (see :mod:`service.errors`). Inference goes through
the shared pipeline: admission before the body is read, the byte budget (a JSON body is charged for
the Python objects parsing creates: :data:`JSON_EXPANSION`), the shared batcher and deadline.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from service.errors import ServiceError
from service.parsing import MAX_INT_DIGITS, json_int, shown
from service.pipeline import V2_REST, Pipeline
from service.upload import read_body
from service.v2 import protocol
from service.v2.protocol import InferCall, InputCheck, RequestedOutput
from service.v2.tensors import (
    Tensor,
    check_count,
    from_json,
    from_raw,
    parse_datatype,
    parse_shape,
    to_json,
    to_raw,
)

HEADER_LENGTH = "inference-header-content-length"
#: Upper bound of Python-object bytes per JSON byte that json.loads builds (measured worst cases:
#: 24x for lists of empty lists or dicts, 8x floats, 2x lists of small ints); tests/test_v2_codec.py
#: checks hostile shapes against it.
JSON_EXPANSION = 32
#: A JSON header larger than this is parsed on a worker thread (measured: 8 MiB stalled the loop 2.2 s).
JSON_ON_THREAD_BYTES = 256 * 1024
_REQUEST_KEYS = frozenset({"id", "inputs", "outputs", "parameters"})

_TENSOR_SCHEMA = {
    "type": "object",
    "required": ["name", "datatype", "shape"],
    "properties": {
        "name": {"type": "string", "examples": ["images"]},
        "datatype": {"type": "string", "examples": ["UINT8", "BYTES"]},
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
        "data": {"type": "array", "description": "Row-major values (flat or nested)."},
        "parameters": {"type": "object", "description": "binary_data_size with the binary tensor data extension."},
    },
}
INFER_OPENAPI = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["inputs"],
                    "properties": {
                        "id": {"type": "string"},
                        "inputs": {"type": "array", "minItems": 1, "items": _TENSOR_SCHEMA},
                        "outputs": {"type": "array", "items": {
                            "type": "object", "required": ["name"],
                            "properties": {"name": {"type": "string"}, "parameters": {"type": "object"}},
                        }},
                        "parameters": {"type": "object"},
                    },
                }
            },
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary",
                           "description": "JSON header (Inference-Header-Content-Length bytes) + binary tensors."}
            },
        },
    }
}
_VERSION_PARAMETER = {
    "parameters": [{"name": "version", "in": "path", "required": True, "schema": {"type": "string"},
                    "description": "A loaded version (the repository folder's number)."}]
}
_CONTROL_OPENAPI = {
    "requestBody": {
        "required": False,
        "content": {"application/json": {"schema": {"type": "object", "properties": {"parameters": {"type": "object"}}}}},
    }
}
_INDEX_OPENAPI = {
    "requestBody": {
        "required": False,
        "content": {"application/json": {"schema": {"type": "object", "properties": {"ready": {"type": "boolean"}}}}},
    }
}


def router(pipeline: Pipeline) -> APIRouter:
    """The V2 routes, bound to one app's pipeline."""
    manager = pipeline.state.manager
    api = APIRouter(prefix="/v2", tags=["KServe V2"])

    @api.get("", summary="Server metadata: name, version, extensions.")
    async def server_metadata() -> Response:
        return JSONResponse(protocol.server_metadata())

    @api.get("/health/live", summary="200 while the process runs.")
    async def live() -> Response:
        return JSONResponse({"live": True})

    @api.get("/health/ready", summary="200 when ready; 400 (the protocol's 4xx) with the reason otherwise.")
    async def ready() -> Response:
        is_ready, reason = pipeline.state.readiness()
        if is_ready:
            return JSONResponse({"ready": True})
        return JSONResponse({"ready": False, "error": reason}, status_code=400)

    @api.get("/models/{model_name}", summary="Model metadata (highest loaded version).")
    @api.get("/models/{model_name}/versions/{version}", summary="Model metadata of one version.",
             openapi_extra=_VERSION_PARAMETER)
    async def model_metadata(request: Request, model_name: str) -> Response:
        pipeline.authorize(request.headers.getlist("authorization"))
        target = protocol.lookup(manager, model_name)
        return JSONResponse(protocol.model_metadata(manager, target, protocol.parse_version(_version(request))))

    @api.get("/models/{model_name}/ready", summary="200 when the model (version) is ready, 400 otherwise.")
    @api.get("/models/{model_name}/versions/{version}/ready", summary="200 when that version is ready.",
             openapi_extra=_VERSION_PARAMETER)
    async def model_ready(request: Request, model_name: str) -> Response:
        pipeline.authorize(request.headers.getlist("authorization"))
        target = protocol.lookup(manager, model_name)
        ready = protocol.model_ready(manager, target, protocol.parse_version(_version(request)))
        return JSONResponse({"name": target.name, "ready": ready}, status_code=200 if ready else 400)

    @api.get("/models/{model_name}/config", summary="Triton model configuration.")
    @api.get("/models/{model_name}/versions/{version}/config", summary="Triton model configuration of one version.",
             openapi_extra=_VERSION_PARAMETER)
    async def model_config(request: Request, model_name: str) -> Response:
        pipeline.authorize(request.headers.getlist("authorization"))
        target = protocol.lookup(manager, model_name)
        return JSONResponse(protocol.model_config(manager, target, protocol.parse_version(_version(request))))

    @api.post(
        "/repository/index", summary="Every model and version with its state (READY, UNAVAILABLE, ...).",
        openapi_extra=_INDEX_OPENAPI,
    )
    async def repository_index(request: Request) -> Response:
        pipeline.authorize(request.headers.getlist("authorization"))
        body = await _small_json(request)
        ready_only = body.get("ready", False)
        if not isinstance(ready_only, bool):
            raise ServiceError(400, "invalid_request", "ready must be true or false")
        return JSONResponse(protocol.repository_index(manager, ready_only))

    for action in ("load", "unload"):
        api.add_api_route(
            f"/repository/models/{{model_name}}/{action}", _control(pipeline, action), methods=["POST"],
            summary=f"Explicit model control: {action} a model (from MODEL_DIR, by name).",
            openapi_extra=_CONTROL_OPENAPI,
        )

    @api.post("/models/{model_name}/infer", summary="Inference (JSON or binary tensor data).", openapi_extra=INFER_OPENAPI)
    @api.post(
        "/models/{model_name}/versions/{version}/infer", summary="Inference on one version.",
        openapi_extra={**INFER_OPENAPI, **_VERSION_PARAMETER},
    )
    async def infer(request: Request, model_name: str) -> Response:
        return await _infer(pipeline, request, model_name, _version(request))

    return api


def _version(request: Request) -> str | None:
    """The ``{version}`` path segment of the versioned routes (the same handler serves both forms)."""
    return request.path_params.get("version")


def _control(pipeline: Pipeline, action: str) -> Callable[[Request, str], Awaitable[Response]]:
    async def control(request: Request, model_name: str) -> Response:
        pipeline.authorize(request.headers.getlist("authorization"))
        await _small_json(request)
        await protocol.repository_control(pipeline.state.manager, pipeline.settings.model_control, action, model_name)
        return JSONResponse({})

    control.__name__ = f"repository_{action}"
    return control


async def _small_json(request: Request) -> dict[str, Any]:
    """A control request's optional JSON body (a few bytes; 64 KiB at most)."""
    raw = await read_body(
        request, max_bytes=64 * 1024, timeout_s=10.0, idle_timeout_s=10.0, lease=None
    )
    if not raw.strip():
        return {}
    document = _parse_json(raw, "request body")
    if not isinstance(document, dict):
        raise ServiceError(400, "invalid_request", "request body must be a JSON object")
    return document


async def infer_request(pipeline: Pipeline, request: Request, model_name: str, version: str | None) -> Response:
    """One V2 infer request (``model_name`` and ``version`` from the path, already percent-decoded)."""
    return await _infer(pipeline, request, model_name, version)


async def _infer(pipeline: Pipeline, request: Request, model_name: str, version: str | None) -> Response:
    settings = pipeline.settings
    with pipeline.request(V2_REST) as scope:
        pipeline.authorize(request.headers.getlist("authorization"))
        encoding = request.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise ServiceError(415, "unsupported_encoding", f"Content-Encoding {shown(encoding, 40)} is not accepted")
        target = protocol.lookup(pipeline.state.manager, model_name)
        pinned = protocol.parse_version(version)
        header_length = _header_length(request)
        with pipeline.open(scope, target.base, pinned) as served:
            deadline = pipeline.deadline(scope)
            json_bytes_limit = settings.max_inflight_bytes // JSON_EXPANSION
            if header_length is not None and header_length > json_bytes_limit:
                raise ServiceError(413, "upload_too_large", f"the JSON header exceeds {json_bytes_limit} bytes")

            def charge(received: int) -> int:
                json_part = received if header_length is None else min(received, header_length)
                return json_part * JSON_EXPANSION + (received - json_part)

            body = pipeline.body_lease()
            try:
                raw = await read_body(
                    request,
                    max_bytes=settings.max_upload_bytes if header_length is not None else min(
                        settings.max_upload_bytes, json_bytes_limit
                    ),
                    timeout_s=max(0.0, deadline - time.perf_counter()),
                    idle_timeout_s=settings.body_timeout_s,
                    lease=body,
                    charge=charge,
                )
                check = protocol.input_check(target, served, settings.max_files)
                json_bytes = len(raw) if header_length is None else header_length
                if json_bytes > JSON_ON_THREAD_BYTES:
                    # Parsing megabytes of JSON takes the event loop's time in seconds; on a thread it
                    # takes turns with it (the GIL switches every few ms), so probes stay answered.
                    call = await asyncio.to_thread(parse_infer_request, raw, header_length, check)
                else:
                    call = parse_infer_request(raw, header_length, check)
                del raw
                outputs = await protocol.infer(pipeline, served, target, call, deadline, body)
            finally:
                body.release()
            scope.status = 200
            return _response(target.name, served.version, call, outputs)


def _header_length(request: Request) -> int | None:
    values = request.headers.getlist(HEADER_LENGTH)
    if not values:
        return None
    if len(values) > 1:
        raise ServiceError(400, "invalid_request", f"{HEADER_LENGTH} given {len(values)} times; give it once")
    raw = values[0].strip()
    if not (raw.isascii() and raw.isdigit() and len(raw) <= MAX_INT_DIGITS):
        raise ServiceError(400, "invalid_request", f"{HEADER_LENGTH} must be a decimal number of bytes")
    return int(raw)


def _parse_json(raw: bytes | bytearray | memoryview, where: str) -> Any:
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
    document = _parse_json(view[:split], "the inference request")
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


def _response(model_name: str, version: int, call: InferCall, outputs: list[tuple[Tensor, RequestedOutput]]) -> Response:
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
