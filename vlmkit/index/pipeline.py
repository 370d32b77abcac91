"""From files to rows: read, hash and decode on worker threads while the model embeds the previous
batch on the calling thread.

Decoding (PIL releases the GIL) runs ``prefetch`` items ahead of the model, so an indexing run
costs about as much as the model alone; ``bench/index_throughput.py`` measures how close it gets.
Files whose content hash is already known are not decoded at all: their embedding is reused.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import numpy as np
from PIL import Image

from ..errors import ImageError
from ..images import EMPTY_FILE, load_image, max_pixels_default, os_reason
from .sources import Entry, read_bytes

__all__ = ["Embedder", "Decoded", "decode_entry", "ordered_map", "embed_decoded", "capture_time"]

T = TypeVar("T")
R = TypeVar("R")

_EXIF_IFD = 0x8769
_DATETIME_ORIGINAL = 36867
_DATETIME = 306


class Embedder(Protocol):
    """What the index needs from a model: a stable name, and L2-normalised image and text embeddings.
    Every :class:`vlmkit.VisionLanguageModel` that can ``embed`` is one."""

    name: str
    image_size: int | None

    def embed_images(self, images: Any, *, batch_size: int = 32) -> np.ndarray: ...

    def embed_texts(self, texts: Any, *, batch_size: int = 64) -> np.ndarray: ...


@dataclass
class Decoded:
    """One entry after reading: its hash and header facts, and the decoded image unless the hash
    was already known (or the :class:`ImageError` that reading it raised)."""

    entry: Entry
    sha256: str = ""
    width: int = 0
    height: int = 0
    taken: float | None = None
    image: Image.Image | None = None
    error: ImageError | None = None


def capture_time(image: Image.Image) -> float | None:
    """EXIF DateTimeOriginal (else DateTime) as seconds since the epoch, read as UTC; None if absent."""
    try:
        exif = image.getexif()
        raw = exif.get_ifd(_EXIF_IFD).get(_DATETIME_ORIGINAL) or exif.get(_DATETIME)
    except Exception:  # noqa: BLE001 - broken EXIF blocks are common and never fatal
        return None
    if not isinstance(raw, str):
        return None
    try:
        parsed = _dt.datetime.strptime(raw.strip().rstrip("\x00")[:19], "%Y:%m:%d %H:%M:%S")
    except ValueError:
        return None
    return parsed.replace(tzinfo=_dt.UTC).timestamp()


def decode_entry(entry: Entry, known: Callable[[str], bool], *, draft_size: int | None, max_pixels: int | None) -> Decoded:
    """Read, hash and (unless ``known(sha256)``) decode one entry; failures become ``Decoded.error``."""
    result = Decoded(entry)
    try:
        data = read_bytes(entry.path)
    except OSError as exc:
        result.error = ImageError(entry.path, os_reason(exc, entry.path))
        return result
    if not data:
        result.error = ImageError(entry.path, EMPTY_FILE)
        return result
    result.sha256 = hashlib.sha256(data).hexdigest()
    reuse = known(result.sha256)
    limit = max_pixels if max_pixels is not None else max_pixels_default()
    try:
        image = load_image(data, max_pixels=limit, draft_size=None if reuse else draft_size)
    except ImageError as exc:
        result.error = ImageError(entry.path, exc.reason)
        return result
    try:
        with Image.open(io.BytesIO(data)) as header:
            result.width, result.height = header.size
            result.taken = capture_time(header)
    except Exception:  # noqa: BLE001 - decoded fine above; header facts are best effort
        result.width, result.height = image.size
    if reuse:
        image.close()
    else:
        result.image = _reduced(image, draft_size)
    return result


def _reduced(image: Image.Image, size: int | None) -> Image.Image:
    """Box-reduce by an integer factor while both sides stay >= 2 * ``size``: what JPEG draft mode
    does while decoding, for the other formats, so images queued for the model stay small."""
    if not size:
        return image
    factor = min(image.size) // (2 * size)
    if factor < 2:
        return image
    reduced = image.reduce(factor)
    image.close()
    return reduced


def ordered_map(fn: Callable[[T], R], items: Iterable[T], *, workers: int, prefetch: int) -> Iterator[R]:
    """``map(fn, items)`` on a thread pool, in order, at most ``prefetch`` results ahead of the caller."""
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="vlmkit-index") as pool:
        pending: list[Future[R]] = []
        iterator = iter(items)
        for item in iterator:
            pending.append(pool.submit(fn, item))
            if len(pending) >= prefetch:
                break
        while pending:
            future = pending.pop(0)
            for item in iterator:
                pending.append(pool.submit(fn, item))
                break
            yield future.result()


def embed_decoded(model: Embedder, images: Sequence[Image.Image], batch_size: int) -> tuple[np.ndarray, list[str] | None]:
    """Embeddings of decoded images, (N, D) float32, and their tags when the model gives them in
    the same pass (``embed_images_with_tags``, as the built-in tagger does)."""
    with_tags = getattr(model, "embed_images_with_tags", None)
    tags: list[str] | None = None
    if with_tags is not None:
        vectors, tags = with_tags(list(images), batch_size=batch_size)
    else:
        vectors = model.embed_images(list(images), batch_size=batch_size)
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[0] != len(images):
        raise ValueError(f"model {model.name!r} returned embeddings of shape {vectors.shape} for {len(images)} images")
    return vectors, tags


def default_workers() -> int:
    return max(2, min(8, (os.cpu_count() or 2)))
