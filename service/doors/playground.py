"""The playground: a page at ``/`` where a person drops an image and sees what the model thinks.

Static HTML, CSS and JavaScript shipped in the package (``service/doors/static/``), read once when the
app is built and served from memory at ``/`` and under ``/playground/``: no build step, no CDN, no font
to fetch, so it works offline. Every answer carries a Content-Security-Policy that allows only this
origin's scripts, styles and API calls (no inline code anywhere) and forbids framing. The page talks
to the public API like any client (``GET /models``, ``POST /predict``); it learns that a key is needed
from ``/models`` answering 401, and keeps the key in memory only. Its routes are ordinary FastAPI
routes: the inference fast path (:mod:`service.doors.asgi`) never sees them.
"""

from __future__ import annotations

from importlib.resources import files

from fastapi import APIRouter
from fastapi.responses import Response

from service.errors import ServiceError
from service.parsing import shown

#: The static prefix; ``/`` is the page itself.
PREFIX = "/playground"
#: Only this origin's files and API; images are previewed from ``blob:`` URLs of the user's own file.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
}


def load_assets() -> dict[str, tuple[bytes, str]]:
    """Every shipped file by name, with its media type (a fixed table: no path from a request is opened)."""
    folder = files("service.doors") / "static"
    assets = {}
    for entry in folder.iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if entry.is_file() and suffix in MEDIA_TYPES:
            assets[entry.name] = (entry.read_bytes(), MEDIA_TYPES[suffix])
    return assets


def router() -> APIRouter:
    """``GET /`` (the page) and ``GET /playground/<file>``, kept out of the OpenAPI document."""
    assets = load_assets()
    page = APIRouter(include_in_schema=False)

    def serve(name: str) -> Response:
        asset = assets.get(name)
        if asset is None:
            raise ServiceError(404, "not_found", f"no playground file {shown(name)}")
        body, media_type = asset
        return Response(body, media_type=media_type, headers=HEADERS)

    @page.get("/")
    async def index() -> Response:
        return serve("index.html")

    @page.get(PREFIX + "/{name}")
    async def asset(name: str) -> Response:
        return serve(name)

    return page
