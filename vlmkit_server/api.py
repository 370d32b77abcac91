"""The OpenAI-compatible API: chat completions (with streaming), embeddings, models, task endpoints,
health and Prometheus metrics, over any set of loaded vlmkit models.

Routes::

    GET  /v1/models                  the models, and "auto" (routed per request, see :mod:`.routing`)
    POST /v1/chat/completions        OpenAI chat format; text and image_url parts; stream=true for SSE
    POST /v1/embeddings              texts, or images as {"type": "image_url", "image_url": {"url": ...}}
    POST /v1/caption | /v1/vqa | /v1/classify | /v1/match    one image (data: URL) and the task's fields
    POST /v1/interrogate             an image -> a prompt for text-to-image models (caption + ranked terms)
    GET  /health                     liveness, models, queue depths
    GET  /metrics                    Prometheus text format

Requests are batched per model and task (:mod:`vlmkit_server.batching`); a full queue answers 429.
Images come as ``data:`` URLs; http(s) URLs only from hosts on an allow-list (none by default); any
other URL, path or file name is refused, so no client text ever names a file on the server. Errors
are OpenAI-style JSON (``{"error": {"message", "type", "code"}}``) with a 4xx status for bad input.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from vlmkit.errors import ImageError, InputError, UnsupportedTaskError, VlmkitError
from vlmkit.images import load_image
from vlmkit.models.base import GenerationOptions

from .app import _BodyLimit
from .batching import DynamicBatcher, QueueFull, ShuttingDown
from .pages import PAGE_LINKS, add_pages, not_found_page, wants_page
from .routing import Route, Routes, choose_route, is_caption_request

__all__ = ["ServerConfig", "create_api_app", "ApiError"]

log = logging.getLogger("vlmkit.server")

MAX_TEXT_CHARS = 20_000
MAX_MESSAGES = 64
MAX_IMAGES = 8
MAX_LABELS = 1000
MAX_EMBED_INPUTS = 256
_ENDPOINTS = frozenset({"/v1/models", "/v1/chat/completions", "/v1/embeddings", "/v1/caption", "/v1/vqa", "/v1/classify",
                        "/v1/match", "/v1/interrogate", "/health", "/metrics"})


@dataclass(frozen=True)
class ServerConfig:
    api_keys: tuple[str, ...] = ()  # required on every /v1 request when not empty
    max_body_bytes: int = 20 * 2**20
    max_pixels: int | None = None
    timeout_s: float = 120.0  # per request, queue wait included
    window_ms: float = 5.0
    max_batch: int = 16
    max_queue: int = 64
    max_tokens: int = 1024  # the largest max_tokens a request may ask for
    allow_url_hosts: tuple[str, ...] = ()  # hosts whose http(s) image URLs may be fetched
    cors_origins: tuple[str, ...] = ()
    routes: Routes = field(default_factory=Routes)


class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.headers = status, message, kind, headers


# -- request parsing ---------------------------------------------------------------------------------


def _field(body: dict[str, Any], key: str, kinds: type | tuple[type, ...], *, required: bool = False, default: Any = None) -> Any:
    if key not in body or body[key] is None:
        if required:
            raise ApiError(400, f"'{key}' is required")
        return default
    value = body[key]
    if isinstance(value, bool) and bool not in (kinds if isinstance(kinds, tuple) else (kinds,)):
        raise ApiError(400, f"'{key}' has the wrong type (bool)")
    if not isinstance(value, kinds):
        raise ApiError(400, f"'{key}' has the wrong type ({type(value).__name__})")
    return value


def _number(body: dict[str, Any], key: str, low: float, high: float, default: float | None) -> float | None:
    value = _field(body, key, (int, float), default=default)
    if value is None:
        return None
    if not low <= float(value) <= high:
        raise ApiError(400, f"'{key}' must be between {low} and {high}, got {value}")
    return float(value)


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise ApiError(400, f"{what} must be a string, not {type(value).__name__}")
    if len(value) > MAX_TEXT_CHARS:
        raise ApiError(413, f"{what} is longer than {MAX_TEXT_CHARS:,} characters")
    return value


class _Images:
    """Turns the image references of a request into decoded images, under the server's rules."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config

    def __call__(self, url: Any, what: str = "image") -> Any:
        if isinstance(url, dict):
            url = url.get("url")
        if not isinstance(url, str) or not url:
            raise ApiError(400, f"{what}: expected a data: URL (or {{'url': ...}})")
        if url.startswith("data:"):
            header, comma, payload = url.partition(",")
            if not comma or not header.endswith(";base64"):
                raise ApiError(400, f"{what}: a data: URL must be base64 (data:image/png;base64,...)")
            try:
                data = base64.b64decode(payload, validate=True)
            except (binascii.Error, ValueError):
                raise ApiError(400, f"{what}: the data: URL is not valid base64") from None
        elif url.startswith(("http://", "https://")):
            data = self._fetch(url, what)
        else:
            raise ApiError(400, f"{what}: only data: URLs are accepted (and http(s) URLs from allowed hosts)")
        if not data:
            raise ApiError(400, f"{what}: empty image")
        try:
            image = load_image(data, max_pixels=self.config.max_pixels)
        except ImageError as exc:
            status = 413 if "pixels" in exc.reason else 400
            raise ApiError(status, f"{what}: {exc.reason}") from None
        image.thumbnail((1024, 1024))  # models see a few hundred pixels; keep requests cheap
        return image

    def _fetch(self, url: str, what: str) -> bytes:
        host = urllib.parse.urlsplit(url).hostname or ""
        if host not in self.config.allow_url_hosts:
            raise ApiError(400, f"{what}: fetching image URLs from {host!r} is not allowed (send a data: URL)")
        allowed = self.config.allow_url_hosts

        class Redirects(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> Any:
                target = urllib.parse.urlsplit(newurl)
                if target.scheme not in ("http", "https") or target.hostname not in allowed:
                    raise urllib.error.URLError(f"redirected to {newurl}, whose host is not allowed")
                return super().redirect_request(req, fp, code, msg, headers, newurl)

        try:
            with urllib.request.build_opener(Redirects).open(url, timeout=10) as reply:  # the host is allow-listed
                data = reply.read(self.config.max_body_bytes + 1)
        except OSError as exc:
            raise ApiError(400, f"{what}: could not fetch {url}: {exc}") from None
        if len(data) > self.config.max_body_bytes:
            raise ApiError(413, f"{what}: the image at {url} is over {self.config.max_body_bytes:,} bytes")
        return data


@dataclass
class _Chat:
    """A parsed chat request."""

    model: str
    messages: list[dict[str, Any]]  # parts with decoded images ({"type": "image", "image": PIL})
    last_texts: list[str]
    images: list[Any]
    assistant_turns: int
    max_tokens: int | None
    temperature: float | None
    top_p: float
    stop: list[str]
    stream: bool
    include_usage: bool


def _parse_chat(body: dict[str, Any], images: _Images, config: ServerConfig) -> _Chat:
    model = _field(body, "model", str, required=True)
    messages = _field(body, "messages", list, required=True)
    if not messages:
        raise ApiError(400, "'messages' must not be empty")
    if len(messages) > MAX_MESSAGES:
        raise ApiError(413, f"at most {MAX_MESSAGES} messages")
    parsed: list[dict[str, Any]] = []
    decoded: list[Any] = []
    turns = 0
    for number, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ApiError(400, f"messages[{number}] must be an object")
        role = message.get("role")
        if role not in ("system", "user", "assistant"):
            raise ApiError(400, f"messages[{number}].role must be system, user or assistant")
        turns += role == "assistant"
        content = message.get("content")
        parts: list[dict[str, Any]] = []
        if isinstance(content, str):
            parts.append({"type": "text", "text": _text(content, f"messages[{number}].content")})
        elif isinstance(content, list):
            for k, part in enumerate(content):
                where = f"messages[{number}].content[{k}]"
                if not isinstance(part, dict):
                    raise ApiError(400, f"{where} must be an object")
                kind = part.get("type")
                if kind == "text":
                    parts.append({"type": "text", "text": _text(part.get("text"), f"{where}.text")})
                elif kind == "image_url":
                    if role != "user":
                        raise ApiError(400, f"{where}: only user messages may hold images")
                    if len(decoded) >= MAX_IMAGES:
                        raise ApiError(413, f"at most {MAX_IMAGES} images per request")
                    image = images(part.get("image_url"), where)
                    decoded.append(image)
                    parts.append({"type": "image", "image": image})
                else:
                    raise ApiError(400, f"{where}.type must be 'text' or 'image_url'")
        else:
            raise ApiError(400, f"messages[{number}].content must be a string or a list of parts")
        parsed.append({"role": role, "content": parts})
    if parsed[-1]["role"] != "user":
        raise ApiError(400, "the last message must come from the user")
    max_tokens = _field(body, "max_tokens", int, default=None)
    if max_tokens is None:
        max_tokens = _field(body, "max_completion_tokens", int, default=None)
    if max_tokens is not None and not 1 <= max_tokens <= config.max_tokens:
        raise ApiError(400, f"'max_tokens' must be between 1 and {config.max_tokens}")
    stop = body.get("stop")
    if stop is None:
        stops: list[str] = []
    elif isinstance(stop, str) and stop:
        stops = [stop]
    elif isinstance(stop, list) and len(stop) <= 4 and all(isinstance(s, str) and s for s in stop):
        stops = list(stop)
    else:
        raise ApiError(400, "'stop' must be a string or a list of up to 4 non-empty strings")
    options = _field(body, "stream_options", dict, default={})
    n = _field(body, "n", int, default=1)
    if n != 1:
        raise ApiError(400, "only n=1 is supported")
    return _Chat(
        model=model,
        messages=parsed,
        last_texts=[p["text"] for p in parsed[-1]["content"] if p["type"] == "text"],
        images=decoded,
        assistant_turns=turns,
        max_tokens=max_tokens,
        temperature=_number(body, "temperature", 0.0, 2.0, None),
        top_p=_number(body, "top_p", 0.0, 1.0, 1.0) or 1.0,
        stop=stops,
        stream=bool(_field(body, "stream", bool, default=False)),
        include_usage=bool(options.get("include_usage", False)),
    )


def _cut_at_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    cut = min((text.find(s) for s in stops if s in text), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


# -- the app -----------------------------------------------------------------------------------------


class _Served:
    """One loaded model, its lock and its batchers."""

    def __init__(self, name: str, model: Any, config: ServerConfig, metrics: _Metrics) -> None:
        self.name, self.model, self.config, self.metrics = name, model, config, metrics
        self.lock = threading.Lock()
        self.batchers: dict[str, DynamicBatcher] = {}
        self.chat_waiting = 0
        self.chat_guard = threading.Lock()

    @property
    def tasks(self) -> frozenset[str]:
        return frozenset(getattr(getattr(self.model, "kind", None), "tasks", ()))

    @property
    def kind(self) -> str:
        return str(getattr(getattr(self.model, "kind", None), "label", type(self.model).__name__))

    def batcher(self, task: str, fn: Callable[[list[Any]], list[Any]]) -> DynamicBatcher:
        if task not in self.batchers:
            self.batchers[task] = DynamicBatcher(
                fn, max_batch=self.config.max_batch, window_ms=self.config.window_ms, max_queue=self.config.max_queue,
                lock=self.lock, name=f"{self.name}/{task}", on_batch=lambda size, task=task: self.metrics.batch(self.name, task, size),
            )
        return self.batchers[task]

    def context(self) -> int | None:
        """The language model's positions (prompt and answer together), where the config says."""
        config = getattr(getattr(self.model, "model", None), "config", None)
        for part in (getattr(config, "text_config", None), config):
            value = getattr(part, "max_position_embeddings", None)
            if isinstance(value, int) and value > 0:
                return value
        return None

    def tokens(self, text: str) -> int:
        tokenizer = getattr(self.model, "tokenizer", None)
        if tokenizer is not None and callable(tokenizer):
            try:
                return len(tokenizer(text, add_special_tokens=False)["input_ids"])
            except Exception:  # noqa: BLE001 - a count is informative only
                pass
        return len(text.split())


class _Metrics:
    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("vlmkit_requests", "HTTP requests", ["endpoint", "status"], registry=self.registry)
        self.latency = Histogram(
            "vlmkit_request_seconds", "request latency", ["endpoint"], registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
        )
        self.batch_size = Histogram(
            "vlmkit_batch_size", "items per model call", ["model", "task"], registry=self.registry, buckets=(1, 2, 4, 8, 16, 32, 64)
        )
        self.queue = Gauge("vlmkit_queue_depth", "requests waiting", ["model", "task"], registry=self.registry)

    def batch(self, model: str, task: str, size: int) -> None:
        self.batch_size.labels(model, task).observe(size)


def create_api_app(
    models: dict[str, Any], config: ServerConfig | None = None, *, health_extra: Callable[[], dict[str, Any]] | None = None
) -> FastAPI:
    """The API over ``models`` (name -> loaded vlmkit model). ``vlmkit serve`` mounts the search
    application (:func:`vlmkit_server.create_app`) under it when an index is configured;
    ``health_extra`` adds its fields to ``/health``."""
    config = config or ServerConfig()
    if not models:
        raise InputError("serve at least one model")
    metrics = _Metrics()
    served = {name: _Served(name, model, config, metrics) for name, model in models.items()}
    for route_name in (config.routes.precise, config.routes.conversational):
        if route_name is not None and route_name not in served:
            raise InputError(f"route names model {route_name!r}, which is not served (models: {', '.join(served)})")
    images = _Images(config)
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        # Shutdown: uvicorn has let the requests in flight finish; stop the batch workers.
        for entry in served.values():
            for batcher in entry.batchers.values():
                batcher.close()

    app = FastAPI(title="vlmkit", docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.served, app.state.config, app.state.metrics = served, config, metrics
    app.state.page_links = list(PAGE_LINKS)  # `vlmkit serve` adds the search page when it mounts one

    # Bodies over the limit are refused while they arrive (chunked ones too), before they are buffered.
    app.add_middleware(_BodyLimit, limit=config.max_body_bytes, message=f"the request is over {config.max_body_bytes:,} bytes")

    @app.middleware("http")
    async def guard(request: Request, call_next: Callable[[Request], Any]) -> Response:
        path = request.url.path
        endpoint = path if path in _ENDPOINTS else "other"  # never a label from a path the client made up
        start = time.perf_counter()
        if config.api_keys and path.startswith(("/v1/", "/metrics")):
            header = request.headers.get("authorization", "")
            key = header[7:] if header.lower().startswith("bearer ") else ""
            if key not in config.api_keys:
                response: Response = _error(401, "a valid API key is required (Authorization: Bearer KEY)", "authentication_error")
                metrics.requests.labels(endpoint, "401").inc()
                return response
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > config.max_body_bytes:
            response = _error(413, f"the request is over {config.max_body_bytes:,} bytes")
        else:
            response = await call_next(request)
        metrics.requests.labels(endpoint, str(response.status_code)).inc()
        metrics.latency.labels(endpoint).observe(time.perf_counter() - start)
        return response

    if config.cors_origins:  # added last, so outermost: preflights (which carry no key) never reach the guard
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status, exc.message, exc.kind, exc.headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        if exc.status_code == 404 and wants_page(request):
            return not_found_page(request, app.state.page_links)
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error on %s %s", request.method, request.url.path)
        return _error(500, f"internal error ({type(exc).__name__}); see the server log", "server_error")

    async def body_of(request: Request) -> dict[str, Any]:
        raw = await request.body()
        if len(raw) > config.max_body_bytes:
            raise ApiError(413, f"the request is over {config.max_body_bytes:,} bytes")
        try:
            body = json.loads(raw)
        except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, and integers of over 4,300 digits
            raise ApiError(400, f"the body is not valid JSON ({exc})") from None
        except RecursionError:
            raise ApiError(400, "the body is nested too deeply") from None
        try:  # "\ud800" escapes decode to lone surrogates, which no tokenizer or UTF-8 encoder takes
            json.dumps(body, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise ApiError(400, "the body holds an unpaired UTF-16 surrogate escape (\\ud800-\\udfff)") from None
        if not isinstance(body, dict):
            raise ApiError(400, "the body must be a JSON object")
        return body

    def model_named(name: Any) -> _Served:
        if not isinstance(name, str) or name not in served:
            known = ", ".join([*served, "auto"])
            raise ApiError(404, f"unknown model {name!r}; served: {known}", "model_not_found")
        return served[name]

    async def run(future_call: Callable[[], Any]) -> Any:
        try:
            return await asyncio.wait_for(future_call(), timeout=config.timeout_s)
        except QueueFull as exc:
            raise ApiError(429, f"busy: {exc}; retry shortly", "rate_limit_error", {"Retry-After": "1"}) from None
        except ShuttingDown as exc:
            raise ApiError(503, str(exc), "server_error") from None
        except TimeoutError:
            raise ApiError(504, f"the request took longer than {config.timeout_s:g} s", "timeout") from None
        except UnsupportedTaskError as exc:
            raise ApiError(400, str(exc)) from None
        except (InputError, ImageError, ValueError) as exc:
            raise ApiError(400, str(exc)) from None
        except VlmkitError as exc:
            raise ApiError(400, str(exc)) from None

    def require(entry: _Served, task: str) -> None:
        if task not in entry.tasks:
            try:
                entry.model.require(task)
            except UnsupportedTaskError as exc:
                raise ApiError(400, str(exc)) from None

    def chat_task(entry: _Served, chat: _Chat) -> Literal["chat", "ask", "caption"]:
        """What a model named in a chat request does with it; a question it cannot answer is refused
        (never answered with a caption), naming the models that can."""
        text = " ".join(t.strip() for t in chat.last_texts if t.strip())
        if "chat" in entry.tasks:
            return "chat"
        if not is_caption_request(text) or chat.assistant_turns:
            if "ask" in entry.tasks:
                return "ask"
            able = [n for n, e in served.items() if e.tasks & {"chat", "ask"}]
            where = (f"models that answer: {', '.join(able)} (or model 'auto')" if able else
                     "no served model answers questions: serve a VQA or chat model (--model), or train one offline with `vlmkit train`")
            raise ApiError(400, f"model {entry.name!r} cannot answer questions or chat: it {_can(entry)}; {where}")
        if "caption" in entry.tasks:
            return "caption"
        if "ask" in entry.tasks:
            raise ApiError(400, f"model {entry.name!r} answers questions: add a question to the image")
        raise ApiError(400, f"model {entry.name!r} ({entry.kind}) cannot chat, answer or caption; served: {_abilities(served)}")

    # -- batch functions -----------------------------------------------------------------------

    def caption_fn(entry: _Served) -> Callable[[list[Any]], list[Any]]:
        def fn(items: list[tuple[Any, str | None, int]]) -> list[str]:
            out: list[str] = [""] * len(items)
            groups: dict[tuple[str | None, int], list[int]] = {}
            for i, (_, prompt, tokens) in enumerate(items):
                groups.setdefault((prompt, tokens), []).append(i)
            for (prompt, tokens), rows in groups.items():
                texts = entry.model.caption([items[i][0] for i in rows], prompt=prompt, options=GenerationOptions(max_new_tokens=tokens), batch_size=len(rows))
                for i, text in zip(rows, texts, strict=True):
                    out[i] = text
            return out

        return fn

    def ask_fn(entry: _Served) -> Callable[[list[Any]], list[Any]]:
        def fn(items: list[tuple[Any, str, int]]) -> list[str]:
            out: list[str] = [""] * len(items)
            groups: dict[int, list[int]] = {}
            for i, (_, _, tokens) in enumerate(items):
                groups.setdefault(tokens, []).append(i)
            for tokens, rows in groups.items():
                texts = entry.model.ask([items[i][0] for i in rows], [items[i][1] for i in rows], options=GenerationOptions(max_new_tokens=tokens), batch_size=len(rows))
                for i, text in zip(rows, texts, strict=True):
                    out[i] = text
            return out

        return fn

    def embed_text_fn(entry: _Served) -> Callable[[list[Any]], list[Any]]:
        return lambda texts: list(entry.model.embed_texts(texts, batch_size=max(1, len(texts))))

    def embed_image_fn(entry: _Served) -> Callable[[list[Any]], list[Any]]:
        return lambda pics: list(entry.model.embed_images(pics, batch_size=max(1, len(pics))))

    async def caption(entry: _Served, image: Any, prompt: str | None, tokens: int) -> str:
        require(entry, "caption")
        return await run(lambda: entry.batcher("caption", caption_fn(entry))((image, prompt, tokens)))

    async def ask(entry: _Served, image: Any, question: str, tokens: int) -> str:
        require(entry, "ask")
        return await run(lambda: entry.batcher("ask", ask_fn(entry))((image, question, tokens)))

    # -- routes ----------------------------------------------------------------------------------

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "models": {name: {"kind": e.kind, "tasks": sorted(e.tasks)} for name, e in served.items()},
            "queues": {b.name: b.depth for e in served.values() for b in e.batchers.values()},
            **(health_extra() if health_extra is not None else {}),
        }

    @app.get("/metrics")
    def prometheus() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        for entry in served.values():
            for task, batcher in entry.batchers.items():
                metrics.queue.labels(entry.name, task).set(batcher.depth)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    def list_models() -> dict[str, Any]:
        data = [
            {"id": name, "object": "model", "created": 0, "owned_by": "vlmkit",
             "vlmkit": {"kind": e.kind, "tasks": sorted(e.tasks)}}
            for name, e in served.items()
        ]
        routes = {"precise": config.routes.precise, "conversational": config.routes.conversational}
        data.append({"id": "auto", "object": "model", "created": 0, "owned_by": "vlmkit",
                     "vlmkit": {"routes": routes, "by_capability": routes == {"precise": None, "conversational": None}}})
        return {"object": "list", "data": data}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        chat = _parse_chat(await body_of(request), images, config)
        if chat.model == "auto":
            try:
                route = choose_route(config.routes, texts=chat.last_texts, turns=chat.assistant_turns, max_tokens=chat.max_tokens,
                                     can={n: e.tasks for n, e in served.items()}, images=len(chat.images))
            except LookupError as exc:
                raise ApiError(400, f"{exc}; served: {_abilities(served)}") from None
        else:
            entry = model_named(chat.model)
            route = Route(entry.name, chat_task(entry, chat), EXPLICIT_REASON)
        entry = served[route.model]
        created = int(time.time())
        completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        prompt_text = " ".join(p.get("text", "") for m in chat.messages for p in m["content"] if p["type"] == "text")
        tokens = chat.max_tokens or (256 if route.task == "chat" else 30)
        prompt_tokens = entry.tokens(prompt_text)
        if route.task == "chat":  # counted as the model builds the prompt, every image's tokens included
            with contextlib.suppress(UnsupportedTaskError):  # a chat family without its own count: the text's
                prompt_tokens = await asyncio.to_thread(entry.model.prompt_tokens, chat.messages)
        context = entry.context()
        if route.task == "chat" and context is not None and prompt_tokens + tokens > context:
            counted = f" ({len(chat.images)} image{'s' if len(chat.images) != 1 else ''} included)" if chat.images else ""
            raise ApiError(400, f"the conversation is {prompt_tokens} tokens{counted} and {tokens} more were asked for; "
                                f"model {entry.name!r} takes at most {context} in all")
        if route.task in ("ask", "caption"):
            if len(chat.images) > 1:
                several = [n for n, e in served.items() if "chat" in e.tasks]
                where = f"models that take several: {', '.join(several)} (or model 'auto')" if several else "no served model takes several"
                raise ApiError(400, f"model {entry.name!r} takes one image per prompt; the request has {len(chat.images)}; {where}")
            if len(chat.images) != 1:
                raise ApiError(400, f"model {entry.name!r} answers about exactly one image; the request has {len(chat.images)}")
            question = " ".join(t.strip() for t in chat.last_texts if t.strip())
            if route.task == "ask":
                if not question:
                    raise ApiError(400, f"model {entry.name!r} answers questions: add a question to the image")
                text = await ask(entry, chat.images[0], question, tokens)
            else:
                text = await caption(entry, chat.images[0], None, tokens)
            pieces: Iterator[str] | None = None
        else:
            text, pieces = "", None
            if chat.stream:
                pieces = _start_stream(entry, chat, tokens, config)
            else:
                text = await run(lambda: _chat_call(entry, chat, tokens, config))
        meta = {"vlmkit": {"route": route.to_dict()}, "system_fingerprint": f"vlmkit-{entry.kind}"}
        headers = {"X-Vlmkit-Model": route.model, "X-Vlmkit-Route": route.reason}
        if chat.stream:
            stream = _sse(completion_id, created, route.model, chat, text, pieces, entry, prompt_tokens, tokens, meta)
            return StreamingResponse(stream, media_type="text/event-stream", headers={**headers, "Cache-Control": "no-cache"})
        text, stopped = _cut_at_stop(text, chat.stop)
        completion_tokens = entry.tokens(text)
        finish = "length" if not stopped and completion_tokens >= tokens else "stop"
        return JSONResponse({
            "id": completion_id, "object": "chat.completion", "created": created, "model": route.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish, "logprobs": None}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens},
            **meta,
        }, headers=headers)

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> JSONResponse:
        body = await body_of(request)
        entry = model_named(_field(body, "model", str, required=True))
        require(entry, "embed")
        raw = body.get("input")
        items = [raw] if isinstance(raw, (str, dict)) else raw
        if not isinstance(items, list) or not items:
            raise ApiError(400, "'input' must be a string, an image part, or a non-empty list of them")
        if len(items) > MAX_EMBED_INPUTS:
            raise ApiError(413, f"at most {MAX_EMBED_INPUTS} inputs per request")
        encoding = _field(body, "encoding_format", str, default="float")
        if encoding not in ("float", "base64"):
            raise ApiError(400, "'encoding_format' must be 'float' or 'base64'")
        calls = []
        tokens = 0
        for i, item in enumerate(items):
            if isinstance(item, str):
                text = _text(item, f"input[{i}]")
                tokens += entry.tokens(text)
                calls.append((entry.batcher("embed_text", embed_text_fn(entry)), text))
            elif isinstance(item, dict) and item.get("type") == "image_url":
                calls.append((entry.batcher("embed_image", embed_image_fn(entry)), images(item.get("image_url"), f"input[{i}]")))
            else:
                raise ApiError(400, f"input[{i}] must be a string or {{'type': 'image_url', 'image_url': {{'url': ...}}}}")
        async def embed_all() -> list[Any]:  # a batch at a time: a long input list never fills the queue by itself
            out: list[Any] = []
            step = min(config.max_batch, config.max_queue)
            for start in range(0, len(calls), step):
                out += await asyncio.gather(*(batcher(value) for batcher, value in calls[start : start + step]))
            return out

        vectors = await run(embed_all)
        data = []
        for i, vector in enumerate(vectors):
            array = np.asarray(vector, dtype=np.float32)
            embedding: Any = base64.b64encode(array.astype("<f4").tobytes()).decode() if encoding == "base64" else array.tolist()
            data.append({"object": "embedding", "index": i, "embedding": embedding})
        return JSONResponse({"object": "list", "data": data, "model": entry.name, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    @app.post("/v1/caption")
    async def caption_endpoint(request: Request) -> dict[str, Any]:
        body = await body_of(request)
        entry = model_named(_field(body, "model", str, required=True))
        prompt = _field(body, "prompt", str, default=None)
        tokens = int(_number(body, "max_tokens", 1, config.max_tokens, 30) or 30)
        image = images(body.get("image"))
        return {"model": entry.name, "caption": await caption(entry, image, prompt, tokens)}

    @app.post("/v1/vqa")
    async def vqa_endpoint(request: Request) -> dict[str, Any]:
        body = await body_of(request)
        entry = model_named(_field(body, "model", str, required=True))
        question = _text(_field(body, "question", str, required=True), "question")
        if not question.strip():
            raise ApiError(400, "'question' is empty")
        tokens = int(_number(body, "max_tokens", 1, config.max_tokens, 10) or 10)
        image = images(body.get("image"))
        return {"model": entry.name, "question": question, "answer": await ask(entry, image, question, tokens)}

    @app.post("/v1/classify")
    async def classify_endpoint(request: Request) -> dict[str, Any]:
        body = await body_of(request)
        entry = model_named(_field(body, "model", str, required=True))
        require(entry, "classify")
        labels = _field(body, "labels", list, required=True)
        if not labels or len(labels) > MAX_LABELS or not all(isinstance(x, str) and x.strip() for x in labels):
            raise ApiError(400, f"'labels' must be 1 to {MAX_LABELS} non-empty strings")
        top_k = int(_number(body, "top_k", 1, len(labels), min(5, len(labels))) or 1)
        image = images(body.get("image"))

        def call() -> Any:
            with entry.lock:
                return entry.model.classify([image], labels, top_k=top_k)[0]

        ranked = await run(lambda: asyncio.to_thread(call))
        return {"model": entry.name, "labels": [{"label": r.label, "score": r.score} for r in ranked]}

    @app.post("/v1/match")
    async def match_endpoint(request: Request) -> dict[str, Any]:
        body = await body_of(request)
        entry = model_named(_field(body, "model", str, required=True))
        require(entry, "match")
        texts = _field(body, "texts", list, required=True)
        if not texts or len(texts) > MAX_LABELS or not all(isinstance(x, str) for x in texts):
            raise ApiError(400, f"'texts' must be 1 to {MAX_LABELS} strings")
        image = images(body.get("image"))

        def call() -> Any:
            with entry.lock:
                return entry.model.match(image, texts)

        result = await run(lambda: asyncio.to_thread(call))
        return {"model": entry.name, "kind": result.kind, "scores": [float(s) for s in result.scores]}

    interrogators: dict[tuple[str, str], Any] = {}

    @app.post("/v1/interrogate")
    async def interrogate_endpoint(request: Request) -> dict[str, Any]:
        from vlmkit.interrogate import Interrogator

        body = await body_of(request)
        captioner = model_named(_field(body, "model", str, required=True))
        ranker = model_named(_field(body, "ranker", str, default=captioner.name))
        mode = _field(body, "mode", str, default="fast")
        if mode not in ("fast", "best"):
            raise ApiError(400, "'mode' must be 'fast' or 'best'")
        top_k = int(_number(body, "top_k", 0, 20, 3) or 0)
        image = images(body.get("image"))
        key = (captioner.name, ranker.name)
        if key not in interrogators:
            try:
                interrogators[key] = Interrogator(captioner.model, ranker.model)
            except VlmkitError as exc:
                raise ApiError(400, str(exc)) from None
        locks = [e.lock for e in sorted({captioner.name: captioner, ranker.name: ranker}.values(), key=lambda e: e.name)]

        def call() -> Any:
            with contextlib.ExitStack() as stack:
                for lock in locks:  # in name order, so two requests never wait on each other's lock
                    stack.enter_context(lock)
                return interrogators[key].interrogate(image, mode=mode, top_k=top_k)

        result = await run(lambda: asyncio.to_thread(call))
        return {"model": captioner.name, "ranker": ranker.name, "mode": result.mode, "prompt": result.prompt,
                "caption": result.caption, "similarity": result.similarity,
                "terms": {k: [{"term": t, "score": v} for t, v in terms] for k, terms in result.terms.items()}}

    add_pages(app)
    return app


#: The route reason when the request names its model (shown in ``X-Vlmkit-Route`` and on the chat page).
EXPLICIT_REASON = "the model named in the request"


def _can(entry: _Served) -> str:
    """What a model does, in words: "captions", "answers questions and captions", ..."""
    words = {"chat": "chats", "ask": "answers questions", "caption": "captions", "embed": "embeds"}
    done = [w for t, w in words.items() if t in entry.tasks]
    return " and ".join([", ".join(done[:-1]), done[-1]] if len(done) > 1 else done) or "nothing a chat request can use"


def _abilities(served: dict[str, _Served]) -> str:
    return "; ".join(f"{name} ({_can(entry)})" for name, entry in served.items())


# -- chat helpers ------------------------------------------------------------------------------------


def _chat_options(chat: _Chat, tokens: int) -> GenerationOptions:
    if chat.temperature is not None and chat.temperature > 0:
        return GenerationOptions(max_new_tokens=tokens, do_sample=True, temperature=chat.temperature, top_p=chat.top_p)
    return GenerationOptions(max_new_tokens=tokens)


def _admit(entry: _Served, config: ServerConfig) -> None:
    with entry.chat_guard:
        if entry.chat_waiting >= config.max_queue:
            raise QueueFull(f"{entry.name}/chat: {config.max_queue} requests already waiting")
        entry.chat_waiting += 1


def _release(entry: _Served) -> None:
    with entry.chat_guard:
        entry.chat_waiting -= 1


async def _chat_call(entry: _Served, chat: _Chat, tokens: int, config: ServerConfig) -> str:
    _admit(entry, config)

    def call() -> str:
        try:
            with entry.lock:
                return str(entry.model.chat(chat.messages, options=_chat_options(chat, tokens)))
        finally:
            _release(entry)

    return await asyncio.to_thread(call)


def _start_stream(entry: _Served, chat: _Chat, tokens: int, config: ServerConfig) -> Iterator[str]:
    """Generation on its own thread (holding the model lock); pieces come through a queue."""
    import queue as queue_module

    try:
        _admit(entry, config)
    except QueueFull as exc:
        raise ApiError(429, f"busy: {exc}; retry shortly", "rate_limit_error", {"Retry-After": "1"}) from None
    pieces: queue_module.Queue[Any] = queue_module.Queue()
    done = object()

    def produce() -> None:
        try:
            with entry.lock:
                for piece in entry.model.chat(chat.messages, stream=True, options=_chat_options(chat, tokens)):
                    pieces.put(piece)
        except Exception as exc:  # noqa: BLE001 - reported in the stream
            pieces.put(exc)
        finally:
            _release(entry)
            pieces.put(done)

    threading.Thread(target=produce, daemon=True, name="vlmkit-stream").start()

    def consume() -> Iterator[str]:
        while True:
            item = pieces.get()
            if item is done:
                return
            if isinstance(item, Exception):
                raise item
            yield item

    return consume()


async def _sse(
    completion_id: str, created: int, model: str, chat: _Chat, text: str, pieces: Iterator[str] | None,
    entry: _Served, prompt_tokens: int, limit: int, meta: dict[str, Any],
) -> AsyncIterator[bytes]:
    def chunk(delta: dict[str, Any], finish: str | None) -> bytes:
        payload = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model,
                   "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}], **meta}
        return f"data: {json.dumps(payload)}\n\n".encode()

    yield chunk({"role": "assistant", "content": ""}, None)
    produced = ""
    stopped = False
    if pieces is None:
        produced, stopped = _cut_at_stop(text, chat.stop)
        if produced:
            yield chunk({"content": produced}, None)
    else:
        sentinel = object()
        iterator = iter(pieces)
        while True:
            try:
                piece = await asyncio.to_thread(next, iterator, sentinel)
            except Exception as exc:  # noqa: BLE001 - the status line has gone; say it in the stream
                log.exception("generation failed while streaming")
                error = {"error": {"message": f"generation failed: {exc}", "type": "server_error"}}
                yield f"data: {json.dumps(error)}\n\n".encode()
                break
            if piece is sentinel:
                break
            candidate, stopped = _cut_at_stop(produced + piece, chat.stop)
            new = candidate[len(produced):]
            produced = candidate
            if new:
                yield chunk({"content": new}, None)
            if stopped:
                await asyncio.to_thread(list, iterator)  # let generation finish (releasing the model lock) off the event loop
                break
    completion_tokens = entry.tokens(produced)
    yield chunk({}, "length" if not stopped and completion_tokens >= limit else "stop")
    if chat.include_usage:
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens}
        payload = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model, "choices": [], "usage": usage}
        yield f"data: {json.dumps(payload)}\n\n".encode()
    yield b"data: [DONE]\n\n"


def _error(status: int, message: str, kind: str = "invalid_request_error", headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status_code=status, headers=headers)

