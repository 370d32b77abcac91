"""`vlmkit serve` as a model server: --model NAME=M, --config files, routes, API keys, and the
settings that reach the app (uvicorn itself is replaced; the app is exercised in-process)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from vlmkit_cli.common import CommandError
from vlmkit_cli.main import build_parser


@pytest.fixture()
def launched(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict:
    import uvicorn

    ran: dict = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: ran.update(kw, app=app))
    monkeypatch.setenv("VLMKIT_INDEX", str(tmp_path / "no-index"))  # no search app unless asked
    monkeypatch.delenv("VLMKIT_API_KEYS", raising=False)
    return ran


def serve(*argv: str) -> int:
    args = build_parser().parse_args(["serve", *argv])
    return args.run(args)


def test_models_by_name_routes_and_settings(launched: dict, tiny: dict) -> None:
    assert serve("--model", "default", "--model", f"vqa={tiny['blip_vqa']}", "--model", f"chat={tiny['llava']}",
                 "--route", "precise=vqa", "--route", "conversational=chat", "--max-batch", "4", "--batch-window-ms", "2") == 0
    app = launched["app"]
    config = app.state.config
    assert (config.max_batch, config.window_ms, config.routes.precise, config.routes.conversational) == (4, 2.0, "vqa", "chat")
    assert config.api_keys == () and config.cors_origins == () and config.allow_url_hosts == ()
    ids = [m["id"] for m in TestClient(app).get("/v1/models").json()["data"]]
    assert ids == ["default", "vqa", "chat", "auto"]


def test_config_file_json_and_toml(launched: dict, tiny: dict, tmp_path: Path) -> None:
    config = tmp_path / "serve.json"
    config.write_text(json.dumps({"models": {"cap": str(tiny["blip_caption"])}, "api_keys": ["s3cret"], "max_queue": 3}))
    assert serve("--config", str(config), "--host", "0.0.0.0") == 0  # a key in the config allows a public address
    client = TestClient(launched["app"])
    assert client.get("/v1/models").status_code == 401
    assert client.get("/v1/models", headers={"Authorization": "Bearer s3cret"}).json()["data"][0]["id"] == "cap"
    assert launched["app"].state.config.max_queue == 3
    toml = tmp_path / "serve.toml"
    toml.write_text(f'models = {{ cap = "{tiny["blip_caption"]}" }}\nmax_batch = 2\n')
    assert serve("--config", str(toml)) == 0
    assert launched["app"].state.config.max_batch == 2


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--host", "0.0.0.0"], "needs an API key"),
        (["--model", "a=default", "--model", "a=default"], "two models named 'a'"),
        (["--model", "auto=default"], "reserved"),
        (["--route", "fast=default"], "expected precise=NAME"),
        (["--model", "default", "--route", "precise=missing"], "not served"),
        (["--config", "/nonexistent/serve.json"], "cannot read config"),
        (["--model", "/nonexistent/model-dir"], ""),
    ],
)
def test_bad_settings_are_one_line_errors(launched: dict, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    from vlmkit_cli.main import main

    code = main(["serve", *argv])
    err = capsys.readouterr().err
    assert code == 1 and "ran" not in launched and "app" not in launched
    assert err.startswith("vlmkit: error:") and message in err and "Traceback" not in err


def test_bad_config_contents(launched: dict, tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(CommandError, match="not valid JSON"):
        serve("--config", str(bad))
    bad.write_text(json.dumps({"modles": {}}))
    with pytest.raises(CommandError, match="unknown settings modles"):
        serve("--config", str(bad))


def test_interrogate_endpoint(launched: dict, tiny: dict, photos: dict) -> None:
    import base64

    assert serve("--model", "default", "--model", f"cap={tiny['blip_caption']}") == 0
    client = TestClient(launched["app"])
    url = "data:image/png;base64," + base64.b64encode(photos["cat"].read_bytes()).decode()
    reply = client.post("/v1/interrogate", json={"model": "default", "image": url, "top_k": 2})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["prompt"].startswith(body["caption"]) and body["caption"].startswith("a photo of")
    assert set(body["terms"]) == {"mediums", "styles", "lighting", "flavours"} and len(body["terms"]["flavours"]) == 2
    best = client.post("/v1/interrogate", json={"model": "default", "image": url, "mode": "best"}).json()
    assert best["similarity"] >= body["similarity"]
    refused = client.post("/v1/interrogate", json={"model": "cap", "image": url})  # tiny BLIP cannot rank
    assert refused.status_code == 400 and "cannot 'embed'" in refused.json()["error"]["message"]
    assert client.post("/v1/interrogate", json={"model": "default", "image": url, "mode": "slow"}).status_code == 400


def test_long_inputs_are_cut_or_refused_not_500(launched: dict, tiny: dict, photos: dict) -> None:
    import base64

    assert serve("--model", f"vqa={tiny['blip_vqa']}", "--model", f"chat={tiny['llava']}") == 0
    client = TestClient(launched["app"])
    url = "data:image/png;base64," + base64.b64encode(photos["cat"].read_bytes()).decode()
    # BLIP's question encoder has 64 positions here: a longer question is cut to fit, as a tokenizer would.
    assert client.post("/v1/vqa", json={"model": "vqa", "image": url, "question": "why " * 3000}).status_code == 200
    # A conversation that cannot fit the LM's context (128 here) with the answer asked for is a 400.
    message = {"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": url}}]}
    reply = client.post("/v1/chat/completions", json={"model": "chat", "max_tokens": 500, "messages": [message]})
    assert reply.status_code == 400 and "takes at most 128" in reply.json()["error"]["message"]
    assert client.post("/v1/chat/completions", json={"model": "chat", "max_tokens": 8, "messages": [message]}).status_code == 200


def test_how_many_is_a_short_factual_question() -> None:
    from vlmkit_server.routing import Routes, choose_route

    can = {"vqa": frozenset({"ask"}), "chat": frozenset({"chat", "ask", "caption"})}
    routes = Routes(precise="vqa", conversational="chat")
    assert choose_route(routes, texts=["how many cats are there?"], turns=0, max_tokens=None, can=can).model == "vqa"
    route = choose_route(routes, texts=["how does this work?"], turns=0, max_tokens=None, can=can)
    assert route.model == "chat" and route.reason == "an open-ended request ('how')"
