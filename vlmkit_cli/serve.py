"""``vlmkit serve``: models over an OpenAI-compatible API, and the image search page when an index
exists (see :mod:`vlmkit_server`)."""

from __future__ import annotations

import argparse
import functools
import ipaddress
import json
import os
import sys
from pathlib import Path
from typing import Any

import vlmkit
from vlmkit.errors import VlmkitError

from .common import CommandError, _positive_int, load_model
from .serve_remote import REMOTE_SETTINGS, add_remote_options, model_name, open_remotes

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_MAX_UPLOAD_MB = 20


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve models over an OpenAI-compatible API (and a search page over an image index)",
        description="Serve models over an OpenAI-compatible API with dynamic batching, a chat page, and the "
        "search page when an index exists. Without --model, serves the index's model (else the built-in).",
    )
    p.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on (default: {DEFAULT_HOST}, this machine only)")
    p.add_argument("--port", type=_port, default=DEFAULT_PORT, help=f"port (default: {DEFAULT_PORT})")
    p.add_argument("--model", "-m", action="append", default=[], metavar="[NAME=]MODEL",
                   help="a model to serve, repeatable: built-in name, checkpoint directory, hub id or openai:URL[#MODEL] "
                   "(a model on another OpenAI-compatible server), optionally named")
    p.add_argument("--config", default=None, metavar="FILE", help="a JSON or TOML file with the same settings (command-line options win)")
    p.add_argument("--index", default=None, help="index directory for search (default: $VLMKIT_INDEX, else the user data directory)")
    p.add_argument("--route", action="append", default=[], metavar="SIDE=NAME",
                   help='tandem routing for model "auto": precise=NAME (captions, short answers), conversational=NAME')
    p.add_argument("--api-key", action="append", default=[], dest="api_keys", metavar="KEY",
                   help="accept this API key (repeatable; also $VLMKIT_API_KEYS, comma-separated); required off loopback")
    p.add_argument("--allow-url-host", action="append", default=[], metavar="HOST", help="hosts whose http(s) image URLs may be fetched (default: none)")
    p.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN", help="allow browser requests from this origin (default: none)")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--dtype", default=None, help="float32 (default), bfloat16 or float16")
    p.add_argument(
        "--max-upload-mb", type=_positive_int, default=DEFAULT_MAX_UPLOAD_MB, help=f"largest request or upload (default: {DEFAULT_MAX_UPLOAD_MB})"
    )
    p.add_argument(
        "--max-pixels", type=_positive_int, default=None, help="refuse images with more pixels (default: VLMKIT_MAX_PIXELS or 100,000,000)"
    )
    p.add_argument("--timeout", type=float, default=None, help="seconds a request may take, queueing included (default: 120)")
    p.add_argument("--batch-window-ms", type=float, default=None, help="how long a batch waits for more requests (default: 5)")
    p.add_argument("--max-batch", type=_positive_int, default=None, help="requests per model call (default: 16)")
    p.add_argument("--max-queue", type=_positive_int, default=None, help="waiting requests per model and task before 429 (default: 64)")
    add_remote_options(p)
    ray = p.add_argument_group("Ray Serve (--engine ray)")
    ray.add_argument("--engine", choices=("local", "ray"), default="local",
                     help="local: the models in this process (default); ray: each model a Ray Serve deployment with its own replicas")
    ray.add_argument("--address", default=None, metavar="HOST:PORT",
                     help="the Ray cluster's head (GCS) address (default: $RAY_ADDRESS, else a Ray instance started here)")
    ray.add_argument("--replicas", action="append", default=[], metavar="NAME=N", help="replicas of a model (default: 1 each)")
    ray.add_argument("--autoscale", action="append", default=[], metavar="NAME=MIN:MAX",
                     help="let Ray Serve scale a model between MIN and MAX replicas by load")
    ray.add_argument("--replica-cpus", type=float, default=1.0, help="CPUs each replica reserves (default: 1; a GPU each when the cluster has them)")
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


