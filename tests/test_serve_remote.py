"""Remote models (:mod:`vlmkit_server.remote`): a second vlmkit server on loopback is the remote, the
front server serves the built-in locally and the remote's models beside it, and the real ``openai``
client talks to the front. Then the faults, each from a tiny ``http.server`` with short timeouts: a
remote that is down, slow, answers garbage or drops a stream; a 4xx passed through; and the startup
errors of ``vlmkit serve`` (a URL that is not http(s), a model the remote does not serve, an unset
key variable). The remote's API key is sent as a Bearer token and shows up nowhere else.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import socket
import struct
import threading
import time
import tomllib
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from test_serve_api import data_url, live_server, png_bytes, user

import vlmkit
from vlmkit.models.kinds import ModelKind
from vlmkit_server import Routes, ServerConfig, create_api_app
from vlmkit_server.remote import RemoteModel, RemoteSettings, RemoteSetupError, connect, parse_remote

REMOTE_KEY = "sk-remote-secret-4711"  # the remote's key: sent as a Bearer token, never shown
KEY_VARIABLE = "VLMKIT_TEST_REMOTE_KEY"
FAST = RemoteSettings(timeout_s=5.0, connect_timeout_s=1.0, retries=2, backoff_s=0.05)


# -- fakes: the remote's models ---------------------------------------------------------------------


def _describe(messages: list[dict[str, Any]]) -> list[str]:
    """Every message part in words; an image by its size and a checksum of its pixels."""
    words = []
    for message in messages:
        for part in message["content"]:
            if part["type"] == "text":
                words.append(f"{message['role']}:{part['text']}")
            else:
                image = part["image"].convert("RGB")
                words.append(f"image:{image.width}x{image.height}:{zlib.crc32(image.tobytes()):08x}")
    return words


class EchoChat:
    """A fake chat and embedding model whose reply depends on everything it was given (the pixels,
    the decoding settings), streamed a word at a time."""

    kind = ModelKind("fake", "EchoChat", frozenset({"chat", "embed"}), "says what it was given")
    name = "echo"

    def chat(self, messages: list[dict[str, Any]], *, stream: bool = False, options: Any = None) -> Any:
        words = [*_describe(messages), f"max:{options.max_new_tokens}", f"sample:{options.do_sample}"]
        pieces = [w + " " for w in words]
        return iter(pieces) if stream else "".join(pieces)

    def embed_texts(self, texts: list[str], *, batch_size: int = 64) -> np.ndarray:
        return np.stack([_unit(zlib.crc32(t.encode())) for t in texts])

    def embed_images(self, images: list[Any], *, batch_size: int = 64) -> np.ndarray:
        return np.stack([_unit(zlib.crc32(im.convert("RGB").tobytes())) for im in images])


class Captioner:
    """A fake captioner that answers questions: what a remote BLIP would do."""

    kind = ModelKind("fake", "Captioner", frozenset({"caption", "ask"}), "sizes and questions")
    name = "cap"

    def caption(self, images: list[Any], prompt: str | None = None, *, options: Any = None, batch_size: int = 8) -> list[str]:
        return [f"{prompt or 'a picture'} {im.width}x{im.height} in {options.max_new_tokens}" for im in images]

    def ask(self, images: list[Any], questions: list[str], *, options: Any = None, batch_size: int = 8) -> list[str]:
        return [f"{q} -> {im.width}" for im, q in zip(images, questions, strict=True)]


def _unit(seed: int) -> np.ndarray:
    vector = np.random.default_rng(seed).standard_normal(8).astype(np.float32)
    return vector / np.linalg.norm(vector)


# -- fixtures ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def remote() -> Iterator[str]:
    """A second vlmkit server: the remote, behind an API key, with a tighter max_tokens than the front."""
    app = create_api_app({"echo": EchoChat(), "cap": Captioner()}, ServerConfig(api_keys=(REMOTE_KEY,), max_tokens=64))
    with live_server(app) as url:
        yield url


@pytest.fixture(scope="module")
def default() -> Any:
    return vlmkit.load("default")


@pytest.fixture(scope="module")
def front(remote: str, default: Any) -> Iterator[str]:
    """The built-in on CPU as the precise side, the remote's chat model as the conversational side."""
    models = {
        "default": default,
        "llava": connect("llava", f"openai:{remote}/v1#echo", api_key=REMOTE_KEY, settings=FAST),
        "blip": connect("blip", f"openai:{remote}#cap", api_key=REMOTE_KEY, settings=FAST),
    }
    with live_server(create_api_app(models, ServerConfig(routes=Routes(precise="default", conversational="llava")))) as url:
        yield url


