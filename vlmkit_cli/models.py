"""``vlmkit models``: the built-in models and the kinds of checkpoint vlmkit loads."""

from __future__ import annotations

import argparse
import json

import vlmkit


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list built-in models and supported checkpoint kinds")
    p.add_argument("--json", action="store_true", help="print one JSON object per model")
    p.set_defaults(run=run_models)


def run_models(args: argparse.Namespace) -> int:
    for info in vlmkit.list_models():
        record = {"name": info.name, "family": info.family, "tasks": list(info.tasks), "source": info.source, "description": info.description}
        if args.json:
            print(json.dumps(record))
        else:
            default = " (default)" if info.name == vlmkit.DEFAULT_MODEL else ""
            print(f"{info.name}{default}\n    {info.source}, {info.family}: {', '.join(info.tasks)}\n    {info.description}")
    return 0
