"""The search page and its JSON API over an :class:`~vlmkit.index.ImageIndex`.

Routes::

    GET  /  (and /search)     the search page (static/search.html, plain JS)
    GET  /api/search          ?q=text&k=24&threshold=0.45  -> {"model", "threshold", "count", "hits": [...]}
    POST /api/search/image    multipart: file (an image), q (text to add), k, threshold -> the same
    GET  /thumbs/{sha256}     a JPEG thumbnail of an indexed image
    GET  /images/{sha256}     the indexed image itself
    GET  /health              {"status": "ok", "rows": N, "model": name}

Every error is the API server's envelope, ``{"error": {"message", "type", "code"}}``, by the same
table (:data:`vlmkit_server.errors.API_RULES`): bad input is a 4xx (400 a bad query or parameter
or an upload that is not an image, 404 unknown image, 409 model mismatch, 413 upload or image too
large), a missing or damaged index a 503.
Endpoints are plain ``def`` functions, so FastAPI runs them on its thread pool; model calls are
serialised by one lock because models are not guaranteed to be thread-safe.
"""

from __future__ import annotations

import threading
import urllib.parse
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi import Query as Param
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from vlmkit.errors import ImageError, InputError
from vlmkit.images import load_image
from vlmkit.index import (
    Embedder,
    ImageIndex,
    Query,
    default_threshold,
)

from ._media import MediaStore, display_name
from .errors import install_error_handlers
from .middleware import BodyLimit, security_headers

__all__ = ["create_app", "DEFAULT_K", "MAX_K", "MAX_UPLOAD_BYTES", "THUMBNAIL_SIZE"]

DEFAULT_K = 24
MAX_K = 200
MAX_QUERY_CHARS = 1000
MAX_UPLOAD_BYTES = 20 * 2**20
#: Uploads are shrunk to this many pixels a side before embedding (models see ~224 px anyway).
UPLOAD_SIDE = 1024
THUMBNAIL_SIZE = 256
#: Room for the multipart framing and the text fields around an upload of the maximum size.
FORM_OVERHEAD = 64 * 1024
STATIC = Path(__file__).parent / "static"
SEARCH_LINK = ("/", "search the indexed images by text or by image")
#: The page loads its script, style and images from this server only.
PAGE_CSP = "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
IMMUTABLE = "private, max-age=31536000, immutable"  # /thumbs and /images URLs name content by hash



def create_app(
    index: ImageIndex,
    model: Embedder,
    *,
    max_upload_bytes: int = MAX_UPLOAD_BYTES,
    max_pixels: int | None = None,
    thumbnail_size: int = THUMBNAIL_SIZE,
    thumbnail_cache: int = 1024,
) -> FastAPI:
    """The search application for ``index``, embedding queries with ``model``.

    Raises :class:`~vlmkit.index.IndexModelMismatch` when the index was built with another model.
    ``max_pixels`` limits uploaded images (default: ``VLMKIT_MAX_PIXELS`` or 100 MP).
    """
    if max_upload_bytes < 1 or thumbnail_size < 16:
        raise InputError("max_upload_bytes must be >= 1 and thumbnail_size >= 16")
    require = getattr(model, "require", None)
    if require is not None:
        require("embed")
    index.check_model(model)
    lock = threading.Lock()
    media = MediaStore(index, thumbnail_size=thumbnail_size, max_pixels=max_pixels, cache_size=thumbnail_cache)

    app = FastAPI(title="vlmkit image search", docs_url=None, redoc_url=None)
    app.state.index, app.state.model, app.state.media = index, model, media
    app.state.page_links = [SEARCH_LINK]  # for the 404 page; `vlmkit serve` shares the API server's list
    install_error_handlers(app)
    app.add_middleware(
        BodyLimit, limit=max_upload_bytes + FORM_OVERHEAD, message=f"the upload is over the limit of {max_upload_bytes:,} bytes",
    )
    app.middleware("http")(security_headers)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    def results(request: Request, query: Query, k: int, threshold: float | None) -> dict[str, Any]:
        with lock:
            hits = index.search(model, query, k=k, threshold=threshold)
        root = request.scope.get("root_path", "")
        return {
            "model": model.name,
            "threshold": threshold if threshold is not None else default_threshold(model.name),
            "count": len(hits),
            "hits": [
                hit.to_dict()
                | {"name": display_name(hit.path), "thumbnail": f"{root}/thumbs/{hit.sha256}", "image": f"{root}/images/{hit.sha256}"}
                for hit in hits
            ],
        }

    @app.get("/", include_in_schema=False)
    @app.get("/search", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "search.html", media_type="text/html", headers={"Content-Security-Policy": PAGE_CSP})

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "rows": len(index), "model": model.name}

    @app.get("/api/search")
    def search_text(
        request: Request,
        q: Annotated[str, Param(max_length=MAX_QUERY_CHARS, description="text; terms joined by ' + ' and ' - '")] = "",
        k: Annotated[int, Param(ge=1, le=MAX_K)] = DEFAULT_K,
        threshold: Annotated[float | None, Param(ge=-1.0, le=1.0, description="min cosine (default: the model's)")] = None,
    ) -> dict[str, Any]:
        if not q.strip():
            raise InputError("type something to search for (or upload an image)")
        return results(request, Query.parse(q, paths=False), k, threshold)

    @app.post("/api/search/image")
    def search_image(
        request: Request,
        file: Annotated[UploadFile, File(description="an image to find similar ones to")],
        q: Annotated[str, Form(max_length=MAX_QUERY_CHARS, description="text to add (or subtract with ' - ')")] = "",
        k: Annotated[int, Form(ge=1, le=MAX_K)] = DEFAULT_K,
        threshold: Annotated[float | None, Form(ge=-1.0, le=1.0)] = None,
    ) -> dict[str, Any]:
        data = file.file.read(max_upload_bytes + 1)
        if len(data) > max_upload_bytes:
            raise HTTPException(413, f"the upload is over the limit of {max_upload_bytes:,} bytes")
        name = f"upload {file.filename!r}" if file.filename else "upload"
        if not data:
            raise ImageError(name, "empty file")
        try:
            image = load_image(data, max_pixels=max_pixels, draft_size=getattr(model, "image_size", None))
        except ImageError as exc:
            raise type(exc)(name, exc.reason) from None  # the upload's name; a too-large image stays a 413
        image.thumbnail((UPLOAD_SIDE, UPLOAD_SIDE))
        return results(request, Query.parse(q, images=[image], paths=False), k, threshold)

    @app.get("/thumbs/{sha256}")
    def thumbnail(sha256: str) -> Response:
        return _media_response(media.thumbnail(sha256))

    @app.get("/images/{sha256}")
    def image(sha256: str) -> Response:
        return _media_response(media.image(sha256))

    return app


def _media_response(media: Any) -> Response:
    quoted = urllib.parse.quote(media.name)
    headers = {"Cache-Control": IMMUTABLE, "Content-Disposition": f"inline; filename*=UTF-8''{quoted}"}
    return Response(media.data, media_type=media.media_type, headers=headers)
