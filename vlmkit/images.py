"""Reading images safely: files, bytes, data URLs, arrays and PIL images become RGB PIL images.

Every failure (missing file, directory, not an image, truncated or corrupt data, too many pixels)
raises :class:`~vlmkit.errors.ImageError` naming the source and the reason (too many pixels: its
subclass :class:`~vlmkit.errors.ImageTooLargeError`), so callers can report bad inputs and carry on
with the good ones.
"""

from __future__ import annotations

import base64
import binascii
import errno
import io
import os
import stat
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageError, ImageTooLargeError

__all__ = ["ImageInput", "DEFAULT_MAX_PIXELS", "max_pixels_default", "load_image", "iter_loaded", "describe"]

ImageInput = str | os.PathLike | bytes | Image.Image | np.ndarray

# About 100 megapixels (a 10,000 x 10,000 photo); decompression bombs claim far more.
DEFAULT_MAX_PIXELS = 100_000_000
_ENV_MAX_PIXELS = "VLMKIT_MAX_PIXELS"


# Why an input cannot be read: one vocabulary for every command, the image index and the server.
NO_SUCH_FILE = "no such file or directory"
DANGLING_SYMLINK = "dangling symlink (its target does not exist)"
SYMLINK_LOOP = "symlink loop"
IS_A_DIRECTORY = "a directory, not an image file"
NOT_A_FILE = "not a regular file"
EMPTY_FILE = "empty file"
PERMISSION_DENIED = "permission denied"
NOT_AN_IMAGE = "not an image file (or an unsupported format)"


def os_reason(exc: OSError, path: str | os.PathLike[str] | None = None) -> str:
    """The vocabulary's words for an OS error on ``path`` (a symlink to nothing is a dangling symlink)."""
    if exc.errno == errno.ELOOP:
        return SYMLINK_LOOP
    if exc.errno in (errno.EACCES, errno.EPERM):
        return PERMISSION_DENIED
    if exc.errno == errno.ENOENT:
        return DANGLING_SYMLINK if path is not None and os.path.islink(path) else NO_SUCH_FILE
    if exc.errno == errno.EISDIR:
        return IS_A_DIRECTORY
    return f"cannot read: {exc.strerror or exc}"


def file_problem(path: str | os.PathLike[str], *, folders: bool = False) -> str | None:
    """Why ``path`` cannot be read as an input, found without loading a model or decoding anything:
    missing, a dangling symlink, a directory (unless ``folders``), not a regular file, empty, or
    unreadable. None when it can be tried."""
    try:
        info = os.stat(path)
    except OSError as exc:
        return os_reason(exc, path)
    if stat.S_ISDIR(info.st_mode):
        return None if folders else IS_A_DIRECTORY
    if not stat.S_ISREG(info.st_mode):
        return NOT_A_FILE
    if info.st_size == 0:
        return EMPTY_FILE
    if not os.access(path, os.R_OK):
        return PERMISSION_DENIED
    return None


def max_pixels_default() -> int:
    """The pixel limit in force: ``VLMKIT_MAX_PIXELS`` if set, else :data:`DEFAULT_MAX_PIXELS`."""
    raw = os.environ.get(_ENV_MAX_PIXELS)
    if raw is None:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(raw)
    except ValueError:
        raise ImageError(_ENV_MAX_PIXELS, f"must be a positive integer, got {raw!r}") from None
    if value <= 0:
        raise ImageError(_ENV_MAX_PIXELS, f"must be a positive integer, got {raw!r}")
    return value


def describe(source: object) -> str:
    """A short printable name for an image input (its path, or its type)."""
    if isinstance(source, (str, os.PathLike)):
        text = os.fspath(source)
        return text[:40] + "..." if text.startswith("data:") else text
    if isinstance(source, Image.Image):
        return f"<PIL image {source.width}x{source.height}>"
    if isinstance(source, np.ndarray):
        return f"<array {tuple(source.shape)}>"
    if isinstance(source, (bytes, bytearray)):
        return f"<{len(source)} bytes>"
    return f"<{type(source).__name__}>"