@pytest.fixture(scope="module")
def client(front: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{front}/v1", api_key="unused", max_retries=0, timeout=30)


@pytest.fixture(scope="module")
def direct(remote: str) -> openai.OpenAI:
    """The remote itself, asked directly: what the front must pass on."""
    return openai.OpenAI(base_url=f"{remote}/v1", api_key=REMOTE_KEY, max_retries=0, timeout=30)


@pytest.fixture(scope="module")
def small(photos: dict[str, Path]) -> dict[str, Any]:
    with Image.open(photos["coffee"]) as image:
        crop = image.convert("RGB").resize((64, 48))
    return {"url": data_url(png_bytes(crop)), "image": crop}


# -- through the front: the same answers as the remote's own ----------------------------------------


def test_models_list_and_health(client: openai.OpenAI, front: str) -> None:
    assert [m.id for m in client.models.list()] == ["default", "llava", "blip", "auto"]
    listed = httpx.get(f"{front}/v1/models").json()["data"]
    assert listed[1]["vlmkit"]["tasks"] == ["chat", "embed"] and listed[2]["vlmkit"]["tasks"] == ["ask", "caption"]
    assert listed[1]["vlmkit"]["kind"].startswith("remote (echo at http://127.0.0.1:")
    health = httpx.get(f"{front}/health").text
    assert REMOTE_KEY not in health and REMOTE_KEY not in json.dumps(listed)


def test_chat_equals_the_remote(client: openai.OpenAI, direct: openai.OpenAI, small: dict[str, Any]) -> None:
    messages = [user("What is in it?", small["url"]), {"role": "assistant", "content": "coffee"}, user("And the cup?")]
    ours = client.chat.completions.create(model="llava", messages=messages, max_tokens=12)
    theirs = direct.chat.completions.create(model="echo", messages=messages, max_tokens=12, temperature=0)
    text = ours.choices[0].message.content
    assert text == theirs.choices[0].message.content
    # The image went over as its own pixels (re-encoded losslessly), and the settings with it.
    assert text is not None and f"image:64x48:{zlib.crc32(small['image'].tobytes()):08x}" in text and "max:12 sample:False" in text
    assert ours.model == "llava"


def test_streamed_pieces_equal_the_remote(client: openai.OpenAI, direct: openai.OpenAI, small: dict[str, Any]) -> None:
    messages = [user("Tell me a story about it.", small["url"])]
    ours = list(client.chat.completions.create(model="llava", messages=messages, max_tokens=20, temperature=0.7, stream=True))
    theirs = list(direct.chat.completions.create(model="echo", messages=messages, max_tokens=20, temperature=0.7, stream=True))

    def pieces(chunks: list[Any]) -> list[str]:
        return [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]

    assert pieces(ours) == pieces(theirs) and len(pieces(ours)) == 4  # text, image, max, sample
    assert "sample:True" in "".join(pieces(ours))


def test_embeddings_equal_the_remote(client: openai.OpenAI, direct: openai.OpenAI, small: dict[str, Any]) -> None:
    texts = ["a cup of coffee", "a cat", "an astronaut"]
    for model, name in ((client, "llava"), (direct, "echo")):
        got = model.embeddings.create(model=name, input=texts, encoding_format="float")
        vectors = np.array([d.embedding for d in got.data], dtype=np.float32)
        # Exactly equal: float32 -> a JSON number -> float32 round-trips exactly, and the fake's
        # vectors do not depend on how the texts were batched.
        assert np.array_equal(vectors, EchoChat().embed_texts(texts)), name
    images = client.embeddings.create(model="llava", input="ignored", extra_body={"input": [{"type": "image_url", "image_url": {"url": small["url"]}}]})
    assert np.array_equal(np.array(images.data[0].embedding, dtype=np.float32), EchoChat().embed_images([small["image"]])[0])


def test_caption_and_vqa_on_a_remote_vlmkit_model(front: str, small: dict[str, Any]) -> None:
    caption = httpx.post(f"{front}/v1/caption", json={"model": "blip", "image": small["url"], "max_tokens": 9})
    assert caption.status_code == 200 and caption.json()["caption"] == "a picture 64x48 in 9"
    answer = httpx.post(f"{front}/v1/vqa", json={"model": "blip", "image": small["url"], "question": "how wide?"})
    assert answer.json()["answer"] == "how wide? -> 64"
    refused = httpx.post(f"{front}/v1/embeddings", json={"model": "blip", "input": "a"})
    assert refused.status_code == 400 and "cannot 'embed'" in refused.json()["error"]["message"]


def test_auto_routes_captions_local_and_dialogue_remote(client: openai.OpenAI, default: Any, small: dict[str, Any]) -> None:
    caption = client.chat.completions.create(model="auto", messages=[user("Describe this image.", small["url"])])
    assert caption.model == "default" and caption.model_extra["vlmkit"]["route"]["task"] == "caption"
    assert caption.choices[0].message.content == default.caption([small["image"]])[0]
    dialogue = [user("What is it?", small["url"]), {"role": "assistant", "content": "coffee"}, user("Why is it dark?")]
    reply = client.chat.completions.create(model="auto", messages=dialogue, max_tokens=8)
    assert reply.model == "llava" and reply.model_extra["vlmkit"]["route"]["reason"] == "multi-turn dialogue"
    assert "user:Why is it dark?" in (reply.choices[0].message.content or "")


def test_remote_4xx_passes_through(client: openai.OpenAI, remote: str, small: dict[str, Any]) -> None:
    # The remote allows 64 tokens, the front 1024: the remote's own 400, with its message.
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="llava", messages=[user("hi", small["url"])], max_tokens=100)
    message = refused.value.body["message"]  # type: ignore[index]
    assert message.startswith("model 'llava' (http://127.0.0.1:") and message.endswith("'max_tokens' must be between 1 and 64")
    # A wrong key: the remote's 401, and the key is named nowhere.
    wrong = RemoteModel("llava", f"{remote}/v1", "echo", tasks={"chat"}, api_key="sk-wrong-key", settings=FAST)
    response = TestClient(create_api_app({"llava": wrong})).post("/v1/chat/completions", json={"model": "llava", "messages": [user("hi")]})
    assert response.status_code == 401 and "sk-wrong-key" not in response.text and "llava" in response.json()["error"]["message"]


