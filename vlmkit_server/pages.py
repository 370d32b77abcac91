"""The browser pages of the API server: a chat page and a compare view, static files that call the
OpenAI-compatible API (:mod:`vlmkit_server.api`) from the browser.

Routes (registered on the API app itself, so they win over an application mounted at ``/`` later)::

    GET /chat           chat with any served model: image upload, streamed replies, the route taken
    GET /compare        one image, several models side by side, each with its latency
    GET /ui/{name}      the pages' scripts and styles (a fixed list of files; nothing else is served)

The pages need no API key to load; their API calls send the key typed into the page (kept in
``sessionStorage``) as ``Authorization: Bearer``. They load scripts, styles and images from this
server only (a strict Content-Security-Policy, no inline script). Nothing here answers ``/``: the
search page does when an index is served, else :func:`redirect_root_to_chat` can be added.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, RedirectResponse
from starlette.exceptions import HTTPException

__all__ = ["add_pages", "redirect_root_to_chat", "PAGES_CSP"]

STATIC = Path(__file__).parent / "static"
#: Scripts and styles from this server only; images also from blob: and data: URLs (uploads shown
#: before they are sent, and the thumbnails of the conversation).
PAGES_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
_PAGES = {"/chat": "chat.html", "/compare": "compare.html"}
_ASSETS = {
    "chat.js": "text/javascript",
    "chat.css": "text/css",
    "compare.js": "text/javascript",
    "common.js": "text/javascript",
}
_HEADERS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache"}


def add_pages(app: FastAPI) -> None:
    """Register ``/chat``, ``/compare`` and their files under ``/ui/`` on ``app``."""

    def page_route(file: str) -> Callable[[], FileResponse]:
        def page() -> FileResponse:
            return FileResponse(STATIC / file, media_type="text/html", headers={**_HEADERS, "Content-Security-Policy": PAGES_CSP})

        return page

    for path, file in _PAGES.items():
        app.add_api_route(path, page_route(file), methods=["GET"], include_in_schema=False)

    @app.get("/ui/{name}", include_in_schema=False)
    def asset(name: str) -> FileResponse:
        media_type = _ASSETS.get(name)
        if media_type is None:  # a fixed list: no path from the client ever reaches the file system
            raise HTTPException(404, f"no page file {name!r}")
        return FileResponse(STATIC / name, media_type=media_type, headers=_HEADERS)


def redirect_root_to_chat(app: FastAPI) -> None:
    """Answer ``/`` with a redirect to the chat page (for a server without a search page)."""

    @app.get("/", include_in_schema=False)
    def home(request: Request) -> RedirectResponse:
        return RedirectResponse(f"{request.scope.get('root_path', '')}/chat", status_code=307)
