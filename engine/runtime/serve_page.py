"""The device page of the HTTP service (runtime.serve): ``GET /`` for a person with a phone.

The page (``page/index.html``, ``page.js``, ``page.css`` beside this file, copied into every
bundle with the rest of the runtime) uploads a photo to ``/ocr`` and draws the boxes and texts
the model answered, with the bundle's target, precision, release and model hashes from
``/info``.  It is plain HTML, CSS and JavaScript: nothing is built at install, nothing comes
from another host (the Content-Security-Policy below forbids it: an offline device's page must
not wait on a CDN), and the three files stay under ``PAGE_BUDGET`` bytes together.

FastAPI's own ``/docs`` (Swagger UI) loads its JavaScript and CSS from a CDN, so it is switched
off; ``/docs`` and ``/redoc`` redirect to the page's API list, which is drawn from
``/openapi.json``.  Self-hosting Swagger UI instead would add 1.7 MB to every bundle (README).

The page files need no token (they hold no data); everything they call does.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response

__all__ = ["PAGE_BUDGET", "PAGE_DIR", "PAGE_PATHS", "add_page"]

PAGE_DIR = Path(__file__).resolve().parent / "page"
PAGE_BUDGET = 20 * 1024  # bytes, the three files together, uncompressed
#: URL path -> (file in PAGE_DIR, media type)
PAGE_PATHS = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/page.js": ("page.js", "text/javascript; charset=utf-8"),
    "/page.css": ("page.css", "text/css; charset=utf-8"),
}
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
       "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # a new release's page replaces the old one at once
}


def _file_endpoint(body: bytes, media_type: str) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        return Response(body, media_type=media_type, headers=_HEADERS)

    return endpoint


async def _to_api_list(request: Request) -> Response:
    return RedirectResponse("/#api", status_code=307)


def add_page(app: FastAPI) -> None:
    """Serve the page at ``/`` (files read once, here) and redirect ``/docs`` and ``/redoc``."""
    for path, (name, media_type) in PAGE_PATHS.items():
        endpoint = _file_endpoint((PAGE_DIR / name).read_bytes(), media_type)
        app.add_route(path, endpoint, methods=["GET"], include_in_schema=False)
    for path in ("/docs", "/redoc"):
        app.add_route(path, _to_api_list, methods=["GET"], include_in_schema=False)
