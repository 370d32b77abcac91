"""Models that live on another OpenAI-compatible server (vLLM, SGLang, another ``vlmkit serve``),
served like local ones: ``vlmkit serve --model NAME=openai:URL[#MODEL]``.

A :class:`RemoteModel` has the methods the server calls on a local model (:mod:`.served`): ``chat``
(streamed piece by piece as the remote's server-sent events arrive), ``embed_texts`` and
``embed_images``, and ``caption`` and ``ask`` where the remote is a vlmkit server that says its
model does them. It takes ``concurrency`` calls at once, so the server runs that many queue workers
for it and holds no lock: the remote batches on its side.

What it can do is what the remote's ``/v1/models`` says: a vlmkit server lists each model's tasks
(``"vlmkit": {"tasks": [...]}``); any other server's model is taken to chat. :func:`connect` checks
this before the server starts listening: the remote answers, and serves the model.

Failures come back as the server's own errors (:mod:`.errors`), each one line naming the model:

- a refused or reset connection is retried a few times with a short backoff (only while nothing
  was sent: a request the remote may have started generating is never sent twice), then a 503
  with ``Retry-After``;
- no answer in time (connect or read): a 504;
- a 4xx from the remote: the same status, with the remote's message;
- a 5xx, or an answer that is not JSON of the expected shape: a 502 "bad gateway";
- a stream that breaks off: the error the chat stream reports for any failure mid-stream.

The API key is sent as ``Authorization: Bearer``; it is never logged, and never shown in an error,
in ``/health`` or in ``/v1/models`` (a remote's message that quotes it has it masked).
"""

from __future__ import annotations

import base64
import io
import json
import logging
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
from starlette.exceptions import HTTPException

from vlmkit.errors import InputError, UnsupportedTaskError
from vlmkit.models.base import GenerationOptions
from vlmkit.models.kinds import ModelKind

from .errors import ApiError, BadGateway, RequestTimeout, Unavailable

__all__ = ["PREFIX", "RemoteSettings", "RemoteModel", "RemoteSetupError", "RemoteRejected", "is_remote", "parse_remote", "connect"]

log = logging.getLogger("vlmkit.server")

#: A model spec that starts with this names a remote model: ``openai:URL[#MODEL]``.
PREFIX = "openai:"
#: The tasks a remote model can be asked to do through this class.
TASKS = frozenset({"chat", "embed", "caption", "ask"})
_MESSAGE_CHARS = 300  # a remote's error message, as much as is quoted


class RemoteSetupError(InputError):
    """A remote model cannot be served: a bad URL, an unset key variable, a remote that does not
    answer or does not serve the model. ``vlmkit serve`` reports it in one line and exits."""


class RemoteRejected(HTTPException):
    """The remote refused the request (a 4xx): passed on with its status and message."""


@dataclass(frozen=True)
class RemoteSettings:
    """How the server talks to one remote: its timeouts, retries and calls in flight."""

    timeout_s: float = 120.0  # waiting for an answer (between two pieces of a stream)
    connect_timeout_s: float = 5.0
    retries: int = 2  # after a connection that failed before anything was sent
    backoff_s: float = 0.25  # before the first retry; doubled for each next one
    concurrency: int = 8  # calls in flight at once

    def __post_init__(self) -> None:
        if self.timeout_s <= 0 or self.connect_timeout_s <= 0 or self.backoff_s < 0:
            raise InputError("remote timeouts must be > 0 and the backoff >= 0")
        if self.retries < 0 or self.concurrency < 1:
            raise InputError("remote retries must be >= 0 and concurrency >= 1")


def is_remote(spec: str) -> bool:
    """Whether a ``--model`` spec names a remote model (``openai:URL[#MODEL]``)."""
    return spec.startswith(PREFIX)


def parse_remote(spec: str) -> tuple[str, str | None]:
    """``openai:URL[#MODEL]`` -> the API's base URL (``/v1`` added when the URL has no path) and the
    model id, if given. The URL must be http(s) with a host, and hold no credentials."""
    url, _, model_id = spec.removeprefix(PREFIX).partition("#")
    usage = "expected openai:http(s)://HOST[:PORT][/v1][#MODEL]"
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        raise RemoteSetupError(f"{spec!r}: not a URL; {usage}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise RemoteSetupError(f"{spec!r}: not an http(s) URL with a host; {usage}")
    if parts.username or parts.password:
        raise RemoteSetupError(f"{spec!r}: the URL holds credentials; give the key in an environment variable instead")
    path = parts.path.rstrip("/") or "/v1"
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, "", "")), (model_id or None)


