"""The image index with a deterministic fake embedder: incremental updates, moves and duplicates,
bad files, model changes, crash safety under SIGKILL, search (text, image, combined, filters,
threshold, keywords) and near-duplicate groups."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from index_fakes import FakeEmbedder, solid
from numerics import REORDERED
from PIL import Image

from vlmkit.errors import InputError
from vlmkit.index import Filters, ImageIndex, ImageIndexError, IndexModelMismatch, Query, scan


@pytest.fixture()
def album(tmp_path: Path) -> Path:
    root = tmp_path / "album"
    solid(root / "red.png", "red")
    solid(root / "green.png", "green")
    solid(root / "blue.jpg", "blue")
    solid(root / "trips" / "yellow.png", "yellow")
    solid(root / "trips" / "purple.png", "purple")
    return root


def _paths(index: ImageIndex) -> list[str]:
    return sorted(index.table().search().select(["path"]).limit(None).to_arrow().column("path").to_pylist())


def _names(hits: list) -> list[str]:
    return [Path(h.path).name for h in hits]


def test_index_stores_rows_and_finds_colours(album: Path, tmp_path: Path) -> None:
    index = ImageIndex(tmp_path / "idx")
    model = FakeEmbedder()
    report = index.update([album], model)
    assert (report.scanned, report.added, report.skipped) == (5, 5, [])
    assert len(index) == 5 and index.meta()["model"] == "fake-colour" and index.meta()["dim"] == 8
    row = index.rows_by_path([str(album / "red.png")])[str(album / "red.png")]
    assert (row["width"], row["height"], row["size"]) == (32, 24, (album / "red.png").stat().st_size)
    assert row["model"] == "fake-colour" and row["dim"] == 8 and len(row["sha256"]) == 64
    for colour in ("red", "green", "blue", "yellow"):
        assert Path(index.search(model, colour, k=1, threshold=0.9)[0].path).stem == colour
    hits = index.search(model, "red", k=5, threshold=float("-inf"))
    assert [h.rank for h in hits] == [1, 2, 3, 4, 5] and hits[0].score == pytest.approx(1.0, abs=1e-4)
    assert all(hits[i].score >= hits[i + 1].score for i in range(4))


def test_threshold_returns_nothing_without_a_real_match(album: Path, tmp_path: Path) -> None:
    index = ImageIndex(tmp_path / "idx")
    model = FakeEmbedder()
    index.update([album], model)
    assert index.search(model, "a xylophone concert", k=5, threshold=0.9, keyword=False) == []
    assert len(index.search(model, "a xylophone concert", k=5, threshold=float("-inf"), keyword=False)) == 5


def test_rerun_only_embeds_new_or_changed_files(album: Path, tmp_path: Path) -> None:
    index = ImageIndex(tmp_path / "idx")
    model = FakeEmbedder()
    index.update([album], model)
    calls = model.image_calls
    again = index.update([album], model)
    assert (again.unchanged, again.added, model.image_calls) == (5, 0, calls)

    solid(album / "white.png", "white")
    solid(album / "red.png", (200, 10, 10))  # changed content, same path
    os.utime(album / "green.png", ns=(1_000_000_000, 1_000_000_000))  # touched only
    report = index.update([album], model)
    assert (report.added, report.touched, report.unchanged, report.removed) == (2, 1, 3, 0)
    assert len(index) == 6
    red = index.rows_by_path([str(album / "red.png")])[str(album / "red.png")]
    assert np.allclose(index.table().search().where(f"path = '{album / 'red.png'}'").to_list()[0]["vector"], model.embed_images([album / "red.png"])[0], atol=1e-6)
    assert red["mtime_ns"] == (album / "red.png").stat().st_mtime_ns


def test_removed_files_leave_and_moved_files_are_not_re_embedded(album: Path, tmp_path: Path) -> None:
    index = ImageIndex(tmp_path / "idx")
    model = FakeEmbedder()
    index.update([album], model)
    (album / "green.png").unlink()
    (album / "trips" / "purple.png").rename(album / "violet.png")
    calls = model.image_calls
    report = index.update([album], model)
    assert (report.removed, report.reused, report.added) == (2, 1, 0)
    assert model.image_calls == calls  # the renamed file kept its embedding
    assert str(album / "violet.png") in _paths(index) and str(album / "green.png") not in _paths(index)
    assert _names(index.search(model, "purple", k=1, threshold=0.9)) == ["violet.png"]


def test_rows_outside_the_given_inputs_are_kept(album: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    solid(other / "white.png", "white")
    index = ImageIndex(tmp_path / "idx")
    model = FakeEmbedder()
    index.update([album, other], model)
    report = index.update([album], model)  # `other` not given this time: its rows stay
    assert report.removed == 0 and len(index) == 6


def test_identical_files_are_embedded_once_and_grouped(album: Path, tmp_path: Path) -> None:
    (album / "copy-of-red.png").write_bytes((album / "red.png").read_bytes())
    (album / "trips" / "red-again.png").write_bytes((album / "red.png").read_bytes())
    index = ImageIndex(tmp_path / "idx")
    model = FakeEmbedder()
    report = index.update([album], model, batch_size=64)
    assert report.added == 5 and report.reused == 2
    hit = index.search(model, "red", k=3, threshold=0.9)[0]
    assert {Path(hit.path).name, *(Path(p).name for p in hit.duplicates)} == {"red.png", "copy-of-red.png", "red-again.png"}
    assert len(index.search(model, "red", k=10, threshold=float("-inf"))) == 5  # three files, one hit
    assert index.status().unique_contents == 5 and index.status().rows == 7


def test_bad_files_are_skipped_with_reasons_and_good_ones_kept(album: Path, tmp_path: Path, bad_images: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = album / "bad"
    bad.mkdir()
    for key in ("truncated", "corrupt", "text", "empty"):
        (bad / bad_images[key].name).write_bytes(bad_images[key].read_bytes())
    (bad / "huge.png").write_bytes(solid(tmp_path / "huge.png", "red", size=(600, 500)).read_bytes())
    (bad / "folder.jpg").mkdir()  # a directory with an image name: not a file, silently not an image
    (bad / "loop").symlink_to(bad)  # a directory symlink loop
    (bad / "self.jpg").symlink_to(bad / "self.jpg")  # a file symlink loop
    (bad / "dangling.png").symlink_to(bad / "nowhere.png")
    denied = solid(bad / "denied.png", "white")
    import vlmkit.index.pipeline as pipeline

    real_read = pipeline.read_bytes

    def read(path: str) -> bytes:
        if path.endswith("denied.png"):  # CI runs as root, where chmod 000 does not deny reads
            raise PermissionError(13, "Permission denied", path)
        return real_read(path)

    monkeypatch.setattr(pipeline, "read_bytes", read)
    index = ImageIndex(tmp_path / "idx")
    report = index.update([album], FakeEmbedder(), max_pixels=250_000, commit_every=2)
    reasons = {Path(s.path).name: s.reason for s in report.skipped}
    assert set(reasons) == {"truncated.jpg", "corrupt.jpg", "notes.jpg", "empty.png", "huge.png", "loop", "self.jpg", "dangling.png", "denied.png"}
    assert "truncated" in reasons["truncated.jpg"] and any(w in reasons["corrupt.jpg"] for w in ("corrupt", "not an image"))
    assert "not an image" in reasons["notes.jpg"] and "empty" in reasons["empty.png"]
    assert "over the limit" in reasons["huge.png"] and "loop" in reasons["loop"] and "loop" in reasons["self.jpg"]
    assert "permission denied" in reasons["denied.png"] and "dangling" in reasons["dangling.png"]
    assert report.added == 5 and len(index) == 5 and str(denied) not in _paths(index)


def test_another_model_is_refused_and_reindex_rebuilds(album: Path, tmp_path: Path) -> None:
    index = ImageIndex(tmp_path / "idx")
    index.update([album], FakeEmbedder())
    other = FakeEmbedder(name="other-model", dim=16)
    with pytest.raises(IndexModelMismatch, match="--reindex"):
        index.update([album], other)
    with pytest.raises(IndexModelMismatch, match="fake-colour"):
        index.search(other, "red")
    report = index.update([album], other, reindex=True)
    assert report.added == 5 and index.meta()["model"] == "other-model" and index.meta()["dim"] == 16


def test_a_second_writer_is_refused_while_one_runs(album: Path, tmp_path: Path) -> None:
    import fcntl

    index = ImageIndex(tmp_path / "idx")
    index.path.mkdir()
    with open(index.path / ".lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with pytest.raises(ImageIndexError, match="another process"):
            index.update([album], FakeEmbedder())


_WRITER = """
import sys
from index_fakes import FakeEmbedder
from vlmkit.index import ImageIndex

