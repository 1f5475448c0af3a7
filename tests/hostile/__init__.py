"""Hostile HTTP requests to /predict and the KServe V2 REST door, generated in memory (nothing binary is committed).

Each :class:`HostileCase` is one HTTP request (path, query, body, headers, how it is sent) with the
status the service documents for it and the error shape it must come in: /predict's
``{"error": {"code", "message"}}``, V2's ``{"error": "<message>"}``, or, for the few requests the
HTTP layer (uvicorn + httptools) refuses before the application sees them (a request target over
64 KiB, a Content-Length that is not one decimal number), its plain-text 400. Valid-but-unusual
images (16-bit, CMYK, 300-frame GIF, ...) are expected to succeed with 200; everything else gets a
4xx and never a 5xx, and no error message echoes more than :data:`MAX_MESSAGE_CHARS` characters.

One module a target: ``predict`` and ``v2`` hold the cases, ``images`` the hostile files they carry,
``answers`` how a case is sent and its answer judged. Run ``python tests/hostile_corpus.py`` to list
the cases with their paths, sizes and expectations.
"""

from __future__ import annotations

from .answers import Answer, error_message, error_problem, send_case
from .case import (
    BODY_TIMEOUT_S,
    HTTP_SHAPE,
    MAX_FILES,
    MAX_INFLIGHT_BYTES,
    MAX_MESSAGE_CHARS,
    MAX_TARGET_BYTES,
    MAX_UPLOAD_BYTES,
    MODEL_QUERY,
    PREDICT_SHAPE,
    V2_ENCODED,
    V2_MODEL,
    V2_SHAPE,
    HostileCase,
)
from .images import encode, gradient, jpeg_claiming, png_bomb, slow_jpeg
from .predict import predict_cases
from .v2 import framed, v2_cases

__all__ = [
    "BODY_TIMEOUT_S", "HTTP_SHAPE", "MAX_FILES", "MAX_INFLIGHT_BYTES", "MAX_MESSAGE_CHARS", "MAX_TARGET_BYTES",
    "MAX_UPLOAD_BYTES", "MODEL_QUERY", "PREDICT_SHAPE", "V2_ENCODED", "V2_MODEL", "V2_SHAPE", "Answer", "HostileCase",
    "build_corpus", "describe", "encode", "error_message", "error_problem", "framed", "gradient", "jpeg_claiming",
    "png_bomb", "send_case", "slow_jpeg",
]


def build_corpus() -> list[HostileCase]:
    """Every hostile case, in a stable order (names are unique)."""
    cases = predict_cases() + v2_cases()
    names = [case.name for case in cases]
    assert len(names) == len(set(names)), "case names must be unique"
    return cases


def describe(case: HostileCase) -> str:
    """One listing line: name, where it goes, size, how it is sent, what it gets and why."""
    target = case.target if len(case.target) <= 44 else case.target[:30] + f"...({len(case.target)} chars)"
    expected = case.code or (f"{case.shape}: {case.words!r}" if case.words else case.shape if case.status != 200 else "")
    answer = f"{case.status} {expected}" if expected else str(case.status)
    return f"{case.name:50} {target:48} {len(case.body):>9} B {case.kind:8} -> {answer}: {case.why}"