def _check_pixels(name: str, width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise ImageTooLargeError(
            name,
            f"{width}x{height} = {width * height:,} pixels is over the limit of {max_pixels:,} "
            f"(possible decompression bomb; raise it with --max-pixels or {_ENV_MAX_PIXELS})",
        )


def _from_array(array: np.ndarray, name: str) -> Image.Image:
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise ImageError(name, f"an image array must be HxW, HxWx3 or HxWx4, got shape {array.shape}")
    if array.dtype != np.uint8:
        if np.issubdtype(array.dtype, np.floating) and array.size and 0.0 <= array.min() and array.max() <= 1.0:
            array = (array * 255.0).round()
        array = np.clip(array, 0, 255).astype(np.uint8)
    return Image.fromarray(array)


def _open_bytes(data: bytes, name: str) -> Image.Image:
    return _open_stream(io.BytesIO(data), name)


def _decode_data_url(url: str) -> bytes:
    header, _, payload = url.partition(",")
    if not header.endswith(";base64"):
        raise ImageError(describe(url), "only base64 data: URLs are supported")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ImageError(describe(url), "the data: URL is not valid base64") from None


def _open_stream(stream: io.IOBase | str, name: str) -> Image.Image:
    try:
        with warnings.catch_warnings():
            # Our own pixel limit (checked right after opening) supersedes PIL's warning.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(stream)  # type: ignore[arg-type]
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(name, f"too many pixels (possible decompression bomb): {exc}") from None
    except UnidentifiedImageError:
        raise ImageError(name, NOT_AN_IMAGE) from None
    except OSError as exc:
        raise ImageError(name, os_reason(exc, name)) from None


def load_image(
    source: ImageInput,
    *,
    max_pixels: int | None = None,
    draft_size: int | None = None,
) -> Image.Image:
    """Read one image as RGB, honouring EXIF orientation.

    ``draft_size`` lets JPEG files decode at a reduced scale (1/2, 1/4 or 1/8) while both sides stay
    at least ``draft_size`` pixels: a model that resizes to 224 px never needs the full 12 MP decode.
    """
    limit = max_pixels if max_pixels is not None else max_pixels_default()
    name = describe(source)
    if isinstance(source, Image.Image):
        _check_pixels(name, source.width, source.height, limit)
        return source if source.mode == "RGB" else source.convert("RGB")
    if isinstance(source, np.ndarray):
        image = _from_array(source, name)
        return image.convert("RGB")
    if isinstance(source, (bytes, bytearray)):
        if not source:
            raise ImageError(name, EMPTY_FILE)
        image = _open_bytes(bytes(source), name)
    elif isinstance(source, (str, os.PathLike)):
        text = os.fspath(source)
        if text.startswith("data:"):
            image = _open_bytes(_decode_data_url(text), name)
        elif text.startswith(("http://", "https://")):
            raise ImageError(name, "remote image URLs are not fetched; download the file first")
        else:
            path = Path(text).expanduser()
            problem = file_problem(path)
            if problem is not None:
                raise ImageError(name, problem)
            image = _open_stream(str(path), name)
    else:
        raise ImageError(name, "expected a path, bytes, a data: URL, a PIL image or a numpy array")

    try:
        _check_pixels(name, image.width, image.height, limit)
        if draft_size and image.format == "JPEG":
            image.draft("RGB", (draft_size, draft_size))
        image.load()
        image = ImageOps.exif_transpose(image) or image
        return image if image.mode == "RGB" else image.convert("RGB")
    except ImageError:
        image.close()
        raise
    except (OSError, SyntaxError, ValueError) as exc:
        image.close()
        reason = str(exc)
        if "truncated" in reason:
            raise ImageError(name, f"truncated image ({reason})") from None
        raise ImageError(name, f"corrupt image ({reason})") from None


def iter_loaded(
    sources: Iterable[ImageInput],
    *,
    max_pixels: int | None = None,
    draft_size: int | None = None,
    transform: Callable[[Image.Image], Any] | None = None,
    workers: int = 2,
    prefetch: int = 64,
) -> Iterator[tuple[ImageInput, Any]]:
    """Decode (and optionally ``transform``) images on a thread pool, in order.

    Yields ``(source, result)`` where result is the image (or ``transform(image)``) or the
    :class:`ImageError` that reading it raised. Decoding and resizing (PIL releases the GIL) overlap
    with whatever the caller does between items, such as running a model on the previous batch.
    """
    items: Sequence[ImageInput] = list(sources)
    if not items:
        return

    def read(src: ImageInput) -> Any:
        try:
            image = load_image(src, max_pixels=max_pixels, draft_size=draft_size)
        except ImageError as exc:
            return exc
        return transform(image) if transform is not None else image

    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="vlmkit-decode") as pool:
        pending: list[tuple[ImageInput, Any]] = []
        index = 0
        while index < len(items) and len(pending) < prefetch:
            pending.append((items[index], pool.submit(read, items[index])))
            index += 1
        while pending:
            src, future = pending.pop(0)
            if index < len(items):
                pending.append((items[index], pool.submit(read, items[index])))
                index += 1
            yield src, future.result()
