"""The HTTP server (``vlmkit serve``): a search page and a JSON API over an image index.

An application on top of the library, like the CLI: it parses requests, calls
:class:`vlmkit.index.ImageIndex` and turns vlmkit's exceptions into status codes. Needs FastAPI,
uvicorn and python-multipart (``pip install 'vlmkit[serve]'``).
"""

from .app import DEFAULT_K, MAX_K, MAX_UPLOAD_BYTES, THUMBNAIL_SIZE, create_app

__all__ = ["create_app", "DEFAULT_K", "MAX_K", "MAX_UPLOAD_BYTES", "THUMBNAIL_SIZE"]
