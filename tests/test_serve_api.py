"""The OpenAI-compatible API (:func:`vlmkit_server.create_api_app`): the real ``openai`` client
against uvicorn on loopback, the task endpoints, health and metrics, the safety rules, a seeded fuzz
run of malformed requests, and a small load test.

The models are the built-in default (ConSE) and tiny random checkpoints (LLaVA, BLIP VQA, CLIP),
built once per module; random weights give garbage text, so the checks compare the server with the
library called directly rather than with expected words.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import functools
import io
import json
import logging
import random
import re
import socket
import statistics
import struct
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
from fastapi.testclient import TestClient
from numerics import DEEP, assert_close
from PIL import Image
from test_serve_search import live_server as search_live_server

import vlmkit
from vlmkit import GenerationOptions
from vlmkit.images import load_image
from vlmkit.models.kinds import ModelKind
from vlmkit_server import Routes, ServerConfig, create_api_app

KEY = "sk-vlmkit-test"
ROUTES = Routes(precise="blip-vqa", conversational="llava")


# -- helpers ---------------------------------------------------------------------------------------


def live_server(app: object) -> contextlib.AbstractContextManager[str]:
    """The search tests' server, with the app's lifespan on (it closes the batchers)."""
    return search_live_server(app, lifespan="on")


def session(base_url: str, **options: Any) -> httpx.Client:
    """An httpx client with Nagle's algorithm off (it writes headers and body separately)."""
    transport = httpx.HTTPTransport(socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])
    return httpx.Client(base_url=base_url, transport=transport, timeout=60, **options)


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def image_part(url: str) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url}}


def user(text: str | None, *urls: str) -> dict[str, Any]:
    parts: list[dict[str, Any]] = [{"type": "text", "text": text}] if text is not None else []
    return {"role": "user", "content": [*parts, *(image_part(u) for u in urls)]}


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid PNG signature and IHDR claiming ``width`` x ``height`` pixels, and almost no data."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


class SlowEmbedder:
    """A fake text embedder that sleeps in every call: to fill queues and pass deadlines."""

    kind = ModelKind("fake", "SlowEmbedder", frozenset({"embed"}), "sleeps, then returns unit vectors")
    name = "slow"

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.calls: list[int] = []

    def embed_texts(self, texts: list[str], *, batch_size: int = 64) -> np.ndarray:
        self.calls.append(len(texts))
        time.sleep(self.delay)
        return np.tile(np.array([[0.6, 0.8]], dtype=np.float32), (len(texts), 1))


class BlockedEmbedder(SlowEmbedder):
    """A fake text embedder whose calls wait until the test sets ``release``: a model that stays
    busy for as long as the test needs, however fast or loaded the machine. ``returned`` counts
    the calls that have finished."""

    def __init__(self) -> None:
        super().__init__(0.0)
        self.release = threading.Event()
        self.returned = 0

    def embed_texts(self, texts: list[str], *, batch_size: int = 64) -> np.ndarray:
        self.calls.append(len(texts))
        self.release.wait(60)
        self.returned += 1
        return np.tile(np.array([[0.6, 0.8]], dtype=np.float32), (len(texts), 1))


class BlockedChat:
    """A fake chat model whose calls wait until the test sets ``release``."""

    kind = ModelKind("fake", "BlockedChat", frozenset({"chat"}), "waits, then replies")

    def __init__(self) -> None:
        self.release = threading.Event()
        self.calls = 0

    def chat(self, messages: list[dict[str, Any]], *, stream: bool = False, **options: Any) -> Any:
        self.calls += 1
        self.release.wait(60)
        return iter(["a", " reply"]) if stream else "a reply"


class BuggyModel:
    """A fake model whose every call fails with a bug (plain Python errors, not vlmkit's)."""

    kind = ModelKind("fake", "BuggyModel", frozenset({"caption", "chat", "embed"}), "fails")

    def caption(self, images: Any, prompt: str | None = None, **options: Any) -> list[str]:
        raise ValueError("secret detail of a bug")

    def embed_texts(self, texts: list[str], *, batch_size: int = 64) -> np.ndarray:
        raise KeyError("secret detail of a bug")

    def chat(self, messages: list[dict[str, Any]], *, stream: bool = False, **options: Any) -> Any:
        if not stream:
            raise ValueError("secret detail of a bug")

        def pieces() -> Iterator[str]:
            yield "a"
            raise RuntimeError("secret detail of a bug")

        return pieces()


INSTANT = SlowEmbedder(0.0)  # the default model of tiny apps: one object, deployed once on Ray

# -- fixtures --------------------------------------------------------------------------------------


#: id of a loaded model -> how a Ray replica builds it (``vlmkit.load`` of the same source).
FACTORIES: dict[int, Callable[[], Any]] = {}


@pytest.fixture(scope="module")
def models(tiny: dict[str, Path]) -> dict[str, Any]:
    sources = {"default": "default", "llava": str(tiny["llava"]), "blip-vqa": str(tiny["blip_vqa"]), "clip": str(tiny["clip"])}
    loaded = {name: vlmkit.load(source) for name, source in sources.items()}
    FACTORIES.update({id(loaded[name]): functools.partial(vlmkit.load, source) for name, source in sources.items()})
    return loaded


class RayDeployments:
    """The Ray engine for the tests: every model object deployed once (on the shared two-worker
    cluster) and reused by every app of the module; removed at the module's end."""

    def __init__(self) -> None:
        import sys

        import ray

        from vlmkit_server.ray_engine import RayEngine

        for module in ("test_serve_api", "test_serve_pages"):  # the fakes; the replicas cannot import tests/
            if module in sys.modules:
                ray.cloudpickle.register_pickle_by_value(sys.modules[module])
        self.engine = RayEngine(replica_cpus=0.25)
        self.proxies: dict[tuple[str, int], Any] = {}

    def models(self, models: dict[str, Any], config: ServerConfig) -> dict[str, Any]:
        for name, model in models.items():
            if (name, id(model)) not in self.proxies:
                (proxy,) = self.engine.deploy({name: _shipped(model)}, max_batch=config.max_batch, window_ms=config.window_ms,
                                              timeout_s=config.timeout_s).values()
                self.proxies[name, id(model)] = proxy
        return {name: self.proxies[name, id(model)] for name, model in models.items()}

    # What create_api_app asks of its engine; the deployments outlive each app.
    metrics = property(lambda self: self.engine.metrics, lambda self, value: setattr(self.engine, "metrics", value))

    def replica_states(self) -> dict[str, dict[str, int]]:
        return self.engine.replica_states()

    def shutdown(self) -> None:
        pass


def _shipped(model: Any) -> Callable[[], Any]:
    """The factory a replica builds the model with: ``vlmkit.load`` of its checkpoint, as ``vlmkit
    serve --engine ray`` does, or (a fake) a copy of the object itself."""
    return FACTORIES.get(id(model)) or (lambda: model)


@pytest.fixture(scope="module", params=["local", "ray"])
def engine(request: pytest.FixtureRequest) -> Iterator[RayDeployments | None]:
    """The API, pages, errors and limits run against both engines: one process, and Ray Serve."""
    if request.param == "local":
        yield None
        return
    request.getfixturevalue("ray_cluster")
    deployments = RayDeployments()
    yield deployments
    deployments.engine.shutdown()


def api_app(models: dict[str, Any], config: ServerConfig | None = None, engine: RayDeployments | None = None) -> Any:
    """``create_api_app`` over ``models``, served in this process or by their Ray deployments."""
    config = config or ServerConfig()
    if engine is None:
        return create_api_app(models, config)
    return create_api_app(engine.models(models, config), config, engine=engine)


@pytest.fixture(scope="module")
def server(models: dict[str, Any], engine: RayDeployments | None) -> Iterator[str]:
    with live_server(api_app(models, ServerConfig(api_keys=(KEY,), routes=ROUTES), engine)) as url:
        yield url