# -- faults -----------------------------------------------------------------------------------------


#: How long the slow and stalling fakes keep a request: far beyond the front's 0.4-s timeout, so a
#: loose bound on the front's answer time (below) shows the timeout fired, on a loaded machine too.
REMOTE_STALL_S = 30.0


class _Fake(BaseHTTPRequestHandler):
    """A remote that is not vlmkit: lists one model, then misbehaves as ``server.mode`` says."""

    server: Any

    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        self._send(200, json.dumps({"object": "list", "data": [{"id": "m", "object": "model"}]}).encode())

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.seen.append(self.headers.get("Authorization"))
        mode = self.server.mode
        if mode == "slow":
            time.sleep(REMOTE_STALL_S)
            self._send(200, b"{}")
        elif mode == "garbage":
            self._send(200, b"<html>not an answer</html>", "text/html")
        elif mode == "shape":
            self._send(200, b'{"choices": []}')
        elif mode == "crash":
            self._send(500, b'{"error": {"message": "CUDA out of memory"}}')
        elif mode == "quote-key":
            self._send(401, json.dumps({"error": {"message": f"bad key {self.headers.get('Authorization')}"}}).encode())
        elif mode in ("drop", "stall"):
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()  # HTTP/1.0, no length: the body ends when the connection does
            if mode == "stall":
                self.wfile.flush()
                time.sleep(REMOTE_STALL_S)
                return
            for word in ("one ", "two "):
                self.wfile.write(f"data: {json.dumps({'choices': [{'delta': {'content': word}}]})}\n\n".encode())
            self.wfile.flush()
            # Reset the connection (no [DONE]): SO_LINGER 0 makes the close an RST.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    def _send(self, status: int, body: bytes, kind: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


