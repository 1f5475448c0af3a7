"""uvicorn's httptools protocol with a bound on the request head (request line + headers).

h11 has ``h11_max_incomplete_event_size``; httptools has no limit at all, and accumulates a long header
value by concatenation on the event loop: one unauthenticated client's 48 MB header added 91 MB of RSS
and stalled /health/live for 1.2 s (100 MB: 24 s). This subclass counts the bytes of a head that has
not completed yet and answers 431 (and closes) once it passes :data:`MAX_HEAD_BYTES`, so the parser
never holds more than that plus one read.
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

#: The most bytes a request line plus headers may take (nginx's default large_client_header_buffers is 4 x 8k).
MAX_HEAD_BYTES = 64 * 1024

_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: 31\r\nconnection: close\r\n\r\nrequest header fields too large"
)


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """A head that grows past :data:`MAX_HEAD_BYTES` without completing is refused with 431."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_open = True
        self._head_bytes = 0
        self._heads_done = 0

    def data_received(self, data: bytes) -> None:
        was_open, heads_done = self._head_open, self._heads_done
        super().data_received(data)
        # Count a read only when all of it belonged to one head that is still incomplete: it was open
        # before this read, no head completed during it, and it is still open.
        if not (was_open and self._head_open and heads_done == self._heads_done) or self.transport.is_closing():
            return
        self._head_bytes += len(data)
        if self._head_bytes > MAX_HEAD_BYTES:
            self.logger.warning("request head over %d bytes: 431", MAX_HEAD_BYTES)
            self.transport.write(_TOO_LARGE)
            self.transport.close()

    def on_headers_complete(self) -> None:
        self._head_open = False
        self._heads_done += 1
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._head_open = True  # what comes next on this connection is the next request's head
        self._head_bytes = 0