@pytest.fixture(scope="module")
def client(server: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def http(server: str) -> Iterator[httpx.Client]:
    with session(server, headers={"Authorization": f"Bearer {KEY}"}) as client:
        yield client


@pytest.fixture(scope="module")
def cat(photos: dict[str, Path]) -> dict[str, Any]:
    """The scikit-image cat: its bytes, data: URL and decoded image."""
    data = photos["cat"].read_bytes()
    return {"bytes": data, "url": data_url(data), "image": load_image(data)}


@pytest.fixture(scope="module")
def small(photos: dict[str, Path]) -> dict[str, Any]:
    """A 64 x 48 crop of the coffee photo, cheap to send and decode."""
    with Image.open(photos["coffee"]) as image:
        crop = image.convert("RGB").resize((64, 48))
    data = png_bytes(crop)
    return {"bytes": data, "url": data_url(data), "image": crop}


def tiny_app(models: dict[str, Any] | None = None, engine: RayDeployments | None = None, **config: Any) -> TestClient:
    app = api_app(models or {"slow": INSTANT}, ServerConfig(**config), engine)
    return TestClient(app, raise_server_exceptions=False)


# -- the openai client -----------------------------------------------------------------------------


def test_models_list(client: openai.OpenAI) -> None:
    ids = [model.id for model in client.models.list()]
    assert ids == ["default", "llava", "blip-vqa", "clip", "auto"]


def test_chat_on_the_default_model_captions_the_photo(client: openai.OpenAI, models: dict[str, Any], cat: dict[str, Any]) -> None:
    response = client.chat.completions.create(model="default", messages=[user("Describe this image.", cat["url"])])
    text = response.choices[0].message.content
    assert text is not None and text.startswith("a photo of")
    assert text == models["default"].caption([cat["image"]])[0]
    assert response.model == "default" and response.choices[0].finish_reason == "stop"
    assert response.usage is not None and response.usage.prompt_tokens > 0 and response.usage.completion_tokens > 0
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens
    assert response.model_extra["vlmkit"]["route"] == {"model": "default", "task": "caption", "reason": "the model named in the request"}


def test_stream_equals_the_reply(client: openai.OpenAI, models: dict[str, Any], cat: dict[str, Any]) -> None:
    messages = [user("Tell me about this picture.", cat["url"])]
    reply = client.chat.completions.create(model="llava", messages=messages, max_tokens=12, temperature=0)
    text = reply.choices[0].message.content
    assert text and text == models["llava"].chat([user("Tell me about this picture.", cat["url"])], options=GenerationOptions(max_new_tokens=12))
    chunks = list(client.chat.completions.create(model="llava", messages=messages, max_tokens=12, temperature=0, stream=True))
    assert len(chunks) > 2 and all(c.model == "llava" and c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == text
    assert [c.choices[0].finish_reason for c in chunks] == [None] * (len(chunks) - 1) + [reply.choices[0].finish_reason]
    assert chunks[-1].usage is None  # usage only when asked for


def test_stream_with_usage(client: openai.OpenAI, cat: dict[str, Any]) -> None:
    stream = client.chat.completions.create(
        model="default", messages=[user("Describe this image.", cat["url"])], stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).startswith("a photo of")
    assert chunks[-2].choices[0].finish_reason == "stop"
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.prompt_tokens > 0 and last.usage.completion_tokens > 0


def test_max_tokens_and_stop(client: openai.OpenAI, models: dict[str, Any], cat: dict[str, Any]) -> None:
    messages = [user("Describe the cat.", cat["url"])]
    long = client.chat.completions.create(model="llava", messages=messages, max_tokens=16).choices[0].message.content
    short = client.chat.completions.create(model="llava", messages=messages, max_tokens=4)
    assert short.choices[0].finish_reason == "length"
    assert short.choices[0].message.content == models["llava"].chat(messages, options=GenerationOptions(max_new_tokens=4))
    assert long is not None and len(short.choices[0].message.content or "") < len(long)
    # A stop sequence from the middle of the reply cuts it there, streamed or not.
    stop = next(word for word in long.split()[1:] if long.find(word) > 0)
    expected = long[: long.find(stop)]
    cut = client.chat.completions.create(model="llava", messages=messages, max_tokens=16, stop=[stop, "\u2603never"])
    assert cut.choices[0].message.content == expected and cut.choices[0].finish_reason == "stop"
    chunks = list(client.chat.completions.create(model="llava", messages=messages, max_tokens=16, stop=stop, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected
    assert chunks[-1].choices[0].finish_reason == "stop"
    # The built-in's caption: cut at the first comma.
    caption = client.chat.completions.create(model="default", messages=[user("Describe this image.", cat["url"])], stop=",")
    assert caption.choices[0].message.content == models["default"].caption([cat["image"]])[0].split(",")[0]


def test_text_embeddings_equal_the_library(client: openai.OpenAI, models: dict[str, Any]) -> None:
    texts = ["a photo of a cat", "a cup of coffee", "an astronaut"]
    for name in ("default", "clip"):
        expected = models[name].embed_texts(texts)
        for encoding in ("base64", "float", None):  # None: the client's default (base64)
            options = {"encoding_format": encoding} if encoding else {}
            response = client.embeddings.create(model=name, input=texts, **options)
            if encoding == "base64":  # asked for explicitly, the client leaves it to the caller
                got = np.array([np.frombuffer(base64.b64decode(d.embedding), "<f4") for d in response.data])
            else:  # a list of floats (for the default, decoded by the client)
                got = np.array([d.embedding for d in response.data], dtype=np.float32)
            assert [d.index for d in response.data] == [0, 1, 2] and response.model == name
            assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
            # The server batches the texts as they arrive, on its own thread (and thread count):
            # other batch sizes, so the whole pass may round differently. So below.
            assert_close(got, expected, rtol=DEEP, what=f"{name} {encoding}")
        assert response.usage.prompt_tokens > 0
    one = client.embeddings.create(model="clip", input="a photo of a cat", encoding_format="float")
    assert_close(one.data[0].embedding, models["clip"].embed_texts(["a photo of a cat"])[0], rtol=DEEP, what="one text")


def test_image_embeddings(
    client: openai.OpenAI, http: httpx.Client, models: dict[str, Any], cat: dict[str, Any], small: dict[str, Any]
) -> None:
    expected = models["clip"].embed_images([cat["image"], small["image"]])
    # Through the openai client, the image parts given as extra_body ...
    response = client.embeddings.create(
        model="clip", input="ignored", extra_body={"input": [image_part(cat["url"]), image_part(small["url"])]}
    )
    got = np.array([d.embedding for d in response.data], dtype=np.float32)
    assert_close(got, expected, rtol=DEEP, what="images")  # batched by the server as they arrive
    # ... and raw, with text and images mixed in one request.
    raw = http.post(
        "/v1/embeddings",
        json={"model": "clip", "input": [image_part(cat["url"]), "a cat", {"type": "image_url", "image_url": small["url"]}]},
    )
    assert raw.status_code == 200, raw.text
    vectors = np.array([d["embedding"] for d in raw.json()["data"]], dtype=np.float32)
    assert_close(vectors[[0, 2]], expected, rtol=DEEP, what="images")
    assert_close(vectors[1], models["clip"].embed_texts(["a cat"])[0], rtol=DEEP, what="text")
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_auto_routing(client: openai.OpenAI, models: dict[str, Any], cat: dict[str, Any]) -> None:
    def route(messages: list[dict[str, Any]], **options: Any) -> tuple[str, dict[str, Any], Any]:
        response = client.chat.completions.create(model="auto", messages=messages, **options)
        return response.model, response.model_extra["vlmkit"]["route"], response

    name, info, response = route([user("What colour is the cat?", cat["url"])])
    assert name == "blip-vqa" and info["task"] == "ask" and info["reason"] == "a short question (5 words)"
    assert response.choices[0].message.content == models["blip-vqa"].ask([cat["image"]], ["What colour is the cat?"], options=GenerationOptions(max_new_tokens=30))[0]
    name, info, _ = route([user("Why is the cat sitting there?", cat["url"])], max_tokens=8)
    assert name == "llava" and info["task"] == "chat" and info["reason"] == "an open-ended request ('why')"
    conversation = [user("What colour is the cat?", cat["url"]), {"role": "assistant", "content": "brown"}, user("And its eyes?")]
    name, info, _ = route(conversation, max_tokens=8)
    assert name == "llava" and info["reason"] == "multi-turn dialogue"
    name, info, _ = route([user("What colour is the cat?", cat["url"])], max_tokens=80)  # over 64; with the image (16 tokens) it fits in 128
    assert name == "llava" and info["reason"].startswith("a long answer (max_tokens 80")
    # A caption request goes to the precise side, which (VQA only) cannot caption: LLaVA answers.
    name, info, _ = route([user("Describe this image.", cat["url"])], max_tokens=8)
    assert name == "llava" and info["reason"] == "a caption request; the preferred model cannot do it"
    raw = client.chat.completions.with_raw_response.create(model="auto", messages=[user("What colour is the cat?", cat["url"])])
    assert raw.headers["x-vlmkit-model"] == "blip-vqa" and raw.headers["x-vlmkit-route"].startswith("a short question")


def test_a_question_to_a_captioner_is_refused_not_captioned(client: openai.OpenAI, cat: dict[str, Any]) -> None:
    """The built-in only captions: asked a question by name, it must not answer with a caption."""
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="default", messages=[user("What colour is the cat?", cat["url"])])
    message = refused.value.body["message"]  # type: ignore[index]
    assert message.startswith("model 'default' cannot answer questions or chat: it captions and embeds; ")
    assert "models that answer: llava, blip-vqa (or model 'auto')" in message
    # Model "auto" routes the same question to a model that answers it.
    routed = client.chat.completions.create(model="auto", messages=[user("What colour is the cat?", cat["url"])])
    assert routed.model == "blip-vqa"
    # With no model that answers, the refusal says how to get one.
    alone = tiny_app({"default": vlmkit.load("default")}).post(
        "/v1/chat/completions", json={"model": "default", "messages": [user("What colour is the cat?", cat["url"])]}
    )
    assert alone.status_code == 400 and "train one offline with `vlmkit train`" in alone.json()["error"]["message"]


def test_auto_works_without_routes(models: dict[str, Any], cat: dict[str, Any], small: dict[str, Any], engine: RayDeployments | None) -> None:
    """Model "auto" with no --route: with one model it is that model; with several, the first that can
    do what the request needs, and the reason says so."""
    one = tiny_app({"default": models["default"]}, engine=engine)
    listed = one.get("/v1/models").json()["data"]
    assert [m["id"] for m in listed] == ["default", "auto"] and listed[1]["vlmkit"]["by_capability"] is True
    reply = one.post("/v1/chat/completions", json={"model": "auto", "messages": [user("Describe this image.", small["url"])]})
    assert reply.status_code == 200, reply.text
    assert reply.json()["choices"][0]["message"]["content"] == models["default"].caption([small["image"]])[0]
    assert reply.json()["vlmkit"]["route"] == {"model": "default", "task": "caption", "reason": "a caption request"}
    refused = one.post("/v1/chat/completions", json={"model": "auto", "messages": [user("What colour is it?", small["url"])]})
    assert refused.status_code == 400
    assert refused.json()["error"]["message"] == (
        "no served model can answer a short question (4 words); served: default (captions and embeds)"
    )

    several = tiny_app({"default": models["default"], "llava": models["llava"], "blip-vqa": models["blip-vqa"]}, engine=engine)

    def routed(text: str | None, **options: Any) -> dict[str, Any]:
        response = several.post("/v1/chat/completions", json={"model": "auto", "messages": [user(text, small["url"])], **options})
        assert response.status_code == 200, response.text
        return response.json()["vlmkit"]["route"]

    picked = "; picked by what the served models can do"
    assert routed("Describe this image.") == {"model": "default", "task": "caption", "reason": "a caption request" + picked}
    assert routed("What colour is it?") == {"model": "blip-vqa", "task": "ask", "reason": "a short question (4 words)" + picked}
    assert routed("Why is it here?", max_tokens=4) == {"model": "llava", "task": "chat", "reason": "an open-ended request ('why')" + picked}


def test_several_images_in_one_chat(client: openai.OpenAI, models: dict[str, Any], cat: dict[str, Any], small: dict[str, Any]) -> None:
    """LLaVA takes several images, in one message or across turns; the reply is the library's, and
    the usage counts every image's tokens as the model's processor builds the prompt."""
    llava = models["llava"]
    one = [user("Compare the pictures.", cat["url"])]
    two = [user("Compare the pictures.", cat["url"], small["url"])]
    turns = [user("What is this?", cat["url"]), {"role": "assistant", "content": "a cat"}, user("And this one?", small["url"])]
    for messages in (two, turns):
        reply = client.chat.completions.create(model="llava", messages=messages, max_tokens=6, temperature=0)
        assert reply.choices[0].message.content == llava.chat(messages, options=GenerationOptions(max_new_tokens=6))
        assert reply.usage is not None and reply.usage.prompt_tokens == llava.prompt_tokens(messages)
    per_image = llava.prompt_tokens(two) - llava.prompt_tokens(one)
    assert per_image == 16 + 1  # the tiny tower's 16 image tokens, and the second image's own placeholder text
    # Model "auto" sends several images to a model that takes them.
    routed = client.chat.completions.create(model="auto", messages=two, max_tokens=4)
    assert routed.model == "llava" and routed.model_extra["vlmkit"]["route"]["reason"] == "2 images in the conversation"
    # A model that takes one image per prompt refuses, naming the ones that take several.
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="blip-vqa", messages=[user("What colour is it?", cat["url"], small["url"])])
    assert refused.value.body["message"] == (  # type: ignore[index]
        "model 'blip-vqa' takes one image per prompt; the request has 2; models that take several: llava (or model 'auto')"
    )


def test_image_tokens_count_against_the_context(models: dict[str, Any], small: dict[str, Any], engine: RayDeployments | None) -> None:
    """The tiny LLaVA has 128 positions and each image takes 16: seven images cannot fit with an answer."""
    app = tiny_app({"llava": models["llava"]}, engine=engine)
    many = [user("Which of these is red?", *[small["url"]] * 7)]
    counted = models["llava"].prompt_tokens(many)
    assert counted > 7 * 16
    refused = app.post("/v1/chat/completions", json={"model": "llava", "messages": many, "max_tokens": 30})
    assert refused.status_code == 400
    assert refused.json()["error"]["message"] == (
        f"the conversation is {counted} tokens (7 images included) and 30 more were asked for; model 'llava' takes at most 128 in all"
    )
    few = [user("Which of these is red?", *[small["url"]] * 2)]
    assert app.post("/v1/chat/completions", json={"model": "llava", "messages": few, "max_tokens": 4}).status_code == 200


def test_errors_map_to_openai_exceptions(server: str, client: openai.OpenAI, cat: dict[str, Any]) -> None:
    for key in ("wrong-key", KEY + "x", KEY.upper()):
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{server}/v1", api_key=key, max_retries=0).models.list()
    with pytest.raises(openai.NotFoundError, match="unknown model 'gpt-4o'"):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="text-embedding-3-small", input="hi")
    with pytest.raises(openai.BadRequestError, match="exactly one image"):
        client.chat.completions.create(model="default", messages=[{"role": "user", "content": "Write a caption"}])
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.chat.completions.create(model="llava", messages=[user("hi", cat["url"])], max_tokens=100_000)
    with pytest.raises(openai.BadRequestError, match="CLIP|clip|embed"):
        client.embeddings.create(model="llava", input="hi")


# -- task endpoints, health, metrics ----------------------------------------------------------------


def test_task_endpoints(http: httpx.Client, models: dict[str, Any], cat: dict[str, Any]) -> None:
    response = http.post("/v1/caption", json={"model": "default", "image": cat["url"]})
    assert response.status_code == 200 and response.json() == {"model": "default", "caption": models["default"].caption([cat["image"]])[0]}
    assert response.json()["caption"].startswith("a photo of")
    prompted = http.post("/v1/caption", json={"model": "default", "image": {"url": cat["url"]}, "prompt": "a picture of"}).json()
    assert prompted["caption"].startswith("a picture of ")

    response = http.post("/v1/vqa", json={"model": "blip-vqa", "image": cat["url"], "question": "what animal is it?"})
    assert response.status_code == 200
    assert response.json()["answer"] == models["blip-vqa"].ask([cat["image"]], ["what animal is it?"])[0]

    labels = ["a cat", "a dog", "a cup of coffee"]
    for name in ("default", "clip"):
        response = http.post("/v1/classify", json={"model": name, "image": cat["url"], "labels": labels, "top_k": 2})
        assert response.status_code == 200, response.text
        expected = models[name].classify([cat["image"]], labels, top_k=2)[0]
        got = response.json()["labels"]
        assert [g["label"] for g in got] == [e.label for e in expected]
        assert_close([g["score"] for g in got], [e.score for e in expected], rtol=DEEP, what=name)  # the server's batches
    assert (
        http.post("/v1/classify", json={"model": "default", "image": cat["url"], "labels": ["a cat"]}).json()["labels"][0]["label"]
        == "a cat"
    )

    texts = ["a cat", "a rocket"]
    response = http.post("/v1/match", json={"model": "clip", "image": cat["url"], "texts": texts})
    assert response.status_code == 200 and response.json()["kind"] == "cosine"
    assert_close(response.json()["scores"], models["clip"].match(cat["image"], texts).scores, rtol=DEEP, what="match")
    assert http.post("/v1/match", json={"model": "default", "image": cat["url"], "texts": texts}).status_code == 200

    for path, body in [
        ("/v1/caption", {"model": "clip", "image": cat["url"]}),
        ("/v1/vqa", {"model": "default", "image": cat["url"], "question": "what?"}),
        ("/v1/classify", {"model": "blip-vqa", "image": cat["url"], "labels": ["a"]}),
        ("/v1/match", {"model": "llava", "image": cat["url"], "texts": ["a"]}),
    ]:
        response = http.post(path, json=body)
        assert response.status_code == 400 and response.json()["error"]["type"] == "invalid_request_error", (path, response.text)


def test_health_and_metrics(server: str, http: httpx.Client) -> None:
    assert http.post("/v1/embeddings", json={"model": "default", "input": ["a", "b"]}).status_code == 200
    health = httpx.get(f"{server}/health")  # no key needed
    assert health.status_code == 200
    body = health.json()
    assert body["status"] == "ok" and set(body["models"]) == {"default", "llava", "blip-vqa", "clip"}
    assert "embed" in body["models"]["clip"]["tasks"] and body["models"]["llava"]["kind"] == "llava (LlavaForConditionalGeneration)"
    assert body["queues"]["default/embed_text"] == 0
    assert httpx.get(f"{server}/metrics").status_code == 401
    metrics = http.get("/metrics")
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    for name in ("vlmkit_requests_total{", "vlmkit_request_seconds_bucket{", "vlmkit_batch_size_bucket{", "vlmkit_queue_depth{"):
        assert re.search(f"^{re.escape(name)}", text, re.MULTILINE), name
    assert 'vlmkit_requests_total{endpoint="/v1/embeddings",status="200"}' in text
    assert 'vlmkit_queue_depth{model="default",task="embed_text"} 0.0' in text
    # Paths a client makes up never become metric labels.
    for i in range(5):
        assert http.post(f"/v1/made-up-{i}", json={}).status_code == 404
    assert "made-up" not in http.get("/metrics").text


# -- safety ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url, words",
    [
        ("http://example.com/cat.png", "'example.com' is not allowed"),
        ("https://169.254.169.254/latest/meta-data", "is not allowed"),
        ("http://allowed.example@evil.example/cat.png", "'evil.example' is not allowed"),
        ("file:///etc/passwd", "only data: URLs"),
        ("/etc/passwd", "only data: URLs"),
        ("../../etc/passwd", "only data: URLs"),
        ("ftp://allowed.example/cat.png", "only data: URLs"),
        ("data:image/png,notbase64", "must be base64"),
        ("data:image/png;base64,!!!", "not valid base64"),
        ("data:image/png;base64,", "empty image"),
        ("data:text/plain;base64," + base64.b64encode(b"hello world").decode(), "not an image"),
    ],
)
def test_image_references_are_refused(url: str, words: str, models: dict[str, Any], photos: dict[str, Path], engine: RayDeployments | None) -> None:
    client = tiny_app({"default": models["default"]}, engine=engine, allow_url_hosts=("allowed.example",))
    for body in ({"model": "default", "image": url}, {"model": "default", "image": {"url": url}}):
        response = client.post("/v1/caption", json=body)
        assert response.status_code == 400 and words in response.json()["error"]["message"], response.text
    response = client.post("/v1/chat/completions", json={"model": "default", "messages": [user("what?", url)]})
    assert response.status_code == 400 and words in response.json()["error"]["message"]
    # A real file named by its path is refused too: no client text names a file on the server.
    assert client.post("/v1/caption", json={"model": "default", "image": str(photos["cat"])}).status_code == 400
    assert client.post("/v1/caption", json={"model": "default", "image": photos["cat"].as_uri()}).status_code == 400


