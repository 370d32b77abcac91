"""The CLI: JSON shapes, exit codes, and one clear line (never a traceback) for every bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import vlmkit
import vlmkit_cli.common
from vlmkit_cli.main import main

_load = vlmkit.load
_cache: dict = {}


@pytest.fixture(autouse=True)
def reuse_models(monkeypatch):
    """Load each model once for the whole module: the CLI's work is tested, not load time."""

    def cached(name, **kwargs):
        key = (str(name), tuple(sorted(kwargs.items())))
        if key not in _cache:
            _cache[key] = _load(name, **kwargs)
        return _cache[key]

    monkeypatch.setattr(vlmkit_cli.common.vlmkit, "load", cached)


def run(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def lines(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_caption_json(capsys, photos):
    code, out, err = run(capsys, "caption", str(photos["coffee"]), str(photos["cat"]), "--json")
    assert code == 0, err
    records = lines(out)
    assert [r["image"] for r in records] == [str(photos["coffee"]), str(photos["cat"])]
    assert all(set(r) >= {"image", "caption", "model"} for r in records)
    assert records[0]["caption"].startswith("a photo of")


def test_classify_json_sorted(capsys, photos):
    code, out, _ = run(capsys, "classify", str(photos["cat"]), "--labels", "a car,a cat,a cup of coffee", "--json")
    assert code == 0
    (record,) = lines(out)
    scores = [entry["score"] for entry in record["labels"]]
    assert scores == sorted(scores, reverse=True)
    assert record["labels"][0]["label"] == "a cat"
    assert abs(sum(scores) - 1) < 1e-4


def test_match_and_embed_json(capsys, photos):
    code, out, _ = run(capsys, "match", str(photos["coffee"]), "a cup of coffee", "a rocket", "--json")
    assert code == 0
    first, second = lines(out)
    assert first["kind"] == "cosine" and first["score"] > second["score"]
    code, out, _ = run(capsys, "embed", str(photos["cat"]), "--text", "a cat", "--json")
    assert code == 0
    image, text = lines(out)
    assert image["input"] == str(photos["cat"]) and text["input"] == "a cat"
    assert len(image["embedding"]) == len(text["embedding"]) == 384


def test_models_lists_default(capsys):
    code, out, _ = run(capsys, "models", "--json")
    assert code == 0
    assert lines(out)[0]["name"] == "conse-lite0-minilm"


def test_good_images_survive_bad_ones(capsys, photos, bad_images):
    argv = ["caption", "--json", str(photos["cat"])] + [str(bad_images[k]) for k in ("missing", "dir", "text", "truncated", "bomb")]
    code, out, err = run(capsys, *argv, str(photos["coffee"]))
    assert code == 1
    assert [r["image"] for r in lines(out)] == [str(photos["cat"]), str(photos["coffee"])]
    for key, reason in [("missing", "no such file"), ("dir", "directory"), ("text", "not an image"), ("truncated", "truncated"), ("bomb", "over the limit")]:
        assert f"skipped {bad_images[key]}: " in err and reason in err
    assert "5 of 7 inputs failed" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["ask", "{cat}", "what is it?"], "cannot 'ask'; models that can: "),
        (["chat"], "cannot 'chat'; models that can: llava"),
        (["caption", "{cat}", "--model", "./no/such/model"], "no such directory"),
        (["caption", "{cat}", "--model", "not a model!!"], "unknown model"),
        (["match", "{missing}", "a cat"], "no such file"),
        (["match", "{cat}", "a cat", "--max-pixels", "100"], "over the limit"),
        (["classify", "{cat}", "--labels", " , "], "give at least one label"),
        (["embed"], "give images and/or --text"),
    ],
)
def test_errors_are_one_line(capsys, photos, bad_images, argv, message):
    argv = [a.format(cat=photos["cat"], missing=bad_images["missing"]) for a in argv]
    code, out, err = run(capsys, *argv)
    assert code == 1
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["caption"])
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        main(["caption", "x.jpg", "--batch-size", "0"])
    assert info.value.code == 2
    assert main([]) == 2


