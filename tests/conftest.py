"""Shared fixtures: real sample photos, bad image files, and tiny checkpoints built once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("VLMKIT_NO_PROGRESS", "1")


@pytest.fixture(scope="session")
def photos() -> dict[str, Path]:
    """Real photos shipped with scikit-image."""
    import skimage.data

    root = Path(skimage.data.data_dir)
    return {
        "cat": root / "chelsea.png",
        "coffee": root / "coffee.png",
        "astronaut": root / "astronaut.png",
        "rocket": root / "rocket.jpg",
        "motorcycle": root / "motorcycle_left.png",
    }


@pytest.fixture(scope="session")
def bad_images(tmp_path_factory: pytest.TempPathFactory, photos: dict[str, Path]) -> dict[str, Path]:
    """One file per way an image can be bad."""
    from PIL import Image

    root = tmp_path_factory.mktemp("bad")
    jpeg = root / "good.jpg"
    Image.open(photos["coffee"]).convert("RGB").save(jpeg, quality=90)
    data = jpeg.read_bytes()
    truncated = root / "truncated.jpg"
    truncated.write_bytes(data[: len(data) // 2])
    corrupt = root / "corrupt.jpg"
    corrupt.write_bytes(data[:200] + bytes(range(256)) * 20 + data[-100:])
    text = root / "notes.jpg"
    text.write_text("this is not an image\n")
    empty = root / "empty.png"
    empty.write_bytes(b"")
    bomb = root / "bomb.png"
    # 12,000 x 12,000 = 144 MP of one colour: a few hundred KB on disk, over the default limit.
    Image.new("1", (12_000, 12_000)).save(bomb)
    folder = root / "folder.png"
    folder.mkdir()
    return {
        "good": jpeg,
        "truncated": truncated,
        "corrupt": corrupt,
        "text": text,
        "empty": empty,
        "bomb": bomb,
        "dir": folder,
        "missing": root / "missing.jpg",
    }


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny random checkpoints of every family, in the real on-disk formats."""
    from vlmkit.testing import build_all

    return build_all(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def ray_cluster():
    """A local Ray cluster of a head node with no CPUs and two worker nodes of 2 CPUs each, shared by
    the Ray tests (index, captioning, CapFilt, serving); the Ray driver is connected to it."""
    import ray
    from ray.cluster_utils import Cluster

    # Ray's usage-stats collector queries a Prometheus server on localhost:9090 after every dataset
    # and logs each refused connection as a DEBUG traceback: noise that reads like a failure in the
    # captured logs. Usage stats off (the env var is read by the driver and the nodes it starts).
    saved = os.environ.get("RAY_USAGE_STATS_ENABLED")
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    local = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    workers = [local.add_node(num_cpus=2), local.add_node(num_cpus=2)]
    local.wait_for_nodes()
    ray.init(address=local.address, log_to_driver=False)
    yield workers
    # Serve's handles keep threads in this process that call Ray, and a Ray call made after
    # ray.shutdown() connects again (the cluster then refuses to remove the driver's node): stop
    # Serve first, and make sure the driver is gone before the nodes go.
    from ray import serve

    serve.shutdown()
    os.environ["RAY_ENABLE_AUTO_CONNECT"] = "0"
    ray.shutdown()
    local.shutdown()
    os.environ.pop("RAY_ENABLE_AUTO_CONNECT", None)
    if saved is None:
        os.environ.pop("RAY_USAGE_STATS_ENABLED", None)
    else:
        os.environ["RAY_USAGE_STATS_ENABLED"] = saved
