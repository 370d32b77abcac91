"""The served models, and every call the server makes into them.

Each :class:`Served` model has one way in: a bounded queue per task (a
:class:`~vlmkit_server.batching.DynamicBatcher`), whose worker holds the model's lock while it
calls the model. Captions, answers and embeddings are batched; chat, streamed or not, classify,
match and interrogate go one request at a time through a queue of the same kind. So every call is
admitted the same way (a full queue is :class:`~vlmkit_server.batching.QueueFull`, a 429), waits
under the same timeout (:class:`~vlmkit_server.errors.RequestTimeout`, a 504) and is closed on
shutdown with the rest.

A model served from elsewhere (Ray Serve replicas, a remote OpenAI-compatible server) says how many
calls it takes at once in its ``concurrency`` attribute; its queues then run that many workers and
hold no lock, so the replicas or the remote server work in parallel, and batch on their side.

The decoding settings of a request are built in one place, :func:`generation_options`, and handed
to the models as the one value they take (``options=``).
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Awaitable, Callable, Hashable, Iterator, Sequence
from typing import Any

from fastapi import Request

from vlmkit.errors import UnsupportedTaskError
from vlmkit.models.base import GenerationOptions

from .batching import DynamicBatcher
from .config import ServerConfig
from .errors import ModelNotFound, RequestTimeout
from .metrics import Metrics

__all__ = ["Served", "Server", "server_of", "generation_options"]


def generation_options(max_tokens: int, temperature: float | None = None, top_p: float | None = None) -> GenerationOptions:
    """The decoding settings of a request: greedy unless it asks for a temperature above 0."""
    if temperature is None or temperature <= 0:
        return GenerationOptions(max_new_tokens=max_tokens)
    return GenerationOptions(max_new_tokens=max_tokens, do_sample=True, temperature=temperature, top_p=top_p or 1.0)


def _greedy(options: GenerationOptions) -> GenerationOptions:
    """Captions and answers decode greedily, whatever a chat request routed to them asked for."""
    return GenerationOptions(max_new_tokens=options.max_new_tokens)


class Served:
    """One loaded model: its lock, its queues, and the calls the server makes to it."""

    def __init__(self, name: str, model: Any, config: ServerConfig, metrics: Metrics) -> None:
        self.name, self.model, self.config, self.metrics = name, model, config, metrics
        self.concurrency = max(1, int(getattr(model, "concurrency", 1)))
        self.lock: Any = threading.Lock() if self.concurrency == 1 else _NoLock()
        self.batchers: dict[str, DynamicBatcher] = {}

    @property
    def tasks(self) -> frozenset[str]:
        return frozenset(getattr(getattr(self.model, "kind", None), "tasks", ()))

    @property
    def kind(self) -> str:
        return str(getattr(getattr(self.model, "kind", None), "label", type(self.model).__name__))

    def require(self, task: str) -> None:
        """Raise :class:`~vlmkit.errors.UnsupportedTaskError` (naming the models that can) unless the model does ``task``."""
        if task in self.tasks:
            return
        require = getattr(self.model, "require", None)
        if require is None:
            raise UnsupportedTaskError(task, self.name, self.kind, [])
        require(task)

    def context(self) -> int | None:
        """The language model's positions (prompt and answer together), where the config says."""
        if hasattr(self.model, "context_length"):  # a model served elsewhere says it itself
            return self.model.context_length  # type: ignore[no-any-return]
        return context_of(self.model)

    def tokens(self, text: str) -> int:
        tokenizer = getattr(self.model, "tokenizer", None)
        if tokenizer is not None and callable(tokenizer):
            try:
                return len(tokenizer(text, add_special_tokens=False)["input_ids"])
            except Exception:  # noqa: BLE001 - a count is informative only
                pass
        return len(text.split())

    async def prompt_tokens(self, messages: list[dict[str, Any]]) -> int | None:
        """The conversation's length as the model builds its prompt, images included (``None``: it cannot say)."""
        count = getattr(self.model, "prompt_tokens", None)
        if count is None:
            return None
        try:
            return int(await asyncio.to_thread(count, messages))
        except UnsupportedTaskError:
            return None

    # -- admission ------------------------------------------------------------------------------

    def queue(self, task: str, fn: Callable[[list[Any]], Sequence[Any]] | None = None) -> DynamicBatcher:
        """The queue of ``task``: batched by ``fn``, or (no ``fn``) one zero-argument call at a time."""
        if task not in self.batchers:
            batched = fn is not None
            self.batchers[task] = DynamicBatcher(
                fn if fn is not None else _one_call, max_batch=self.config.max_batch if batched else 1,
                window_ms=self.config.window_ms if batched else 0.0, max_queue=self.config.max_queue,
                lock=self.lock if batched or self.concurrency > 1 else None, name=f"{self.name}/{task}",
                on_batch=self._counter(task), workers=self.concurrency,
            )
        return self.batchers[task]

    def _counter(self, task: str) -> Callable[[int], None]:
        return lambda size: self.metrics.batch(self.name, task, size)

    async def _in_time(self, work: Awaitable[Any]) -> Any:
        try:
            return await asyncio.wait_for(work, timeout=self.config.timeout_s)
        except TimeoutError:
            raise RequestTimeout(f"the request took longer than {self.config.timeout_s:g} s") from None

    async def alone(self, task: str, call: Callable[[], Any], locks: Sequence[threading.Lock] | None = None) -> Any:
        """``call()`` through the queue of ``task``, holding ``locks`` (the model's by default) while it runs."""
        return await self._in_time(self.queue(task)(_holding(locks if locks is not None else [self.lock], call)))

    # -- the model's tasks ----------------------------------------------------------------------

    async def caption(self, image: Any, prompt: str | None, options: GenerationOptions) -> str:
        self.require("caption")
        return str(await self._in_time(self.queue("caption", self._caption_batch)((image, prompt, options))))

    async def ask(self, image: Any, question: str, options: GenerationOptions) -> str:
        self.require("ask")
        return str(await self._in_time(self.queue("ask", self._ask_batch)((image, question, options))))

    async def embed(self, items: list[Any], step: int) -> list[Any]:
        """Embed texts (``str``) and images, ``step`` at a time, so that a long list never fills the queue by itself."""
        self.require("embed")

        def one(item: Any) -> Awaitable[Any]:
            if isinstance(item, str):
                return self.queue("embed_text", self._embed_texts)(item)
            return self.queue("embed_image", self._embed_images)(item)

        async def embed_all() -> list[Any]:
            out: list[Any] = []
            for start in range(0, len(items), step):
                out += await asyncio.gather(*(one(x) for x in items[start : start + step]))
            return out

        return list(await self._in_time(embed_all()))

    async def chat(self, messages: list[dict[str, Any]], options: GenerationOptions) -> str:
        return str(await self.alone("chat", lambda: self.model.chat(messages, options=options)))

    def stream(self, messages: list[dict[str, Any]], options: GenerationOptions) -> Iterator[str]:
        """Admit a streamed chat now (a full queue raises here, before any byte is sent); its pieces,
        produced on the chat queue's worker, come through the returned iterator, which raises what
        generation raised."""
        pieces: queue.Queue[Any] = queue.Queue()
        done = object()

        def produce() -> None:
            try:
                for piece in self.model.chat(messages, stream=True, options=options):
                    pieces.put(piece)
            except Exception as exc:  # noqa: BLE001 - handed to the reader
                pieces.put(exc)
            finally:
                pieces.put(done)

        self.queue("chat").submit(_holding([self.lock], produce))

        def consume() -> Iterator[str]:
            for item in iter(pieces.get, done):
                if isinstance(item, Exception):
                    raise item
                yield item

        return consume()

    async def classify(self, image: Any, labels: list[str], top_k: int) -> Any:
        self.require("classify")
        return await self.alone("classify", lambda: self.model.classify([image], labels, top_k=top_k)[0])

    async def match(self, image: Any, texts: list[str]) -> Any:
        self.require("match")
        return await self.alone("match", lambda: self.model.match(image, texts))

    # -- batch functions (run on a queue's worker, holding the lock) ---------------------------

    def _caption_batch(self, items: list[tuple[Any, str | None, GenerationOptions]]) -> list[str]:
        def call(rows: list[tuple[Any, str | None, GenerationOptions]]) -> list[str]:
            _, prompt, options = rows[0]
            return list(self.model.caption([r[0] for r in rows], prompt=prompt, options=_greedy(options), batch_size=len(rows)))

        return grouped(items, lambda item: (item[1], item[2]), call)

    def _ask_batch(self, items: list[tuple[Any, str, GenerationOptions]]) -> list[str]:
        def call(rows: list[tuple[Any, str, GenerationOptions]]) -> list[str]:
            options = rows[0][2]
            return list(self.model.ask([r[0] for r in rows], [r[1] for r in rows], options=_greedy(options), batch_size=len(rows)))

        return grouped(items, lambda item: item[2], call)

    def _embed_texts(self, texts: list[str]) -> list[Any]:
        return list(self.model.embed_texts(texts, batch_size=max(1, len(texts))))

    def _embed_images(self, images: list[Any]) -> list[Any]:
        return list(self.model.embed_images(images, batch_size=max(1, len(images))))


