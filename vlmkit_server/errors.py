"""How the server says what went wrong: one table from exception types to status codes, one
envelope, and the exception handlers that apply them (:func:`install_error_handlers`).

The endpoints raise typed exceptions, theirs (:class:`ApiError` and its kinds) or the library's
(:mod:`vlmkit.errors`), and never build an error response themselves. A status is looked up by the
exception's class, the most specific entry first, so adding a case is one line in :data:`API_RULES`.
Anything the table does not know is a bug, not the client's fault: a 500 with a generic message,
and the traceback in the server log.

The envelope is OpenAI's ``{"error": {"message", "type", "code"}}``, for the API server and the
search page's API (:mod:`vlmkit_server.app`) alike.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from vlmkit.errors import ImageTooLargeError, VlmkitError
from vlmkit.index import ImageIndexError, IndexModelMismatch

from ._media import NotIndexed
from .batching import QueueFull, ShuttingDown
from .pages import not_found_page, wants_page

__all__ = [
    "ApiError", "BadRequest", "Unauthorized", "ModelNotFound", "TooLarge", "RequestTimeout", "BadGateway", "Unavailable",
    "Rule", "Problem", "API_RULES", "problem_of", "openai_envelope",
    "error_response", "install_error_handlers", "describe_validation",
]

log = logging.getLogger("vlmkit.server")

#: The message of every unexpected failure: what went wrong is in the log, not in the answer.
INTERNAL = "internal error; see the server log"


class ApiError(Exception):
    """An error the server finds itself; its status is its class's entry in the table."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(ApiError):
    """The request is well-formed JSON but asks for something the server cannot do."""


class Unauthorized(ApiError):
    """No valid API key."""


class ModelNotFound(ApiError):
    """The request names a model that is not served."""


class TooLarge(ApiError):
    """Over one of the server's size limits (texts, messages, images, inputs, bytes)."""


class RequestTimeout(ApiError):
    """The request took longer than the server's timeout."""


class BadGateway(ApiError):
    """A model served from elsewhere failed, or answered with something that is not an answer."""


class Unavailable(ApiError):
    """A model served from elsewhere cannot be reached now."""


@dataclass(frozen=True)
class Rule:
    """What an exception type becomes: a status, an OpenAI error type, the message (``{}`` is
    ``str(exc)``) and headers."""

    status: int
    kind: str = "invalid_request_error"
    template: str = "{}"
    headers: Mapping[str, str] = field(default_factory=dict)


#: Exception type -> its answer, for the API. A subclass's own entry wins over its base's.
API_RULES: dict[type[BaseException], Rule] = {
    BadRequest: Rule(400),
    RequestValidationError: Rule(400),
    VlmkitError: Rule(400),  # the library's errors are about its input: bad images, texts, unsupported tasks
    Unauthorized: Rule(401, "authentication_error"),
    ModelNotFound: Rule(404, "model_not_found"),
    NotIndexed: Rule(404),
    IndexModelMismatch: Rule(409),
    TooLarge: Rule(413),
    ImageTooLargeError: Rule(413),  # a decompression bomb, or over --max-pixels
    QueueFull: Rule(429, "rate_limit_error", "busy: {}; retry shortly", {"Retry-After": "1"}),
    ImageIndexError: Rule(503, "server_error"),  # missing, busy or damaged index: the server's problem
    ShuttingDown: Rule(503, "server_error"),
    BadGateway: Rule(502, "server_error", "bad gateway: {}"),
    Unavailable: Rule(503, "server_error", "{}; retry shortly", {"Retry-After": "2"}),
    RequestTimeout: Rule(504, "timeout"),
}
@dataclass(frozen=True)
class Problem:
    """One error answer, before it is put in an envelope."""

    status: int
    message: str
    kind: str = "invalid_request_error"
    headers: Mapping[str, str] = field(default_factory=dict)


def problem_of(exc: BaseException) -> Problem | None:
    """The answer to ``exc`` by the table (``None``: unexpected, a 500)."""
    if isinstance(exc, HTTPException):
        return Problem(exc.status_code, str(exc.detail), headers=dict(exc.headers or {}))
    if isinstance(exc, RequestValidationError):
        return Problem(API_RULES[RequestValidationError].status, describe_validation(exc.errors()))
    for cls in type(exc).__mro__:
        rule = API_RULES.get(cls)
        if rule is not None:
            message = exc.message if isinstance(exc, ApiError) else str(exc)
            return Problem(rule.status, rule.template.format(message), rule.kind, rule.headers)
    return None


def describe_validation(errors: Sequence[Any]) -> str:
    """Validation errors in one line, each naming its field: ``max_tokens: Input should be ...``."""
    problems: list[str] = []
    for error in errors:
        where = _location(error.get("loc", ()))
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        problems.append(f"{where}: {message}" if where else message)
    return "; ".join(dict.fromkeys(problems)) or "invalid request"


def _location(loc: Sequence[Any]) -> str:
    """``("body", "messages", 0, "role")`` -> ``messages[0].role``."""
    where = ""
    for part in loc:
        if part in ("body", "query", "path"):
            continue
        where += f"[{part}]" if isinstance(part, int) else f".{part}" if where else str(part)
    return where


def openai_envelope(problem: Problem) -> dict[str, Any]:
    return {"error": {"message": problem.message, "type": problem.kind, "code": problem.status}}


def error_response(problem: Problem) -> JSONResponse:
    return JSONResponse(openai_envelope(problem), status_code=problem.status, headers=dict(problem.headers) or None)


def install_error_handlers(app: FastAPI) -> None:
    """Answer every exception by the table, in the envelope; a browser's 404 for a page path gets an
    HTML page (:func:`~vlmkit_server.pages.not_found_page`); anything else is a logged 500."""

    async def known(request: Request, exc: Exception) -> Response:
        problem = problem_of(exc)
        if problem is None:
            return await unexpected(request, exc)
        if problem.status == 404 and isinstance(exc, HTTPException) and wants_page(request):
            return not_found_page(request, app.state.page_links)
        return error_response(problem)

    async def unexpected(request: Request, exc: Exception) -> Response:
        log.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
        return error_response(Problem(500, INTERNAL, "server_error"))

    for cls in (*API_RULES, HTTPException, RequestValidationError):
        app.add_exception_handler(cls, known)
    app.add_exception_handler(Exception, unexpected)
