"""The FastAPI application: ``create_app(settings)`` wires state, routes, errors and metrics.

The /predict hot path avoids per-request pydantic work: query parameters are the only validated
input, the body is read by :mod:`service.upload`, and responses are plain dicts in the shapes
:mod:`service.schemas` documents.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response

from service.batcher import Batcher
from service.errors import ServiceError, install_error_handlers
from service.metrics import CONTENT_TYPE, Metrics
from service.preprocess import preprocess_image
from service.runtime import LoadedModel
from service.schemas import (
    BatchPredictResponse,
    ErrorResponse,
    Liveness,
    ModelsResponse,
    PredictResponse,
    Readiness,
)
from service.settings import Settings
from service.state import ServiceState
from service.upload import Upload, read_uploads

_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in {
        401: "Missing or wrong API key (only when RESNET_SERVE_API_KEY is set).",
        404: "Unknown model.",
        408: "The upload stalled.",
        413: "Body, image pixels or number of files over the limit.",
        415: "Not a supported image or Content-Type.",
        422: "Empty, truncated or corrupt image, bad form or query.",
        503: "Queue full or not ready (Retry-After tells when to retry).",
        504: "Not answered within the request timeout.",
    }.items()
}

_PREDICT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": {"type": "string", "format": "binary", "description": "One image."},
                        "files": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "description": "Several images (repeat the field); results keep this order.",
                        },
                    },
                }
            },
            "image/*": {"schema": {"type": "string", "format": "binary"}},
        },
    },
    "parameters": [
        {
            "name": "model", "in": "query", "required": False, "schema": {"type": "string"},
            "description": "Model name (default: DEFAULT_MODEL, or the only model).",
        },
        {
            "name": "top_k", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 1},
            "description": "Predictions per image, 1..number of classes (default: DEFAULT_TOP_K).",
        },
    ],
}


def create_app(settings: Settings | None = None) -> FastAPI:
    """A service app with its own state and metrics registry (several may coexist in tests)."""
    settings = settings or Settings()
    metrics = Metrics()
    state = ServiceState(settings, metrics)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        state.start()  # models load in the background: /health/live answers meanwhile
        try:
            yield
        finally:
            await state.stop()

    app = FastAPI(
        title="resnet-serve",
        version="0.1.0",
        summary="Image classification with the ResNet family: dynamic batching on onnxruntime.",
        lifespan=lifespan,
    )
    app.state.service = state
    install_error_handlers(app)

    async def require_api_key(request: Request) -> None:
        if settings.api_key is None:
            return
        scheme, _, supplied = request.headers.get("authorization", "").partition(" ")
        # The scheme is case-insensitive (RFC 7235); the key is compared in constant time, as the raw
        # header bytes (Starlette decodes headers as latin-1) against the key's UTF-8 bytes.
        matches = hmac.compare_digest(supplied.strip().encode("latin-1"), settings.api_key.encode())
        if scheme.lower() != "bearer" or not matches:
            raise ServiceError(401, "unauthorized", "missing or wrong API key", {"WWW-Authenticate": "Bearer"})

    @app.post(
        "/predict",
        summary="Classify one image (field `file` or a raw image/* body) or several (repeated `files`).",
        response_model=PredictResponse | BatchPredictResponse,
        responses=_ERRORS,
        openapi_extra=_PREDICT_BODY,
    )
    async def predict(request: Request) -> Response:
        # Query parameters are parsed here rather than declared: FastAPI's per-request dependency
        # solving cost ~0.5 ms of the event loop's time per request; /docs still lists them.
        started = time.perf_counter()
        label = "-"
        status = 500
        try:
            await require_api_key(request)
            model, top_k = _predict_query(request)
            loaded, batcher = state.resolve(model)
            label = loaded.name
            classes = loaded.card.num_classes
            if top_k is not None and top_k > classes:
                raise ServiceError(422, "bad_top_k", f"top_k must be between 1 and {classes} for model {label!r}")
            k = min(top_k or settings.default_top_k, classes)
            batcher.check_capacity(1)  # refuse before reading a byte when already full
            deadline = started + settings.request_timeout_s
            uploads = await read_uploads(
                request,
                max_bytes=settings.max_upload_bytes,
                max_files=settings.max_files,
                timeout_s=max(0.0, deadline - time.perf_counter()),
                idle_timeout_s=settings.body_timeout_s,
            )
            rows = await _classify(state, loaded, batcher, uploads.files, deadline)
            body: dict[str, Any] = {"model": label, "version": loaded.entry.version}
            if uploads.multiple:
                body["results"] = [
                    {"filename": upload.filename, "predictions": _top_k(row, k, loaded.labels)}
                    for upload, row in zip(uploads.files, rows)
                ]
            else:
                body["predictions"] = _top_k(rows[0], k, loaded.labels)
            status = 200
            return JSONResponse(body)
        except ServiceError as error:
            status = error.status
            metrics.rejections.labels(label, error.code).inc()
            raise
        finally:
            metrics.requests.labels(label, str(status)).inc()
            metrics.request_latency.labels(label).observe(time.perf_counter() - started)

    @app.get("/health/live", response_model=Liveness, summary="200 while the process runs (also while loading).")
    async def live() -> Response:
        return JSONResponse({"status": "alive"})

    @app.get(
        "/health/ready",
        response_model=Readiness,
        responses={503: {"model": ErrorResponse, "description": "Not ready; the message says why."}},
        summary="200 when every model is loaded, warmed and batching; 503 with the reason otherwise.",
    )
    async def ready() -> Response:
        is_ready, reason = state.readiness()
        if is_ready:
            return JSONResponse({"ready": True, "reason": None, "models": state.model_status})
        return JSONResponse(
            {
                "error": {"code": "not_ready", "message": reason},
                "ready": False,
                "reason": reason,
                "models": state.model_status,
            },
            status_code=503,
            headers={"Retry-After": "5"},
        )

    @app.get(
        "/models",
        response_model=ModelsResponse,
        responses={401: _ERRORS[401]},
        dependencies=[Depends(require_api_key)],
        summary="Served models: version, input, preprocessing, active providers, batching.",
    )
    async def models() -> Response:
        return JSONResponse(
            {
                "default_model": settings.default_model
                or (next(iter(state.models)) if len(state.models) == 1 else None),
                "models": [_model_info(model, settings) for model in state.models.values()],
            }
        )

    @app.get("/metrics", summary="Prometheus text exposition.", response_class=Response)
    async def prometheus_metrics() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    return app


def _predict_query(request: Request) -> tuple[str | None, int | None]:
    """``model`` and ``top_k`` from the query string (422 in the service's error shape when malformed)."""
    params = request.query_params
    model = params.get("model") or None
    raw_top_k = params.get("top_k")
    if raw_top_k is None:
        return model, None
    if not (raw_top_k.isascii() and raw_top_k.isdigit()) or int(raw_top_k) < 1:
        raise ServiceError(422, "invalid_request", f"query.top_k: expected an integer >= 1, got {raw_top_k[:20]!r}")
    return model, int(raw_top_k)


async def _classify(
    state: ServiceState, model: LoadedModel, batcher: Batcher, uploads: Sequence[Upload], deadline: float
) -> list[np.ndarray]:
    """Decode in the pool, queue for batching, and wait for this request's rows until the deadline."""
    count = len(uploads)
    batcher.reserve(count)
    try:
        decoded = time.perf_counter()
        images = await _decode_all(state, model, uploads)
        state.metrics.preprocess_latency.labels(model.name).observe(time.perf_counter() - decoded)
    except BaseException:
        batcher.release(count)
        raise
    futures = batcher.submit(images)
    try:
        remaining = deadline - time.perf_counter()
        if remaining > 0:
            await asyncio.wait(futures, timeout=remaining)
        if not all(future.done() for future in futures):
            raise ServiceError(
                504, "timeout", f"not answered within the request timeout of {state.settings.request_timeout_s:g} s"
            )
        return [future.result() for future in futures]
    finally:
        for future in futures:
            future.cancel()  # no-op when done; otherwise the batcher drops the image unrun


async def _decode_all(state: ServiceState, model: LoadedModel, uploads: Sequence[Upload]) -> list[np.ndarray]:
    """Preprocess on the decode pool: one task per chunk of the request, never on the event loop."""
    loop = asyncio.get_running_loop()
    preprocessing = model.card.preprocessing
    max_pixels = state.settings.max_image_pixels
    draft = state.settings.jpeg_draft

    def decode(chunk: Sequence[Upload]) -> list[np.ndarray]:
        images = []
        for upload in chunk:
            try:
                images.append(preprocess_image(upload.data, preprocessing, max_pixels=max_pixels, jpeg_draft=draft))
            except ServiceError as error:
                raise error.about(f"file {upload.filename!r}") from None
        return images

    pool = state.decode_pool
    chunks = min(len(uploads), state.settings.decode_threads)
    if chunks <= 1:
        return await loop.run_in_executor(pool, decode, uploads)
    size = -(-len(uploads) // chunks)
    parts = await asyncio.gather(
        *(loop.run_in_executor(pool, decode, uploads[i : i + size]) for i in range(0, len(uploads), size))
    )
    return [image for part in parts for image in part]


def _top_k(row: np.ndarray, k: int, labels: Sequence[str]) -> list[dict[str, Any]]:
    if k < row.shape[0]:
        best = np.argpartition(row, -k)[-k:]
        best = best[np.argsort(-row[best], kind="stable")]
    else:
        best = np.argsort(-row, kind="stable")
    return [{"label": labels[i], "index": int(i), "score": float(row[i])} for i in best.tolist()]


def _model_info(model: LoadedModel, settings: Settings) -> dict[str, Any]:
    card = model.card
    side = card.preprocessing.crop_size
    return {
        "name": model.name,
        "version": model.entry.version,
        "architecture": card.architecture,
        "num_classes": card.num_classes,
        "input_size": [side, side, 3],
        "preprocessing": card.preprocessing.model_dump(mode="json"),
        "requested_providers": model.requested_providers,
        "active_providers": model.active_providers,
        "gpu_fallback": model.gpu_fallback,
        "batching": {
            "max_batch_size": settings.max_batch_size,
            "max_batch_delay_ms": settings.max_batch_delay_ms,
            "max_queue_size": settings.max_queue_size,
            "batch_buckets": list(model.buckets),
            "pad_to_buckets": model.pad_to_buckets,
        },
        "source": card.source.model_dump(mode="json"),
        "load_seconds": round(model.load_seconds, 3),
        "warmup_seconds": round(model.warmup_seconds, 3),
    }
