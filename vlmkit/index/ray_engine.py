"""Indexing on a Ray cluster (``pip install 'vlmkit[ray]'``): the same update as the local engine,
with decoding on Ray Data CPU tasks and embedding in a pool of batched actors (one GPU each when
the cluster has GPUs). The same path runs any other per-image model call
(:meth:`RayEngine.map_images`: captioning a dataset, ``vlmkit caption DIR --out F --engine ray``).

The driver plans the update (which files are new or changed), streams the actors' results back and
commits them in batches of ``commit_every`` files through the index's single writer, so the
guarantees are those of a local run: a killed run loses at most one uncommitted batch, and a re-run
skips every committed partition because those files are then unchanged.

>>> import functools, vlmkit
>>> from vlmkit.index import ImageIndex
>>> from vlmkit.index.ray_engine import RayEngine
>>> name = "openai/clip-vit-base-patch32"
>>> engine = RayEngine(functools.partial(vlmkit.load, name, device="cuda"), address="auto")
>>> ImageIndex("photos.index").update(["/data/photos"], vlmkit.load(name), engine=engine)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from ..errors import ImageError
from .pipeline import Decoded, Embedder, decode_entry, embed_decoded
from .sources import Entry
from .store import Embedded, ImageIndexError

__all__ = ["RayEngine"]


def _ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401 - Ray Data is the part we use
    except ImportError:
        raise ImageIndexError("--engine ray needs Ray Data: pip install 'vlmkit[ray]'") from None
    return ray


_KNOWN_CACHE: dict[Any, frozenset[str]] = {}


def _decode_batch(batch: dict[str, np.ndarray], known_ref: Any, draft_size: int | None, max_pixels: int | None) -> dict[str, Any]:
    """Ray Data task: read, hash and decode a batch of entries (known contents are not decoded)."""
    import ray

    known = _KNOWN_CACHE.get(known_ref)
    if known is None:  # fetched once per worker process
        _KNOWN_CACHE.clear()
        known = _KNOWN_CACHE.setdefault(known_ref, ray.get(known_ref))
    out: dict[str, list[Any]] = {
        k: [] for k in ("path", "size", "mtime_ns", "root", "sha256", "width", "height", "taken", "error", "image", "has_image")
    }
    for path, size, mtime, root in zip(batch["path"], batch["size"], batch["mtime_ns"], batch["root"], strict=True):
        d = decode_entry(Entry(str(path), int(size), int(mtime), str(root)), known.__contains__, draft_size=draft_size, max_pixels=max_pixels)
        out["path"].append(str(path))
        out["size"].append(int(size))
        out["mtime_ns"].append(int(mtime))
        out["root"].append(str(root))
        out["sha256"].append(d.sha256)
        out["width"].append(d.width)
        out["height"].append(d.height)
        out["taken"].append(math.nan if d.taken is None else d.taken)
        out["error"].append("" if d.error is None else d.error.reason)
        out["has_image"].append(d.image is not None)
        if d.image is not None:
            out["image"].append(np.asarray(d.image, dtype=np.uint8))
            d.image.close()
        else:
            out["image"].append(np.zeros((1, 1, 3), np.uint8))  # placeholder: nothing to embed
    result: dict[str, Any] = dict(out)
    result["image"] = _object_array(out["image"])
    return result


def _object_array(items: list[np.ndarray]) -> np.ndarray:
    array = np.empty(len(items), dtype=object)
    for i, item in enumerate(items):
        array[i] = item
    return array


class _Embed:
    """Ray Data actor: holds one model and embeds the decoded images of each batch."""

    def __init__(self, factory: Callable[[], Embedder], batch_size: int) -> None:
        self.model = factory()
        self.batch_size = batch_size

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        has = [bool(h) for h in batch["has_image"]]
        images = [batch["image"][i] for i, h in enumerate(has) if h]
        vectors: list[Any] = [None] * len(has)
        captions: list[str | None] = [None] * len(has)
        if images:
            embedded, tags = embed_decoded(self.model, images, self.batch_size)
            rows = iter(range(len(images)))
            for i, h in enumerate(has):
                if h:
                    j = next(rows)
                    vectors[i] = embedded[j].tolist()
                    captions[i] = tags[j] if tags else None
        out = {k: v for k, v in batch.items() if k not in ("image",)}
        out["vector"] = vectors
        out["caption"] = captions
        return out


class _Apply:
    """Ray Data actor: holds one model and applies ``call(model, images)`` (``call(model, images,
    paths)`` ``with_paths``) to the decoded images of each batch (one result per image)."""

    def __init__(self, factory: Callable[[], Any], call: Callable[..., list[Any]], with_paths: bool = False) -> None:
        self.model = factory()
        self.call = call
        self.with_paths = with_paths

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        has = [bool(h) for h in batch["has_image"]]
        images = [batch["image"][i] for i, h in enumerate(has) if h]
        paths = [str(batch["path"][i]) for i, h in enumerate(has) if h]
        results = (self.call(self.model, images, paths) if self.with_paths else self.call(self.model, images)) if images else []
        outputs = iter(results)
        out = {k: v for k, v in batch.items() if k != "image"}
        out["result"] = [next(outputs) if h else None for h in has]
        return out


class RayEngine:
    """Decode on Ray CPU tasks and embed in ``num_actors`` batched actors, each holding the model that
    ``model_factory()`` builds (a GPU per actor when the cluster has GPUs). ``address`` is a Ray
    cluster address ("auto" for the running one); by default an already initialised Ray is used,
    else a local one is started."""

    def __init__(
        self,
        model_factory: Callable[[], Any],
        *,
        address: str | None = None,
        num_actors: int | None = None,
        num_gpus_per_actor: float | None = None,
        draft_size: int | None = None,
    ) -> None:
        self.model_factory = model_factory
        self.address = address
        self.num_actors = num_actors
        self.num_gpus_per_actor = num_gpus_per_actor
        self.draft_size = draft_size

    def _init(self) -> Any:
        ray = _ray()
        if not ray.is_initialized():
            try:
                ray.init(address=self.address, include_dashboard=False, log_to_driver=False, configure_logging=False)
            except ConnectionError as exc:
                raise ImageIndexError(f"cannot reach the Ray cluster at {self.address!r}: {exc}") from None
        return ray

    def embed(
        self, entries: Sequence[Entry], model: Embedder, known: frozenset[str], *, batch_size: int, max_pixels: int | None
    ) -> Iterator[Embedded]:
        draft = getattr(model, "image_size", None)
        ds = self._pipeline(entries, known, draft, max_pixels, batch_size, _Embed, {"factory": self.model_factory, "batch_size": batch_size})
        for row in ds.iter_rows():
            error = str(row["error"])
            taken = float(row["taken"])
            decoded = Decoded(
                Entry(str(row["path"]), int(row["size"]), int(row["mtime_ns"]), str(row["root"])),
                sha256=str(row["sha256"]),
                width=int(row["width"]),
                height=int(row["height"]),
                taken=None if math.isnan(taken) else taken,
                error=ImageError(str(row["path"]), error) if error else None,
            )
            vector = row["vector"]
            yield Embedded(decoded, None if vector is None else np.asarray(vector, np.float32), row["caption"] if vector is not None else None)

    def _pipeline(self, entries: Sequence[Entry], known: frozenset[str], draft_size: int | None, max_pixels: int | None,
                  batch_size: int, actor: type, actor_kwargs: dict[str, Any]) -> Any:
        """The Ray dataset: entries read, hashed and decoded on CPU tasks (contents in ``known`` are
        not decoded), then ``actor(**actor_kwargs)`` on each batch in a pool of actors: on CPUs half
        the cores run models and the rest decode; on GPUs one actor per GPU."""
        ray = self._init()
        resources = ray.cluster_resources()
        gpus = self.num_gpus_per_actor if self.num_gpus_per_actor is not None else (1.0 if resources.get("GPU", 0) >= 1 else 0.0)
        actors = self.num_actors or (max(1, int(resources.get("GPU", 0) / gpus)) if gpus else max(1, int(resources.get("CPU", 1)) // 2))
        draft = self.draft_size if self.draft_size is not None else draft_size
        items = [{"path": e.path, "size": e.size, "mtime_ns": e.mtime_ns, "root": e.root} for e in entries]
        blocks = max(1, min(len(items) // max(1, batch_size), 200))
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        context.print_on_execution_start = False
        ds = ray.data.from_items(items, override_num_blocks=blocks)
        ds = ds.map_batches(
            _decode_batch,
            fn_kwargs={"known_ref": ray.put(known), "draft_size": draft, "max_pixels": max_pixels},
            batch_size=batch_size,
            num_cpus=0.5,  # differs from the actors' request, so Ray keeps decoding in separate tasks
            batch_format="numpy",
        )
        return ds.map_batches(
            actor,
            fn_constructor_kwargs=actor_kwargs,
            batch_size=batch_size,
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_cpus=0 if gpus else 1,
            num_gpus=gpus,
            batch_format="numpy",
        )

    def map_images(
        self, entries: Sequence[Entry], call: Callable[..., list[Any]], *, batch_size: int,
        max_pixels: int | None, draft_size: int | None = None, with_paths: bool = False,
    ) -> Iterator[tuple[str, Any, str]]:
        """``call(model, images)`` on every entry's image, in the actors (each with the model
        ``model_factory()`` builds), ``batch_size`` images at a time: yields (path, the call's result
        or None, the reason the file could not be read or "") as results arrive, in no fixed order.
        ``with_paths`` calls ``call(model, images, paths)``: the images' paths too, in the same order.
        ``call`` must be picklable (a module-level function or a ``functools.partial`` of one)."""
        actor_kwargs = {"factory": self.model_factory, "call": call, "with_paths": with_paths}
        ds = self._pipeline(entries, frozenset(), draft_size, max_pixels, batch_size, _Apply, actor_kwargs)
        for row in ds.iter_rows():
            yield str(row["path"]), row["result"], str(row["error"])
