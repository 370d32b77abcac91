"""``POST /v1/chat/completions``: OpenAI's chat format over any served model, streamed as
server-sent events when asked.

Messages are parsed by the library (:func:`vlmkit.chat.parse_messages`); the server adds its limits
and its image policy (:mod:`vlmkit_server.images`). A request names a model, or ``"auto"`` to be
routed (:mod:`vlmkit_server.routing`). A model that only captions or answers questions serves a
chat request as one caption or one answer about its one image; a question is never answered with
a caption. The route taken is reported in the body (``vlmkit.route``) and in ``X-Vlmkit-Model`` and
``X-Vlmkit-Route``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel

from vlmkit.chat import parse_messages
from vlmkit.models.base import GenerationOptions

from .config import MAX_IMAGES, MAX_MESSAGES, MAX_TEXT_CHARS
from .errors import BadRequest, TooLarge, problem_of
from .routing import Route, choose_route, is_caption_request
from .schemas import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatRequest,
    Choice,
    ChunkChoice,
    Delta,
    Message,
    Usage,
    json_body,
)
from .served import Served, Server, generation_options, server_of

__all__ = ["router", "EXPLICIT_REASON"]

log = logging.getLogger("vlmkit.server")

router = APIRouter()

#: The route reason when the request names its model (shown in ``X-Vlmkit-Route`` and on the chat page).
EXPLICIT_REASON = "the model named in the request"


@dataclass
class Conversation:
    """The messages of a chat request, checked, with their images decoded."""

    messages: list[dict[str, Any]]  # parts with decoded images ({"type": "image", "image": PIL})
    images: list[Any]
    last_texts: list[str]  # the text parts of the last (user) message
    assistant_turns: int

    @property
    def question(self) -> str:
        return " ".join(t.strip() for t in self.last_texts if t.strip())

    @property
    def text(self) -> str:
        return " ".join(p["text"] for m in self.messages for p in m["content"] if p["type"] == "text")


def read_conversation(messages: list[Any], server: Server) -> Conversation:
    """The library checks the messages; the server adds its limits and fetches the images."""
    if len(messages) > MAX_MESSAGES:
        raise TooLarge(f"at most {MAX_MESSAGES} messages")
    conversation, sources = parse_messages(messages)
    places = []
    for number, message in enumerate(conversation):
        for k, part in enumerate(message["content"]):
            if part["type"] == "text" and len(part["text"]) > MAX_TEXT_CHARS:
                raise TooLarge(f"messages[{number}].content[{k}] is longer than {MAX_TEXT_CHARS:,} characters")
            if part["type"] == "image":
                places.append((number, k))
    if len(sources) > MAX_IMAGES:
        raise TooLarge(f"at most {MAX_IMAGES} images per request")
    images = [server.images(source, f"messages[{m}].content[{k}]") for source, (m, k) in zip(sources, places, strict=True)]
    for image, (m, k) in zip(images, places, strict=True):
        conversation[m]["content"][k] = {"type": "image", "image": image}
    return Conversation(
        messages=conversation,
        images=images,
        last_texts=[p["text"] for p in conversation[-1]["content"] if p["type"] == "text"],
        assistant_turns=sum(m["role"] == "assistant" for m in conversation),
    )


# -- the route -----------------------------------------------------------------------------------------


def _can(entry: Served) -> str:
    """What a model does, in words: "captions", "answers questions and captions", ..."""
    words = {"chat": "chats", "ask": "answers questions", "caption": "captions", "embed": "embeds"}
    done = [w for t, w in words.items() if t in entry.tasks]
    return " and ".join([", ".join(done[:-1]), done[-1]] if len(done) > 1 else done) or "nothing a chat request can use"


def _abilities(server: Server) -> str:
    return "; ".join(f"{name} ({_can(entry)})" for name, entry in server.served.items())


def choose(server: Server, model: str, chat: Conversation, max_tokens: int | None) -> Route:
    """The model and task that answer: routed for ``"auto"``, else what the named model can do."""
    if model == "auto":
        try:
            return choose_route(server.config.routes, texts=chat.last_texts, turns=chat.assistant_turns, max_tokens=max_tokens,
                                can={n: e.tasks for n, e in server.served.items()}, images=len(chat.images))
        except LookupError as exc:
            raise BadRequest(f"{exc}; served: {_abilities(server)}") from None
    entry = server.model_named(model)
    return Route(entry.name, _task_of(server, entry, chat), EXPLICIT_REASON)


def _task_of(server: Server, entry: Served, chat: Conversation) -> Literal["chat", "ask", "caption"]:
    """What a model named in a chat request does with it; a question it cannot answer is refused
    (never answered with a caption), naming the models that can."""
    if "chat" in entry.tasks:
        return "chat"
    if not is_caption_request(chat.question) or chat.assistant_turns:
        if "ask" in entry.tasks:
            return "ask"
        able = [n for n, e in server.served.items() if e.tasks & {"chat", "ask"}]
        where = (f"models that answer: {', '.join(able)} (or model 'auto')" if able else
                 "no served model answers questions: serve a VQA or chat model (--model), or train one offline with `vlmkit train`")
        raise BadRequest(f"model {entry.name!r} cannot answer questions or chat: it {_can(entry)}; {where}")
    if "caption" in entry.tasks:
        return "caption"
    if "ask" in entry.tasks:
        raise BadRequest(f"model {entry.name!r} answers questions: add a question to the image")
    raise BadRequest(f"model {entry.name!r} ({entry.kind}) cannot chat, answer or caption; served: {_abilities(server)}")


# -- the answer ----------------------------------------------------------------------------------------


async def _prompt_tokens(entry: Served, chat: Conversation, route: Route, tokens: int) -> int:
    """The prompt's length: for a chat model, as it builds the prompt (every image's tokens included)
    where it can say, and checked against its context with the ``tokens`` asked for."""
    counted = await entry.prompt_tokens(chat.messages) if route.task == "chat" else None
    if counted is None:
        counted = entry.tokens(chat.text)
    context = entry.context()
    if route.task == "chat" and context is not None and counted + tokens > context:
        n = len(chat.images)
        images = f" ({n} image{'s' if n != 1 else ''} included)" if n else ""
        raise BadRequest(f"the conversation is {counted} tokens{images} and {tokens} more were asked for; "
                         f"model {entry.name!r} takes at most {context} in all")
    return counted


def _one_image(server: Server, entry: Served, chat: Conversation) -> Any:
    """The image a caption or an answer is about; a model that takes one per prompt refuses more."""
    if len(chat.images) > 1:
        several = [n for n, e in server.served.items() if "chat" in e.tasks]
        where = f"models that take several: {', '.join(several)} (or model 'auto')" if several else "no served model takes several"
        raise BadRequest(f"model {entry.name!r} takes one image per prompt; the request has {len(chat.images)}; {where}")
    if len(chat.images) != 1:
        raise BadRequest(f"model {entry.name!r} answers about exactly one image; the request has {len(chat.images)}")
    return chat.images[0]


async def _answer(server: Server, entry: Served, chat: Conversation, route: Route, options: GenerationOptions,
                  stream: bool) -> str | Iterator[str]:
    """The reply: its text, or (streamed chat) an iterator of its pieces."""
    if route.task == "chat":
        return entry.stream(chat.messages, options) if stream else await entry.chat(chat.messages, options)
    image = _one_image(server, entry, chat)
    if route.task == "caption":
        return await entry.caption(image, None, options)
    if not chat.question:
        raise BadRequest(f"model {entry.name!r} answers questions: add a question to the image")
    return await entry.ask(image, chat.question, options)


@router.post("/v1/chat/completions")
async def chat_completions(body: Annotated[ChatRequest, json_body(ChatRequest)],
                           server: Annotated[Server, Depends(server_of)]) -> Response:
    max_tokens = body.tokens
    if max_tokens is not None and not 1 <= max_tokens <= server.config.max_tokens:
        raise BadRequest(f"'max_tokens' must be between 1 and {server.config.max_tokens}")
    chat = read_conversation(body.messages, server)
    route = choose(server, body.model, chat, max_tokens)
    entry = server.served[route.model]
    tokens = max_tokens or (256 if route.task == "chat" else 30)
    prompt_tokens = await _prompt_tokens(entry, chat, route, tokens)
    reply = await _answer(server, entry, chat, route, generation_options(tokens, body.temperature, body.top_p), bool(body.stream))
    reply_of = _Reply(f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time()), route, entry, body.stops, prompt_tokens, tokens)
    headers = {"X-Vlmkit-Model": route.model, "X-Vlmkit-Route": route.reason}
    if body.stream:
        events = reply_of.events(reply, include_usage=body.include_usage)
        return StreamingResponse(events, media_type="text/event-stream", headers={**headers, "Cache-Control": "no-cache"})
    assert isinstance(reply, str)
    return JSONResponse(reply_of.completion(reply).model_dump(), headers=headers)


# -- the reply -----------------------------------------------------------------------------------------


class _Cut:
    """The text so far, cut at the first stop sequence."""

    def __init__(self, stops: list[str]) -> None:
        self.stops, self.text, self.stopped = stops, "", False

    def add(self, piece: str) -> str:
        """Take ``piece``; the new text it adds (none once stopped)."""
        candidate = self.text + piece
        cut = min((candidate.find(s) for s in self.stops if s in candidate), default=-1)
        if cut >= 0:
            candidate, self.stopped = candidate[:cut], True
        new = candidate[len(self.text):]
        self.text = candidate
        return new


@dataclass
class _Reply:
    """One completion's answer, as one body or as a stream of chunks."""

    id: str
    created: int
    route: Route
    entry: Served
    stops: list[str]
    prompt_tokens: int
    limit: int  # the tokens asked for: a reply this long stopped for "length"

    @property
    def meta(self) -> dict[str, Any]:
        return {"vlmkit": {"route": self.route.to_dict()}, "system_fingerprint": f"vlmkit-{self.entry.kind}"}

    def _finish(self, cut: _Cut) -> tuple[Literal["stop", "length"], Usage]:
        completion = self.entry.tokens(cut.text)
        usage = Usage(prompt_tokens=self.prompt_tokens, completion_tokens=completion, total_tokens=self.prompt_tokens + completion)
        return ("length" if not cut.stopped and completion >= self.limit else "stop"), usage

    def completion(self, text: str) -> ChatCompletion:
        cut = _Cut(self.stops)
        cut.add(text)
        finish, usage = self._finish(cut)
        return ChatCompletion(id=self.id, created=self.created, model=self.route.model, usage=usage,
                              choices=[Choice(message=Message(content=cut.text), finish_reason=finish)], **self.meta)

    def _chunk(self, delta: Delta, finish: Literal["stop", "length"] | None = None) -> bytes:
        chunk = ChatCompletionChunk(id=self.id, created=self.created, model=self.route.model,
                                    choices=[ChunkChoice(delta=delta, finish_reason=finish)], **self.meta)
        return _event(chunk)

    async def events(self, reply: str | Iterator[str], *, include_usage: bool) -> AsyncIterator[bytes]:
        """Server-sent events: the role, the text as it comes, the finish reason, the usage if asked, [DONE]."""
        yield self._chunk(Delta(role="assistant", content=""))
        cut = _Cut(self.stops)
        async for event in self._pieces(reply, cut):
            yield event
        finish, usage = self._finish(cut)
        yield self._chunk(Delta(), finish)
        if include_usage:
            yield _event(ChatCompletionChunk(id=self.id, created=self.created, model=self.route.model, choices=[], usage=usage))
        yield b"data: [DONE]\n\n"

    async def _pieces(self, reply: str | Iterator[str], cut: _Cut) -> AsyncIterator[bytes]:
        if isinstance(reply, str):
            if new := cut.add(reply):
                yield self._chunk(Delta(content=new))
            return
        done = object()
        while not cut.stopped:
            try:
                piece = await asyncio.to_thread(next, reply, done)
            except Exception as exc:  # noqa: BLE001 - the status line has gone; say it in the stream
                yield _stream_error(exc)
                return
            if not isinstance(piece, str):  # the end of the reply
                return
            if new := cut.add(piece):
                yield self._chunk(Delta(content=new))
        await asyncio.to_thread(list, reply)  # stopped: let generation finish (releasing the model) off the event loop


def _event(payload: BaseModel | dict[str, Any]) -> bytes:
    data = payload.model_dump() if isinstance(payload, BaseModel) else payload
    return f"data: {json.dumps(data)}\n\n".encode()


def _stream_error(exc: Exception) -> bytes:
    """An error event for a failure after the stream started: the table's message for a known
    error; for anything else, a generic one and the traceback in the log."""
    problem = problem_of(exc)
    if problem is None:
        log.error("generation failed while streaming", exc_info=exc)
    message = f"generation failed: {problem.message}" if problem is not None else "generation failed; see the server log"
    return _event({"error": {"message": message, "type": "server_error"}})
