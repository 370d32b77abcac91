"""Indexed files by content hash: the bytes of an image and its JPEG thumbnail.

The client names an image only by the sha256 the index stored for it. The hash is looked up in the
index, the stored path (a file, or ``shard.tar::member``) is read, and the bytes are served only if
they still hash to that sha256. So nothing outside the index is ever read, no path comes from the
client, and a URL always means the same bytes (responses can be cached for good).
"""

from __future__ import annotations

import functools
import hashlib
import io
import re
import tarfile
from dataclasses import dataclass
from pathlib import PurePosixPath

from PIL import Image

from vlmkit.images import load_image
from vlmkit.index import ImageIndex, ImageIndexError
from vlmkit.index.sources import TAR_SEPARATOR, read_bytes

SHA256 = re.compile(r"[0-9a-f]{64}")
#: Formats browsers display as they are; anything else (TIFF, PPM, ...) is sent as PNG.
WEB_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "GIF": "image/gif", "BMP": "image/bmp", "ICO": "image/x-icon"}
#: Rows looked at for one hash (identical files share it); the first readable one is served.
MAX_COPIES = 16


class NotIndexed(LookupError):
    """No indexed file has this content (any more): the server answers 404."""


@dataclass(frozen=True)
class Media:
    data: bytes
    media_type: str
    name: str


def display_name(path: str) -> str:
    """The file name shown for a stored path: ``/a/b/cat.jpg`` -> ``cat.jpg``; ``s.tar::x/1.jpg`` -> ``1.jpg``."""
    return PurePosixPath(path.rsplit(TAR_SEPARATOR, 1)[-1]).name or path


class MediaStore:
    """Reads indexed images by sha256 and keeps an LRU cache of their thumbnails."""

    def __init__(self, index: ImageIndex, *, thumbnail_size: int, max_pixels: int | None, cache_size: int = 1024) -> None:
        self.index = index
        self.thumbnail_size = thumbnail_size
        self.max_pixels = max_pixels
        # Keyed by content hash, so an entry never goes stale; failures (exceptions) are not cached.
        self.thumbnail = functools.lru_cache(maxsize=cache_size)(self._thumbnail)

    def paths(self, sha256: str) -> list[str]:
        """Stored paths with this content hash (empty for anything that is not a sha256)."""
        if not SHA256.fullmatch(sha256):
            return []
        try:
            table = self.index.table()
        except ImageIndexError:
            return []
        # Safe to inline: the value is 64 hex digits.
        rows = table.search().where(f"sha256 = '{sha256}'").select(["path"]).limit(MAX_COPIES).to_list()
        return sorted(row["path"] for row in rows)

    def original(self, sha256: str) -> tuple[bytes, str]:
        """The bytes of an indexed file with this hash and its stored path, checked against the hash."""
        paths = self.paths(sha256)
        if not paths:
            raise NotIndexed("no indexed image has this id")
        for path in paths:
            try:
                data = read_bytes(path)
            except (OSError, KeyError, tarfile.TarError):
                continue  # moved or deleted since indexing: try an identical copy
            if hashlib.sha256(data).hexdigest() == sha256:
                return data, path
        raise NotIndexed("the indexed file is gone or has changed since it was indexed; re-run `vlmkit index`")

    def image(self, sha256: str) -> Media:
        """The full image: as stored when browsers show that format, else converted to PNG."""
        data, path = self.original(sha256)
        try:
            with Image.open(io.BytesIO(data)) as header:
                media_type = WEB_TYPES.get(header.format or "")
        except Exception:  # noqa: BLE001 - load_image below reports what is wrong with the file
            media_type = None
        if media_type is None:
            buffer = io.BytesIO()
            load_image(data, max_pixels=self.max_pixels).save(buffer, "PNG")
            data, media_type = buffer.getvalue(), "image/png"
        return Media(data, media_type, display_name(path))

    def _thumbnail(self, sha256: str) -> Media:
        data, path = self.original(sha256)
        size = self.thumbnail_size
        image = load_image(data, max_pixels=self.max_pixels, draft_size=size)
        image.thumbnail((size, size))
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=82)
        return Media(buffer.getvalue(), "image/jpeg", display_name(path))
