"""The README's examples run as written: the OpenAI client example against `vlmkit serve` with the
built-in model (the README's first serve command), on loopback."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from test_serve_search import live_server

import vlmkit

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_block_after(heading: str) -> str:
    text = README.read_text(encoding="utf-8")
    section = text[text.index(heading) :]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match is not None, f"no python block after {heading!r}"
    return match.group(1)


def test_the_client_example_runs_against_the_default_server(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import uvicorn

    from vlmkit_cli.main import build_parser

    ran: dict = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: ran.update(kw, app=app))
    monkeypatch.setenv("VLMKIT_INDEX", "/nonexistent/vlmkit-index")  # `vlmkit serve` on a fresh machine: no index
    args = build_parser().parse_args(["serve"])
    assert args.run(args) == 0 and ran["port"] == 8000
    example = _python_block_after("## Serving: an OpenAI-compatible API")
    assert 'base_url="http://127.0.0.1:8000/v1"' in example
    with live_server(ran["app"], lifespan="on") as url:
        exec(compile(example.replace("http://127.0.0.1:8000", url), str(README), "exec"), {})  # noqa: S102 - our own README
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("a photo of")
    assert printed[1] == str({"model": vlmkit.DEFAULT_MODEL, "task": "caption", "reason": "a caption request"})
