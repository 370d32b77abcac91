"""The chat page and the compare view of the API server: their routes in-process, and the pages
themselves in headless Chromium against a real uvicorn serving the built-in model, a tiny LLaVA and
a tiny BLIP VQA (random weights: their words are noise, but they stream and answer)."""

from __future__ import annotations

import base64
import functools
import io
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image
from test_serve_api import FACTORIES, RayDeployments, api_app, engine  # noqa: F401 - engine is a fixture
from test_serve_search import browser, live_server  # noqa: F401 - browser is a fixture

import vlmkit
from vlmkit_server import ServerConfig, create_api_app
from vlmkit_server.pages import PAGES_CSP, redirect_root_to_chat
from vlmkit_server.routing import Routes

ROUTES = Routes(precise="blip-vqa", conversational="llava")


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from vlmkit.testing import build_blip_vqa, build_llava

    root = tmp_path_factory.mktemp("pages")
    llava_path, blip_path = str(build_llava(root / "llava")), str(build_blip_vqa(root / "blip-vqa"))
    models = {"default": vlmkit.load("default"), "llava": _paced_llava(llava_path), "blip-vqa": vlmkit.load(blip_path)}
    # How a Ray replica builds each (the engine fixture serves them from Ray Serve too).
    FACTORIES[id(models["llava"])] = functools.partial(_paced_llava, llava_path)
    for name, source in (("default", "default"), ("blip-vqa", blip_path)):
        FACTORIES[id(models[name])] = functools.partial(vlmkit.load, source)
    return models


def _paced_llava(path: str) -> Any:
    llava = vlmkit.load(path)
    llava.chat = _paced(llava.chat)
    return llava


def _paced(chat: Callable[..., Any], seconds: float = 0.02) -> Callable[..., Any]:
    """The tiny LLaVA streams a reply of a few words in milliseconds, which the network may deliver in
    one packet; a short pause after each word makes the streaming visible to the test every time."""

    def paced_chat(messages: Any, *, stream: bool = False, **options: Any) -> Any:
        result = chat(messages, stream=stream, **options)
        if not stream:
            return result

        def pieces() -> Iterator[str]:
            for piece in result:
                yield piece
                time.sleep(seconds)

        return pieces()

    return paced_chat


@pytest.fixture(scope="module")
def server(models: dict[str, Any], engine: RayDeployments | None) -> Iterator[str]:  # noqa: F811 - the fixture imported above
    """The pages against both engines: the models in this process, and served by Ray Serve."""
    with live_server(api_app(models, ServerConfig(routes=ROUTES), engine)) as url:
        yield url


@pytest.fixture()
def page(browser: Any) -> Iterator[Any]:  # noqa: F811 - the fixture imported above
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    page = context.new_page()
    console: list[str] = []
    page.on("console", lambda message: console.append(message.text))
    yield page
    context.close()
    refused = [text for text in console if "Content Security Policy" in text]
    assert not refused, refused  # everything the pages load and run is allowed by their CSP


def _cat() -> str:
    import skimage.data

    return str(Path(skimage.data.data_dir) / "chelsea.png")


# -- routes -------------------------------------------------------------------------------------------


