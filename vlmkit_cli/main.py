"""Entry point: parse, dispatch to a command, turn library errors into one line and an exit code."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from . import (
    bootstrap,
    chat,
    compare,
    demo,
    describe,
    evaluate,
    export,
    interrogate,
    models,
    search,
    serve,
    tasks,
    train,
)
from .common import CommandError

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

# Command groups, each registering its subcommands; no registration by import side effect.
_GROUPS = (tasks, chat, models, demo, train, search, serve, evaluate, compare, interrogate, describe, bootstrap, export)


def build_parser() -> argparse.ArgumentParser:
    from vlmkit import __version__

    parser = argparse.ArgumentParser(prog="vlmkit", description="Vision-language models from the command line.")
    parser.add_argument("--version", action="version", version=f"vlmkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for group in _GROUPS:
        group.register(sub)
    _remember_parsers(parser)
    return parser


def _remember_parsers(parser: argparse.ArgumentParser) -> None:
    """Give every (sub)command's parser itself as the default ``_parser``: the innermost one parsed
    wins, so a wrong option is reported with that command's usage, not the top-level one."""
    parser.set_defaults(_parser=parser)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _remember_parsers(child)


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # argparse would report them with the top-level usage
        getattr(args, "_parser", parser).error(f"unrecognized arguments: {' '.join(unknown)}")
    if not getattr(args, "run", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    from vlmkit.errors import VlmkitError

    try:
        _quiet_libraries()
        return int(args.run(args))
    except (VlmkitError, CommandError) as exc:
        print(f"vlmkit: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("vlmkit: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # `vlmkit ... | head`: the reader left; nothing more to say.
        sys.stderr.close()
        return EXIT_OK
    except Exception as exc:  # noqa: BLE001 - the CLI never shows a traceback unless asked
        if os.environ.get("VLMKIT_DEBUG"):
            raise
        print(f"vlmkit: internal error: {type(exc).__name__}: {exc} (set VLMKIT_DEBUG=1 for the traceback)", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