def _read_config(path: str) -> dict[str, Any]:
    file = Path(path).expanduser()
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise CommandError(f"cannot read config {file}: {exc.strerror or exc}") from None
    try:
        if file.suffix.lower() == ".toml":
            import tomllib

            data = tomllib.loads(text)
        else:
            data = json.loads(text)
    except ValueError as exc:
        raise CommandError(f"config {file} is not valid {'TOML' if file.suffix.lower() == '.toml' else 'JSON'}: {exc}") from None
    if not isinstance(data, dict):
        raise CommandError(f"config {file}: expected a table/object at the top level")
    known = {"models", "routes", "api_keys", "index", "allow_url_hosts", "cors_origins", "max_pixels", "timeout",
             "batch_window_ms", "max_batch", "max_queue", "max_upload_mb", *REMOTE_SETTINGS}
    unknown = sorted(set(data) - known)
    if unknown:
        raise CommandError(f"config {file}: unknown settings {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    return data


def _named(specs: list[str]) -> dict[str, str]:
    models: dict[str, str] = {}
    for spec in specs:
        name, eq, path = spec.partition("=")
        if not eq:
            name, path = model_name(spec), spec
        if not name or not path:
            raise CommandError(f"--model: expected NAME=MODEL or MODEL, got {spec!r}")
        if name == "auto":
            raise CommandError("--model: 'auto' is reserved for routing")
        if name in models:
            raise CommandError(f"--model: two models named {name!r}")
        models[name] = path
    return models


def run_serve(args: argparse.Namespace) -> int:
    from vlmkit.index import ImageIndex, default_index_path

    try:
        import fastapi  # noqa: F401
        import prometheus_client  # noqa: F401
        import python_multipart  # noqa: F401
        import uvicorn  # noqa: F401

        from vlmkit_server import ServerConfig
        from vlmkit_server.routing import Routes
    except ImportError as exc:
        raise CommandError(f"`vlmkit serve` needs {exc.name or 'FastAPI and uvicorn'}: pip install 'vlmkit[serve]'") from None
    config = _read_config(args.config) if args.config else {}
    specs = list(args.model) or [f"{k}={v}" for k, v in dict(config.get("models") or {}).items()]
    index_path = args.index or config.get("index")
    path = Path(index_path).expanduser() if index_path else default_index_path()
    index = ImageIndex(path)
    meta = index.meta() if path.exists() else None
    if (index_path or not specs) and (meta is None or len(index) == 0):
        if index_path:
            raise CommandError(f"no index at {path}: build one with `vlmkit index DIR...`, or pass --index PATH")
        meta = None
    if not specs:
        specs = [meta["model"] if meta is not None else vlmkit.DEFAULT_MODEL]
    named = _named(specs)
    keys = list(args.api_keys) or list(config.get("api_keys") or []) or [k for k in os.environ.get("VLMKIT_API_KEYS", "").split(",") if k]
    if not is_loopback(args.host) and not keys:
        raise CommandError(f"listening on {args.host} needs an API key: --api-key KEY (or VLMKIT_API_KEYS); loopback needs none")
    routes = dict(config.get("routes") or {})
    for spec in args.route:
        side, eq, name = spec.partition("=")
        if not eq or side not in ("precise", "conversational"):
            raise CommandError(f"--route: expected precise=NAME or conversational=NAME, got {spec!r}")
        routes[side] = name
    try:
        route_config = Routes(**routes)
    except TypeError as exc:
        raise CommandError(f"routes: {exc}") from None
    engine = _ray_engine(args) if args.engine == "ray" else None
    if engine is None and (args.replicas or args.autoscale or args.address):
        raise CommandError("--address, --replicas and --autoscale need --engine ray")
    remotes = open_remotes(named, args, config)  # checked (the remotes asked) before any local model loads
    models = {}
    for name, model_path in named.items():
        args_for = argparse.Namespace(**{**vars(args), "model": model_path})
        if name in remotes:
            models[name] = remotes[name]
        elif engine is None:
            models[name] = load_model(args_for)
    upload_mb = int(config.get("max_upload_mb") or args.max_upload_mb)
    server_config = ServerConfig(
        api_keys=tuple(keys),
        max_body_bytes=upload_mb * 2**20 + 64 * 1024,
        max_pixels=args.max_pixels or config.get("max_pixels"),
        timeout_s=float(args.timeout or config.get("timeout") or 120.0),
        window_ms=float(args.batch_window_ms if args.batch_window_ms is not None else config.get("batch_window_ms", 5.0)),
        max_batch=int(args.max_batch or config.get("max_batch") or 16),
        max_queue=int(args.max_queue or config.get("max_queue") or 64),
        allow_url_hosts=tuple(args.allow_url_host or config.get("allow_url_hosts") or ()),
        cors_origins=tuple(args.cors_origin or config.get("cors_origins") or ()),
        routes=route_config,
    )
    if engine is not None:
        from vlmkit_server.ray_engine import replica_model

        local = {name: path for name, path in named.items() if name not in remotes}
        if not local:
            raise CommandError("--engine ray: every model is remote (openai:URL); there is nothing to deploy")
        factories = {name: functools.partial(replica_model, path, device=args.device, dtype=args.dtype, max_pixels=args.max_pixels)
                     for name, path in local.items()}
        try:
            engine.check(list(local))
            engine.connect()
            print(f"vlmkit: deploying {', '.join(local)} on Ray Serve ...", file=sys.stderr)
            deployed = engine.deploy(factories, max_batch=server_config.max_batch, window_ms=server_config.window_ms,
                                     timeout_s=server_config.timeout_s)
        except VlmkitError as exc:
            raise CommandError(str(exc)) from None
        models = {name: deployed[name] if name in deployed else models[name] for name in named}
        scales = ", ".join(f"{name} x{engine.scale(name).describe()}" for name in local)
        print(f"vlmkit: Ray Serve replicas: {scales}", file=sys.stderr)
    try:
        return _serve(args, config, index, path, meta, models, server_config, upload_mb, engine)
    finally:
        if engine is not None:
            engine.shutdown()  # nothing stays deployed after the server stops, or when it fails to start


def _ray_engine(args: argparse.Namespace) -> Any:
    try:
        from vlmkit_server.ray_engine import RayEngine, parse_autoscale, parse_replicas
    except ImportError as exc:
        raise CommandError(f"--engine ray needs {exc.name or 'Ray Serve'}: pip install 'vlmkit[ray]'") from None
    try:
        return RayEngine(address=args.address or os.environ.get("RAY_ADDRESS"), replicas=parse_replicas(args.replicas),
                         autoscale=parse_autoscale(args.autoscale), replica_cpus=args.replica_cpus)
    except VlmkitError as exc:
        raise CommandError(str(exc)) from None


def _serve(args: argparse.Namespace, config: dict[str, Any], index: Any, path: Path, meta: dict[str, Any] | None,
           models: dict[str, Any], server_config: Any, upload_mb: int, engine: Any) -> int:
    import uvicorn

    from vlmkit_server import create_api_app, create_app

    search = None
    if meta is not None:
        searcher = next((m for m in models.values() if m.name == meta["model"]), None)
        if searcher is None:
            searcher = load_model(argparse.Namespace(**{**vars(args), "model": meta["model"]}))
        search = create_app(index, searcher, max_upload_bytes=upload_mb * 2**20, max_pixels=args.max_pixels)
    try:
        health_extra = None
        if search is not None:  # the search page reads the index's rows and model from /health
            search_model = search.state.model.name
            health_extra = lambda: {"rows": len(index), "model": search_model}  # noqa: E731
        app = create_api_app(models, server_config, health_extra=health_extra, engine=engine)
    except VlmkitError as exc:
        raise CommandError(str(exc)) from None
    if search is not None:
        from vlmkit_server.app import SEARCH_LINK

        app.state.page_links.insert(0, SEARCH_LINK)
        search.state.page_links = app.state.page_links  # one list of pages for both 404 handlers
        app.mount("/", search)
    else:
        from vlmkit_server.pages import redirect_root_to_chat

        redirect_root_to_chat(app)  # no index: "/" is the chat page
    shown = f"[{args.host}]" if ":" in args.host else args.host
    where = f"http://{shown}:{args.port}/"
    if search is not None:
        print(f"vlmkit: serving {len(index)} images from {path} with {search.state.model.name} at {where}", file=sys.stderr)
    print(f"vlmkit: serving {', '.join(models)} at {where}v1 (OpenAI-compatible); chat page at {where}chat", file=sys.stderr)
    if not is_loopback(args.host):
        print(f"vlmkit: warning: listening on {args.host}: every request needs an API key", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=30)
    return 0