def test_pages_load_without_a_key_under_a_strict_csp(models: dict[str, Any]) -> None:
    app = create_api_app({"default": models["default"]}, ServerConfig(api_keys=("k",)))
    client = TestClient(app)
    for path in ("/chat", "/compare"):
        response = client.get(path)
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
        csp = response.headers["content-security-policy"]
        assert csp == PAGES_CSP and "script-src 'self';" in csp and "unsafe" not in csp
        assert response.headers["x-content-type-options"] == "nosniff"
        assert 'src="ui/common.js"' in response.text and "<script>" not in response.text  # no inline script
    for name, kind in [("chat.js", "text/javascript"), ("compare.js", "text/javascript"), ("common.js", "text/javascript"),
                       ("chat.css", "text/css")]:
        response = client.get(f"/ui/{name}")
        assert response.status_code == 200 and response.headers["content-type"].startswith(kind), name
    for path in ("/ui/search.html", "/ui/api.py", "/ui/..%2Fapi.py", "/ui/../api.py", "/ui/"):
        assert client.get(path).status_code == 404, path
    assert client.get("/v1/models").status_code == 401  # the API still wants the key
    assert client.get("/v1/models", headers={"Authorization": "Bearer k"}).status_code == 200
    assert client.get("/", follow_redirects=False).status_code == 404  # "/" is left to the search page
    # A browser asking for a page that does not exist gets a page with links; an API client, JSON.
    missing = client.get("/nowhere", headers={"Accept": "text/html"})
    assert missing.status_code == 404 and missing.headers["content-type"].startswith("text/html")
    assert 'href="/chat"' in missing.text and 'href="/compare"' in missing.text and 'href="/"' not in missing.text
    assert missing.headers["content-security-policy"] == PAGES_CSP
    assert client.get("/nowhere").headers["content-type"].startswith("application/json")


def test_a_search_app_mounted_at_root_keeps_its_static_files(models: dict[str, Any]) -> None:
    app = create_api_app({"default": models["default"]})
    search = FastAPI()
    search.get("/")(lambda: {"page": "search"})
    search.get("/static/search.js")(lambda: {"file": "search.js"})
    app.mount("/", search)  # what `vlmkit serve` does after create_api_app when an index exists
    client = TestClient(app)
    assert client.get("/").json() == {"page": "search"}
    assert client.get("/static/search.js").json() == {"file": "search.js"}
    assert client.get("/chat").headers["content-security-policy"] == PAGES_CSP
    assert client.get("/ui/chat.js").status_code == 200

    bare = create_api_app({"default": models["default"]})
    redirect_root_to_chat(bare)
    # No index: /search is a page that says so and how to build one.
    search = TestClient(bare).get("/search")
    assert search.status_code == 404 and search.headers["content-type"].startswith("text/html")
    assert "no image index" in search.text and "vlmkit index DIR" in search.text and 'href="/chat"' in search.text
    response = TestClient(bare).get("/", follow_redirects=False)
    assert response.status_code == 307 and response.headers["location"] == "/chat"


# -- the chat page ----------------------------------------------------------------------------------

WATCH_REPLIES = """() => {
    window.snapshots = [];
    new MutationObserver(() => {
        const replies = document.querySelectorAll('.turn.assistant .text');
        const text = replies.length ? replies[replies.length - 1].textContent : '';
        if (text && text !== window.snapshots[window.snapshots.length - 1]) window.snapshots.push(text);
    }).observe(document.getElementById('conversation'), {childList: true, subtree: true, characterData: true});
}"""


def _send(page: Any, model: str, text: str = "", image: str | list[str] | None = None) -> Any:
    """Pick ``model``, attach ``image`` (or several), type ``text``, send; return the reply bubble once it is over."""
    page.wait_for_selector(f"#model option[value='{model}']", state="attached")
    page.select_option("#model", model)
    if image is not None:
        images = [image] if isinstance(image, str) else image
        page.set_input_files("#image", images)
        page.wait_for_function(f"() => document.querySelectorAll('#attached-thumbs img').length === {len(images)}")
    page.fill("#message", text)
    count = page.locator(".turn.assistant").count()
    page.press("#message", "Enter")
    reply = page.locator(".turn.assistant").nth(count)
    reply.and_(page.locator(":not([data-state=streaming])")).wait_for(timeout=30_000)
    return reply