class RemoteModel:
    """A model on another OpenAI-compatible server, called as the server calls a local model.

    Built without touching the network; :func:`connect` builds one after checking the remote."""

    def __init__(self, served_name: str, base_url: str, model_id: str, *, tasks: Iterable[str],
                 api_key: str | None = None, settings: RemoteSettings | None = None) -> None:
        self.settings = settings or RemoteSettings()
        self.served_name, self.base_url, self.model_id = served_name, base_url.rstrip("/"), model_id
        self.name = f"{PREFIX}{self.base_url}#{model_id}"
        self.concurrency = self.settings.concurrency
        self.kind = ModelKind("remote", f"{model_id} at {self.base_url}", frozenset(tasks) & TASKS,
                              "a model on another OpenAI-compatible server")
        self._secret = api_key or None
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(
            base_url=self.base_url + "/", headers=headers, follow_redirects=False,
            timeout=httpx.Timeout(self.settings.timeout_s, connect=self.settings.connect_timeout_s),
            limits=httpx.Limits(max_connections=self.settings.concurrency + 2, max_keepalive_connections=self.settings.concurrency),
        )

    def __repr__(self) -> str:
        return f"RemoteModel({self.served_name!r}, {self.name!r})"

    def require(self, task: str) -> None:
        if task not in self.kind.tasks:
            raise UnsupportedTaskError(task, self.served_name, self.kind.label, [])

    def close(self) -> None:
        self._client.close()

    # -- the calls the server makes -----------------------------------------------------------------

    def chat(self, messages: list[dict[str, Any]], *, stream: bool = False, options: GenerationOptions | None = None) -> Any:
        """The reply to ``messages`` (parts as :func:`vlmkit.chat.parse_messages` gives them, images
        decoded): its text, or with ``stream`` an iterator of its pieces as they arrive."""
        body = {"model": self.model_id, "messages": [_message(m) for m in messages], **_decoding(options or GenerationOptions())}
        if stream:
            return self._stream({**body, "stream": True})
        data = self._post("chat/completions", body)
        content = _field(data, lambda d: d["choices"][0]["message"]["content"], self._where("a chat completion"))
        if not isinstance(content, str):
            raise self._garbage("a chat completion without text")
        return content

    def embed_texts(self, texts: list[str], *, batch_size: int = 64) -> np.ndarray:
        return self._embed(list(texts))

    def embed_images(self, images: list[Any], *, batch_size: int = 64) -> np.ndarray:
        return self._embed([{"type": "image_url", "image_url": {"url": data_url(image)}} for image in images])

    def caption(self, images: list[Any], prompt: str | None = None, *, options: GenerationOptions | None = None,
                batch_size: int = 8) -> list[str]:
        """One remote ``/v1/caption`` call per image (a vlmkit remote batches them on its side)."""
        self.require("caption")
        tokens = _max_tokens(options)
        return [self._text("caption", {"model": self.model_id, "image": data_url(image), "prompt": prompt, **tokens}, "caption")
                for image in images]

    def ask(self, images: list[Any], questions: list[str], *, options: GenerationOptions | None = None,
            batch_size: int = 8) -> list[str]:
        """One remote ``/v1/vqa`` call per image and question."""
        self.require("ask")
        tokens = _max_tokens(options)
        return [self._text("vqa", {"model": self.model_id, "image": data_url(image), "question": question, **tokens}, "answer")
                for image, question in zip(images, questions, strict=True)]

    # -- requests -------------------------------------------------------------------------------

    def _embed(self, inputs: list[Any]) -> np.ndarray:
        data = self._post("embeddings", {"model": self.model_id, "input": inputs, "encoding_format": "float"})
        rows = _field(data, lambda d: sorted(d["data"], key=lambda row: row["index"]), self._where("an embedding list"))
        try:
            vectors = np.asarray([row["embedding"] for row in rows], dtype=np.float32)  # (N, D)
        except (KeyError, TypeError, ValueError):
            raise self._garbage("embeddings that are not lists of numbers") from None
        if vectors.ndim != 2 or len(vectors) != len(inputs):
            raise self._garbage(f"{len(vectors)} embeddings for {len(inputs)} inputs")
        return vectors

    def _text(self, endpoint: str, body: dict[str, Any], key: str) -> str:
        value = _field(self._post(endpoint, body), lambda d: d[key], self._where(f"a /v1/{endpoint} answer"))
        if not isinstance(value, str):
            raise self._garbage(f"a /v1/{endpoint} answer without text")
        return value

    def models(self) -> list[dict[str, Any]]:
        """The remote's ``/v1/models`` entries."""
        data = self._json(self._send(lambda: self._client.get("models")))
        entries = _field(data, lambda d: [e for e in d["data"] if isinstance(e["id"], str)], self._where("a model list"))
        return list(entries)

    def _post(self, path: str, body: dict[str, Any]) -> Any:
        return self._json(self._send(lambda: self._client.post(path, json=body)))

    def _stream(self, body: dict[str, Any]) -> Iterator[str]:
        request = self._client.build_request("POST", "chat/completions", json=body)
        response = self._send(lambda: self._client.send(request, stream=True))
        try:
            for data in self._events(response):
                if isinstance(data, dict) and "error" in data:
                    raise BadGateway(self._say(f"failed mid-stream: {_message_of(data)}"))
                piece = _field(data, lambda d: d["choices"][0]["delta"].get("content") if d["choices"] else None,
                               self._where("a chat completion chunk"))
                if piece:
                    yield str(piece)
        finally:
            response.close()

    def _events(self, response: httpx.Response) -> Iterator[Any]:
        """The JSON payloads of the server-sent events, as they arrive, until ``[DONE]``."""
        try:
            for line in response.iter_lines():
                if not line.startswith("data:"):
                    continue
                payload = line[5:].strip()
                if payload == "[DONE]":
                    return
                try:
                    yield json.loads(payload)
                except ValueError:
                    raise self._garbage("an event that is not JSON") from None
        except httpx.TimeoutException:
            raise RequestTimeout(self._say(f"no answer within {self.settings.timeout_s:g} s")) from None
        except httpx.TransportError as exc:
            raise BadGateway(self._say(f"the stream broke off ({_reason(exc)})")) from None
        raise BadGateway(self._say("the stream ended before it finished"))

    def _send(self, call: Callable[[], httpx.Response]) -> httpx.Response:
        """``call()``, retried only when the connection failed before anything was sent; its status checked."""
        for attempt in range(self.settings.retries + 1):
            try:
                response = call()
                break
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                if attempt == self.settings.retries:
                    if isinstance(exc, httpx.ConnectTimeout):
                        raise RequestTimeout(self._say(f"no connection within {self.settings.connect_timeout_s:g} s")) from None
                    raise Unavailable(self._say(f"cannot connect ({_reason(exc)}), after {attempt + 1} attempts")) from None
                delay = self.settings.backoff_s * 2**attempt
                log.warning("%s: cannot connect (%s); retry %d of %d in %.2g s",
                            self._say(""), _reason(exc), attempt + 1, self.settings.retries, delay)
                time.sleep(delay)
            except httpx.TimeoutException:
                raise RequestTimeout(self._say(f"no answer within {self.settings.timeout_s:g} s")) from None
            except httpx.TransportError as exc:  # sent, then broken: the remote may have started, so no retry
                raise Unavailable(self._say(f"the connection broke ({_reason(exc)})")) from None
        if response.status_code < 300:
            return response
        try:
            response.read()
        except httpx.HTTPError:
            pass
        finally:
            response.close()
        message = self._scrub(_message_of(_json_or_text(response)))
        if 400 <= response.status_code < 500:
            retry = {"Retry-After": response.headers["retry-after"]} if "retry-after" in response.headers else None
            raise RemoteRejected(response.status_code, self._say(message), headers=retry)
        raise BadGateway(self._say(f"the remote answered {response.status_code}: {message}"))

    def _json(self, response: httpx.Response) -> Any:
        try:
            return response.json()
        except (ValueError, httpx.HTTPError):
            raise self._garbage("an answer that is not JSON") from None

    # -- messages -------------------------------------------------------------------------------

    def _say(self, what: str) -> str:
        return f"model {self.served_name!r} ({self.base_url})" + (f": {what}" if what else "")

    def _scrub(self, text: str) -> str:
        return text.replace(self._secret, "***") if self._secret else text

    def _garbage(self, what: str) -> BadGateway:
        return BadGateway(self._say(f"the remote sent {what}"))

    def _where(self, what: str) -> Callable[[], BadGateway]:
        return lambda: self._garbage(f"something other than {what}")


