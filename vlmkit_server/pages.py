"""The browser pages of the API server: a chat page and a compare view, static files that call the
OpenAI-compatible API (:mod:`vlmkit_server.api`) from the browser.

Routes (registered on the API app itself, so they win over an application mounted at ``/`` later)::

    GET /chat           chat with any served model: image upload, streamed replies, the route taken
    GET /compare        one image, several models side by side, each with its latency
    GET /ui/{name}      the pages' scripts and styles (a fixed list of files; nothing else is served)

A browser asking for a page path that does not exist (``Accept: text/html``, outside the API's
prefixes) gets an HTML 404 with links to the pages (:func:`not_found_page`), not a JSON body.

The pages need no API key to load; their API calls send the key typed into the page (kept in
``sessionStorage``) as ``Authorization: Bearer``. They load scripts, styles and images from this
server only (a strict Content-Security-Policy, no inline script). Nothing here answers ``/``: the
search page does when an index is served, else :func:`redirect_root_to_chat` can be added.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse
from starlette.exceptions import HTTPException

__all__ = ["add_pages", "redirect_root_to_chat", "not_found_page", "wants_page", "PAGES_CSP", "PAGE_LINKS"]

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
#: The pages of the API server, as (path, what it is) for the 404 page; ``vlmkit serve`` puts the
#: search page first when it serves an index.
PAGE_LINKS = (("/chat", "chat with a model about an image"), ("/compare", "compare models side by side on one image"))
#: Paths that belong to an API or to files: a miss there stays a JSON (or plain) 404.
_NOT_PAGES = ("/v1/", "/api/", "/ui/", "/static/", "/thumbs/", "/images/", "/health", "/metrics")


def wants_page(request: Request) -> bool:
    """Whether a 404 for this request should be a page: a browser's GET of a path outside the APIs."""
    path = request.url.path[len(request.scope.get("root_path", "")) :] or "/"
    accepts_html = "text/html" in request.headers.get("accept", "")
    return request.method in ("GET", "HEAD") and accepts_html and not path.startswith(_NOT_PAGES)


def not_found_page(request: Request, links: tuple[tuple[str, str], ...] | list[tuple[str, str]], *,
                   status: int = 404, message: str | None = None) -> HTMLResponse:
    """An HTML page saying the path does not exist (or ``message``), with links to the pages that do."""
    root = request.scope.get("root_path", "")
    items = "".join(
        f'<li><a href="{html.escape(root + path)}">{html.escape(what.capitalize())}</a> <code>{html.escape(path)}</code></li>'
        for path, what in links
    )
    text = message or f"There is no page at {request.url.path}."
    body = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Not found · vlmkit</title>'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><link rel="stylesheet" href="{html.escape(root)}/ui/chat.css">'
        f"</head><body><h1>Not found</h1><p>{html.escape(text)}</p><p>The pages of this server:</p><ul>{items}</ul>"
        '<p class="muted">The API is under <code>/v1/</code> (OpenAI-compatible).</p></body></html>'
    )
    return HTMLResponse(body, status_code=status, headers={**_HEADERS, "Content-Security-Policy": PAGES_CSP})


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
    """For a server without a search page: ``/`` redirects to the chat page, and ``/search`` says
    that no index is served and how to build one (a 404 page, not a JSON body)."""

    @app.get("/", include_in_schema=False)
    def home(request: Request) -> RedirectResponse:
        return RedirectResponse(f"{request.scope.get('root_path', '')}/chat", status_code=307)

    @app.get("/search", include_in_schema=False)
    def no_search(request: Request) -> HTMLResponse:
        message = ("This server has no image index, so there is no search page. Build one with "
                   "`vlmkit index DIR`, then start `vlmkit serve` again (or pass --index PATH).")
        return not_found_page(request, PAGE_LINKS, message=message)