def test_chat_streams_a_llava_reply_and_keeps_the_conversation(server: str, page: Any) -> None:
    page.goto(server + "/chat")
    page.evaluate(WATCH_REPLIES)
    page.fill("#max-tokens", "24")
    reply = _send(page, "llava", "what is in this picture?", _cat())
    assert reply.get_attribute("data-state") == "done", reply.inner_text()
    snapshots = page.evaluate("window.snapshots")
    text = reply.locator(".text").inner_text()
    assert len(snapshots) > 1 and snapshots[-1] == text  # the text grew in several steps ...
    assert all(later.startswith(earlier) for earlier, later in zip(snapshots, snapshots[1:], strict=False))  # ... by appending
    assert reply.locator(".route").inner_text() == "Answered by llava, the model you chose (chatting)."
    user = page.locator(".turn.user").first
    assert user.locator(".text").inner_text() == "what is in this picture?"
    assert user.locator("img.thumb").evaluate("i => i.complete && i.naturalWidth") == 451  # under 1024 px: kept

    # The second turn sends the whole conversation; "auto" routes dialogue to the conversational model.
    with page.expect_request("**/v1/chat/completions") as sent:
        second = _send(page, "auto", "and why is that?")
    messages = json.loads(sent.value.post_data)["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert messages[0]["content"][0]["image_url"]["url"].startswith("data:image/jpeg;base64,")
    assert messages[1]["content"] == text and messages[2]["content"] == "and why is that?"
    assert second.get_attribute("data-state") == "done"
    assert second.locator(".route").inner_text() == "Routed to llava (chatting) because of multi-turn dialogue."

    page.click("#new-chat")
    assert page.locator(".turn").count() == 0 and page.locator("#empty").is_visible()


def test_chat_caption_route_note_error_and_screenshot(server: str, page: Any, tmp_path: Path) -> None:
    page.goto(server + "/chat")
    # The built-in model cannot chat: an image and no text is a caption.
    reply = _send(page, "default", image=_cat())
    assert reply.get_attribute("data-state") == "done"
    assert reply.locator(".text").inner_text().startswith("a photo of")
    assert reply.locator(".route").inner_text() == "Answered by default, the model you chose (captioning the image)."

    page.click("#new-chat")
    reply = _send(page, "auto", "what is this?", _cat())
    assert reply.get_attribute("data-state") == "done" and reply.locator(".text").inner_text()
    assert reply.locator(".route").inner_text() == "Routed to blip-vqa (answering the question) because of a short question (3 words)."

    # A VQA model with no image (in a new conversation): the server's 400 message, inline in the reply.
    page.click("#new-chat")
    reply = _send(page, "blip-vqa", "hello there")
    assert reply.get_attribute("data-state") == "error"
    assert "answers about exactly one image" in reply.locator(".problem").inner_text()
    assert page.locator("#error").is_hidden()

    # An error is not part of the conversation: the next request leaves the failed turn out ...
    with page.expect_request("**/v1/chat/completions") as sent:
        _send(page, "default", image=_cat())
    assert [m["role"] for m in json.loads(sent.value.post_data)["messages"]] == ["user"]
    # ... and a follow-up on "auto" goes to the conversational model.
    page.fill("#max-tokens", "16")
    reply = _send(page, "auto", "what colour is the cat?")
    assert reply.get_attribute("data-state") == "done" and reply.locator(".text").inner_text()
    assert reply.locator(".route").inner_text() == "Routed to llava (chatting) because of multi-turn dialogue."

    page.wait_for_function("() => [...document.querySelectorAll('.thumb')].every(i => i.complete && i.naturalWidth)")
    shot = tmp_path / "chat.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"chat page screenshot: {shot}")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000


def test_chat_with_several_images(server: str, page: Any, tmp_path: Path) -> None:
    """Two images in one message go to LLaVA; a model that takes one image per prompt says which can."""
    coffee = str(Path(_cat()).with_name("coffee.png"))
    page.goto(server + "/chat")
    page.fill("#max-tokens", "8")
    with page.expect_request("**/v1/chat/completions") as sent:
        reply = _send(page, "llava", "what differs between these?", [_cat(), coffee])
    parts = json.loads(sent.value.post_data)["messages"][0]["content"]
    assert [p["type"] for p in parts] == ["image_url", "image_url", "text"]
    assert reply.get_attribute("data-state") == "done" and reply.locator(".text").inner_text()
    assert page.locator(".turn.user").first.locator("img.thumb").count() == 2
    assert page.locator("#attached").is_hidden()  # sent: the next message starts with none

    page.click("#new-chat")
    reply = _send(page, "blip-vqa", "what colour is it?", [_cat(), coffee])
    assert reply.get_attribute("data-state") == "error"
    assert "takes one image per prompt; the request has 2; models that take several: llava" in reply.locator(".problem").inner_text()
    page.wait_for_function("() => [...document.querySelectorAll('.thumb')].every(i => i.complete && i.naturalWidth)")
    shot = tmp_path / "chat-two-images.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"chat with two images: {shot}")


def test_chat_message_sent_while_its_image_is_read_waits_for_it(server: str, page: Any) -> None:
    """Enter pressed right after choosing an image: the message goes with the image, not without it."""
    page.add_init_script("""
        const read = window.createImageBitmap.bind(window);
        window.createImageBitmap = (...args) => new Promise((done) => setTimeout(done, 1500)).then(() => read(...args));
    """)
    page.goto(server + "/chat")
    page.wait_for_selector("#model option[value='default']", state="attached")
    page.select_option("#model", "default")
    page.set_input_files("#image", _cat())
    page.fill("#message", "describe this image")
    with page.expect_request("**/v1/chat/completions") as sent:
        page.press("#message", "Enter")
    parts = json.loads(sent.value.post_data)["messages"][0]["content"]
    assert [p["type"] for p in parts] == ["image_url", "text"]
    reply = page.locator(".turn.assistant").first
    reply.and_(page.locator(":not([data-state=streaming])")).wait_for(timeout=30_000)
    assert reply.locator(".text").inner_text().startswith("a photo of")


def test_chat_stop_button_ends_the_stream(server: str, page: Any) -> None:
    page.goto(server + "/chat")
    page.wait_for_selector("#model option[value='llava']", state="attached")
    page.select_option("#model", "llava")
    page.fill("#max-tokens", "80")
    page.set_input_files("#image", _cat())
    page.wait_for_selector("#attached:not([hidden])")
    page.fill("#message", "tell me a long story")
    page.press("#message", "Enter")
    page.wait_for_selector("#stop:not([hidden])")
    page.wait_for_function("() => document.querySelector('.turn.assistant .text').textContent.length > 0")
    page.click("#stop")
    reply = page.locator(".turn.assistant")
    page.wait_for_selector(".turn.assistant[data-state=stopped]")
    assert reply.locator(".route").inner_text().endswith("(stopped)")
    assert page.locator("#stop").is_hidden() and page.locator("#send").is_enabled()


# -- the compare view -------------------------------------------------------------------------------


def test_compare_two_models_side_by_side(server: str, page: Any, tmp_path: Path) -> None:
    big = tmp_path / "big.png"
    with Image.open(_cat()) as cat:
        cat.resize((2000, 1330)).save(big)
    page.goto(server + "/compare")
    page.wait_for_selector("#models input[value='llava']")
    boxes = page.locator("#models input[name=model]")
    assert sorted(boxes.evaluate_all("bs => bs.map(b => b.value)")) == ["blip-vqa", "default", "llava"]
    page.uncheck("#models input[value='blip-vqa']")
    page.set_input_files("#image", str(big))
    page.wait_for_selector("#preview:not([hidden])")
    with page.expect_request("**/v1/caption") as sent:
        page.click("#go")
    page.wait_for_function("() => document.querySelectorAll('.answer[data-state=done]').length === 2", timeout=30_000)
    with Image.open(io.BytesIO(base64.b64decode(json.loads(sent.value.post_data)["image"].split(",", 1)[1]))) as image:
        assert image.size == (1024, 681)  # shrunk in the browser
    cards = page.locator(".answer")
    assert cards.evaluate_all("cs => cs.map(c => c.dataset.model)") == ["default", "llava"]
    assert cards.nth(0).locator(".text").inner_text().startswith("a photo of")
    assert cards.nth(1).locator(".text").inner_text()
    for i in range(2):
        assert float(cards.nth(i).locator(".latency").get_attribute("data-ms")) > 0
        assert cards.nth(i).locator(".latency").inner_text().endswith(" ms")
    shot = tmp_path / "compare.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"compare view screenshot: {shot}")

    # With a question each model is asked (VQA); one that only captions says so in its column.
    page.check("#models input[value='blip-vqa']")
    page.fill("#question", "what colour is it?")
    page.click("#go")
    page.wait_for_function("() => document.querySelectorAll('.answer:not([data-state=waiting])').length === 3", timeout=30_000)
    states = cards.evaluate_all("cs => Object.fromEntries(cs.map(c => [c.dataset.model, c.dataset.state]))")
    assert states == {"default": "error", "llava": "done", "blip-vqa": "done"}


def test_compare_right_after_choosing_an_image_waits_for_it(server: str, page: Any) -> None:
    """Compare clicked while the image is still being read: the button waits (it is disabled until
    the image is ready), never "Choose an image first."."""
    # Reading an image takes 1.5 s here, as a large photo on a slow machine may.
    page.add_init_script("""
        const read = window.createImageBitmap.bind(window);
        window.createImageBitmap = (...args) => new Promise((done) => setTimeout(done, 1500)).then(() => read(...args));
    """)
    page.goto(server + "/compare")
    page.wait_for_selector("#models input[value='default']")
    for model in ("llava", "blip-vqa"):
        page.uncheck(f"#models input[value='{model}']")
    page.set_input_files("#image", _cat())
    assert page.locator("#go").is_disabled() and page.inner_text("#status") == "Reading the image…"
    page.click("#go")  # waits for the button to be enabled, as a person's click would have to
    page.wait_for_selector(".answer[data-state=done]", timeout=30_000)
    assert page.locator("#error").is_hidden()
    assert page.locator(".answer .text").inner_text().startswith("a photo of")
    # Submitted through the form while another image is being read: it waits for that image, and
    # does not send the one before.
    coffee = str(Path(_cat()).with_name("coffee.png"))
    page.set_input_files("#image", coffee)
    with page.expect_request("**/v1/caption") as sent:
        page.evaluate("document.getElementById('compare').requestSubmit()")
    with Image.open(io.BytesIO(base64.b64decode(json.loads(sent.value.post_data)["image"].split(",", 1)[1]))) as image:
        assert image.size == Image.open(coffee).size  # the coffee (600 x 400), not the cat (451 x 300)
    page.wait_for_selector(".answer[data-state=done]", timeout=30_000)
    assert page.locator("#error").is_hidden()


# -- with an API key ----------------------------------------------------------------------------------


def test_the_pages_send_the_api_key(models: dict[str, Any], page: Any) -> None:
    app = create_api_app({"default": models["default"]}, ServerConfig(api_keys=("k",)))
    with live_server(app) as url:
        page.goto(url + "/chat")
        page.wait_for_selector("#error:not([hidden])")
        assert "a valid API key is required" in page.inner_text("#error")
        page.fill("#api-key", "k")
        page.locator("#api-key").blur()
        page.wait_for_selector("#model option[value='default']", state="attached")
        assert page.locator("#error").is_hidden()
        reply = _send(page, "default", image=_cat())
        assert reply.locator(".text").inner_text().startswith("a photo of")

        page.goto(url + "/compare")  # the key is kept for the session
        page.wait_for_selector("#models input[value='default']")
        assert page.input_value("#api-key") == "k" and page.locator("#error").is_hidden()