def connect(served_name: str, spec: str, *, api_key: str | None = None, settings: RemoteSettings | None = None) -> RemoteModel:
    """A :class:`RemoteModel` for ``openai:URL[#MODEL]``, once the remote has answered ``/v1/models``
    and serves the model (without ``#MODEL``: its only one). Its tasks are those the remote lists
    (a vlmkit server); any other server's model chats."""
    base_url, wanted = parse_remote(spec)
    probe = RemoteModel(served_name, base_url, wanted or "", tasks=(), api_key=api_key, settings=settings)
    try:
        entries = probe.models()
    except (ApiError, HTTPException) as exc:
        probe.close()
        message = exc.message if isinstance(exc, ApiError) else str(exc.detail)
        raise RemoteSetupError(f"{message} (asking for /v1/models)") from None
    probe.close()
    served = [e for e in entries if "routes" not in (e.get("vlmkit") or {})]  # a vlmkit server's "auto" is not a model
    ids = ", ".join(e["id"] for e in served) or "none"
    if wanted is not None:
        entry = next((e for e in entries if e["id"] == wanted), None)
        if entry is None:
            raise RemoteSetupError(f"model {served_name!r}: {base_url} does not serve {wanted!r} (it serves: {ids})")
    elif len(served) == 1:
        entry = served[0]
    else:
        raise RemoteSetupError(f"model {served_name!r}: {base_url} serves {len(served)} models ({ids}); name one: {PREFIX}URL#MODEL")
    info = entry.get("vlmkit")
    tasks = info.get("tasks") if isinstance(info, dict) else None
    tasks = [t for t in tasks if isinstance(t, str)] if isinstance(tasks, list) else ["chat"]
    if not TASKS & set(tasks):
        raise RemoteSetupError(f"model {served_name!r}: {entry['id']!r} at {base_url} does none of {', '.join(sorted(TASKS))}")
    return RemoteModel(served_name, base_url, entry["id"], tasks=tasks, api_key=api_key, settings=settings)