class _ImageHost(BaseHTTPRequestHandler):
    image = b""

    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        if self.path.startswith("/redirect"):
            self.send_response(302)
            self.send_header("Location", f"http://localhost:{self.server.server_address[1]}/cat.png")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(self.image)))
        self.end_headers()
        self.wfile.write(self.image)

    def log_message(self, *args: Any) -> None:
        pass


def test_allowed_hosts_and_redirects(models: dict[str, Any], small: dict[str, Any], engine: RayDeployments | None) -> None:
    """Loopback only: an allow-listed host is fetched, but a redirect to another host is refused."""
    _ImageHost.image = small["bytes"]
    host = ThreadingHTTPServer(("127.0.0.1", 0), _ImageHost)
    threading.Thread(target=host.serve_forever, daemon=True).start()
    try:
        port = host.server_address[1]
        client = tiny_app({"default": models["default"]}, engine=engine, allow_url_hosts=("127.0.0.1",))
        response = client.post("/v1/caption", json={"model": "default", "image": f"http://127.0.0.1:{port}/cat.png"})
        assert response.status_code == 200 and response.json()["caption"].startswith("a photo of")
        response = client.post("/v1/caption", json={"model": "default", "image": f"http://127.0.0.1:{port}/redirect"})
        assert response.status_code == 400 and "localhost" in response.json()["error"]["message"]
        response = client.post("/v1/caption", json={"model": "default", "image": f"http://localhost:{port}/cat.png"})
        assert response.status_code == 400
    finally:
        host.shutdown()
        host.server_close()


