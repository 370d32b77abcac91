"""The OpenAI-compatible API: chat completions (with streaming), embeddings, models, task endpoints,
health and Prometheus metrics, over any set of loaded vlmkit models.

Routes::

    GET  /v1/models                  the models, and "auto" (routed per request, see :mod:`.routing`)
    POST /v1/chat/completions        OpenAI chat format; text and image_url parts; stream=true for SSE (:mod:`.chat`)
    POST /v1/embeddings              texts, or images as {"type": "image_url", "image_url": {"url": ...}} (:mod:`.tasks`)
    POST /v1/caption | /v1/vqa | /v1/classify | /v1/match    one image (data: URL) and the task's fields
    POST /v1/interrogate             an image -> a prompt for text-to-image models (caption + ranked terms)
    GET  /health                     liveness, models, queue depths
    GET  /metrics                    Prometheus text format

Bodies are pydantic models (:mod:`.schemas`). Every model call goes through the model's queues
(:mod:`.served`): requests are batched per model and task, and a full queue answers 429. Images
come as ``data:`` URLs, or http(s) URLs from allowed hosts only (:mod:`.images`). Errors are
OpenAI-style JSON (``{"error": {"message", "type", "code"}}``), their statuses from one table
(:mod:`.errors`): a 4xx for bad input, a 500 (logged) for a bug.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import Response

from vlmkit.errors import InputError

from . import chat, tasks
from .config import ServerConfig
from .errors import install_error_handlers
from .images import ImagePolicy
from .metrics import Metrics
from .middleware import BodyLimit, api_guard
from .pages import PAGE_LINKS, add_pages
from .served import Server, server_of

__all__ = ["ServerConfig", "create_api_app"]

ServerDep = Annotated[Server, Depends(server_of)]
info = APIRouter()


def create_api_app(
    models: dict[str, Any], config: ServerConfig | None = None, *, health_extra: Callable[[], dict[str, Any]] | None = None,
    engine: Any = None,
) -> FastAPI:
    """The API over ``models`` (name -> loaded vlmkit model). ``vlmkit serve`` mounts the search
    application (:func:`vlmkit_server.create_app`) under it when an index is configured;
    ``health_extra`` adds its fields to ``/health``. ``engine``: the
    :class:`~vlmkit_server.ray_engine.RayEngine` that deployed ``models`` (they are its
    :class:`~vlmkit_server.ray_engine.RayModel` objects): it reports into the app's metrics and is
    shut down with the app."""
    config = config or ServerConfig()
    if not models:
        raise InputError("serve at least one model")
    for route_name in (config.routes.precise, config.routes.conversational):
        if route_name is not None and route_name not in models:
            raise InputError(f"route names model {route_name!r}, which is not served (models: {', '.join(models)})")
    metrics = Metrics()
    server = Server(models, config, metrics, ImagePolicy(config), health_extra)

    app = FastAPI(title="vlmkit", docs_url=None, redoc_url=None, lifespan=_lifespan)
    app.state.server, app.state.served, app.state.config, app.state.metrics = server, server.served, config, metrics
    app.state.engine = engine
    if engine is not None:
        engine.metrics = metrics
    app.state.page_links = list(PAGE_LINKS)  # `vlmkit serve` adds the search page when it mounts one
    install_error_handlers(app)
    # Bodies over the limit are refused while they arrive (chunked ones too), before they are buffered.
    app.add_middleware(BodyLimit, limit=config.max_body_bytes, message=f"the request is over {config.max_body_bytes:,} bytes")
    app.middleware("http")(api_guard(config, metrics))
    if config.cors_origins:  # added last, so outermost: preflights (which carry no key) never reach the guard
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])
    for router in (info, chat.router, tasks.router):
        app.include_router(router)
    add_pages(app)
    return app


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield
    app.state.server.close()  # uvicorn has let the requests in flight finish; stop the queues' workers
    if app.state.engine is not None:
        app.state.engine.shutdown()  # then the deployments


@info.get("/health")
def health(server: ServerDep) -> dict[str, Any]:
    return {
        "status": "ok",
        "models": {name: {"kind": e.kind, "tasks": sorted(e.tasks)} for name, e in server.served.items()},
        "queues": {b.name: b.depth for e in server.served.values() for b in e.batchers.values()},
        **(server.health_extra() if server.health_extra is not None else {}),
    }


@info.get("/metrics")
def prometheus(request: Request, server: ServerDep) -> Response:
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    for entry in server.served.values():
        for task, batcher in entry.batchers.items():
            server.metrics.queue.labels(entry.name, task).set(batcher.depth)
    engine = getattr(request.app.state, "engine", None)
    if engine is not None:
        for model, states in engine.replica_states().items():
            for state, count in states.items():
                server.metrics.replicas.labels(model, state).set(count)
    return Response(generate_latest(server.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@info.get("/v1/models")
def list_models(server: ServerDep) -> dict[str, Any]:
    data = [
        {"id": name, "object": "model", "created": 0, "owned_by": "vlmkit", "vlmkit": {"kind": e.kind, "tasks": sorted(e.tasks)}}
        for name, e in server.served.items()
    ]
    routes = {"precise": server.config.routes.precise, "conversational": server.config.routes.conversational}
    data.append({"id": "auto", "object": "model", "created": 0, "owned_by": "vlmkit",
                 "vlmkit": {"routes": routes, "by_capability": routes == {"precise": None, "conversational": None}}})
    return {"object": "list", "data": data}
