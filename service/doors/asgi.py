"""The two inference doors served straight from ASGI, ahead of everything FastAPI does per request.

Profiled at 32 clients on resnet20, FastAPI's per-request machinery (its telemetry check, which reads
the environment on every request, the body-limit, exception and exit-stack middleware layers, route
matching over every route, the endpoint wrapper) was ~115-135 us of the event loop's ~450-520 us per
request, and the event loop is the busiest thread. ``POST /predict`` and
``POST /v2/models/{m}[/versions/{v}]/infer`` therefore go from the application's own ``__call__``
(:class:`ServiceApp`) to their doors, with the same error answers
(:func:`service.errors.error_response`); FastAPI still declares both routes, so /docs and
/openapi.json describe them, and serves every other path.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from service.doors import predict as predict_door
from service.doors.v2 import rest as v2_rest
from service.errors import error_response
from service.pipeline.core import Pipeline

#: ``/v2/models/{model}/infer`` and ``/v2/models/{model}/versions/{version}/infer`` (one path segment each).
V2_INFER = re.compile(r"/v2/models/(?P<model>[^/]+)(?:/versions/(?P<version>[^/]+))?/infer")

Door = Callable[[Request], Awaitable[Response]]


class ServiceApp(FastAPI):
    """FastAPI, except that the inference routes' requests go to their doors before any of its layers."""

    pipeline: Pipeline | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        pipeline = self.pipeline
        if pipeline is not None and scope["type"] == "http" and scope["method"] == "POST":
            path: str = scope["path"]
            if path == "/predict":
                await _serve(lambda request: predict_door.predict(pipeline, request), scope, receive, send)
                return
            match = V2_INFER.fullmatch(path) if path.startswith("/v2/models/") else None
            if match is not None:
                model, version = match["model"], match["version"]

                def door(request: Request) -> Awaitable[Response]:
                    return v2_rest.infer_request(pipeline, request, model, version)

                await _serve(door, scope, receive, send)
                return
        await super().__call__(scope, receive, send)


async def _serve(door: Door, scope: Scope, receive: Receive, send: Send) -> None:
    request = Request(scope, receive)
    response: Any
    try:
        response = await door(request)
    except Exception as exc:  # every failure answers in the protocol's error shape, never a traceback
        response = error_response(request, exc)
    await response(scope, receive, send)