# -- the wire format ----------------------------------------------------------------------------------


def data_url(image: Any) -> str:
    """A decoded image as a PNG ``data:`` URL (lossless: the remote sees the pixels the server decoded)."""
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _message(message: dict[str, Any]) -> dict[str, Any]:
    """A parsed message (text parts, and image parts holding the decoded image) in OpenAI's format."""
    parts = []
    for part in message["content"]:
        if part["type"] == "text":
            parts.append({"type": "text", "text": part["text"]})
        else:
            parts.append({"type": "image_url", "image_url": {"url": data_url(part["image"])}})
    if message["role"] != "user" and all(p["type"] == "text" for p in parts):
        return {"role": message["role"], "content": "".join(p["text"] for p in parts)}
    return {"role": message["role"], "content": parts}


def _decoding(options: GenerationOptions) -> dict[str, Any]:
    sampled = {"temperature": options.temperature, "top_p": options.top_p} if options.do_sample else {"temperature": 0}
    return {**_max_tokens(options), **sampled}


def _max_tokens(options: GenerationOptions | None) -> dict[str, Any]:
    return {"max_tokens": options.max_new_tokens} if options is not None and options.max_new_tokens is not None else {}


def _field(data: Any, get: Callable[[Any], Any], garbage: Callable[[], Exception]) -> Any:
    """``get(data)``, or the remote's answer has the wrong shape."""
    try:
        return get(data)
    except (KeyError, IndexError, TypeError, AttributeError):
        raise garbage() from None


def _json_or_text(response: httpx.Response) -> Any:
    try:
        return response.json()
    except (ValueError, httpx.HTTPError):
        try:
            return response.text
        except (ValueError, httpx.HTTPError):
            return ""


def _message_of(body: Any) -> str:
    """An error body's message in one line: OpenAI's envelope, FastAPI's ``detail``, or the text."""
    if isinstance(body, dict):
        error = body.get("error")
        text = error.get("message") if isinstance(error, dict) else error if isinstance(error, str) else body.get("detail")
        body = text if text is not None else json.dumps(body)
    line = " ".join(str(body).split()) or "no message"
    return line if len(line) <= _MESSAGE_CHARS else line[: _MESSAGE_CHARS - 3] + "..."


def _reason(exc: Exception) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
