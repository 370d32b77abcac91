"""The CLI: JSON shapes, exit codes, and one clear line (never a traceback) for every bad input."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

import vlmkit
import vlmkit_cli.common
from vlmkit import GenerationOptions
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
        assert [r["caption"] for r in records] == model.caption(argv[1:-2], options=GenerationOptions(max_new_tokens=int(argv[-1])))
    elif argv[0] == "ask":
        questions = [a for a in argv[2:] if not a.startswith("--") and not a.isdigit()]
        assert [r["answer"] for r in records] == model.ask([argv[1]] * len(questions), questions, options=GenerationOptions(max_new_tokens=int(argv[-1])))
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
        options=GenerationOptions(max_new_tokens=5)
    )
    assert replies[0]["content"] == first
    done = subprocess.run(base, input=turns, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == first


def test_chat_with_two_images_in_one_message(capsys, monkeypatch, tiny, photos):
    """`vlmkit chat --image A --image B`: both images go with the first message, as the library takes them."""
    import io

    monkeypatch.setattr(sys, "stdin", io.StringIO("Compare the two pictures.\n"))
    code, out, err = run(capsys, "chat", "--model", str(tiny["llava"]), "--image", str(photos["cat"]), "--image", str(photos["coffee"]),
                         "--max-new-tokens", "5", "--json")
    assert code == 0, err
    expected = vlmkit.load(str(tiny["llava"])).chat([{"role": "user", "content": [
        {"type": "image", "image": str(photos["cat"])}, {"type": "image", "image": str(photos["coffee"])},
        {"type": "text", "text": "Compare the two pictures."}]}], options=GenerationOptions(max_new_tokens=5))
    assert [r["content"] for r in lines(out)] == [expected]


def test_demo_finds_the_right_photos(capsys):
    code, out, err = run(capsys, "demo", "a cat", "coffee", "a rocket", "--json")
    assert code == 0, err
    records = lines(out)
    captions = {r["image"].rsplit("/", 1)[-1]: r["caption"] for r in records if "caption" in r}
    assert "espresso" in captions["coffee.png"]
    best = {r["query"]: r["hits"][0]["path"].rsplit("/", 1)[-1] for r in records if "query" in r}
    assert best == {"a cat": "chelsea.png", "coffee": "coffee.png", "a rocket": "rocket.jpg"}
    assert all({"path", "score", "rank"} <= set(r["hits"][0]) for r in records if "query" in r)


def _on_a_terminal(argv: list[str]) -> tuple[int, str]:
    """Run the CLI with stdout and stderr on a 100-column pseudo-terminal; (exit code, what it showed)."""
    import fcntl
    import os
    import pty
    import struct
    import termios

    env = {k: v for k, v in os.environ.items() if k != "VLMKIT_NO_PROGRESS"}
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a 100-column terminal
    proc = subprocess.Popen([sys.executable, "-m", "vlmkit_cli.main", *argv], stdout=follower, stderr=follower, env=env)
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
    return proc.returncode, b"".join(chunks).decode(errors="replace")


def test_progress_bar_only_on_a_terminal(photos):
    """On a terminal a bar shows on stderr; piped (the other tests) or with --json, nothing does."""
    paths = [str(photos[k]) for k in ("cat", "coffee", "astronaut", "rocket", "motorcycle")]
    for extra, expect_bar in (([], True), (["--json"], False)):
        code, text = _on_a_terminal(["caption", *paths, "--batch-size", "2", *extra])
        assert code == 0, text
        assert ("caption:" in text and "img" in text) == expect_bar, text


def test_index_shows_progress_on_a_terminal_and_a_summary_otherwise(photos, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for key in ("cat", "coffee", "astronaut", "rocket", "motorcycle"):
        (folder / photos[key].name).write_bytes(photos[key].read_bytes())
    code, text = _on_a_terminal(["index", str(folder), "--index", str(tmp_path / "on-a-terminal")])
    assert code == 0, text
    frames = [f.strip() for f in text.replace("\n", "\r").split("\r") if f.startswith("indexing:")]
    # Files done / total, the rate and the time left; the finished bar stays on screen.
    counts = [re.search(r"\| (\d+/\d+) \[", f).group(1) for f in frames]  # type: ignore[union-attr]
    assert counts[0] == "0/5" and counts[-1] == "5/5", frames
    assert all("img/s" in f or "s/img" in f for f in frames), frames
    assert f"{tmp_path / 'on-a-terminal'}: 5 files: 5 embedded" in text  # and the summary line after it
    piped = subprocess.run([sys.executable, "-m", "vlmkit_cli.main", "index", str(folder), "--index", str(tmp_path / "piped")],
                           capture_output=True, text=True, timeout=120)
    assert piped.returncode == 0 and "\r" not in piped.stderr + piped.stdout
    assert piped.stdout.startswith(f"{tmp_path / 'piped'}: 5 files: 5 embedded")


def test_index_reports_each_file_as_it_is_embedded(tmp_path):
    """The bar moves file by file, not once per committed batch (256 files by default)."""
    from index_fakes import FakeEmbedder, solid

    from vlmkit.index import ImageIndex

    for i in range(7):
        solid(tmp_path / "album" / f"{i}.png", (i * 30, 0, 0))
    (tmp_path / "album" / "broken.png").write_bytes(b"not a png")
    calls, plans = [], []
    ImageIndex(tmp_path / "idx").update([tmp_path / "album"], FakeEmbedder(), commit_every=256, progress=calls.append, on_plan=plans.append)
    assert plans == [8] and calls == [1] * 8


# -- what a new user tripped on (issue 17) ----------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["caption", "{missing}"],
        ["ask", "{missing}", "what is it?"],
        ["match", "{missing}", "a cat"],
        ["classify", "{missing}", "--labels", "cat,dog"],
        ["embed", "{missing}"],
        ["interrogate", "{missing}"],
        ["chat", "--image", "{missing}"],
        ["compare", "{missing}", "--models", "./no/such/model"],
        ["index", "{missing}", "--index", "{tmp}/index"],
    ],
)
def test_inputs_are_checked_before_any_model_loads(capsys, bad_images, tmp_path, argv):
    """The model named cannot be loaded, so were it loaded first its error would be the one shown."""
    argv = [a.format(missing=bad_images["missing"], tmp=tmp_path) for a in argv]
    if argv[0] != "compare":
        argv += ["--model", "./no/such/model"]
    code, out, err = run(capsys, *argv)
    assert code == 1 and err.strip() == f"vlmkit: error: {bad_images['missing']}: no such file or directory", err
    assert not (tmp_path / "index").exists()  # `vlmkit index` of nothing creates no index


def test_one_vocabulary_of_reasons(capsys, bad_images, tmp_path):
    """The same bad file is called the same thing by caption, index and the library."""
    for key, reason in [("empty", "empty file"), ("dir", "a directory, not an image file"), ("missing", "no such file or directory")]:
        path = str(bad_images[key])
        code, _, err = run(capsys, "caption", path, str(bad_images["good"]), "--json")
        assert code == 1 and f"vlmkit: skipped {path}: {reason}\n" in err, err
        if key != "dir":  # a folder given to `vlmkit index` is indexed, not skipped
            code, _, err = run(capsys, "index", path, str(bad_images["good"]), "--index", str(tmp_path / key))
            assert code == 1 and f"vlmkit: skipped {path}: {reason}\n" in err, err
        with pytest.raises(vlmkit.ImageError, match=f"{reason}$"):
            vlmkit.load_image(path)


def test_a_bad_data_spec_is_reported_before_the_model(capsys):
    code, _, err = run(capsys, "eval", "vqa", "--data", "easy-vqa:bogus")
    assert code == 1 and err.strip() == "vlmkit: error: expected 'easy-vqa:train' or 'easy-vqa:test', not 'easy-vqa:bogus'"
    code, _, err = run(capsys, "eval", "vqa", "--data", "easy-vqa:test", "--limit", "2")  # a good spec: now the model
    assert code == 1 and "cannot 'ask'" in err


def test_the_ask_refusal_names_each_family_once_and_how_to_train_one(capsys, photos):
    code, _, err = run(capsys, "ask", str(photos["cat"]), "what is it?")
    assert code == 1
    can = err.split("models that can: ", 1)[1].split("; or train", 1)[0]
    families = [item.split(" (", 1)[0] for item in can.split("), ")]
    assert len(families) == len(set(families)) >= 4 and "blip2" in families, can
    assert "or train one offline with `vlmkit train`" in err


def test_a_wrong_option_shows_the_subcommand_usage(capsys, photos):
    with pytest.raises(SystemExit) as exit_:
        main(["caption", str(photos["cat"]), "--bogus"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith("usage: vlmkit caption ") and "vlmkit caption: error: unrecognized arguments: --bogus" in err
    with pytest.raises(SystemExit):
        main(["eval", "vqa", "--data", "easy-vqa:test", "--nope"])
    assert capsys.readouterr().err.startswith("usage: vlmkit eval ")


def _every_parser(parser, name="vlmkit"):
    import argparse

    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child_name, child in action.choices.items():
                yield from _every_parser(child, f"{name} {child_name}")


def test_every_option_and_argument_has_a_description():
    import argparse

    from vlmkit_cli.main import build_parser

    missing = [
        f"{name}: {'/'.join(action.option_strings) or action.dest}"
        for name, parser in _every_parser(build_parser())
        for action in parser._actions
        if not isinstance(action, (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction)) and not action.help
    ]
    assert not missing, missing


def test_demo_uses_the_search_threshold(capsys):
    """A photo the demo presents as a hit is one `vlmkit search` would show; a query with none says so."""
    from vlmkit.index import default_threshold

    threshold = default_threshold(vlmkit.DEFAULT_MODEL)
    code, out, _ = run(capsys, "demo", "a cat", "an astronaut", "--json")
    assert code == 0
    records = {r["query"]: r for r in lines(out) if "query" in r}
    for record in records.values():
        assert record["threshold"] == threshold
        assert all(hit["match"] == (hit["score"] >= threshold) for hit in record["hits"])
    assert records["a cat"]["hits"][0]["match"] and not records["an astronaut"]["hits"][0]["match"]
    code, out, _ = run(capsys, "demo", "a cat", "an astronaut")
    shown = {line.split("->")[0].strip(): line.split("->")[1].strip() for line in out.splitlines() if "->" in line}
    assert shown["'a cat'"].startswith("chelsea.png (")
    assert shown["'an astronaut'"].startswith(f"no match at {threshold:.2f} or more, the threshold `vlmkit search` uses (best: ")
