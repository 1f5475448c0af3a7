"""uvicorn's httptools protocol with a bound on the request head (request line + headers).

h11 has ``h11_max_incomplete_event_size``; httptools has no limit at all, and accumulates a long header
value by concatenation on the event loop: one unauthenticated client's 48 MB header added 91 MB of RSS
and stalled /health/live for 1.2 s (100 MB: 24 s). This subclass counts the bytes of a head that has
not completed yet and answers 431 (and closes) once it passes :data:`MAX_HEAD_BYTES`, so the parser
never holds more than that plus one read.

A refusal (this 431, or httptools' 400 for a request it cannot parse) is closed *lingering*, as nginx
does: answer, shut the write side, then read and discard for up to :data:`LINGER_S` or
:data:`LINGER_MAX_BYTES`. Closing a socket with unread input makes the kernel send a reset, which
destroys the answer before the client reads it: a client that sent a 100 KB URL and a 3 MB body saw
the 400 in 17 of 150 tries with a plain close, 150 of 150 with the lingering one (no bytes are kept).

Connections cost nothing until they send a request (:class:`HttpLimits`): uvicorn counts every open
socket toward ``limit_concurrency`` and has no timer before the first request line, so 1,100
connections that never sent a byte (or trickled a header at a byte a second) got every valid request
a 503 for as long as they stayed open. Here the concurrency limit counts requests in progress, a
request head must be complete within ``header_timeout_s`` of connecting (or of its first byte on a
kept-alive connection: uvicorn's keep-alive timer bounds the idle time before it), and connections
past ``max_connections`` are closed as they arrive.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, ClassVar

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

#: The most bytes a request line plus headers may take (nginx's default large_client_header_buffers is 4 x 8k).
MAX_HEAD_BYTES = 64 * 1024

#: How long, and how much, a refused connection is still read (and discarded) so its answer arrives.
LINGER_S = 2.0
LINGER_MAX_BYTES = 64 * 1024 * 1024

_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: 31\r\nconnection: close\r\n\r\nrequest header fields too large"
)


_HEAD_TIMEOUT = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: 31\r\nconnection: close\r\n\r\nrequest header not sent in time"
)


@dataclass(frozen=True)
class HttpLimits:
    """What one connection may hold: requests in progress (all connections), sockets, time to send a head."""

    max_requests: int | None = None
    max_connections: int | None = None
    header_timeout_s: float | None = None


class _HeadTooLarge(httptools.HttpParserError):
    """Raised from a parser callback: uvicorn's handler of parser errors then refuses the request."""


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """A head past :data:`MAX_HEAD_BYTES` is refused with 431, whether it completes or not.

    Two counts, because reads do not line up with heads: bytes of reads in which a head stayed
    incomplete (one header value that never ends is buffered by httptools), and the URL and header
    bytes the parser hands over (a 100 KB head that arrives in one read completes in that read).
    The :class:`HttpLimits` apply when the class comes from :func:`bounded_protocol`.
    """

    limits: ClassVar[HttpLimits] = HttpLimits()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # uvicorn's own check counts open sockets too: ours (on_headers_complete) counts requests only.
        self.limit_concurrency = None
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_begun = False
        self._head_open = True
        self._head_bytes = 0
        self._heads_done = 0
        self._parsed_head = 0
        self._too_large = False
        self._lingering: asyncio.TimerHandle | None = None
        self._discarded = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        most = self.limits.max_connections
        if most is not None and len(self.connections) > most:
            self.logger.debug("more than %d connections: closing a new one", most)
            transport.abort()  # nothing was read; no answer is owed
            return
        self._arm_head_timer()

    def _arm_head_timer(self) -> None:
        """From connecting, or from the first byte of a request on a kept-alive connection."""
        timeout = self.limits.header_timeout_s
        if timeout is not None and self._head_timer is None:
            self._head_timer = self.loop.call_later(timeout, self._head_timed_out)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        """No complete head in time: a silent connection is closed, a partial head gets 408."""
        self._head_timer = None
        if self.transport.is_closing() or self._lingering is not None:
            return
        if self._head_begun or self._head_bytes:
            self._refuse(_HEAD_TIMEOUT)
        elif self.cycle is None or self.cycle.response_complete:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self._lingering is not None:  # refused: the rest of the request is read only to be dropped
            self._discarded += len(data)
            if self._discarded > LINGER_MAX_BYTES:
                self.transport.close()
            return
        was_open, heads_done = self._head_open, self._heads_done
        super().data_received(data)
        # Count a read only when all of it belonged to one head that is still incomplete: it was open
        # before this read, no head completed during it, and it is still open.
        if not (was_open and self._head_open and heads_done == self._heads_done) or self.transport.is_closing():
            return
        self._head_bytes += len(data)
        if self._head_bytes > MAX_HEAD_BYTES:
            self.logger.warning("request head over %d bytes: 431", MAX_HEAD_BYTES)
            self._refuse(_TOO_LARGE)

    def on_message_begin(self) -> None:
        self._parsed_head = 0
        self._head_begun = True
        self._arm_head_timer()
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        self._count_head(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value) + 4)  # ": " and CRLF
        super().on_header(name, value)

    def _count_head(self, size: int) -> None:
        self._parsed_head += size
        if self._parsed_head > MAX_HEAD_BYTES:
            self._too_large = True
            raise _HeadTooLarge("request head too large")  # before the application sees the request

    def send_400_response(self, msg: str) -> None:
        """httptools could not parse the request (or a callback refused it): closed lingering."""
        if self._too_large:
            self.logger.warning("request head over %d bytes: 431", MAX_HEAD_BYTES)
            self._refuse(_TOO_LARGE)
            return
        body = msg.encode("ascii", "replace")
        self._refuse(
            b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body
        )

    def _refuse(self, answer: bytes) -> None:
        """Send ``answer``, stop writing, and close after :data:`LINGER_S` (or when the client does)."""
        if self.transport.is_closing() or self._lingering is not None:
            return
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.disconnected = True  # a request already running sends nothing after this answer
            self.cycle.message_event.set()
        self.transport.write(answer)
        if not self.transport.can_write_eof():
            self.transport.close()
            return
        self.transport.write_eof()
        self._lingering = asyncio.get_running_loop().call_later(LINGER_S, self.transport.close)

    def eof_received(self) -> bool | None:
        if self._lingering is not None:
            self.transport.close()  # the client is done sending: nothing left to drop
            return None
        return super().eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._lingering is not None:
            self._lingering.cancel()
        self._disarm_head_timer()
        super().connection_lost(exc)

    def on_headers_complete(self) -> None:
        self._head_open = False
        self._head_begun = False
        self._heads_done += 1
        self._disarm_head_timer()
        # uvicorn answers its own 503 when limit_concurrency is 0 (its check then always passes).
        most = self.limits.max_requests
        self.limit_concurrency = 0 if most is not None and len(self.tasks) >= most else None
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._head_open = True  # what comes next on this connection is the next request's head
        self._head_bytes = 0


def bounded_protocol(limits: HttpLimits) -> type[BoundedHttpToolsProtocol]:
    """The protocol class uvicorn instantiates per connection, with these limits."""
    return type("BoundedHttpToolsProtocol", (BoundedHttpToolsProtocol,), {"limits": limits})
