"""A real HTTP server on 127.0.0.1 serving files from memory, for downloads (``models.checkpoints``)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Route:
    body: bytes
    status: int = 200
    #: Content-Length to announce; larger than the body simulates a connection cut mid-download.
    announced_length: int | None = None


@dataclass
class FileServer:
    """A real HTTP server in a thread, serving ``routes`` and counting requests per path."""

    base_url: str
    routes: dict[str, Route]
    hits: dict[str, int] = field(default_factory=dict)

    def url(self, path: str) -> str:
        return f"{self.base_url}{path}"


@contextmanager
def serve_files() -> Iterator[FileServer]:
    """A :class:`FileServer` with no routes yet (add them to ``routes``), stopped when the block ends."""
    routes: dict[str, Route] = {}
    hits: dict[str, int] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits[self.path] = hits.get(self.path, 0) + 1
            route = routes.get(self.path)
            if route is None:
                self.send_error(404, "Not Found")
                return
            self.send_response(route.status)
            self.send_header("Content-Length", str(route.announced_length or len(route.body)))
            self.send_header("Content-Type", "application/octet-stream")
            self.end_headers()
            self.wfile.write(route.body)
            self.close_connection = True

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield FileServer(f"http://127.0.0.1:{server.server_address[1]}", routes, hits)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
