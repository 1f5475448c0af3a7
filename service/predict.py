"""The ``POST /predict`` door: multipart or raw image bodies in, top-k labels out.

It only parses its query and body and formats the answer; admission, budgets, decoding, batching
and accounting are the shared :class:`~service.pipeline.Pipeline`'s. Query parameters are parsed
here rather than declared on the route: FastAPI's per-request dependency solving cost ~0.5 ms of the
event loop's time per request; /docs still lists them (:data:`OPENAPI`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from fastapi.responses import JSONResponse, Response
from starlette.requests import Request

from service.parsing import parse_int, single
from service.pipeline import PREDICT, EncodedImages, Pipeline, bounded_top_k, top_k
from service.upload import read_uploads

#: Highest top_k accepted by the parser (a model's class count caps it further).
MAX_TOP_K = 1_000_000

OPENAPI: dict[str, Any] = {
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
            "name": "version", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 1},
            "description": "Pin a loaded version (default: the highest loaded version).",
        },
        {
            "name": "top_k", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 1},
            "description": "Predictions per image, 1..number of classes (default: the model's DEFAULT_TOP_K).",
        },
    ],
}


async def predict(pipeline: Pipeline, request: Request) -> Response:
    """Classify the uploaded image(s) with the requested (or default) model."""
    settings = pipeline.settings
    with pipeline.request(PREDICT) as scope:
        pipeline.authorize(request.headers.getlist("authorization"))
        params = request.query_params
        model = single(params, "model") or None
        raw_version = single(params, "version")
        version = parse_int(raw_version, field="query.version", minimum=1) if raw_version is not None else None
        raw_top_k = single(params, "top_k")
        requested_k = (
            parse_int(raw_top_k, field="query.top_k", minimum=1, maximum=MAX_TOP_K, too_large_code="bad_top_k")
            if raw_top_k is not None
            else None
        )
        with pipeline.open(scope, model, version) as served:
            k = bounded_top_k(requested_k, served.settings.default_top_k, served)
            deadline = pipeline.deadline(scope)
            body = pipeline.body_lease()
            try:
                uploads = await read_uploads(
                    request,
                    max_bytes=settings.max_upload_bytes,
                    max_files=settings.max_files,
                    timeout_s=max(0.0, deadline - time.perf_counter()),
                    idle_timeout_s=settings.body_timeout_s,
                    lease=body,
                )
                images = EncodedImages([u.filename for u in uploads.files], [u.data for u in uploads.files])
                multiple = uploads.multiple
                del uploads  # the pipeline drops the encoded bytes once decoded: hold no other reference
                rows = await pipeline.classify_encoded(served, images, deadline, body=body)
            finally:
                body.release()
            labels = served.model.labels
            result: dict[str, Any] = {"model": served.name, "version": served.version}
            if multiple:
                result["results"] = [
                    {"filename": name, "predictions": _predictions(row, k, labels)}
                    for name, row in zip(images.names, rows, strict=True)
                ]
            else:
                result["predictions"] = _predictions(rows[0], k, labels)
            scope.status = 200
            return JSONResponse(result)


def _predictions(row: np.ndarray, k: int, labels: Sequence[str]) -> list[dict[str, Any]]:
    return [{"label": labels[i], "index": i, "score": float(row[i])} for i in top_k(row, k)]
