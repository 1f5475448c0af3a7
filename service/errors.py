"""The service's one error type and the handlers that turn every failure into one JSON shape per protocol.

Clients (and the hardening tests) rely on a single body layout for every status, so routing
404/405s, validation 422s and even the should-never-happen 500 use it: ``{"error": {"code",
"message"}}`` everywhere, except under ``/v2`` where the Open Inference Protocol's own
``{"error": "<message>"}`` is answered (the gRPC door maps the same errors to status codes).
This module imports no web framework at import time: ``servable.images`` (shared with export/)
raises :class:`ServiceError` without pulling FastAPI in.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastapi import FastAPI

log = logging.getLogger(__name__)


class ServiceError(Exception):
    """A failure the client should see: HTTP status, a stable machine code and a human message."""

    def __init__(self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers) if headers else None

    @classmethod
    def retry_later(cls, code: str, message: str, retry_after_s: int) -> ServiceError:
        """A 503 the client may retry: ``Retry-After`` (HTTP) or ``retry-after`` metadata (gRPC) says when."""
        return cls(503, code, message, {"Retry-After": str(retry_after_s)})

    def about(self, subject: str) -> ServiceError:
        """The same error with ``subject`` (e.g. the uploaded file's name) prefixed to the message."""
        return ServiceError(self.status, self.code, f"{subject}: {self.message}", self.headers)

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message}}

    def __repr__(self) -> str:
        return f"ServiceError({self.status}, {self.code!r}, {self.message!r})"


def error_body(code: str, message: str, *, v2: bool = False) -> dict[str, Any]:
    if v2:
        return {"error": message}
    return {"error": {"code": code, "message": message}}


#: Path prefix of the KServe V2 REST routes, whose errors take the protocol's shape.
V2_PREFIX = "/v2"


def _is_v2(request: Any) -> bool:
    path: str = request.url.path
    return path == V2_PREFIX or path.startswith(V2_PREFIX + "/")


#: Machine codes for the statuses routing and Starlette produce themselves.
_CODE_BY_STATUS = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    503: "unavailable",
}


def error_response(request: Any, exc: Exception) -> Any:
    """The JSON answer for ``exc`` (a ServiceError, or anything unexpected: 500 that leaks nothing)."""
    from fastapi.responses import JSONResponse

    v2 = _is_v2(request)
    if isinstance(exc, ServiceError):
        return JSONResponse(error_body(exc.code, exc.message, v2=v2), status_code=exc.status, headers=exc.headers)
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse(error_body("internal_error", "internal server error", v2=v2), 500)


def install_error_handlers(app: FastAPI) -> None:
    """Register handlers so no response leaves the app in any other error shape."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException
    from starlette.requests import Request

    async def on_service_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ServiceError)
        return error_response(request, exc)  # type: ignore[no-any-return]

    async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        problems = []
        for problem in exc.errors():
            where = ".".join(str(part) for part in problem.get("loc", ()))
            problems.append(f"{where}: {problem.get('msg', 'invalid')}"[:300])
        message = "; ".join(problems)[:1000] or "invalid request"
        return JSONResponse(error_body("invalid_request", message, v2=_is_v2(request)), 422)

    async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        code = _CODE_BY_STATUS.get(exc.status_code, "http_error")
        message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
        return JSONResponse(error_body(code, message, v2=_is_v2(request)), exc.status_code, headers=exc.headers)

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        return error_response(request, exc)  # type: ignore[no-any-return]

    app.add_exception_handler(ServiceError, on_service_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected)
