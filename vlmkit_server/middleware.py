"""What wraps every request before an endpoint sees it: the body limit, the API key and the request
metrics (:func:`api_guard`), and the search page's security headers."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Request
from fastapi.responses import Response

from .config import ServerConfig
from .errors import Problem, Unauthorized, error_response, openai_envelope, problem_of
from .metrics import Metrics

__all__ = ["BodyLimit", "api_guard", "security_headers", "ENDPOINTS"]

#: The API's endpoints, the only paths that become metric labels (any other is "other").
ENDPOINTS = frozenset({"/v1/models", "/v1/chat/completions", "/v1/embeddings", "/v1/caption", "/v1/vqa", "/v1/classify",
                       "/v1/match", "/v1/interrogate", "/health", "/metrics"})

Next = Callable[[Request], Awaitable[Response]]


class BodyLimit:
    """Answer 413 to request bodies over ``limit`` bytes before they are parsed or spooled to disk:
    at once when Content-Length says so, else as soon as a chunked body passes the limit."""

    def __init__(self, app: Any, limit: int, message: str) -> None:
        self.app = app
        self.limit = limit
        self.body = json.dumps(openai_envelope(Problem(413, message))).encode()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.limit:
            await self._refuse(send)
            return
        seen, over, started = 0, False, False

        async def limited_receive() -> dict[str, Any]:
            nonlocal seen, over
            event = await receive()
            if event["type"] == "http.request" and not over:
                seen += len(event.get("body", b""))
                if seen > self.limit:
                    over = True
                    return {"type": "http.disconnect"}  # the app stops reading; we answer below
            return event

        async def guarded_send(event: dict[str, Any]) -> None:
            nonlocal started
            if over and not started:
                return  # whatever the app makes of the cut-off body, the answer is 413
            started = started or event["type"] == "http.response.start"
            await send(event)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not over or started:
                raise
        if over and not started:
            await self._refuse(send)

    async def _refuse(self, send: Any) -> None:
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(self.body)).encode()), (b"connection", b"close")]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": self.body})


def api_guard(config: ServerConfig, metrics: Metrics) -> Callable[[Request, Next], Awaitable[Response]]:
    """The API's outer middleware: an API key on /v1 and /metrics (when keys are set), and every
    answer counted and timed by endpoint."""

    async def guard(request: Request, call_next: Next) -> Response:
        path = request.url.path
        endpoint = path if path in ENDPOINTS else "other"  # never a label from a path the client made up
        start = time.perf_counter()
        response: Response
        if config.api_keys and path.startswith(("/v1/", "/metrics")) and _key(request) not in config.api_keys:
            problem = problem_of(Unauthorized("a valid API key is required (Authorization: Bearer KEY)"))
            assert problem is not None
            response = error_response(problem)
        else:
            response = await call_next(request)
        metrics.requests.labels(endpoint, str(response.status_code)).inc()
        metrics.latency.labels(endpoint).observe(time.perf_counter() - start)
        return response

    return guard


def _key(request: Request) -> str:
    header = request.headers.get("authorization", "")
    return header[7:] if header.lower().startswith("bearer ") else ""


async def security_headers(request: Request, call_next: Next) -> Response:
    response = await call_next(request)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    return response
