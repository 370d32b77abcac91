"""`vlmkit index`, `vlmkit search` and `vlmkit dedupe` with the built-in default on scikit-image's
real photos, offline: JSON hits, the no-match answer, status, model changes and bad files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from test_cli import reuse_models  # noqa: F401 - the same model cache: each model loads once

import vlmkit
from vlmkit_cli.main import main


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def collection(tmp_path_factory, photos: dict[str, Path]) -> Path:
    root = tmp_path_factory.mktemp("photos")
    for name, path in photos.items():
        shutil.copy(path, root / f"{name}{path.suffix}")
    (root / "more").mkdir()
    shutil.copy(photos["cat"], root / "more" / "cat-copy.png")
    return root


@pytest.fixture(scope="module")
def built(collection: Path, tmp_path_factory) -> Path:
    index = tmp_path_factory.mktemp("idx") / "index"
    code = main(["index", str(collection), "--index", str(index)])
    assert code == 0
    return index


def test_index_search_json_and_status(built: Path, collection: Path, capsys) -> None:
    code, out, _ = run(capsys, "search", "a cat", "--index", built, "--json")
    hits = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and hits[0]["rank"] == 1
    assert {"path", "score", "rank"} <= set(hits[0])
    assert Path(hits[0]["path"]).name in ("cat.png", "cat-copy.png") and len(hits[0]["duplicates"]) == 1
    code, out, _ = run(capsys, "search", "--image", collection / "coffee.png", "--index", built, "-k", "1")
    assert code == 0 and "coffee.png" in out
    code, out, _ = run(capsys, "index", "--status", "--index", built, "--json")
    status = json.loads(out)
    assert (status["rows"], status["unique_contents"], status["model"]) == (6, 5, vlmkit.DEFAULT_MODEL)


def test_a_query_without_a_match_prints_nothing(built: Path, capsys) -> None:
    code, out, err = run(capsys, "search", "a xylophone", "--index", built)
    assert code == 0 and out == "" and "no match above the threshold" in err
    code, out, _ = run(capsys, "search", "a xylophone", "--index", built, "--all", "-k", "2")
    assert code == 0 and len(out.splitlines()) == 2


def test_dedupe_lists_the_copy(built: Path, capsys) -> None:
    code, out, _ = run(capsys, "dedupe", "--index", built, "--json")
    groups = [json.loads(line) for line in out.splitlines()]
    assert code == 0
    assert sorted(Path(m["path"]).name for m in groups[0]["members"]) == ["cat-copy.png", "cat.png"]


def test_another_model_names_reindex(built: Path, tiny: dict, capsys) -> None:
    code, _, err = run(capsys, "search", "a cat", "--index", built, "--model", tiny["clip"])
    assert code == 1 and "--reindex" in err and "Traceback" not in err


def test_bad_files_are_reported_and_exit_non_zero(collection: Path, bad_images: dict, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "mixed"
    shutil.copytree(collection, folder)
    shutil.copy(bad_images["truncated"], folder / "truncated.jpg")
    shutil.copy(bad_images["text"], folder / "notes.jpg")
    code, out, err = run(capsys, "index", folder, "--index", tmp_path / "idx")
    assert code == 1
    assert "truncated.jpg: truncated" in err and "notes.jpg: not an image" in err
    assert "6 embedded" in out or "5 embedded, 1 reused" in out


def test_search_errors_are_one_line(tmp_path: Path, capsys) -> None:
    code, _, err = run(capsys, "search", "a cat", "--index", tmp_path / "nothing")
    assert code == 1 and "no index at" in err
    code, _, err = run(capsys, "index", "--index", tmp_path / "nothing")
    assert code == 1 and "give folders" in err
    with pytest.raises(SystemExit) as exit_info:
        main(["search", "x", "--min-size", "lots"])
    assert exit_info.value.code == 2