class _Quiet(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a slow handler writing to a client that gave up: expected, and not worth a traceback


@contextlib.contextmanager
def fake_remote(mode: str) -> Iterator[tuple[str, Any]]:
    server = _Quiet(("127.0.0.1", 0), _Fake)
    server.daemon_threads, server.block_on_close = True, False
    server.mode, server.seen = mode, []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", server
    finally:
        server.shutdown()
        server.server_close()


def _front(model: RemoteModel, **config: Any) -> TestClient:
    return TestClient(create_api_app({model.served_name: model}, ServerConfig(**config)), raise_server_exceptions=False)


def _chat(front: TestClient, name: str, **body: Any) -> httpx.Response:
    return front.post("/v1/chat/completions", json={"model": name, "messages": [user("hi")], **body})


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_remote_that_is_down_is_a_503_after_the_retries(caplog: pytest.LogCaptureFixture) -> None:
    down = RemoteModel("gpu", f"http://127.0.0.1:{_closed_port()}/v1", "m", tasks={"chat", "embed"}, settings=FAST)
    front = _front(down)
    with caplog.at_level(logging.WARNING, logger="vlmkit.server"):
        started = time.monotonic()
        response = _chat(front, "gpu")
        took = time.monotonic() - started
    assert response.status_code == 503 and response.headers["retry-after"] == "2"
    assert response.json()["error"]["message"].startswith("model 'gpu' (http://127.0.0.1:")
    assert "after 3 attempts; retry shortly" in response.json()["error"]["message"]
    retries = [r.getMessage() for r in caplog.records if "cannot connect" in r.getMessage()]
    assert len(retries) == 2 and retries[0].endswith("retry 1 of 2 in 0.05 s") and retries[1].endswith("retry 2 of 2 in 0.1 s")
    assert 0.15 <= took < 3
    embedded = front.post("/v1/embeddings", json={"model": "gpu", "input": "a"})
    assert embedded.status_code == 503 and "retry-after" in embedded.headers


def test_a_slow_remote_is_a_504_in_time() -> None:
    settings = RemoteSettings(timeout_s=0.4, connect_timeout_s=0.4, retries=2, backoff_s=0.05)
    with fake_remote("slow") as (url, server):
        front = _front(connect("gpu", f"openai:{url}", settings=settings), timeout_s=0.4)
        started = time.monotonic()
        response = _chat(front, "gpu")
        assert response.status_code == 504 and response.json()["error"]["type"] == "timeout"
        assert time.monotonic() - started < REMOTE_STALL_S / 2  # the timeout fired: it did not wait for the remote
        assert len(server.seen) == 1  # a request the remote may have started is never sent again


def test_a_stalled_stream_ends_with_an_error() -> None:
    settings = RemoteSettings(timeout_s=0.4, connect_timeout_s=0.4)
    with fake_remote("stall") as (url, _):
        front = _front(connect("gpu", f"openai:{url}", settings=settings))
        started = time.monotonic()
        events = _events(_chat(front, "gpu", stream=True))
        assert time.monotonic() - started < REMOTE_STALL_S / 2
    errors = [e["error"]["message"] for e in events if "error" in e]
    assert errors == [f"generation failed: model 'gpu' ({url}/v1): no answer within 0.4 s"]


def _events(response: httpx.Response) -> list[dict[str, Any]]:
    assert response.status_code == 200
    return [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: {")]


@pytest.mark.parametrize(
    ("mode", "words"),
    [
        ("garbage", "the remote sent an answer that is not JSON"),
        ("shape", "the remote sent something other than a chat completion"),
        ("crash", "the remote answered 500: CUDA out of memory"),
    ],
)
def test_garbage_and_remote_failures_are_502(mode: str, words: str) -> None:
    with fake_remote(mode) as (url, _):
        response = _chat(_front(connect("gpu", f"openai:{url}", settings=FAST)), "gpu")
    assert response.status_code == 502
    assert response.json()["error"] == {"message": f"bad gateway: model 'gpu' ({url}/v1): {words}", "type": "server_error", "code": 502}


def test_a_stream_that_drops_ends_with_an_error(caplog: pytest.LogCaptureFixture) -> None:
    with fake_remote("drop") as (url, server):
        front = openai.OpenAI(base_url="http://unused/v1", api_key="x", max_retries=0,
                              http_client=_front(connect("gpu", f"openai:{url}", settings=FAST)))
        pieces = []
        with pytest.raises(openai.APIError, match="generation failed: bad gateway: model 'gpu'"):
            for chunk in front.chat.completions.create(model="gpu", messages=[user("hi")], stream=True):
                pieces.append(chunk.choices[0].delta.content or "")
        assert "".join(pieces) == "one two " and len(server.seen) == 1


def test_the_key_is_sent_as_bearer_and_shown_nowhere(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    with fake_remote("quote-key") as (url, server), caplog.at_level(logging.DEBUG):
        model = connect("gpu", f"openai:{url}", api_key=REMOTE_KEY, settings=FAST)
        front = _front(model)
        response = _chat(front, "gpu")
        shown = [response.text, front.get("/health").text, front.get("/v1/models").text, repr(model), model.kind.label]
    assert server.seen == [f"Bearer {REMOTE_KEY}"]
    assert response.status_code == 401 and response.json()["error"]["message"].endswith("bad key Bearer ***")
    assert all(REMOTE_KEY not in text for text in shown) and REMOTE_KEY not in caplog.text


# -- the command line -------------------------------------------------------------------------------


def test_parse_remote() -> None:
    assert parse_remote("openai:http://gpu:8000") == ("http://gpu:8000/v1", None)
    assert parse_remote("openai:https://gpu.example/api/v1/#llava") == ("https://gpu.example/api/v1", "llava")
    for bad in ("openai:ftp://gpu/v1", "openai:gpu:8000", "openai:http:///v1", "openai:http://gpu:port/v1", "openai:http://me:pw@gpu/v1"):
        with pytest.raises(RemoteSetupError):
            parse_remote(bad)


@pytest.fixture()
def launched(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict:
    import uvicorn

    ran: dict = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: ran.update(kw, app=app))
    monkeypatch.setenv("VLMKIT_INDEX", str(tmp_path / "no-index"))
    monkeypatch.delenv(KEY_VARIABLE, raising=False)
    return ran


def test_serve_a_remote_in_the_tandem_from_a_config(launched: dict, remote: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from vlmkit_cli.main import main

    monkeypatch.setenv(KEY_VARIABLE, REMOTE_KEY)
    config = tmp_path / "serve.toml"
    config.write_text(f'models = {{ blip = "openai:{remote}/v1#cap", llava = "openai:{remote}/v1#echo" }}\n'
                      f'remote_keys = {{ llava = "{KEY_VARIABLE}" }}\nremote_timeout = 7\n')
    assert main(["serve", "--config", str(config), "--remote-key-env", f"blip={KEY_VARIABLE}",
                 "--route", "precise=blip", "--route", "conversational=llava"]) == 0
    app = launched["app"]
    assert [m["id"] for m in TestClient(app).get("/v1/models").json()["data"]] == ["blip", "llava", "auto"]
    assert app.state.served["llava"].model.settings.timeout_s == 7 and app.state.served["llava"].concurrency == 8
    reply = TestClient(app).post("/v1/chat/completions", json={"model": "auto", "messages": [user("Why?")], "max_tokens": 4})
    assert reply.status_code == 200 and reply.json()["model"] == "llava"
    assert REMOTE_KEY not in capsys.readouterr().err


def _refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    from vlmkit_cli.main import main

    code = main(["serve", *argv])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("vlmkit: error:") and err.count("\n") == 1 and "Traceback" not in err
    return err


def test_startup_errors_are_one_line(launched: dict, remote: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_VARIABLE, REMOTE_KEY)
    key = ["--remote-key-env", f"gpu={KEY_VARIABLE}"]
    assert "not an http(s) URL" in _refused(["--model", "gpu=openai:ftp://gpu/v1", *key], capsys)
    assert "does not serve 'nope' (it serves: echo, cap)" in _refused(["--model", f"gpu=openai:{remote}#nope", *key], capsys)
    assert "serves 2 models (echo, cap); name one" in _refused(["--model", f"gpu=openai:{remote}", *key], capsys)
    unset = _refused(["--model", f"gpu=openai:{remote}#echo", "--remote-key-env", "gpu=VLMKIT_TEST_NEVER_SET"], capsys)
    assert "environment variable VLMKIT_TEST_NEVER_SET (its API key) is not set" in unset
    # Without the key: the remote's own 401 message, in one line.
    assert "a valid API key is required" in _refused(["--model", f"gpu=openai:{remote}#echo"], capsys)
    by_mistake = _refused(["--model", f"gpu=openai:{remote}#echo", "--remote-key-env", f"gpu={REMOTE_KEY}"], capsys)  # the key, not its variable
    assert "not an environment variable name" in by_mistake and REMOTE_KEY not in by_mistake
    down = _refused(["--model", f"gpu=openai:http://127.0.0.1:{_closed_port()}"], capsys)
    assert "cannot connect" in down and "(asking for /v1/models)" in down
    assert "not a remote model" in _refused(["--model", "default", "--remote-key-env", f"gpu={KEY_VARIABLE}"], capsys)
    assert "ran" not in launched and "app" not in launched


def test_the_readme_config_runs(launched: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's tandem.toml as written, with the GPU box on loopback and the built-in standing in
    for BLIP (offline)."""
    from vlmkit_cli.main import main

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("### Remote models in the tandem") :]
    match = re.search(r"```toml\n(.*?)```", section, re.DOTALL)
    assert match is not None
    config = tomllib.loads(match.group(1))
    gpu = create_api_app({"llava": EchoChat()}, ServerConfig(api_keys=(REMOTE_KEY,)))
    with live_server(gpu) as url:
        config["models"] = {"blip": "default", "llava": config["models"]["llava"].replace("http://gpu-box:8000", url)}
        monkeypatch.setenv(config["remote_keys"]["llava"], REMOTE_KEY)
        file = tmp_path / "tandem.json"
        file.write_text(json.dumps(config))
        assert main(["serve", "--config", str(file)]) == 0
        app = TestClient(launched["app"])
        caption = app.post("/v1/chat/completions", json={"model": "auto", "messages": [user("Describe this image.", _tiny_png())]})
        assert caption.json()["model"] == "blip"
        dialogue = app.post("/v1/chat/completions", json={"model": "auto", "messages": [user("Why is the sky blue?")], "max_tokens": 8})
        assert dialogue.json()["model"] == "llava" and dialogue.json()["choices"][0]["message"]["content"].startswith("user:Why")


def _tiny_png() -> str:
    return data_url(png_bytes(Image.new("RGB", (8, 8), (200, 30, 30))))