def test_real_process_no_network_hub_model(photos, tmp_path):
    """As a user runs it: a hub model with no network and no cache is one line and exit 1."""
    import os

    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env["HF_HUB_CACHE"] = str(tmp_path)
    env["HF_ENDPOINT"] = "http://127.0.0.1:9"  # nothing listens there: a network that refuses
    cmd = [sys.executable, "-m", "vlmkit_cli.main", "caption", str(photos["cat"]), "--model", "Salesforce/blip2-opt-2.7b"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 1
    assert "not in the local Hugging Face cache" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    "family, argv, field",
    [
        ("clip", ["classify", "{cat}", "--labels", "cat,dog"], "labels"),
        ("siglip", ["embed", "{cat}", "--text", "a cat"], "embedding"),
        ("blip_caption", ["caption", "{cat}", "{coffee}", "--max-new-tokens", "5"], "caption"),
        ("blip_vqa", ["ask", "{cat}", "what is it?", "where?", "--max-new-tokens", "4"], "answer"),
        ("blip_itm", ["match", "{cat}", "a cat", "a dog"], "score"),
        ("blip2_opt", ["ask", "{cat}", "what is it?", "--max-new-tokens", "4"], "answer"),
        ("blip2_t5", ["caption", "{cat}", "--max-new-tokens", "4"], "caption"),
        ("blip2_itm", ["match", "{cat}", "a cat"], "score"),
        ("instructblip", ["caption", "{cat}", "{coffee}", "--max-new-tokens", "4"], "caption"),
        ("llava", ["ask", "{cat}", "what is it?", "--max-new-tokens", "4"], "answer"),
    ],
)
def test_commands_on_every_family(capsys, tiny, photos, family, argv, field):
    argv = [a.format(cat=photos["cat"], coffee=photos["coffee"]) for a in argv]
    code, out, err = run(capsys, *argv, "--model", str(tiny[family]), "--json")
    assert code == 0, err
    records = lines(out)
    assert records and all(field in r and r["model"] == str(tiny[family]) for r in records)
    model = vlmkit_cli.common.vlmkit.load(str(tiny[family]), device="cpu", dtype=None)
    if argv[0] == "caption":
        assert [r["caption"] for r in records] == model.caption(argv[1:-2], max_new_tokens=int(argv[-1]))
    elif argv[0] == "ask":
        questions = [a for a in argv[2:] if not a.startswith("--") and not a.isdigit()]
        assert [r["answer"] for r in records] == model.ask([argv[1]] * len(questions), questions, max_new_tokens=int(argv[-1]))
    elif argv[0] == "match":
        assert {r["kind"] for r in records} == {"itm"}


def test_chat_streams_turns_from_stdin(tiny, photos):
    """`vlmkit chat` as a process: each stdin line is a turn; text mode streams, JSON mode returns objects."""
    import os

    base = [sys.executable, "-m", "vlmkit_cli.main", "chat", "--model", str(tiny["llava"]), "--image", str(photos["cat"]), "--max-new-tokens", "5"]
    turns = "What is it?\n/image " + str(photos["coffee"]) + "\nAnd this one?\n/quit\n"
    env = {**os.environ, "VLMKIT_NO_PROGRESS": "1"}
    done = subprocess.run(base + ["--json"], input=turns, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    replies = lines(done.stdout)
    assert len(replies) == 2 and all(r["role"] == "assistant" for r in replies)
    model = vlmkit.load(tiny["llava"])
    first = model.chat(
        [{"role": "user", "content": [{"type": "image", "image": str(photos["cat"])}, {"type": "text", "text": "What is it?"}]}],
        max_new_tokens=5,
    )
    assert replies[0]["content"] == first
    done = subprocess.run(base, input=turns, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == first


def test_demo_finds_the_right_photos(capsys):
    code, out, err = run(capsys, "demo", "a cat", "coffee", "a rocket", "--json")
    assert code == 0, err
    records = lines(out)
    captions = {r["image"].rsplit("/", 1)[-1]: r["caption"] for r in records if "caption" in r}
    assert "espresso" in captions["coffee.png"]
    best = {r["query"]: r["hits"][0]["path"].rsplit("/", 1)[-1] for r in records if "query" in r}
    assert best == {"a cat": "chelsea.png", "coffee": "coffee.png", "a rocket": "rocket.jpg"}
    assert all({"path", "score", "rank"} <= set(r["hits"][0]) for r in records if "query" in r)


def test_progress_bar_only_on_a_terminal(photos):
    """On a terminal a bar shows on stderr; piped (the other tests) or with --json, nothing does."""
    import fcntl
    import os
    import pty
    import struct
    import termios

    paths = [str(photos[k]) for k in ("cat", "coffee", "astronaut", "rocket", "motorcycle")]
    env = {k: v for k, v in os.environ.items() if k != "VLMKIT_NO_PROGRESS"}
    for extra, expect_bar in (([], True), (["--json"], False)):
        leader, follower = pty.openpty()
        fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a 100-column terminal
        proc = subprocess.Popen(
            [sys.executable, "-m", "vlmkit_cli.main", "caption", *paths, "--batch-size", "2", *extra],
            stdout=follower, stderr=follower, env=env,
        )
        os.close(follower)
        chunks = []
        while True:
            try:
                data = os.read(leader, 4096)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
        proc.wait(timeout=120)
        os.close(leader)
        text = b"".join(chunks).decode(errors="replace")
        assert proc.returncode == 0, text
        assert ("caption:" in text and "img" in text) == expect_bar, text
