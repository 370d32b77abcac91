"""The settings of the API server (:class:`ServerConfig`) and the limits it puts on every request."""

from __future__ import annotations

from dataclasses import dataclass, field

from .routing import Routes

__all__ = ["ServerConfig", "MAX_TEXT_CHARS", "MAX_MESSAGES", "MAX_IMAGES", "MAX_LABELS", "MAX_EMBED_INPUTS"]

MAX_TEXT_CHARS = 20_000  # one text: a message part, an input to embed, a question
MAX_MESSAGES = 64
MAX_IMAGES = 8  # per request
MAX_LABELS = 1000  # labels to classify against, texts to match
MAX_EMBED_INPUTS = 256


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
