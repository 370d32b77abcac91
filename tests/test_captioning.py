"""Captioning a dataset (:func:`vlmkit.captioning.caption_dataset` and ``vlmkit caption DIR --out``):
every output kind, resuming after a kill without a row twice, bad files skipped and listed, and
WebDataset shards in and out. A fake captioner names each image's mean colour, so the right caption
of every image is known; the CLI runs the built-in model and is checked against the library."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest
from index_fakes import FakeCaptioner, solid

import vlmkit
from vlmkit.captioning import caption_dataset
from vlmkit.data import read_dataset
from vlmkit.errors import InputError


def _album(root: Path, n: int = 10) -> dict[str, str]:
    """``n`` solid images under ``root`` (two folders) and one broken file; path -> expected caption."""
    expected = {}
    for i in range(n):
        rgb = (i * 20, 255 - i * 20, 7)
        path = solid(root / f"part{i % 2}" / f"img{i:02d}.png", rgb)
        expected[str(path)] = "rgb " + " ".join(str(c) for c in rgb)
    (root / "part0" / "broken.png").write_bytes(b"\x89PNG not really")
    return expected


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_jsonl_rows_bad_files_listed_and_a_resume_never_writes_twice(tmp_path: Path) -> None:
    expected = _album(tmp_path / "album")
    out = tmp_path / "captions.jsonl"
    # Interrupted after two batches of three ...
    with pytest.raises(KeyboardInterrupt):
        caption_dataset(FakeCaptioner(stop_after=2), [tmp_path / "album"], out=out, batch_size=3)
    first = _rows(out)
    assert len(first) == 6 and all(r["caption"] == expected[r["image"]] for r in first)
    # ... and a kill that cut the last line in half.
    with open(out, "a") as f:
        f.write('{"image": "' + next(iter(expected)))
    model = FakeCaptioner()
    report = caption_dataset(model, [tmp_path / "album"], out=out, batch_size=3)
    rows = _rows(out)
    assert sorted(r["image"] for r in rows) == sorted(expected)  # every image once: none twice, none lost
    assert all(r["caption"] == expected[r["image"]] and r["model"] == "fake-captioner" for r in rows)
    assert (report.found, report.done, report.already) == (11, 4, 6) and sum(model.calls) == 4  # the first six not again
    assert [(Path(s.path).name, s.reason) for s in report.skipped] == [("broken.png", "not an image file (or an unsupported format)")]
    # A third run has nothing to do.
    assert caption_dataset(FakeCaptioner(), [tmp_path / "album"], out=out).done == 0 and len(_rows(out)) == 10


def test_parquet_output_resumes_from_its_journal(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    expected = _album(tmp_path / "album")
    out = tmp_path / "captions.parquet"
    journal = tmp_path / "captions.parquet.partial.jsonl"
    # A SIGKILL leaves the journal (here: four rows and a cut line) and no table.
    with open(journal, "w") as f:
        for path in sorted(expected)[:4]:
            f.write(json.dumps({"image": path, "caption": expected[path], "model": "fake-captioner"}) + "\n")
        f.write('{"image": "/cut')
    report = caption_dataset(FakeCaptioner(), [tmp_path / "album"], out=out, batch_size=4)
    table = pq.read_table(out).to_pylist()
    assert sorted(r["image"] for r in table) == sorted(expected) and report.already == 4 and report.done == 6
    assert all(r["caption"] == expected[r["image"]] for r in table)
    assert not journal.exists()
    # New images join the table on the next run; the old rows are kept, none twice.
    extra = solid(tmp_path / "album" / "part1" / "new.png", (1, 2, 3))
    assert caption_dataset(FakeCaptioner(), [tmp_path / "album"], out=out).done == 1
    table = pq.read_table(out).to_pylist()
    assert len(table) == 11 and {r["image"] for r in table} == {*expected, str(extra)}


def test_sidecar_files_kept_unless_overwrite(tmp_path: Path) -> None:
    expected = _album(tmp_path / "album", n=4)
    first = sorted(expected)[0]
    Path(first).with_suffix(".txt").write_text("my own caption\n")
    report = caption_dataset(FakeCaptioner(), [tmp_path / "album"], sidecar=True)
    assert report.already == 1 and report.done == 3
    assert Path(first).with_suffix(".txt").read_text() == "my own caption\n"  # never overwritten ...
    for path in sorted(expected)[1:]:
        assert Path(path).with_suffix(".txt").read_text() == expected[path] + "\n"
    caption_dataset(FakeCaptioner(), [tmp_path / "album"], sidecar=True, overwrite=True)  # ... unless asked
    assert Path(first).with_suffix(".txt").read_text() == expected[first] + "\n"
    # Two images that would share a sidecar file are refused before anything is written.
    solid(tmp_path / "album" / "part0" / "img00.jpg", (9, 9, 9))
    with pytest.raises(InputError, match="would share one sidecar file"):
        caption_dataset(FakeCaptioner(), [tmp_path / "album"], sidecar=True, overwrite=True)


def test_shards_in_new_shards_out_with_a_txt_member(tmp_path: Path) -> None:
    expected = _album(tmp_path / "album", n=4)
    shard = tmp_path / "shards" / "shard-000.tar"
    shard.parent.mkdir()
    with tarfile.open(shard, "w") as tar:
        for i, path in enumerate(sorted(expected)):
            tar.add(path, arcname=f"{i:04d}.png")
            if i == 0:  # an old caption, replaced by the new one
                (tmp_path / "old.txt").write_text("old caption")
                tar.add(tmp_path / "old.txt", arcname="0000.txt")
            if i == 1:  # a member of another kind, kept
                tar.add(tmp_path / "album" / "part0" / "broken.png", arcname="0001.cls")
    out = tmp_path / "captioned"
    report = caption_dataset(FakeCaptioner(), [shard], shards_out=out, batch_size=3)
    assert report.done == 4 and report.kind == "shards"
    with tarfile.open(out / "shard-000.tar") as tar:
        names = tar.getnames()
        texts = {n: tar.extractfile(n).read().decode() for n in names if n.endswith(".txt")}  # type: ignore[union-attr]
    assert names == ["0000.png", "0000.txt", "0001.png", "0001.cls", "0001.txt", "0002.png", "0002.txt", "0003.png", "0003.txt"]
    assert texts == {f"{i:04d}.txt": expected[path] + "\n" for i, path in enumerate(sorted(expected))}
    # The output reads back as a dataset: the captions are the new ones.
    examples = list(read_dataset(f"wds:{out / 'shard-000.tar'}"))
    assert [e.captions for e in examples] == [(expected[p],) for p in sorted(expected)]
    # A finished shard is skipped on the next run.
    assert caption_dataset(FakeCaptioner(), [shard], shards_out=out).already == 4
    with pytest.raises(InputError, match="its inputs must be .tar shards"):
        caption_dataset(FakeCaptioner(), [tmp_path / "album"], shards_out=out)
    with pytest.raises(InputError, match="give --shards-out DIR"):
        caption_dataset(FakeCaptioner(), [shard], sidecar=True)


def test_ask_a_question_of_every_image_and_one_output_only(tmp_path: Path) -> None:
    expected = _album(tmp_path / "album", n=3)
    out = tmp_path / "answers.jsonl"
    caption_dataset(FakeCaptioner(), [tmp_path / "album"], out=out, question="what colour?")
    assert {r["image"]: (r["question"], r["answer"]) for r in _rows(out)} == {p: ("what colour?", f"what colour? {c}") for p, c in expected.items()}
    for outputs in ({}, {"out": out, "sidecar": True}):
        with pytest.raises(InputError, match="exactly one output"):
            caption_dataset(FakeCaptioner(), [tmp_path / "album"], **outputs)  # type: ignore[arg-type]


# -- the CLI, with the built-in model ----------------------------------------------------------------


def test_cli_captions_a_folder_as_the_library_does(tmp_path: Path, photos: dict[str, Path]) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    for key in ("cat", "coffee", "astronaut"):
        (folder / photos[key].name).write_bytes(photos[key].read_bytes())
    (folder / "empty.png").write_bytes(b"")
    out = tmp_path / "run" / "captions.jsonl"
    env = {**os.environ, "VLMKIT_NO_PROGRESS": "1"}
    done = subprocess.run([sys.executable, "-m", "vlmkit_cli.main", "caption", str(folder), "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 1, done.stderr  # the empty file
    assert f"vlmkit: skipped {folder / 'empty.png'}: empty file" in done.stderr
    assert done.stdout.startswith(f"{out}: 4 images: 3 captioned, 0 already in the output, 1 skipped")
    assert "run the same command again to continue" in done.stderr
    model = vlmkit.load("default")
    rows = _rows(out)
    paths = sorted(str(p) for p in folder.glob("*.png") if p.stat().st_size)
    assert [r["image"] for r in rows] == paths
    assert [r["caption"] for r in rows] == model.caption(paths)


def test_cli_killed_run_continues_without_a_row_twice(tmp_path: Path, photos: dict[str, Path]) -> None:
    """SIGKILL once the first rows are on disk, then the same command again."""
    folder = tmp_path / "many"
    folder.mkdir()
    sources = [photos[k] for k in ("cat", "coffee", "astronaut", "rocket", "motorcycle")]
    for i in range(40):
        (folder / f"{i:02d}{sources[i % 5].suffix}").write_bytes(sources[i % 5].read_bytes())
    out = tmp_path / "captions.jsonl"
    argv = [sys.executable, "-m", "vlmkit_cli.main", "caption", str(folder), "--out", str(out), "--batch-size", "4"]
    env = {**os.environ, "VLMKIT_NO_PROGRESS": "1"}
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while (not out.exists() or out.stat().st_size == 0) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = out.read_bytes().count(b"\n") if out.exists() else 0  # whole rows; a cut one is dropped
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    images = [r["image"] for r in _rows(out)]
    assert sorted(images) == sorted(str(p) for p in folder.iterdir()) and len(images) == len(set(images)) == 40
    assert f"{40 - before} captioned" in done.stdout or before == 40, (before, done.stdout)
