"""What a hostile case is: one HTTP request, the answer the service documents for it, and the limits
of the server the corpus runs against (the flags ``test_hostile.py`` starts it with)."""

from __future__ import annotations

from dataclasses import dataclass, field

#: The query string every corpus request carries (the hostile server serves one CIFAR model).
MODEL_QUERY = "?model=resnet20"
#: The body limit the hostile-corpus server runs with (``--max-upload-bytes``).
MAX_UPLOAD_BYTES = 8 * 1024 * 1024
#: The file-count limit the hostile-corpus server runs with (``--max-files``).
MAX_FILES = 16
#: Seconds of silence after which the server cuts a stalled upload (``--body-timeout-s``).
BODY_TIMEOUT_S = 2.0
#: Byte budget of the hostile-corpus server (``--max-inflight-bytes``): twice what the largest JSON
#: body is charged (MAX_UPLOAD_BYTES x 32), so a maximal JSON case never turns a valid request into 503.
MAX_INFLIGHT_BYTES = 512 * 1024 * 1024
#: Longest error message accepted from the service: it cuts echoed input to 200 characters.
MAX_MESSAGE_CHARS = 400
#: Longest request target httptools (llhttp) passes on; longer ones get its plain-text 400.
MAX_TARGET_BYTES = 65535

#: Error shapes: /predict and the service's other routes, the KServe V2 routes, and the HTTP layer's
#: own answer to a request it cannot parse (uvicorn writes "Invalid HTTP request received.").
PREDICT_SHAPE = "predict"
V2_SHAPE = "v2"
HTTP_SHAPE = "http"
V2_MODEL = "resnet20"
V2_ENCODED = "resnet20-encoded"


@dataclass(frozen=True)
class HostileCase:
    """One request and the answer the service documents for it.

    ``kind`` says how to send it: ``"raw"`` (body as given), ``"chunked"`` (no Content-Length,
    streamed in 64 KiB chunks), ``"stall"`` (headers and part of the body, then silence) or
    ``"socket"`` (``body`` is the whole HTTP request, written verbatim: request lines or headers
    that an HTTP client would refuse to send). ``code`` is /predict's error code (None for a 200
    and for the V2 shape, whose errors carry a message only); ``words`` must appear in the message.
    """

    name: str
    status: int
    code: str | None
    why: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    kind: str = "raw"
    query: str = MODEL_QUERY
    path: str = "/predict"
    shape: str = PREDICT_SHAPE
    words: str | None = None

    @property
    def target(self) -> str:
        return self.path + self.query


# --- building blocks -------------------------------------------------------------------------------
