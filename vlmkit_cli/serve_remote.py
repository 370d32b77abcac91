"""``vlmkit serve --model NAME=openai:URL[#MODEL]``: the options and config settings of remote models
(:mod:`vlmkit_server.remote`), and opening them before any local model loads.

A remote's API key is read from an environment variable whose NAME is given (``--remote-key-env
NAME=VAR``, or ``remote_keys = {NAME = "VAR"}`` in the config): the key itself is never an argument."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from .common import CommandError, _positive_int

#: The config file's settings for remote models (besides their specs in ``models``).
REMOTE_SETTINGS = frozenset({"remote_keys", "remote_timeout", "remote_concurrency"})


def add_remote_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--remote-key-env", action="append", default=[], metavar="NAME=VAR",
                   help="remote model NAME (--model NAME=openai:URL) sends the API key held in environment variable VAR")
    p.add_argument("--remote-timeout", type=float, default=None,
                   help="seconds to wait for a remote model's answer, or between two pieces of a stream (default: --timeout)")
    p.add_argument("--remote-concurrency", type=_positive_int, default=None, help="calls in flight to each remote model (default: 8)")


def model_name(spec: str) -> str:
    """The name a ``--model`` spec without ``NAME=`` is served under: the model id of a remote spec
    (else its host), the last path part of anything else."""
    from vlmkit_server.remote import is_remote

    if not is_remote(spec):
        return Path(spec).name or spec
    url, _, model_id = spec.partition("#")
    return model_id or url.split("//", 1)[-1].split("/", 1)[0].split(":", 1)[0] or spec


def open_remotes(named: dict[str, str], args: argparse.Namespace, config: dict[str, Any]) -> dict[str, Any]:
    """The remote models among ``named`` (name -> spec), each checked against its remote; a bad URL,
    an unset key variable or a remote that does not serve the model is a one-line error."""
    from vlmkit_server.config import ServerConfig
    from vlmkit_server.remote import RemoteSettings, RemoteSetupError, connect, is_remote, parse_remote

    remote = {name: spec for name, spec in named.items() if is_remote(spec)}
    keys = _key_variables(args, config)
    for name in keys:
        if name not in remote:
            raise CommandError(f"remote key: {name!r} is not a remote model (--model {name}=openai:URL)" if name not in named
                               else f"remote key: model {name!r} is not remote ({named[name]})")
    for name, spec in remote.items():
        try:
            parse_remote(spec)  # every URL checked before any remote is asked
        except RemoteSetupError as exc:
            raise CommandError(f"--model {name}: {exc}") from None
    timeout = args.remote_timeout or config.get("remote_timeout") or args.timeout or config.get("timeout") or ServerConfig.timeout_s
    concurrency = args.remote_concurrency or config.get("remote_concurrency") or RemoteSettings.concurrency
    try:
        settings = RemoteSettings(timeout_s=float(timeout), concurrency=int(concurrency))
    except (TypeError, ValueError) as exc:
        raise CommandError(f"remote settings: {exc}") from None
    models = {}
    for name, spec in remote.items():
        key = None
        if name in keys:
            key = os.environ.get(keys[name])
            if not key:
                raise CommandError(f"model {name!r}: environment variable {keys[name]} (its API key) is not set")
        models[name] = connect(name, spec, api_key=key, settings=settings)
    return models


def _key_variables(args: argparse.Namespace, config: dict[str, Any]) -> dict[str, str]:
    """Model name -> the environment variable holding its key: the config's ``remote_keys``, then the
    command line's ``--remote-key-env NAME=VAR``."""
    table = config.get("remote_keys") or {}
    if not isinstance(table, dict) or not all(isinstance(v, str) and v for v in table.values()):
        raise CommandError("remote_keys: expected a table of model name -> environment variable name")
    keys = dict(table)
    for spec in args.remote_key_env:
        name, eq, variable = spec.partition("=")
        if not eq or not name or not variable:
            raise CommandError(f"--remote-key-env: expected NAME=VARIABLE, got {spec!r}")
        keys[name] = variable
    for name, variable in keys.items():
        if not variable.replace("_", "").isalnum():
            raise CommandError(f"remote key of {name!r}: not an environment variable name (give the variable's name, never the key)")
    return keys
