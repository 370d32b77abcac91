"""The HTTP server (``vlmkit serve``): an OpenAI-compatible API over loaded models
(:func:`create_api_app`), and a search page with its JSON API over an image index (:func:`create_app`).

An application on top of the library, like the CLI: it parses requests, calls vlmkit and turns its
exceptions into status codes. Needs FastAPI, uvicorn, python-multipart and prometheus-client
(``pip install 'vlmkit[serve]'``).
"""

from .api import ServerConfig, create_api_app
from .app import DEFAULT_K, MAX_K, MAX_UPLOAD_BYTES, THUMBNAIL_SIZE, create_app
from .routing import Route, Routes

__all__ = ["create_app", "create_api_app", "ServerConfig", "Routes", "Route", "DEFAULT_K", "MAX_K", "MAX_UPLOAD_BYTES", "THUMBNAIL_SIZE"]
