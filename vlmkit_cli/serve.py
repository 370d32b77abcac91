"""``vlmkit serve``: the image search page and its JSON API over HTTP (see :mod:`vlmkit_server`)."""

from __future__ import annotations

import argparse
import ipaddress
import sys
from pathlib import Path

import vlmkit

from .common import CommandError, _positive_int, load_model

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_MAX_UPLOAD_MB = 20


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve a search page and JSON API over an image index")
    p.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on (default: {DEFAULT_HOST}, this machine only)")
    p.add_argument("--port", type=_port, default=DEFAULT_PORT, help=f"port (default: {DEFAULT_PORT})")
    p.add_argument("--index", default=None, help="index directory (default: $VLMKIT_INDEX, else the user data directory)")
    p.add_argument(
        "--model", "-m", default=None, help=f"model for queries (default: the one the index was built with, else {vlmkit.DEFAULT_MODEL})"
    )
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--dtype", default=None, help="float32 (default), bfloat16 or float16")
    p.add_argument(
        "--max-upload-mb", type=_positive_int, default=DEFAULT_MAX_UPLOAD_MB, help=f"largest image upload (default: {DEFAULT_MAX_UPLOAD_MB})"
    )
    p.add_argument(
        "--max-pixels", type=_positive_int, default=None, help="refuse images with more pixels (default: VLMKIT_MAX_PIXELS or 100,000,000)"
    )
    p.set_defaults(run=run_serve)


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0-65535, got {value}")
    return value


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def run_serve(args: argparse.Namespace) -> int:
    from vlmkit.index import ImageIndex, default_index_path

    path = Path(args.index).expanduser() if args.index else default_index_path()
    index = ImageIndex(path)
    meta = index.meta()
    if meta is None or len(index) == 0:
        raise CommandError(f"no index at {path}: build one with `vlmkit index DIR...`, or pass --index PATH")
    try:
        import fastapi  # noqa: F401
        import python_multipart  # noqa: F401
        import uvicorn

        from vlmkit_server import create_app
    except ImportError as exc:
        raise CommandError(f"`vlmkit serve` needs {exc.name or 'FastAPI and uvicorn'}: pip install 'vlmkit[serve]'") from None
    args.model = args.model or meta["model"]
    model = load_model(args)
    app = create_app(index, model, max_upload_bytes=args.max_upload_mb * 2**20, max_pixels=args.max_pixels)
    if not is_loopback(args.host):
        print(
            f"vlmkit: warning: listening on {args.host}: anyone who can reach this port can search the index and "
            "view every indexed image (there is no API key yet)",
            file=sys.stderr,
        )
    shown = f"[{args.host}]" if ":" in args.host else args.host
    print(f"vlmkit: serving {len(index)} images from {path} with {model.name} at http://{shown}:{args.port}/", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
