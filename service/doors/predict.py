"""The ``POST /predict`` door: multipart or raw image bodies in, top-k labels out.

It only parses its query and body and formats the answer; admission, budgets, decoding, batching
and accounting are the shared :class:`~service.pipeline.core.Pipeline`'s. Query parameters are parsed
here rather than declared on the route: FastAPI's per-request dependency solving cost ~0.5 ms of the
event loop's time per request; /docs still lists them (:data:`OPENAPI`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from fastapi.responses import JSONResponse, Response
from starlette.requests import Request

from service.doors.hangup import HttpCallLife
from service.doors.topk import bounded_top_k, top_k
from service.doors.upload import read_uploads
from service.limits.budget import BodyLease
from service.parsing import parse_int, single
from service.pipeline.call import PREDICT, Admitted, EncodedImages, Target
from service.pipeline.core import Pipeline
from service.settings import Settings

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
        {
            "name": "timeout_ms", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 1},
            "description": "Answer within this many milliseconds of the request's arrival or get 504 timeout "
            "(images not yet run are dropped); REQUEST_TIMEOUT_S stays the ceiling.",
        },
    ],
}


async def predict(pipeline: Pipeline, request: Request) -> Response:
    """Classify the uploaded image(s) with the requested (or default) model."""
    return await pipeline.infer(PredictCall(pipeline.settings, request))


class PredictCall(HttpCallLife):
    """One ``POST /predict``: the query names the model, the body holds the images."""

    protocol = PREDICT
    __slots__ = ("settings", "request", "top_k", "names", "multiple")

    def __init__(self, settings: Settings, request: Request) -> None:
        self.settings = settings
        self.request = request
        self.top_k = 0
        self.names: list[str] = []
        self.multiple = False

    def target(self, body: BodyLease) -> Target:
        params = self.request.query_params
        model = single(params, "model") or None
        raw_version = single(params, "version")
        version = parse_int(raw_version, field="query.version", minimum=1) if raw_version is not None else None
        raw_top_k = single(params, "top_k")
        if raw_top_k is not None:
            self.top_k = parse_int(
                raw_top_k, field="query.top_k", minimum=1, maximum=MAX_TOP_K, too_large_code="bad_top_k"
            )
        raw_timeout = single(params, "timeout_ms")
        timeout_s = parse_int(raw_timeout, field="query.timeout_ms", minimum=1) / 1000 if raw_timeout is not None else None
        return Target(model, version, timeout_s=timeout_s)

    async def inputs(self, admitted: Admitted) -> EncodedImages:
        served = admitted.served
        self.top_k = bounded_top_k(self.top_k or None, served.settings.default_top_k, served)
        settings = self.settings
        uploads = await read_uploads(
            self.request,
            max_bytes=settings.max_upload_bytes,
            max_files=settings.max_files,
            timeout_s=admitted.seconds_left(),
            idle_timeout_s=settings.body_timeout_s,
            lease=admitted.body,
        )
        self.names = [upload.filename for upload in uploads.files]
        self.multiple = uploads.multiple
        # The pipeline drops the encoded bytes once decoded: nothing else may hold them.
        return EncodedImages(list(self.names), [upload.data for upload in uploads.files])

    def answer(self, admitted: Admitted, rows: list[np.ndarray]) -> Response:
        served = admitted.served
        labels = served.model.labels
        result: dict[str, Any] = {"model": served.name, "version": served.version}
        if self.multiple:
            result["results"] = [
                {"filename": name, "predictions": _predictions(row, self.top_k, labels)}
                for name, row in zip(self.names, rows, strict=True)
            ]
        else:
            result["predictions"] = _predictions(rows[0], self.top_k, labels)
        return JSONResponse(result)


def _predictions(row: np.ndarray, k: int, labels: Sequence[str]) -> list[dict[str, Any]]:
    return [{"label": labels[i], "index": i, "score": float(row[i])} for i in top_k(row, k)]
