"""An on-disk cache of frozen image features, memory-mapped in float16.

BLIP-2 never updates its image encoder, so computing the encoder once per image and reusing the
features every epoch is exact (up to float16 rounding) and removes the most expensive part of a
training step. The cache is a directory holding ``features.npy`` (N, P, E) float16 and
``meta.json`` (the encoder's identity, the shape, and how many rows are complete). Building it is
resumable: rows are written batch by batch and ``meta.json`` is replaced atomically after each
batch, so an interrupted build continues where it stopped.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import ImageError, InputError
from .images import ImageInput, iter_loaded
from .models.image_encoders import FrozenImageEncoder

__all__ = ["FeatureCache"]

_META = "meta.json"
_DATA = "features.npy"


def _write_meta(directory: Path, meta: dict[str, Any]) -> None:
    tmp = directory / (_META + ".tmp")
    tmp.write_text(json.dumps(meta, indent=1))
    os.replace(tmp, directory / _META)


class FeatureCache:
    """Read access to cached features: ``cache[i]`` or ``cache.batch(indices)`` -> float32 tensors."""

    def __init__(self, directory: Path, meta: dict[str, Any], data: np.ndarray) -> None:
        self.directory = directory
        self.meta = meta
        self.data = data  # (N, P, E) float16, memory-mapped

    @property
    def identity(self) -> str:
        return str(self.meta["identity"])

    def __len__(self) -> int:
        return int(self.meta["count"])

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self.data[index], dtype=np.float32))  # (P, E)

    def batch(self, indices: Sequence[int] | np.ndarray | torch.Tensor) -> torch.Tensor:
        rows = np.asarray(indices, dtype=np.int64)
        return torch.from_numpy(np.asarray(self.data[rows], dtype=np.float32))  # (B, P, E)

    @classmethod
    def open(cls, directory: str | os.PathLike, *, identity: str | None = None) -> FeatureCache:
        """Open a complete cache; with ``identity``, refuse one built by a different encoder."""
        path = Path(directory)
        try:
            meta = json.loads((path / _META).read_text())
        except (OSError, ValueError) as exc:
            raise InputError(f"{path}: not a feature cache ({exc})") from None
        if meta.get("done") != meta.get("count"):
            raise InputError(f"{path}: the cache is incomplete ({meta.get('done')}/{meta.get('count')} rows); build it again to resume")
        if identity is not None and meta.get("identity") != identity:
            raise InputError(
                f"{path}: features come from {meta.get('identity')!r}, not {identity!r}; build a new cache"
            )
        data = np.load(path / _DATA, mmap_mode="r")
        return cls(path, meta, data)

    @classmethod
    def build(
        cls,
        encoder: FrozenImageEncoder,
        images: Sequence[ImageInput],
        directory: str | os.PathLike,
        *,
        batch_size: int = 32,
        progress: bool = False,
        images_key: str = "",
    ) -> FeatureCache:
        """Encode every image once (resuming a partial build of the same encoder and images).

        ``images_key`` names the image set (e.g. dataset, seed and size), so that runs can share one
        cache directory: a complete cache of the same encoder, shape and key is reused as it is, and
        one of another key is rebuilt rather than mixed."""
        if not images:
            raise InputError("feature cache: no images given")
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        sample = encoder.encode([_first_image(images[0])])  # (1, P, E): learns the shape
        shape = (len(images), int(sample.shape[1]), int(sample.shape[2]))
        meta = {
            "identity": encoder.identity, "images": images_key, "count": len(images), "shape": list(shape),
            "dtype": "float16", "done": 0,
        }
        done = 0
        if (path / _META).is_file() and (path / _DATA).is_file():
            old = json.loads((path / _META).read_text())
            same = ("identity", "shape", "images")
            if all(old.get(k, "") == meta[k] for k in same):
                done = int(old.get("done", 0))
        if done == 0:
            data = np.lib.format.open_memmap(path / _DATA, mode="w+", dtype=np.float16, shape=shape)
            _write_meta(path, meta)
        else:
            data = np.load(path / _DATA, mmap_mode="r+")
        from tqdm import tqdm

        bar = tqdm(total=len(images), initial=done, desc="image features", unit="img", disable=not progress)
        batch: list[Any] = []
        start = done
        for _, item in iter_loaded(images[done:]):
            if isinstance(item, ImageError):
                raise item
            batch.append(item)
            if len(batch) == batch_size:
                start = cls._flush(encoder, batch, data, start, path, meta)
                bar.update(len(batch))
                batch = []
        if batch:
            start = cls._flush(encoder, batch, data, start, path, meta)
            bar.update(len(batch))
        bar.close()
        del data
        return cls.open(path, identity=encoder.identity)

    @staticmethod
    def _flush(encoder: FrozenImageEncoder, batch: list[Any], data: np.ndarray, start: int, path: Path, meta: dict[str, Any]) -> int:
        features = encoder.encode(batch).float().cpu().numpy().astype(np.float16)  # (B, P, E)
        data[start : start + len(batch)] = features
        data.flush()  # type: ignore[attr-defined]
        end = start + len(batch)
        _write_meta(path, {**meta, "done": end})
        return end


def _first_image(source: ImageInput) -> Any:
    from .images import load_image

    return load_image(source)
