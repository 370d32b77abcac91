"""The API's request and response bodies as pydantic models: OpenAI's shapes for chat completions,
embeddings and the model list, and vlmkit's for the task endpoints.

Requests are read by :func:`json_body`: the body must be a JSON object that Python and the models
can take (no lone UTF-16 surrogates, no integers of over 4,300 digits, not nested too deeply), then
it is validated strictly (no ``"5"`` for 5, no ``true`` for 1, no NaN); ``null`` means "not given".
A failure is a :class:`~fastapi.exceptions.RequestValidationError`, answered as a 400 naming the
field (:mod:`vlmkit_server.errors`). Limits that depend on the server's settings (``max_tokens``)
and the size limits (413) are checked by the endpoints; chat messages by :mod:`vlmkit.chat`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any, Literal, TypeVar

from fastapi import Depends, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .config import MAX_LABELS
from .errors import BadRequest

__all__ = [
    "json_body", "ChatRequest", "EmbeddingsRequest", "CaptionRequest", "VqaRequest", "ClassifyRequest", "MatchRequest",
    "InterrogateRequest", "ChatCompletion", "ChatCompletionChunk", "Choice", "ChunkChoice", "Delta", "Message", "Usage",
    "Embedding", "EmbeddingList",
]

Schema = TypeVar("Schema", bound=BaseModel)


# -- reading a body ----------------------------------------------------------------------------------


async def read_json(request: Request) -> Any:
    """The request's body as JSON that every part of the server can take."""
    raw = await request.body()
    try:
        body = json.loads(raw)
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, and integers of over 4,300 digits
        raise BadRequest(f"the body is not valid JSON ({exc})") from None
    except RecursionError:
        raise BadRequest("the body is nested too deeply") from None
    try:  # "\ud800" escapes decode to lone surrogates, which no tokenizer or UTF-8 encoder takes
        json.dumps(body, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest("the body holds an unpaired UTF-16 surrogate escape (\\ud800-\\udfff)") from None
    except RecursionError:
        raise BadRequest("the body is nested too deeply") from None
    return body


def json_body(schema: type[Schema]) -> Any:
    """A dependency: the request's JSON body, validated as ``schema``."""

    async def parse(request: Request) -> Schema:
        body = await read_json(request)
        if not isinstance(body, dict):
            raise BadRequest("the body must be a JSON object")
        try:
            return schema.model_validate(body)
        except ValidationError as exc:
            raise RequestValidationError(exc.errors(include_url=False)) from None

    dependency: Callable[[Request], Coroutine[Any, Any, Schema]] = parse
    return Depends(dependency)


# -- requests ----------------------------------------------------------------------------------------


class _Request(BaseModel):
    model_config = ConfigDict(strict=True, allow_inf_nan=False, frozen=True)

    model: str


class ChatRequest(_Request):
    """``POST /v1/chat/completions``. ``messages`` are checked by :func:`vlmkit.chat.parse_messages`."""

    messages: list[Any]
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, ge=0.0, le=1.0)
    stop: Any = Field(None, validate_default=True)
    stream: bool | None = None
    stream_options: dict[str, Any] | None = None
    n: int | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: Any) -> list[str]:
        if value is None:
            return []
        if isinstance(value, str) and value:
            return [value]
        if isinstance(value, list) and len(value) <= 4 and all(isinstance(s, str) and s for s in value):
            return value
        raise ValueError("must be a string or a list of up to 4 non-empty strings")

    @field_validator("n")
    @classmethod
    def _one(cls, value: int | None) -> int | None:
        if value not in (None, 1):
            raise ValueError("only n=1 is supported")
        return value

    @property
    def stops(self) -> list[str]:
        return list(self.stop)

    @property
    def tokens(self) -> int | None:
        """The answer's length asked for, if any (``max_tokens``, or its newer name)."""
        return self.max_tokens if self.max_tokens is not None else self.max_completion_tokens

    @property
    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage", False))


class EmbeddingsRequest(_Request):
    """``POST /v1/embeddings``: ``input`` is a text, an image part, or a list of them."""

    input: Any
    encoding_format: Literal["float", "base64"] | None = None

    @field_validator("input")
    @classmethod
    def _items(cls, value: Any) -> list[Any]:
        items = [value] if isinstance(value, (str, dict)) else value
        if not isinstance(items, list) or not items:
            raise ValueError("must be a string, an image part, or a non-empty list of them")
        return items

    @property
    def items(self) -> list[Any]:
        return list(self.input)


class CaptionRequest(_Request):
    image: Any = None  # a data: URL, or {"url": ...}
    prompt: str | None = None
    max_tokens: float | None = Field(None, ge=1)


class VqaRequest(_Request):
    image: Any = None
    question: str
    max_tokens: float | None = Field(None, ge=1)

    @field_validator("question")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("is empty")
        return value


class ClassifyRequest(_Request):
    image: Any = None
    labels: list[Any]
    top_k: float | None = None

    @field_validator("labels")
    @classmethod
    def _labels(cls, value: list[Any]) -> list[str]:
        if not value or len(value) > MAX_LABELS or not all(isinstance(x, str) and x.strip() for x in value):
            raise ValueError(f"must be 1 to {MAX_LABELS} non-empty strings")
        return value

    @model_validator(mode="after")
    def _top_k(self) -> ClassifyRequest:
        if self.top_k is not None and not 1 <= self.top_k <= len(self.labels):
            raise ValueError(f"'top_k' must be between 1 and {len(self.labels)}, got {self.top_k:g}")
        return self

    @property
    def k(self) -> int:
        return int(self.top_k) if self.top_k is not None else min(5, len(self.labels))


class MatchRequest(_Request):
    image: Any = None
    texts: list[Any]

    @field_validator("texts")
    @classmethod
    def _texts(cls, value: list[Any]) -> list[str]:
        if not value or len(value) > MAX_LABELS or not all(isinstance(x, str) for x in value):
            raise ValueError(f"must be 1 to {MAX_LABELS} strings")
        return value


class InterrogateRequest(_Request):
    image: Any = None
    ranker: str | None = None
    mode: Literal["fast", "best"] | None = None
    top_k: float | None = Field(None, ge=0, le=20)


# -- responses ---------------------------------------------------------------------------------------


def _omitted(value: Any) -> bool:
    return value is None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class Message(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: Message
    finish_reason: Literal["stop", "length"]
    logprobs: None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    vlmkit: dict[str, Any]  # {"route": {"model", "task", "reason"}}
    system_fingerprint: str


class Delta(BaseModel):
    role: Literal["assistant"] | None = Field(default=None, exclude_if=_omitted)
    content: str | None = Field(default=None, exclude_if=_omitted)


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    finish_reason: Literal["stop", "length"] | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = Field(default=None, exclude_if=_omitted)  # in the last chunk, when asked for
    vlmkit: dict[str, Any] | None = Field(default=None, exclude_if=_omitted)
    system_fingerprint: str | None = Field(default=None, exclude_if=_omitted)


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str  # a base64 string of little-endian float32 when asked for


class EmbeddingList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: dict[str, int]
