"""The KServe V2 REST door (same port as /predict): health, metadata, config, repository, infer.

Requests are JSON, or JSON plus binary tensor data (``Inference-Header-Content-Length`` gives the
JSON header's length, inputs say ``binary_data_size``); answers follow the same rules. Errors use
the protocol's ``{"error": "<message>"}`` body (see :mod:`service.errors`). Inference goes through
the shared pipeline: admission before the body is read, the byte budget (a JSON body is charged for
the Python objects parsing creates: :data:`JSON_EXPANSION`), the shared batcher and deadline.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from service.doors.hangup import HttpCallLife
from service.doors.upload import read_body
from service.doors.v2 import protocol
from service.doors.v2.json_codec import HEADER_LENGTH, encode_response, parse_infer_request, parse_json
from service.doors.v2.protocol import InferCall
from service.engine.manager import ModelManager
from service.errors import ServiceError
from service.limits.budget import BodyLease
from service.parsing import MAX_INT_DIGITS, shown
from service.pipeline.call import V2_REST, Admitted, Inputs, Target
from service.pipeline.core import Pipeline

#: Upper bound of Python-object bytes per JSON byte that json.loads builds (measured worst cases:
#: 24x for lists of empty lists or dicts, 8x floats, 2x lists of small ints); tests/test_v2_codec.py
#: checks hostile shapes against it.
JSON_EXPANSION = 32
#: A JSON header larger than this is parsed on a worker thread (measured: 8 MiB stalled the loop 2.2 s).
JSON_ON_THREAD_BYTES = 256 * 1024

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

    for suffix, summary, answer in _MODEL_ROUTES:
        handler = _model_route(pipeline, answer)
        handler.__name__ = f"model_{answer.__name__.strip('_')}"
        api.add_api_route(f"/models/{{model_name}}{suffix}", handler, methods=["GET"], summary=summary)
        api.add_api_route(
            f"/models/{{model_name}}/versions/{{version}}{suffix}", handler, methods=["GET"],
            summary=f"{summary} (one version)", openapi_extra=_VERSION_PARAMETER,
        )

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
        return JSONResponse(protocol.service_index(pipeline.state, ready_only))

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
        return await infer_request(pipeline, request, model_name, _version(request))

    return api


ModelAnswer = Callable[[ModelManager, protocol.V2Model, "int | None"], Response]


def _metadata(manager: ModelManager, target: protocol.V2Model, version: int | None) -> Response:
    return JSONResponse(protocol.model_metadata(manager, target, version))


def _ready(manager: ModelManager, target: protocol.V2Model, version: int | None) -> Response:
    ready = protocol.model_ready(manager, target, version)
    return JSONResponse({"name": target.name, "ready": ready}, status_code=200 if ready else 400)


def _config(manager: ModelManager, target: protocol.V2Model, version: int | None) -> Response:
    return JSONResponse(protocol.model_config(manager, target, version))


#: The per-model GET routes: (path suffix, summary, answer); each also exists under /versions/{version}.
_MODEL_ROUTES: tuple[tuple[str, str, ModelAnswer], ...] = (
    ("", "Model metadata (highest loaded version).", _metadata),
    ("/ready", "200 when the model (version) is ready, 400 otherwise.", _ready),
    ("/config", "Triton model configuration.", _config),
)


def _model_route(pipeline: Pipeline, answer: ModelAnswer) -> Callable[[Request, str], Awaitable[Response]]:
    """A per-model GET: the API key, the model (or its encoded companion) and the version, then ``answer``."""
    manager = pipeline.state.manager

    async def route(request: Request, model_name: str) -> Response:
        pipeline.authorize(request.headers.getlist("authorization"))
        target = protocol.lookup(manager, model_name)
        return answer(manager, target, protocol.parse_version(_version(request)))

    return route


def _version(request: Request) -> str | None:
    """The ``{version}`` path segment of the versioned routes (the same handler serves both forms)."""
    return request.path_params.get("version")


def _control(pipeline: Pipeline, action: str) -> Callable[[Request, str], Awaitable[Response]]:
    async def control(request: Request, model_name: str) -> Response:
        pipeline.authorize(request.headers.getlist("authorization"))
        await _small_json(request)
        await protocol.repository_control(pipeline.state, action, model_name)
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
    document = parse_json(raw, "request body")
    if not isinstance(document, dict):
        raise ServiceError(400, "invalid_request", "request body must be a JSON object")
    return document


async def infer_request(pipeline: Pipeline, request: Request, model_name: str, version: str | None) -> Response:
    """One V2 infer request (``model_name`` and ``version`` from the path, already percent-decoded)."""
    return await pipeline.infer(RestInferCall(pipeline, request, model_name, version))


class RestInferCall(HttpCallLife):
    """``POST /v2/models/{model}[/versions/{v}]/infer``: JSON, or a JSON header plus binary tensor data.

    Its client's timeout is the request parameter ``timeout`` (microseconds, as Triton defines it), known
    only once the body is parsed: it then tightens the request's deadline."""

    protocol = V2_REST

    def __init__(self, pipeline: Pipeline, request: Request, model_name: str, version: str | None) -> None:
        self.settings = pipeline.settings
        self.manager = pipeline.state.manager
        self.request = request
        self.model_name = model_name
        self.version = version
        self.header_length: int | None = None
        self.model: protocol.V2Model | None = None
        self.call: InferCall | None = None

    def target(self, body: BodyLease) -> Target:
        encoding = self.request.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise ServiceError(415, "unsupported_encoding", f"Content-Encoding {shown(encoding, 40)} is not accepted")
        self.model = protocol.lookup(self.manager, self.model_name)
        pinned = protocol.parse_version(self.version)
        self.header_length = _header_length(self.request)
        return Target(self.model.base, pinned)

    async def inputs(self, admitted: Admitted) -> Inputs:
        assert self.model is not None
        settings = self.settings
        header_length = self.header_length
        json_bytes_limit = settings.max_inflight_bytes // JSON_EXPANSION
        if header_length is not None and header_length > json_bytes_limit:
            raise ServiceError(413, "upload_too_large", f"the JSON header exceeds {json_bytes_limit} bytes")

        def charge(received: int) -> int:
            json_part = received if header_length is None else min(received, header_length)
            return json_part * JSON_EXPANSION + (received - json_part)

        raw = await read_body(
            self.request,
            max_bytes=settings.max_upload_bytes if header_length is not None else min(
                settings.max_upload_bytes, json_bytes_limit
            ),
            timeout_s=admitted.seconds_left(),
            idle_timeout_s=settings.body_timeout_s,
            lease=admitted.body,
            charge=charge,
        )
        check = protocol.input_check(self.model, admitted.served, settings.max_files)
        json_bytes = len(raw) if header_length is None else header_length
        if json_bytes > JSON_ON_THREAD_BYTES:
            # Parsing megabytes of JSON takes the event loop's time in seconds; on a thread it
            # takes turns with it (the GIL switches every few ms), so probes stay answered.
            self.call = await asyncio.to_thread(parse_infer_request, raw, header_length, check)
        else:
            self.call = parse_infer_request(raw, header_length, check)
        del raw
        admitted.limit(protocol.timeout_s(self.call.parameters.get(protocol.TIMEOUT_PARAMETER)))
        return protocol.model_inputs(self.model, admitted.served, self.call, settings.max_files)

    def answer(self, admitted: Admitted, rows: list[np.ndarray]) -> Response:
        assert self.model is not None and self.call is not None
        outputs = protocol.model_outputs(self.model, admitted.served, self.call, rows)
        return encode_response(self.model.name, admitted.served.version, self.call, outputs)


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


