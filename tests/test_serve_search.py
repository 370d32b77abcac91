"""The search server: its JSON API in-process (FakeEmbedder over solid-colour images), file serving by
content hash over real HTTP, the `vlmkit serve` command, and the page itself in headless Chromium
with the built-in model on scikit-image's sample photos."""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import io
import os
import socket
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from index_fakes import FakeEmbedder, solid
from PIL import Image

from vlmkit.index import ImageIndex, IndexModelMismatch
from vlmkit_server import create_app

# File names carry no colour words, so these searches are purely semantic (no keyword matches).
COLOURS = {"apple.png": "red", "sky.png": "blue", "grass.jpg": "green", "plum.png": "purple"}
CHROMIUM = os.environ.get("VLMKIT_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]


@pytest.fixture(scope="module")
def collection(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A few solid-colour images, a large one, one inside a WebDataset shard, and their index."""
    root = tmp_path_factory.mktemp("serve")
    folder = root / "photos"
    for name, colour in COLOURS.items():
        solid(folder / name, colour)
    solid(folder / "big" / "sun.png", "yellow", size=(600, 400))
    member = io.BytesIO()
    Image.new("RGB", (40, 30), (255, 255, 255)).save(member, "PNG")
    shard = root / "extra.tar"
    with tarfile.open(shard, "w") as tar:
        info = tarfile.TarInfo("clouds/cloud.png")
        info.size = len(member.getvalue())
        tar.addfile(info, io.BytesIO(member.getvalue()))
    report = ImageIndex(root / "index").update([folder, shard], FakeEmbedder())
    assert report.added == 6 and not report.skipped
    return {"root": root, "folder": folder, "shard": shard, "index": root / "index"}


@pytest.fixture()
def client(collection: dict[str, Path]) -> TestClient:
    return TestClient(create_app(ImageIndex(collection["index"]), FakeEmbedder(), max_upload_bytes=300_000))


def _search(client: TestClient, q: str, **params: object) -> list[dict]:
    response = client.get("/api/search", params={"q": q, **params})
    assert response.status_code == 200, response.text
    return response.json()["hits"]


def _upload(client: TestClient, data: bytes, name: str = "query.png", **form: object) -> object:
    return client.post("/api/search/image", files={"file": (name, data, "image/png")}, data=form)


# -- the JSON API ---------------------------------------------------------------------------------


def test_text_query_ranks_the_red_image_first(client: TestClient) -> None:
    response = client.get("/api/search", params={"q": "red", "k": 3})
    assert response.status_code == 200
    body = response.json()
    assert body["model"] == "fake-colour" and body["count"] == 3
    first = body["hits"][0]
    assert first["name"] == "apple.png" and first["rank"] == 1 and first["score"] == pytest.approx(1.0, abs=1e-4)
    assert first["thumbnail"] == f"/thumbs/{first['sha256']}" and first["image"] == f"/images/{first['sha256']}"
    assert first["sha256"] == hashlib.sha256(Path(first["path"]).read_bytes()).hexdigest()


def test_combined_query_syntax(client: TestClient) -> None:
    assert _search(client, "red + blue")[0]["name"] == "plum.png"
    assert _search(client, "purple - blue")[0]["name"] == "apple.png"


def test_image_upload_finds_the_same_image_first(client: TestClient, collection: dict[str, Path]) -> None:
    response = _upload(client, (collection["folder"] / "sky.png").read_bytes(), k=2)
    assert response.status_code == 200, response.text
    hits = response.json()["hits"]
    assert [h["name"] for h in hits][:1] == ["sky.png"] and len(hits) == 2
    assert hits[0]["score"] == pytest.approx(1.0, abs=1e-3)
    # Text typed beside the upload is added to it: blue + red is purple.
    response = _upload(client, (collection["folder"] / "sky.png").read_bytes(), q="red")
    assert response.json()["hits"][0]["name"] == "plum.png"


def test_a_query_naming_a_server_file_stays_text(client: TestClient, collection: dict[str, Path]) -> None:
    outside = solid(collection["root"] / "elsewhere" / "private.png", "blue")
    model = client.app.state.model
    _search(client, str(outside))
    _search(client, f"red + {outside}")
    assert model.image_calls == 0  # the server never opened the file the client named


def test_no_match_is_an_empty_list(client: TestClient) -> None:
    response = client.get("/api/search", params={"q": "zebra", "threshold": 0.99})
    assert response.status_code == 200
    assert response.json()["hits"] == [] and response.json()["threshold"] == 0.99


def test_health(client: TestClient) -> None:
    assert client.get("/health").json() == {"status": "ok", "rows": 6, "model": "fake-colour"}


@pytest.mark.parametrize(
    "params, status, words",
    [
        ({"q": ""}, 400, "type something"),
        ({"q": "   "}, 400, "type something"),
        ({}, 400, "type something"),
        ({"q": "red", "k": 0}, 400, "k:"),
        ({"q": "red", "k": "ten"}, 400, "k:"),
        ({"q": "red", "threshold": 2}, 400, "threshold:"),
        ({"q": "x" * 1001}, 400, "q:"),
    ],
)
def test_bad_queries_are_4xx_json(client: TestClient, params: dict, status: int, words: str) -> None:
    response = client.get("/api/search", params=params)
    assert response.status_code == status
    assert words in response.json()["error"]["message"]


@pytest.mark.parametrize(
    "kind, status, words",
    [
        ("text", 400, "not an image"),
        ("empty", 400, "empty"),
        ("truncated", 400, "truncated"),
        ("corrupt", 400, "upload"),
        ("bomb", 413, "over the limit"),
    ],
)
def test_bad_uploads_are_4xx_json(client: TestClient, bad_images: dict[str, Path], kind: str, status: int, words: str) -> None:
    response = _upload(client, bad_images[kind].read_bytes(), name=bad_images[kind].name)
    assert response.status_code == status
    assert words in response.json()["error"]["message"]


def test_uploads_over_the_limit_are_refused(client: TestClient) -> None:
    # Announced by Content-Length (refused before the body is read) ...
    response = _upload(client, b"\x89PNG" + b"0" * 400_000)
    assert response.status_code == 413 and "300,000 bytes" in response.json()["error"]["message"]
    # ... just over the limit, so only the endpoint's own count catches it ...
    response = _upload(client, b"0" * 300_001)
    assert response.status_code == 413
    # ... and chunked, with no Content-Length: cut off as it passes the limit.
    def body() -> Iterator[bytes]:
        yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n'
        for _ in range(100):
            yield b"0" * 65536

    response = client.post("/api/search/image", content=body(), headers={"content-type": "multipart/form-data; boundary=b"})
    assert response.status_code == 413


def test_upload_without_a_file(client: TestClient) -> None:
    response = client.post("/api/search/image", data={"q": "red"})
    assert response.status_code == 400 and "file" in response.json()["error"]["message"]


def test_model_mismatch(collection: dict[str, Path]) -> None:
    with pytest.raises(IndexModelMismatch):
        create_app(ImageIndex(collection["index"]), FakeEmbedder(name="another-model"))
    model = FakeEmbedder()
    client = TestClient(create_app(ImageIndex(collection["index"]), model))
    model.name = "another-model"  # e.g. the index was rebuilt with another model while serving
    response = client.get("/api/search", params={"q": "red"})
    assert response.status_code == 409 and "another-model" in response.json()["error"]["message"]


# -- files by content hash --------------------------------------------------------------------------


def test_thumbnails_and_images_of_indexed_files(client: TestClient, collection: dict[str, Path]) -> None:
    hits = _search(client, "red", k=10, threshold=-1)
    assert len(hits) == 6
    for hit in hits:
        thumb = client.get(hit["thumbnail"])
        assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
        assert thumb.content[:2] == b"\xff\xd8"
        with Image.open(io.BytesIO(thumb.content)) as image:
            assert max(image.size) <= 256
        full = client.get(hit["image"])
        assert full.status_code == 200 and hashlib.sha256(full.content).hexdigest() == hit["sha256"]
        assert full.headers["x-content-type-options"] == "nosniff"
    by_name = {h["name"]: h for h in hits}
    assert by_name["cloud.png"]["path"] == f"{collection['shard']}::clouds/cloud.png"
    with Image.open(io.BytesIO(client.get(by_name["sun.png"]["thumbnail"]).content)) as image:
        assert image.size == (256, 171)
    assert client.get(by_name["grass.jpg"]["image"]).headers["content-type"] == "image/jpeg"


@pytest.mark.parametrize("url", ["/thumbs/" + "0" * 64, "/images/" + "ab" * 32, "/thumbs/nothex", "/images/" + "A" * 64])
def test_unknown_ids_are_404(client: TestClient, url: str) -> None:
    response = client.get(url)
    assert response.status_code == 404 and "error" in response.json()


def test_identical_copies_changed_and_deleted_files(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    first, second = solid(folder / "a.png", "red"), solid(folder / "b.png", "red")
    ImageIndex(tmp_path / "index").update([folder], FakeEmbedder())
    client = TestClient(create_app(ImageIndex(tmp_path / "index"), FakeEmbedder()))
    [hit] = _search(client, "red")
    assert hit["duplicates"] == [str(second)]
    original = first.read_bytes()
    first.unlink()
    assert client.get(hit["image"]).content == original  # served from the identical copy
    solid(second, "blue")  # changed since indexing: its bytes no longer have the indexed hash
    response = client.get(hit["image"])
    assert response.status_code == 404 and "changed since it was indexed" in response.json()["error"]["message"]


@contextlib.contextmanager
def live_server(app: object, *, lifespan: str = "off") -> Iterator[str]:
    """Run ``app`` under uvicorn on a free loopback port in a background thread."""
    import uvicorn

    # proto=IPPROTO_TCP, or asyncio leaves Nagle's algorithm on for the accepted connections
    # (it checks the protocol number), and every response waits ~40 ms for a delayed ACK.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan=lifespan))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


TRAVERSALS = [
    "/images/../../etc/passwd",
    "/thumbs/..%2F..%2Fetc%2Fpasswd",
    "/images/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "/images/..%2f..%2f..%2f..%2fetc%2fpasswd",
    "/static/../../../../etc/passwd",
    "/static/..%2F..%2F..%2F..%2Fetc%2Fpasswd",
    "/static/../app.py",
    "/static/..%2Fapp.py",
    "/thumbs//etc/passwd",
]


def test_path_traversal_never_returns_files(client: TestClient) -> None:
    """Sent as raw bytes over real HTTP, so no client normalises the dots away first."""
    with live_server(client.app) as url:
        host, port = url.removeprefix("http://").split(":")
        for path in TRAVERSALS:
            connection = http.client.HTTPConnection(host, int(port), timeout=10)
            connection.request("GET", path)
            response = connection.getresponse()
            body = response.read()
            connection.close()
            assert response.status in (400, 404), (path, response.status)
            assert b"root:" not in body and b"create_app" not in body, path


# -- `vlmkit serve` ----------------------------------------------------------------------------------


def _serve_args(*argv: str) -> argparse.Namespace:
    from vlmkit_cli import serve

    parser = argparse.ArgumentParser(prog="vlmkit")
    serve.register(parser.add_subparsers(dest="command"))
    return parser.parse_args(["serve", *argv])


def test_serve_refuses_without_an_index(tmp_path: Path) -> None:
    from vlmkit_cli.common import CommandError

    args = _serve_args("--index", str(tmp_path / "missing"))
    with pytest.raises(CommandError, match="no index at .*missing.*vlmkit index"):
        args.run(args)


def test_serve_runs_uvicorn_with_the_index_model(
    collection: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import uvicorn

    from vlmkit_cli import serve

    loaded, ran = [], {}
    monkeypatch.setattr(serve, "load_model", lambda args: loaded.append(args.model) or FakeEmbedder())
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: ran.update(kw, app=app))
    from vlmkit_cli.common import CommandError

    args = _serve_args("--index", str(collection["index"]), "--host", "0.0.0.0", "--port", "8123")
    with pytest.raises(CommandError, match="needs an API key"):
        args.run(args)
    args = _serve_args("--index", str(collection["index"]), "--host", "0.0.0.0", "--port", "8123", "--api-key", "k")
    assert args.run(args) == 0
    assert loaded == ["fake-colour"] and ran["host"] == "0.0.0.0" and ran["port"] == 8123
    health = TestClient(ran["app"]).get("/health").json()
    assert health["rows"] == 6 and health["model"] == "fake-colour"  # what the search page's header shows
    err = capsys.readouterr().err
    assert "warning: listening on 0.0.0.0" in err and "serving 6 images" in err
    assert ran["timeout_graceful_shutdown"] == 30
    args = _serve_args("--index", str(collection["index"]))
    args.run(args)
    assert ran["host"] == "127.0.0.1" and ran["port"] == 8000 and "warning" not in capsys.readouterr().err


# -- the page in headless Chromium, with the built-in model on real photos -------------------------------


@pytest.fixture(scope="module")
def photo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    import skimage.data

    import vlmkit

    model = vlmkit.load("default")
    index = ImageIndex(tmp_path_factory.mktemp("photos") / "index")
    index.update([skimage.data.data_dir], model)
    with live_server(create_app(index, model)) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not Path(CHROMIUM).is_file():
        pytest.fail(
            f"the browser tests need Chromium, not found at {CHROMIUM}: install it with `apt-get install -y chromium` "
            "(or set VLMKIT_CHROMIUM to a Chromium binary)",
            pytrace=False,
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the browser tests need Playwright: pip install playwright", pytrace=False)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def _thumbnails_loaded(page: object) -> None:
    page.wait_for_function(  # type: ignore[attr-defined]
        "() => [...document.querySelectorAll('#results img')].every(i => i.complete && i.naturalWidth > 0)"
    )


def test_page_text_search_screenshot_and_open(photo_server: str, browser: object, tmp_path: Path) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 900})  # type: ignore[attr-defined]
    page.goto(photo_server + "/")
    page.wait_for_function("() => document.getElementById('about').textContent.includes('images')")
    page.fill("#q", "a cat")
    page.press("#q", "Enter")
    first = page.locator("#results li.hit").first
    first.wait_for()
    assert first.get_attribute("data-rank") == "1"
    assert Path(first.get_attribute("data-path")).name == "chelsea.png"
    assert first.locator(".score").inner_text().count(".") == 1 and len(first.locator(".score").inner_text()) == 5
    assert page.url.endswith("?q=a+cat&k=24")
    _thumbnails_loaded(page)
    shot = tmp_path / "search-a-cat.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    with Image.open(shot) as image:
        assert image.width == 1280

    sha = first.get_attribute("data-sha256")
    with page.context.expect_page() as opened:
        first.locator("a").click()
    tab = opened.value
    tab.wait_for_load_state()
    assert tab.url == f"{photo_server}/images/{sha}"
    assert tab.evaluate("() => document.images.length && document.images[0].naturalWidth") == 451
    page.context.close()


def test_page_image_upload_no_match_and_errors(photo_server: str, browser: object, tmp_path: Path) -> None:
    import skimage.data

    page = browser.new_page()  # type: ignore[attr-defined]
    page.goto(photo_server + "/")
    page.set_input_files("#image", str(Path(skimage.data.data_dir) / "coffee.png"))
    page.wait_for_selector("#results li.hit[data-rank='1']")
    first = page.locator("#results li.hit").first
    assert Path(first.get_attribute("data-path")).name == "coffee.png"
    assert float(first.locator(".score").inner_text()) > 0.99
    assert page.locator("#upload").is_visible()

    page.click("#clear-image")
    page.fill("#q", "xqzv")  # no keyword matches either (those need no threshold)
    page.fill("#threshold", "0.99")
    page.press("#q", "Enter")
    page.wait_for_selector("#no-match:not([hidden])")
    assert "No match" in page.inner_text("#no-match") and page.locator("#results li").count() == 0

    page.set_input_files("#image", files=[{"name": "notes.jpg", "mimeType": "image/jpeg", "buffer": b"not an image"}])
    page.wait_for_selector("#error:not([hidden])")
    assert "not an image" in page.inner_text("#error")
    page.screenshot(path=str(tmp_path / "upload-error.png"))
    page.context.close()


def test_served_search_page_header_its_path_and_the_404_page(
    collection: dict[str, Path], monkeypatch: pytest.MonkeyPatch, browser: object, tmp_path: Path
) -> None:
    """The search page as `vlmkit serve` serves it (under the API server): the header names the model,
    /search opens it, and an unknown page path is an HTML 404 with links, in Chromium."""
    import uvicorn

    from vlmkit_cli import serve

    ran: dict[str, Any] = {}
    monkeypatch.setattr(serve, "load_model", lambda args: FakeEmbedder())
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: ran.update(kw, app=app))
    args = _serve_args("--index", str(collection["index"]))
    assert args.run(args) == 0
    client = TestClient(ran["app"])
    for path in ("/", "/search"):
        response = client.get(path)
        assert response.status_code == 200 and "search.js" in response.text, path
    html = {"Accept": "text/html,application/xhtml+xml"}
    missing = client.get("/no-such-page", headers=html)
    assert missing.status_code == 404 and missing.headers["content-type"].startswith("text/html")
    assert all(f'href="{p}"' in missing.text for p in ("/", "/chat", "/compare"))
    assert client.get("/no-such-page").json() == {"error": {"message": "Not Found", "type": "invalid_request_error", "code": 404}}  # not a browser: JSON
    assert client.get("/api/nope", headers=html).headers["content-type"].startswith("application/json")
    assert client.get("/v1/nope", headers=html).headers["content-type"].startswith("application/json")

    with live_server(ran["app"]) as url:
        page = browser.new_page()  # type: ignore[attr-defined]
        page.goto(url + "/search")
        page.wait_for_function("() => document.getElementById('about').textContent.includes('images')")
        assert page.inner_text("#about") == "6 images · model fake-colour"
        page.screenshot(path=str(tmp_path / "search-header.png"))
        response = page.goto(url + "/no-such-page")
        assert response is not None and response.status == 404
        assert page.inner_text("h1") == "Not found" and "There is no page at /no-such-page." in page.inner_text("body")
        page.screenshot(path=str(tmp_path / "not-found.png"))
        page.click("text=Chat with a model about an image")
        page.wait_for_url(url + "/chat")
        print(f"search header and 404 screenshots: {tmp_path}")
        page.context.close()