def progress(n):
    print(n, flush=True)

report = ImageIndex(sys.argv[1]).update(
    [sys.argv[2]], FakeEmbedder(delay=0.05), batch_size=3, commit_every=3, workers=2, progress=progress
)
print("done", report.summary(), flush=True)
"""


def test_sigkill_at_any_moment_then_rerun_gives_a_complete_index(tmp_path: Path) -> None:
    """SIGKILL lands at random points after the writer reports progress: while decoding, embedding
    or committing the next batch, and (last round) after the final commit, in the clean-up steps."""
    root = tmp_path / "many"
    total = 90
    for i in range(total):
        solid(root / f"sub{i % 3}" / f"img{i:03d}.png", (i * 37 % 256, i * 91 % 256, i * 53 % 256))
    script = tmp_path / "writer.py"
    script.write_text(_WRITER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    index_dir = tmp_path / "idx"
    rng = random.Random(0)
    counts = []
    for round_ in range(5):
        before = len(ImageIndex(index_dir))
        proc = subprocess.Popen([sys.executable, str(script), str(index_dir), str(root)], env=env, stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        wanted = total - before if round_ == 4 else rng.randint(1, 4) * 3  # files reported before the kill
        seen = 0
        for line in proc.stdout:
            if line.startswith("done"):
                break
            seen += int(line)
            if seen >= wanted:
                time.sleep(rng.uniform(0.0, 0.08))
                break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        counts.append(len(ImageIndex(index_dir)))
    final = subprocess.run([sys.executable, str(script), str(index_dir), str(root)], env=env, capture_output=True, text=True, timeout=120)
    assert final.returncode == 0, final.stderr
    assert counts[0] < total and counts == sorted(counts), counts  # progress was kept across kills
    index = ImageIndex(index_dir)
    table = index.table().to_arrow()
    paths = table.column("path").to_pylist()
    assert len(paths) == len(set(paths)) == total
    expected = FakeEmbedder().embed_images(paths)
    stored = np.asarray(table.column("vector").combine_chunks().flatten()).reshape(total, -1)
    assert np.allclose(stored, expected, atol=1e-6)
    assert ImageIndex(index_dir).update([root], FakeEmbedder()).unchanged == total
    assert index.search(FakeEmbedder(), "img042", k=1, threshold=1.0)[0].path.endswith("img042.png")  # keyword index built


def test_combined_queries_add_and_subtract(album: Path, tmp_path: Path) -> None:
    index = ImageIndex(tmp_path / "idx")
    model = FakeEmbedder()
    index.update([album], model)
    assert _names(index.search(model, "red + blue", k=1, threshold=float("-inf"), keyword=False)) == ["purple.png"]
    assert _names(index.search(model, Query.parse(images=[str(album / "blue.jpg")]), k=1)) == ["blue.jpg"]
    assert _names(index.search(model, f"{album / 'trips' / 'purple.png'} - blue", k=1, threshold=float("-inf"), keyword=False)) == ["red.png"]
    assert _names(index.search(model, Query.parse("yellow", subtract=["green"]), k=1, threshold=float("-inf"), keyword=False)) == ["red.png"]
    with pytest.raises(InputError):
        Query.parse("")
    with pytest.raises(InputError, match="cancel"):
        index.search(model, "red - red")


def _jpeg_taken(path: Path, colour: str, when: str) -> Path:
    image = Image.open(solid(path.with_suffix(".png"), colour)).convert("RGB")
    exif = Image.Exif()
    exif.get_ifd(0x8769)[36867] = when
    image.save(path, exif=exif)
    path.with_suffix(".png").unlink()
    return path


def test_filters_glob_dates_and_sizes(album: Path, tmp_path: Path) -> None:
    _jpeg_taken(album / "old-red.jpg", "red", "2015:06:01 12:00:00")
    _jpeg_taken(album / "new-red.jpg", "red", "2024:06:01 12:00:00")
    solid(album / "big-red.png", "red", size=(400, 400), noise=40)
    index = ImageIndex(tmp_path / "idx")
    model = FakeEmbedder()
    index.update([album], model)
    row = index.rows_by_path([str(album / "old-red.jpg")])[str(album / "old-red.jpg")]
    assert row["taken"] == pytest.approx(1433160000.0)
    every = {"k": 20, "threshold": float("-inf"), "keyword": False}
    assert set(_names(index.search(model, "red", filters=Filters(glob="*.jpg"), **every))) == {"old-red.jpg", "new-red.jpg", "blue.jpg"}
    assert sorted(_names(index.search(model, "red", filters=Filters(glob=str(album / "trips") + "/*"), **every))) == ["purple.png", "yellow.png"]
    assert _names(index.search(model, "red", filters=Filters(before="2016-01-01"), **every)) == ["old-red.jpg"]
    after = _names(index.search(model, "red", filters=Filters(after="2020-01-01"), **every))
    assert "new-red.jpg" in after and "old-red.jpg" not in after
    assert _names(index.search(model, "red", filters=Filters(min_size=100_000), **every)) == ["big-red.png"]
    assert "big-red.png" not in _names(index.search(model, "red", filters=Filters(max_size=50_000), **every))
    with pytest.raises(InputError, match="not a date"):
        index.search(model, "red", filters=Filters(after="last tuesday"))


def test_keywords_on_file_names_and_tags_merge_with_semantic_hits(album: Path, tmp_path: Path) -> None:
    solid(album / "holiday_beach.png", "green")
    index = ImageIndex(tmp_path / "idx")
    model = FakeEmbedder()
    index.update([album], model)
    hits = index.search(model, "beach", k=3, threshold=0.9)
    assert [(Path(h.path).name, h.match) for h in hits] == [("holiday_beach.png", "keyword")]
    assert index.search(model, "beach", k=3, threshold=0.9, keyword=False) == []
    both = index.search(model, "red", k=3, threshold=0.9)  # red.png: named red and red in colour
    assert (Path(both[0].path).name, both[0].match) == ("red.png", "both")


def test_dedupe_groups_near_duplicates(album: Path, tmp_path: Path) -> None:
    solid(album / "red-noisy.png", "red", noise=30, seed=1)
    (album / "red-copy.png").write_bytes((album / "red.png").read_bytes())
    index = ImageIndex(tmp_path / "idx")
    index.update([album], FakeEmbedder())
    groups = index.dedupe(threshold=0.97)
    assert [sorted(Path(p).name for p, _ in g) for g in groups] == [["red-copy.png", "red-noisy.png", "red.png"]]
    # A float32 unit vector dotted with itself (or its copy) in BLAS's machine-dependent order: 1
    # within a few ulps (pytest.approx's default 1e-6 is only ~8); a wrong pair is below 0.9999.
    one = pytest.approx(1.0, rel=REORDERED)
    assert index.dedupe(threshold=0.9999) == [[(str(album / "red-copy.png"), one), (str(album / "red.png"), one)]]


def test_webdataset_shards_file_lists_and_parquet_inputs(album: Path, tmp_path: Path) -> None:
    shard = tmp_path / "shard-000.tar"
    with tarfile.open(shard, "w") as tar:
        tar.add(solid(tmp_path / "x" / "0001.png", "white"), arcname="0001.png")
        tar.add(solid(tmp_path / "x" / "0002.png", "blue"), arcname="0002.png")
    listing = tmp_path / "list.txt"
    listing.write_text("album/red.png\n# a comment\nalbum/green.png\nalbum/missing.png\n")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"path": [str(album / "trips" / "yellow.png")]}), tmp_path / "table.parquet")
    entries, skipped = scan([shard, listing, tmp_path / "table.parquet"])
    assert len(entries) == 5 and [Path(s.path).name for s in skipped] == ["missing.png"]
    index = ImageIndex(tmp_path / "idx")
    model = FakeEmbedder()
    report = index.update([shard, listing, tmp_path / "table.parquet"], model)
    assert report.added == 5
    assert index.search(model, "white", k=1, threshold=0.9)[0].path == f"{shard}::0001.png"


def test_large_indexes_get_an_approximate_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import vlmkit.index.store as store

    monkeypatch.setattr(store, "ANN_MIN_ROWS", 500)
    rng = np.random.default_rng(0)
    root = tmp_path / "many"
    colours = [tuple(int(c) for c in rng.integers(0, 256, 3)) for _ in range(600)]
    for i, rgb in enumerate(colours):
        solid(root / f"{i:03d}.png", rgb, size=(4, 4))
    index = ImageIndex(tmp_path / "idx")
    model = FakeEmbedder()
    index.update([root], model, batch_size=128, commit_every=300)
    status = index.status()
    assert status.approximate_index and status.unindexed_rows == 0 and status.rows == 600
    found = [Path(index.search(model, Query.parse(images=[str(root / f"{i:03d}.png")]), k=1, keyword=False)[0].path).name for i in range(0, 600, 60)]
    assert found == [f"{i:03d}.png" for i in range(0, 600, 60)]