def test_decompression_bombs(models: dict[str, Any], cat: dict[str, Any], engine: RayDeployments | None) -> None:
    client = tiny_app({"default": models["default"]}, engine=engine)
    response = client.post("/v1/caption", json={"model": "default", "image": data_url(bomb_png())})
    assert response.status_code == 413 and "pixels" in response.json()["error"]["message"]
    response = client.post("/v1/embeddings", json={"model": "default", "input": [image_part(data_url(bomb_png(20_000, 20_000)))]})
    assert response.status_code == 413
    strict = tiny_app({"default": models["default"]}, engine=engine, max_pixels=10_000)  # the cat is 451 x 300
    response = strict.post("/v1/caption", json={"model": "default", "image": cat["url"]})
    assert response.status_code == 413 and "135,300 pixels is over the limit of 10,000" in response.json()["error"]["message"]
    response = strict.post("/v1/chat/completions", json={"model": "default", "messages": [user("what?", cat["url"])]})
    assert response.status_code == 413
    truncated = data_url(cat["bytes"][: len(cat["bytes"]) // 2])
    response = client.post("/v1/caption", json={"model": "default", "image": truncated})
    assert response.status_code == 400 and "truncated" in response.json()["error"]["message"]


def test_body_limit(engine: RayDeployments | None) -> None:
    client = tiny_app(engine=engine, max_body_bytes=10_000)
    big = {"model": "slow", "input": ["word " * 1000] * 3}
    response = client.post("/v1/embeddings", json=big)  # announced by Content-Length
    assert response.status_code == 413 and "10,000 bytes" in response.json()["error"]["message"]

    def chunked() -> Iterator[bytes]:  # no Content-Length
        data = json.dumps(big).encode()
        for start in range(0, len(data), 1000):
            yield data[start : start + 1000]

    response = client.post("/v1/embeddings", content=chunked(), headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert client.post("/v1/embeddings", json={"model": "slow", "input": "a"}).status_code == 200


def test_text_and_count_limits(engine: RayDeployments | None) -> None:
    model = SlowEmbedder(0.0)
    client = tiny_app({"slow": model}, engine=engine, max_queue=8, max_batch=4)
    assert client.post("/v1/embeddings", json={"model": "slow", "input": "x" * 20_001}).status_code == 413
    assert client.post("/v1/embeddings", json={"model": "slow", "input": ["x"] * 257}).status_code == 413
    assert model.calls == []
    # More inputs than the queue holds: sent a batch at a time, not refused as if the server were busy.
    response = client.post("/v1/embeddings", json={"model": "slow", "input": [f"x{i}" for i in range(256)]})
    assert response.status_code == 200 and len(response.json()["data"]) == 256
    if engine is None:  # on Ray the calls are counted by the replica's copy of the model
        assert sum(model.calls) == 256 and max(model.calls) <= 4


@pytest.mark.parametrize(
    "content, words",
    [
        (b'{"model": "slow", "input": "a \\ud800"}', "surrogate"),
        (b'{"model": "slow", "input": ["\\udfff"]}', "surrogate"),
        (b'{"model": "slow", "input": "a", "extra": ' + b"9" * 5000 + b"}", "digits"),
        (b'{"model": "slow", "input": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested too deeply"),
        (b"[" * 100_000, "nested too deeply"),
        (b'{"model": "slow", "input": "caf\xe9"}', "not valid JSON"),
    ],
)
def test_bodies_python_cannot_take_are_400(content: bytes, words: str, engine: RayDeployments | None) -> None:
    client = tiny_app(engine=engine)
    response = client.post("/v1/embeddings", content=content, headers={"content-type": "application/json"})
    assert response.status_code == 400 and words in response.json()["error"]["message"], response.text
    # A surrogate pair (an emoji) is fine.
    response = client.post("/v1/embeddings", content=b'{"model": "slow", "input": "\\ud83d\\ude00"}')
    assert response.status_code == 200


def test_an_empty_stop_string_is_refused(models: dict[str, Any], small: dict[str, Any], engine: RayDeployments | None) -> None:
    client = tiny_app({"default": models["default"]}, engine=engine)
    body = {"model": "default", "messages": [user("caption", small["url"])]}
    assert client.post("/v1/chat/completions", json={**body, "stop": ""}).status_code == 400
    assert client.post("/v1/chat/completions", json={**body, "stop": [""]}).status_code == 400
    assert (
        client.post("/v1/chat/completions", json={**body, "stop": "zzz"})
        .json()["choices"][0]["message"]["content"]
        .startswith("a photo of")
    )


def test_cors(engine: RayDeployments | None) -> None:
    origin = "https://app.example"
    preflight = {"Origin": origin, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization, content-type"}
    closed = tiny_app(engine=engine, api_keys=(KEY,))
    response = closed.get("/health", headers={"Origin": origin})
    assert response.status_code == 200 and "access-control-allow-origin" not in response.headers
    assert "access-control-allow-origin" not in closed.options("/v1/embeddings", headers=preflight).headers

    opened = tiny_app(engine=engine, api_keys=(KEY,), cors_origins=(origin,))
    response = opened.post(
        "/v1/embeddings", json={"model": "slow", "input": "a"}, headers={"Origin": origin, "Authorization": f"Bearer {KEY}"}
    )
    assert response.status_code == 200 and response.headers["access-control-allow-origin"] == origin
    # Browsers send the preflight without credentials: it must pass, and a 401 must stay readable.
    response = opened.options("/v1/embeddings", headers=preflight)
    assert response.status_code == 200 and response.headers["access-control-allow-origin"] == origin
    assert "authorization" in response.headers["access-control-allow-headers"].lower()
    response = opened.post("/v1/embeddings", json={"model": "slow", "input": "a"}, headers={"Origin": origin})
    assert response.status_code == 401 and response.headers["access-control-allow-origin"] == origin
    other = opened.get("/health", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers


def test_a_full_queue_answers_429_and_recovers() -> None:
    model = BlockedEmbedder()
    app = create_api_app({"slow": model}, ServerConfig(max_queue=1, max_batch=1, window_ms=0))
    with live_server(app) as url, session(url) as client:

        def post(i: int) -> httpx.Response:
            return client.post("/v1/embeddings", json={"model": "slow", "input": f"text {i}"})

        with ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(post, i) for i in range(8)]
            try:
                # While the model is held, at most two are accepted (one running, one waiting): the
                # other six or more must be answered without it ever returning.
                deadline = time.monotonic() + 60
                while sum(f.done() for f in futures) < 6 and time.monotonic() < deadline:
                    time.sleep(0.01)
                assert sum(f.done() for f in futures) >= 6 and model.returned == 0
            finally:
                model.release.set()
            responses = [f.result() for f in futures]
        statuses = Counter(r.status_code for r in responses)
        assert set(statuses) == {200, 429}, statuses  # one running, at most one waiting, the rest refused
        refused = next(r for r in responses if r.status_code == 429)
        assert refused.headers["retry-after"] == "1" and refused.json()["error"]["type"] == "rate_limit_error"
        assert post(99).status_code == 200  # the server still answers
        assert sum(model.calls) == statuses[200] + 1


def test_a_slow_request_answers_504(engine: RayDeployments | None) -> None:
    # A replica gets a copy of its model, so on Ray the model is one that sleeps instead of waiting for the test.
    model = BlockedEmbedder() if engine is None else SlowEmbedder(3.0)
    client = tiny_app({"slow": model}, engine=engine, timeout_s=0.2)
    try:
        response = client.post("/v1/embeddings", json={"model": "slow", "input": "a"})
        assert response.status_code == 504 and response.json()["error"]["type"] == "timeout"
        if isinstance(model, BlockedEmbedder):
            assert model.returned == 0  # the 504 came while the model was still busy: it did not wait for it
    finally:
        if isinstance(model, BlockedEmbedder):
            model.release.set()


def test_shutdown_closes_the_batchers() -> None:
    app = create_api_app({"slow": SlowEmbedder(0.0)})
    with TestClient(app) as client:
        assert client.post("/v1/embeddings", json={"model": "slow", "input": "a"}).status_code == 200
        batcher = app.state.served["slow"].batchers["embed_text"]
        assert all(w.is_alive() for w in batcher._workers)
    assert not any(w.is_alive() for w in batcher._workers)


def test_a_bug_in_a_model_call_is_a_logged_500(small: dict[str, Any], caplog: pytest.LogCaptureFixture, engine: RayDeployments | None) -> None:
    """An unexpected exception is the server's fault: a 500 with a generic body and the traceback in
    the log, never a 400 (a ValueError is not bad input unless the library says so)."""
    client = tiny_app({"buggy": BuggyModel()}, engine=engine)
    generic = {"error": {"message": "internal error; see the server log", "type": "server_error", "code": 500}}
    requests = [
        ("/v1/caption", {"model": "buggy", "image": small["url"]}),
        ("/v1/embeddings", {"model": "buggy", "input": "a"}),
        ("/v1/chat/completions", {"model": "buggy", "messages": [user("hi", small["url"])]}),
    ]
    for path, body in requests:
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="vlmkit.server"):
            response = client.post(path, json=body)
        assert response.status_code == 500 and response.json() == generic, (path, response.text)
        logged = [r for r in caplog.records if r.name == "vlmkit.server" and r.exc_info]
        assert logged and logged[0].exc_info[0] in (ValueError, KeyError), path
        assert "secret detail of a bug" in caplog.text
    # Streamed, the status line has gone out: the failure is an error event, as generic, and logged.
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="vlmkit.server"):
        response = client.post("/v1/chat/completions", json={"model": "buggy", "messages": [user("hi")], "stream": True})
    assert response.status_code == 200
    events = [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: {")]
    assert {"error": {"message": "generation failed; see the server log", "type": "server_error"}} in events
    assert "secret detail" not in response.text and "secret detail of a bug" in caplog.text


def test_invalid_bodies_are_400_in_the_openai_envelope(small: dict[str, Any], engine: RayDeployments | None) -> None:
    """A body that fails validation is a 400 in the same envelope as every other error (not FastAPI's
    422 {"detail": ...}), naming the field and what it should be."""
    client = tiny_app(engine=engine)
    cases = [
        ("/v1/embeddings", {"model": "slow", "input": "a", "encoding_format": "hex"}, "encoding_format: Input should be 'float' or 'base64'"),
        ("/v1/embeddings", {"input": "a"}, "model: Field required"),
        ("/v1/embeddings", {"model": "slow", "input": []}, "input: must be a string, an image part, or a non-empty list of them"),
        ("/v1/chat/completions", {"model": "slow", "messages": [user("hi")], "max_tokens": "5"}, "max_tokens: Input should be a valid integer"),
        ("/v1/chat/completions", {"model": "slow", "messages": [user("hi")], "temperature": 3}, "temperature: Input should be less than"),
        ("/v1/chat/completions", {"model": "slow", "messages": [{"role": "tool", "content": "hi"}]}, "role must be one of"),
        ("/v1/classify", {"model": "slow", "image": small["url"], "labels": ["a", ""]}, "labels: must be 1 to 1000 non-empty strings"),
    ]
    for path, body, words in cases:
        response = client.post(path, json=body)
        assert response.status_code == 400, (body, response.text)
        error = response.json()["error"]
        assert words in error["message"] and error["type"] == "invalid_request_error" and error["code"] == 400, (body, error)
    # A chunked body over the limit gets the same envelope as one announced by Content-Length.
    small_limit = tiny_app(engine=engine, max_body_bytes=1000)
    response = small_limit.post("/v1/embeddings", content=iter([b'{"model": "slow", "input": "', b"x" * 2000, b'"}']))
    assert response.status_code == 413 and response.json()["error"]["code"] == 413


def test_chat_is_admitted_like_every_other_call() -> None:
    """Chat, streamed or not, waits in the model's bounded queue like the batched tasks: with the
    model held, one request runs, one waits, and the rest are refused with 429 at once."""
    model = BlockedChat()
    app = create_api_app({"chat": model}, ServerConfig(max_queue=1))
    with live_server(app) as url, session(url) as client:

        def post(i: int) -> httpx.Response:
            body = {"model": "chat", "messages": [{"role": "user", "content": f"hi {i}"}], "stream": i % 2 == 1}
            return client.post("/v1/chat/completions", json=body)

        with ThreadPoolExecutor(6) as pool:
            futures = [pool.submit(post, i) for i in range(6)]
            try:
                deadline = time.monotonic() + 60
                while sum(f.done() for f in futures) < 4 and time.monotonic() < deadline:
                    time.sleep(0.01)
                assert sum(f.done() for f in futures) >= 4 and model.calls <= 1
            finally:
                model.release.set()
            responses = [f.result() for f in futures]
        statuses = Counter(r.status_code for r in responses)
        assert set(statuses) == {200, 429} and statuses[200] <= 2, statuses
        refused = next(r for r in responses if r.status_code == 429)
        assert refused.headers["retry-after"] == "1" and refused.json()["error"]["type"] == "rate_limit_error"
        assert post(0).json()["choices"][0]["message"]["content"] == "a reply"  # the server still answers
        assert "chat/chat" in client.get("/health").json()["queues"]


# -- fuzz ----------------------------------------------------------------------------------------------

MISSING = object()
NAN, INF = float("nan"), float("inf")
WRONG_FOR_STR = [5, -1, 1.5, True, False, [], {}, ["x"], {"x": 1}, NAN]
WRONG_FOR_LIST = [5, 1.5, True, "x", {}, {"a": 1}, NAN]
BAD_COUNTS = [0, -1, 1025, 10**12, 10**40, 1.5e308 * 10, "5", True, [], {}, NAN, -INF, 0.5, -0.0]


def _templates(image: str) -> dict[str, dict[str, Any]]:
    return {
        "/v1/chat/completions": {"model": "default", "messages": [user("what is this?", image)]},
        "/v1/embeddings": {"model": "default", "input": "a cat"},
        "/v1/caption": {"model": "default", "image": image},
        "/v1/vqa": {"model": "blip-vqa", "image": image, "question": "what colour?"},
        "/v1/classify": {"model": "clip", "image": image, "labels": ["a cat", "a dog"]},
        "/v1/match": {"model": "clip", "image": image, "texts": ["a cat"]},
    }


# Models that exist but cannot serve the endpoint.
INCAPABLE = {
    "/v1/chat/completions": ["clip"],
    "/v1/embeddings": ["llava", "blip-vqa"],
    "/v1/caption": ["clip", "blip-vqa"],
    "/v1/vqa": ["default", "clip"],
    "/v1/classify": ["llava", "blip-vqa"],
    "/v1/match": ["llava", "blip-vqa"],
}

# field -> bad values, per endpoint (MISSING: the field is left out). Every one is an error on its own.
FIELDS: dict[str, dict[str, list[Any]]] = {
    "/v1/chat/completions": {
        "messages": [MISSING, None, "hi", 5, {}, [], [5], ["hi"], [None], [{}], [[]], {"role": "user", "content": "hi"}],
        "max_tokens": BAD_COUNTS,
        "max_completion_tokens": BAD_COUNTS,
        "temperature": [-0.1, 2.5, "hot", True, [], {}, NAN, INF, -INF],
        "top_p": [1.5, -1, "x", True, [], NAN, INF],
        "stop": [5, [1], ["a", "b", "c", "d", "e"], [""], {}, True, [None], [["a"]], ""],
        "stream": ["yes", 1, 0, [], {}, "false", NAN],
        "stream_options": ["x", [], 5, True],
        "n": [2, 0, -1, "1", True, 1.0, [], 10**6],
    },
    "/v1/embeddings": {
        "input": [
            MISSING,
            None,
            5,
            True,
            1.5,
            [],
            [5],
            [None],
            [[1, 2, 3]],
            [{"type": "text", "text": "x"}],
            {"type": "image_url"},
            [{"type": "image_url", "image_url": 5}],
            ["x"] * 257,
            "x" * 20_001,
            [["a"]],
            {},
        ],
        "encoding_format": ["hex", "FLOAT", 5, True, [], {}, ""],
    },
    "/v1/caption": {"prompt": [5, [], True, {}, 1.5], "max_tokens": BAD_COUNTS},
    "/v1/vqa": {"question": [MISSING, None, "", "   ", "\n\t", "x" * 20_001, *WRONG_FOR_STR], "max_tokens": BAD_COUNTS},
    "/v1/classify": {
        "labels": [MISSING, None, [], [""], ["  "], [1], [None], ["a", "a"], ["a"] * 1001, [["a"]], *WRONG_FOR_LIST],
        "top_k": [0, -1, 3, 10**9, "1", True, [], NAN, INF, 0.5],
    },
    "/v1/match": {"texts": [MISSING, None, [], [1], [None], ["a"] * 1001, [["a"]], *WRONG_FOR_LIST]},
}


def _bad_images(small: bytes, rng: random.Random) -> list[Any]:
    cut = rng.randrange(8, len(small) // 2)
    junk = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
    return [
        None,
        5,
        1.5,
        True,
        [],
        {},
        {"url": 5},
        {"url": None},
        {"uri": "x"},
        [data_url(small)],
        "",
        "http://example.com/cat.png",
        "https://127.0.0.1/x.png",
        "https://[::1]/x.png",
        "ftp://example.com/x.png",
        "file:///etc/passwd",
        "/etc/passwd",
        "../../etc/passwd",
        "C:\\Windows\\win.ini",
        "~/.ssh/id_rsa",
        "chelsea.png",
        "data:image/png,abc",
        "data:image/png;base64,!!!",
        "data:image/png;base64,",
        "data:;base64,AAAA",
        "data:image/png;base64," + base64.b64encode(small).decode()[:-3] + "@@@",  # bad base64 at the end
        "data:image/png;base64,====",
        "data:",
        "data:,",
        "DATA:image/png;base64,AAAA",
        data_url(b"hello, world", "text/plain"),
        data_url(small[:cut]),
        data_url(b"\x89PNG\r\n\x1a\n" + junk),
        data_url(b"GIF89a" + junk),
        data_url(b"\xff\xd8\xff" + junk),
        data_url(junk),
        data_url(bomb_png()),
        data_url(b"<svg xmlns='http://www.w3.org/2000/svg'/>", "image/svg+xml"),
    ]


def _set(body: Any, path: tuple[Any, ...], value: Any) -> None:
    for key in path[:-1]:
        body = body[key]
    if value is MISSING:
        del body[path[-1]]
    else:
        body[path[-1]] = value


def _encode(body: Any) -> bytes:
    return json.dumps(body).encode()  # NaN and Infinity come out as the bare words Python accepts


def _malformed(rng: random.Random, small: dict[str, Any]) -> tuple[str, str, bytes, dict[str, str], str]:
    """One request that must be refused: (method, path, body, headers, what)."""
    templates = _templates(small["url"])
    kinds = {"raw": 15, "field": 30, "model": 7, "image": 15, "message": 15, "nested": 5, "escape": 4, "bigint": 2, "auth": 3, "method": 4}
    kind = rng.choices(list(kinds), list(kinds.values()))[0]
    path = "/v1/chat/completions" if kind == "message" else rng.choice(list(templates))
    body = copy.deepcopy(templates[path])
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    if kind == "image" and path == "/v1/embeddings":
        body["model"] = "clip"
        body["input"] = [image_part(small["url"]), "a cat"]
    good = _encode(body)

    if kind == "raw":
        choice = rng.randrange(15)
        content: bytes
        if choice == 0:
            content = good[: rng.randrange(0, len(good) - 1)]  # truncated JSON
        elif choice == 1:
            content = rng.choice([b"null", b"true", b"42", b'"hello"', b"[1, 2]", b"[]", _encode([body]), b"NaN", b"-Infinity", b"3.5e999"])
        elif choice == 2:
            content = bytes(rng.randrange(32, 127) for _ in range(rng.randrange(1, 300)))
            content = b"{" + content if not content.startswith(b"{") else content  # never valid
            content = content + b"\x00}"
        elif choice == 3:
            content = bytes(rng.randrange(128, 256) for _ in range(rng.randrange(1, 300)))  # not UTF-8
        elif choice == 4:
            content = good.replace(b'"default"', b'"caf\xe9"').replace(b'"clip"', b'"cl\xffip"').replace(b'"blip-vqa"', b'"\xc3("')
        elif choice == 5:
            content = good + rng.choice([b"x", b"}", b"{}", b",", b"\x00"])  # trailing garbage
        elif choice == 6:
            content = good.replace(b'"', b"'")  # single quotes
        elif choice == 7:
            content = good.replace(b":", b"=", 1)
        elif choice == 8:
            content = b"model=default&input=a+cat"
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        elif choice == 9:
            content = (
                b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\nContent-Type: image/png\r\n\r\n'
                + small["bytes"]
                + b"\r\n--b--\r\n"
            )
            headers["Content-Type"] = "multipart/form-data; boundary=b"
        elif choice == 10:
            content = b"<request><model>default</model></request>"
            headers["Content-Type"] = rng.choice(["application/xml", "text/xml"])
        elif choice == 11:
            content = b""
            headers.pop("Content-Type") if rng.random() < 0.5 else None
        elif choice == 12:
            content = good.decode().encode("utf-16")[:-2]  # UTF-16, cut short
        elif choice == 13:
            content = good.decode().encode("utf-32")[: -rng.randrange(1, 8)]  # UTF-32, cut short
        else:
            content = good[: len(good) // 2] + b"\xff\xfe" + good[len(good) // 2 :]
        if choice not in (8, 9, 10) and rng.random() < 0.3:
            headers["Content-Type"] = rng.choice(
                ["text/plain", "application/octet-stream", "application/json; charset=latin-1", "image/png"]
            )
        return "POST", path, content, headers, f"raw{choice}"

    if kind == "field":
        field = rng.choice(list(FIELDS[path])) if rng.random() < 0.85 else "model"
        pool = [MISSING, None, "", "x" * rng.randrange(30_000, 100_000), *WRONG_FOR_STR] if field == "model" else FIELDS[path][field]
        value = rng.choice(pool)
        _set(body, (field,), value if value is MISSING else copy.deepcopy(value))
        return "POST", path, _encode(body), headers, f"field:{field}"

    if kind == "model":
        body["model"] = rng.choice(
            [
                f"model-{rng.randrange(10**6)}",
                "DEFAULT",
                " default",
                "default ",
                "gpt-4o",
                "auto" if path != "/v1/chat/completions" else "Auto",
                "../default",
                "default\x00",
                "\u202edefault",
                *INCAPABLE[path],
            ]
        )
        return "POST", path, _encode(body), headers, "model"

    if kind == "image":
        bad = copy.deepcopy(rng.choice(_bad_images(small["bytes"], rng)))
        if path == "/v1/chat/completions":
            body["messages"][0]["content"][1]["image_url"] = bad if rng.random() < 0.3 else {"url": bad}
        elif path == "/v1/embeddings":
            body["input"][0] = {"type": "image_url", "image_url": bad if rng.random() < 0.3 else {"url": bad}}
        elif bad is None:
            del body["image"]
        else:
            body["image"] = bad
        return "POST", path, _encode(body), headers, "image"

    if kind == "message":
        message = body["messages"][0]
        choice = rng.randrange(9)
        if choice == 0:
            _set(message, ("role",), rng.choice([MISSING, None, "tool", "", "USER", 5, "function", ["user"], "developer"]))
        elif choice == 1:
            content = rng.choice(
                [
                    MISSING,
                    None,
                    5,
                    True,
                    {},
                    {"type": "text", "text": "x"},
                    [5],
                    ["text"],
                    [None],
                    [{}],
                    [{"type": "text"}],
                    [{"type": "text", "text": 5}],
                    [{"type": "text", "text": None}],
                    [{"type": "image"}],
                    [{"type": "image_url"}],
                    [{"type": "image_url", "image_url": 5}],
                    [{"type": "image_url", "image_url": {}}],
                    [{"type": "video", "url": "x"}],
                    [{"type": "input_audio", "input_audio": {}}],
                    [{"text": "x"}],
                    "hi",
                    [{"type": "text", "text": "hi"}],
                ]
            )
            _set(message, ("content",), content if content is MISSING else copy.deepcopy(content))
        elif choice == 2:
            message["content"][0]["text"] = "x" * rng.randrange(20_001, 60_000)
        elif choice == 3:
            message["content"] += [image_part(small["url"])] * rng.choice([1, 8])  # 2 images, or 9 (over the limit)
        elif choice == 4:
            body["messages"].append({"role": "assistant", "content": "it is a cat"})  # the last message is not the user's
        elif choice == 5:
            body["messages"].insert(0, {"role": rng.choice(["assistant", "system"]), "content": [image_part(small["url"])]})
        elif choice == 6:
            body["messages"] = [copy.deepcopy(message) for _ in range(65)]
        elif choice == 7:
            message["content"][rng.randrange(2)]["type"] = rng.choice(["image", "IMAGE_URL", "Text", "", None, 5])
        else:
            message["content"] = (
                message["content"][1:] if rng.random() < 0.5 else [message["content"][0]]
            )  # text only, or no question for VQA
            body["model"] = "default" if len(message["content"]) == 1 and message["content"][0]["type"] == "text" else "blip-vqa"
        return "POST", path, _encode(body), headers, f"message{choice}"

    if kind == "nested":
        depth = rng.choice([rng.randrange(2, 900), rng.randrange(5_000, 300_000)])
        nested = b"[" * depth + b"]" * depth if rng.random() < 0.5 else b'{"a":' * depth + b"1" + b"}" * depth
        field = {
            "/v1/chat/completions": b"messages",
            "/v1/embeddings": b"input",
            "/v1/caption": b"image",
            "/v1/vqa": b"question",
            "/v1/classify": b"labels",
            "/v1/match": b"texts",
        }[path]
        if rng.random() < 0.3:
            return "POST", path, nested, headers, "nested-top"
        return ("POST", path, b'{"model": "' + body["model"].encode() + b'", "' + field + b'": ' + nested + b"}", headers, "nested")

    if kind == "escape":  # a lone UTF-16 surrogate, which JSON can spell but no tokenizer takes
        text = "a \ud800 b" if rng.random() < 0.5 else "\udfff"
        target = {
            "/v1/chat/completions": ("messages", 0, "content", 0, "text"),
            "/v1/embeddings": ("input",),
            "/v1/caption": ("prompt",),
            "/v1/vqa": ("question",),
            "/v1/classify": ("labels", 0),
            "/v1/match": ("texts", 0),
        }[path]
        _set(body, target, text)
        return "POST", path, _encode(body), headers, "escape"

    if kind == "bigint":  # integers of over 4,300 digits, which Python refuses to parse
        field = rng.choice([b"max_tokens", b"top_k", b"n", b"temperature", b"extra"])
        return (
            "POST",
            path,
            good[:-1] + b', "' + field + b'": ' + rng.choice([b"", b"-"]) + b"9" * rng.randrange(4_400, 20_000) + b"}",
            headers,
            "bigint",
        )

    if kind == "auth":
        headers["Authorization"] = rng.choice(["", "Bearer", "Bearer wrong", f"Basic {KEY}", f"Bearer {KEY}x", f"Bearer  {KEY}", KEY])
        if not headers["Authorization"]:
            del headers["Authorization"]
        return "POST", path, good, headers, "auth"

    return rng.choice(["GET", "PUT", "DELETE", "PATCH"]), path, good, headers, "method"


def _good_requests(small: dict[str, Any]) -> list[tuple[str, dict[str, Any], Callable[[dict[str, Any]], bool]]]:
    return [
        ("/v1/embeddings", {"model": "default", "input": ["a cat", "a cup"]}, lambda r: len(r["data"]) == 2),
        ("/v1/caption", {"model": "default", "image": small["url"]}, lambda r: r["caption"].startswith("a photo of")),
        ("/v1/classify", {"model": "clip", "image": small["url"], "labels": ["a cat", "a dog"]}, lambda r: len(r["labels"]) == 2),
        (
            "/v1/chat/completions",
            {"model": "default", "messages": [user("describe this image", small["url"])]},
            lambda r: r["choices"][0]["message"]["content"],
        ),
        ("/v1/vqa", {"model": "blip-vqa", "image": small["url"], "question": "what?"}, lambda r: isinstance(r["answer"], str)),
        ("/v1/match", {"model": "clip", "image": small["url"], "texts": ["a"]}, lambda r: len(r["scores"]) == 1),
    ]


def test_fuzz_malformed_requests_are_4xx(server: str, small: dict[str, Any]) -> None:
    rng = random.Random(20240601)
    statuses: Counter[int] = Counter()
    kinds: Counter[str] = Counter()
    good = _good_requests(small)
    total = 1200
    start = time.perf_counter()
    with session(server) as client:
        for i in range(total):
            method, path, content, headers, what = _malformed(rng, small)
            response = client.request(method, path, content=content, headers=headers)
            statuses[response.status_code] += 1
            kinds[what] += 1
            assert 400 <= response.status_code < 500, (i, what, method, path, content[:300], response.status_code, response.text[:300])
            assert "error" in response.json(), (i, what, response.text[:300])
            if i % 50 == 49:
                path, body, check = good[(i // 50) % len(good)]
                response = client.post(path, json=body, headers={"Authorization": f"Bearer {KEY}"})
                assert response.status_code == 200 and check(response.json()), (i, path, response.text[:300])
    elapsed = time.perf_counter() - start
    print(f"\nfuzz: {total} malformed requests in {elapsed:.1f} s; by status: {dict(sorted(statuses.items()))}")
    print(f"fuzz: by kind: {dict(sorted(kinds.items()))}")
    assert sum(statuses.values()) == total and len(kinds) > 30


# -- load --------------------------------------------------------------------------------------------


def test_load_embeddings(server: str, http: httpx.Client) -> None:
    clients, per_client = 8, 10
    latencies: list[float] = []
    errors: list[str] = []

    def work(c: int) -> None:
        with session(server, headers={"Authorization": f"Bearer {KEY}"}) as client:
            for r in range(per_client):
                t0 = time.perf_counter()
                response = client.post("/v1/embeddings", json={"model": "default", "input": f"a photo of thing {c}-{r}"})
                latencies.append(time.perf_counter() - t0)
                if response.status_code != 200 or len(response.json()["data"]) != 1:
                    errors.append(f"{response.status_code} {response.text[:200]}")

    before = _batch_stats(http)
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(work, range(clients)))
    elapsed = time.perf_counter() - start
    after = _batch_stats(http)
    ordered = sorted(latencies)
    p50, p99 = statistics.median(ordered), ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    batches = after[1] - before[1]
    print(
        f"\nload: {clients} clients x {per_client} /v1/embeddings: {len(latencies) / elapsed:.1f} req/s, "
        f"p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, errors {len(errors)}, "
        f"{batches:g} model calls (mean batch {(after[0] - before[0]) / max(batches, 1):.2f})"
    )
    assert not errors, errors[:3]
    assert len(latencies) == clients * per_client


def _batch_stats(http: httpx.Client) -> tuple[float, float]:
    text = http.get("/metrics").text
    found = {}
    for stat in ("sum", "count"):
        match = re.search(rf'^vlmkit_batch_size_{stat}{{model="default",task="embed_text"}} (\S+)$', text, re.MULTILINE)
        found[stat] = float(match.group(1)) if match else 0.0
    return found["sum"], found["count"]
