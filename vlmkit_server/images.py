"""The server's image policy: which image references a request may make, and how they are read.

``data:`` URLs are decoded; http(s) URLs are fetched only from hosts on the allow-list (none by
default), redirects included; any other URL, path or file name is refused, so no client text ever
names a file on the server. Everything else about an image (formats, the pixel limit) is
:func:`vlmkit.images.load_image`'s.
"""

from __future__ import annotations

import base64
import binascii
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from vlmkit.errors import ImageError
from vlmkit.images import load_image

from .config import ServerConfig
from .errors import BadRequest, TooLarge

__all__ = ["ImagePolicy"]

#: Decoded images are shrunk to this many pixels a side: models see a few hundred.
MAX_SIDE = 1024


class ImagePolicy:
    """Turns the image references of a request into decoded images, under the server's rules."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config

    def __call__(self, url: Any, what: str = "image") -> Any:
        """The image ``url`` refers to (a string, or ``{"url": ...}``); ``what`` names it in errors."""
        if isinstance(url, dict):
            url = url.get("url")
        if not isinstance(url, str) or not url:
            raise BadRequest(f"{what}: expected a data: URL (or {{'url': ...}})")
        if url.startswith("data:"):
            data = _decode_data_url(url, what)
        elif url.startswith(("http://", "https://")):
            data = self._fetch(url, what)
        else:
            raise BadRequest(f"{what}: only data: URLs are accepted (and http(s) URLs from allowed hosts)")
        if not data:
            raise BadRequest(f"{what}: empty image")
        try:
            image = load_image(data, max_pixels=self.config.max_pixels)
        except ImageError as exc:
            raise type(exc)(what, exc.reason) from None  # the same kind of error, named as the request names it
        image.thumbnail((MAX_SIDE, MAX_SIDE))  # keep requests cheap
        return image

    def _fetch(self, url: str, what: str) -> bytes:
        host = urllib.parse.urlsplit(url).hostname or ""
        if host not in self.config.allow_url_hosts:
            raise BadRequest(f"{what}: fetching image URLs from {host!r} is not allowed (send a data: URL)")
        limit = self.config.max_body_bytes
        try:
            with urllib.request.build_opener(_redirects_within(self.config.allow_url_hosts)).open(url, timeout=10) as reply:
                data = reply.read(limit + 1)
        except OSError as exc:
            raise BadRequest(f"{what}: could not fetch {url}: {exc}") from None
        if len(data) > limit:
            raise TooLarge(f"{what}: the image at {url} is over {limit:,} bytes")
        return bytes(data)


def _decode_data_url(url: str, what: str) -> bytes:
    header, comma, payload = url.partition(",")
    if not comma or not header.endswith(";base64"):
        raise BadRequest(f"{what}: a data: URL must be base64 (data:image/png;base64,...)")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"{what}: the data: URL is not valid base64") from None


def _redirects_within(allowed: tuple[str, ...]) -> urllib.request.HTTPRedirectHandler:
    """A redirect handler that follows redirects only to http(s) URLs on ``allowed`` hosts."""

    class Redirects(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> Any:
            target = urllib.parse.urlsplit(newurl)
            if target.scheme not in ("http", "https") or target.hostname not in allowed:
                raise urllib.error.URLError(f"redirected to {newurl}, whose host is not allowed")
            return super().redirect_request(req, fp, code, msg, headers, newurl)

    return Redirects()
