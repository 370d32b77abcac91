"""The Ray engine on a local cluster of two worker nodes gives the same index as the local engine,
and a re-run after an interruption skips what was committed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import ray
from index_fakes import FakeCaptioner, FakeEmbedder, solid

from vlmkit.index import ImageIndex


@pytest.fixture(scope="module")
def cluster(ray_cluster):
    import index_fakes

    ray.cloudpickle.register_pickle_by_value(index_fakes)  # the workers cannot import tests/
    return ray_cluster


def _collection(root: Path) -> Path:
    for i in range(30):
        solid(root / f"part{i % 3}" / f"{i:02d}.png", (i * 37 % 256, i * 91 % 256, i * 53 % 256))
    (root / "part0" / "copy.png").write_bytes((root / "part1" / "01.png").read_bytes())
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return root


def _table(index: ImageIndex):
    return index.table().to_arrow().sort_by("path")


def test_two_worker_ray_index_equals_the_local_index(cluster, tmp_path: Path) -> None:
    from vlmkit.index.ray_engine import RayEngine

    root = _collection(tmp_path / "photos")
    assert len([n for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU")]) == 2
    via_ray = ImageIndex(tmp_path / "ray")
    report = via_ray.update([root], FakeEmbedder(), engine=RayEngine(FakeEmbedder), batch_size=4, commit_every=8)
    local = ImageIndex(tmp_path / "local")
    expected = local.update([root], FakeEmbedder(), batch_size=4)
    assert (report.added + report.reused, len(report.skipped)) == (expected.added + expected.reused, 1) == (31, 1)
    a, b = _table(via_ray), _table(local)
    for column in ("path", "sha256", "size", "mtime_ns", "width", "height", "model", "dim", "text"):
        assert a.column(column).to_pylist() == b.column(column).to_pylist(), column
    assert np.array_equal(np.array(a.column("vector").to_pylist()), np.array(b.column("vector").to_pylist()))


def test_ray_rerun_skips_committed_partitions(cluster, tmp_path: Path) -> None:
    from vlmkit.index.ray_engine import RayEngine

    root = _collection(tmp_path / "photos")
    index = ImageIndex(tmp_path / "idx")
    done = []

    def stop_after_first_commit(n: int) -> None:
        done.append(n)
        if sum(done) > 9:  # per file as embedded or skipped: by the 10th, 8 good ones (1 is broken) were committed
            raise KeyboardInterrupt  # as if the run were stopped here

    with pytest.raises(KeyboardInterrupt):
        index.update([root], FakeEmbedder(), engine=RayEngine(FakeEmbedder), batch_size=4, commit_every=8, progress=stop_after_first_commit)
    committed = len(index)
    assert 8 <= committed < 31
    report = index.update([root], FakeEmbedder(), engine=RayEngine(FakeEmbedder), batch_size=4, commit_every=8)
    assert report.unchanged == committed and report.added + report.reused == 31 - committed and len(index) == 31


def test_two_worker_ray_captions_equal_the_local_ones(cluster, tmp_path: Path) -> None:
    """`vlmkit caption DIR --out F --engine ray`: the same Ray Data path as indexing, the same rows."""
    import json

    from vlmkit.captioning import caption_dataset
    from vlmkit.index.ray_engine import RayEngine

    root = _collection(tmp_path / "photos")
    via_ray = caption_dataset(FakeCaptioner(), [root], out=tmp_path / "ray.jsonl", batch_size=4, engine=RayEngine(FakeCaptioner))
    local = caption_dataset(FakeCaptioner(), [root], out=tmp_path / "local.jsonl", batch_size=4)
    rows = {name: sorted(map(json.loads, (tmp_path / name).read_text().splitlines()), key=lambda r: r["image"])
            for name in ("ray.jsonl", "local.jsonl")}
    assert rows["ray.jsonl"] == rows["local.jsonl"] and len(rows["local.jsonl"]) == 31
    assert (via_ray.done, [s.path for s in via_ray.skipped]) == (local.done, [s.path for s in local.skipped]) == (31, [str(root / "broken.jpg")])


def test_two_worker_ray_capfilt_keeps_what_the_local_engine_keeps(cluster, tmp_path: Path) -> None:
    """CapFilt (`vlmkit bootstrap --engine ray`): captioning and filtering in the same actors, both
    models loaded in each; with beam search (deterministic) the dataset equals the local run's."""
    from index_fakes import tiny_blip_exports

    import vlmkit
    from vlmkit.bootstrap import capfilt
    from vlmkit.data import make_split, read_dataset

    captioner, filter_dir = (vlmkit.load(d) for d in tiny_blip_exports(tmp_path / "blip"))
    web = make_split(10, 4)
    runs = {engine: capfilt(captioner, filter_dir, web, tmp_path / engine, sampling="beam", batch_size=3, engine=engine)  # type: ignore[arg-type]
            for engine in ("ray", "local")}
    assert runs["ray"].done == runs["local"].done == 10
    assert runs["ray"].web == runs["local"].web and runs["ray"].synthetic == runs["local"].synthetic
    kept = {engine: [(e.id, e.captions) for e in read_dataset(report.spec)] for engine, report in runs.items()}
    assert kept["ray"] == kept["local"] and kept["local"]
