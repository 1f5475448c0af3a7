"""What the two HTTP doors' calls share about a request's life: its trace context and its client's hang-up."""

from __future__ import annotations

from collections.abc import Awaitable, Mapping

from starlette.requests import Request
from starlette.types import Receive


async def disconnected(receive: Receive) -> None:
    """Return once the client has gone.

    Once the body is read, an ASGI server answers ``receive()`` only with ``http.disconnect``: uvicorn
    when the connection is lost (or the response is complete, which cannot happen while the request
    still waits), Starlette's test client when the response is complete.
    """
    while (await receive())["type"] != "http.disconnect":
        pass


class HttpCallLife:
    """Mixed into the HTTP doors' calls (``self.request``): the Authorization values and W3C trace context
    from the headers, and the hang-up as ``http.disconnect``."""

    __slots__ = ()
    request: Request

    def credentials(self) -> list[str]:
        return self.request.headers.getlist("authorization")

    def trace_carrier(self) -> Mapping[str, str]:
        return self.request.headers

    def hang_up(self) -> Awaitable[object]:
        return disconnected(self.request.receive)