def context_of(model: Any) -> int | None:
    """A loaded model's language-model positions, where its config says (``None``: it does not)."""
    config = getattr(getattr(model, "model", None), "config", None)
    for part in (getattr(config, "text_config", None), config):
        value = getattr(part, "max_position_embeddings", None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def grouped(items: list[Any], key: Callable[[Any], Hashable], call: Callable[[list[Any]], Sequence[Any]]) -> list[Any]:
    """``call`` once per group of items with the same ``key`` (a model call takes one prompt and one
    set of decoding options); the results in the order of ``items``."""
    groups: dict[Hashable, list[int]] = {}
    for i, item in enumerate(items):
        groups.setdefault(key(item), []).append(i)
    out: list[Any] = [None] * len(items)
    for rows in groups.values():
        for i, text in zip(rows, call([items[i] for i in rows]), strict=True):
            out[i] = text
    return out


class _NoLock:
    """The lock of a model that takes concurrent calls: holds nothing."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        return True

    def release(self) -> None:
        return None


def _one_call(calls: list[Callable[[], Any]]) -> list[Any]:
    return [call() for call in calls]


def _holding(locks: Sequence[threading.Lock], call: Callable[[], Any]) -> Callable[[], Any]:
    def held() -> Any:
        with contextlib.ExitStack() as stack:
            for lock in locks:
                stack.enter_context(lock)
            return call()

    return held


class Server:
    """The served models by name, and what the endpoints share: settings, metrics, the image policy."""

    def __init__(self, models: dict[str, Any], config: ServerConfig, metrics: Metrics, images: Callable[..., Any],
                 health_extra: Callable[[], dict[str, Any]] | None = None) -> None:
        self.config, self.metrics, self.images, self.health_extra = config, metrics, images, health_extra
        self.served = {name: Served(name, model, config, metrics) for name, model in models.items()}
        self._interrogators: dict[tuple[str, str], Any] = {}

    def model_named(self, name: str) -> Served:
        if name not in self.served:
            raise ModelNotFound(f"unknown model {name!r}; served: {', '.join([*self.served, 'auto'])}")
        return self.served[name]

    def close(self) -> None:
        """Stop every queue, once the work already in it is done."""
        for entry in self.served.values():
            for batcher in entry.batchers.values():
                batcher.close()

    async def interrogate(self, captioner: Served, ranker: Served, image: Any, mode: str, top_k: int) -> Any:
        """A prompt for text-to-image models (:class:`vlmkit.interrogate.Interrogator`), holding both
        models' locks (in name order, so two requests never wait on each other's)."""
        from vlmkit.interrogate import Interrogator

        key = (captioner.name, ranker.name)
        if key not in self._interrogators:
            self._interrogators[key] = Interrogator(captioner.model, ranker.model)
        interrogator = self._interrogators[key]
        locks = [e.lock for e in sorted({captioner.name: captioner, ranker.name: ranker}.values(), key=lambda e: e.name)]
        return await captioner.alone("interrogate", lambda: interrogator.interrogate(image, mode=mode, top_k=top_k), locks)


def server_of(request: Request) -> Server:
    """A dependency: the app's :class:`Server`."""
    return request.app.state.server  # type: ignore[no-any-return]
