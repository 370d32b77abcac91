"""``vlmkit chat``: interactive, streaming visual chat. Each input line is one user turn.

Type ``/image PATH`` to attach an image to your next message, ``/reset`` to start over and
``/quit`` (or end of input) to leave.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from vlmkit.errors import ImageError
from vlmkit.images import load_image

from .common import CommandError, Output, _positive_int, add_common, decoding_options, load_model, require


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("chat", help="multi-turn visual chat (streams the reply)")
    p.add_argument("--image", action="append", default=[], help="image for the first message, repeatable")
    p.add_argument("--system", default=None, help="a system message")
    p.add_argument("--max-new-tokens", type=_positive_int, default=256, help="longest reply, in tokens (default: 256)")
    p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--top-p", type=float, default=1.0, help="with --sample: nucleus sampling mass (default: 1.0, all tokens)")
    p.add_argument("--temperature", type=float, default=1.0, help="with --sample: softmax temperature (default: 1.0)")
    add_common(p, batch_size=1)
    p.set_defaults(run=run_chat)


def _read(path: str, args: argparse.Namespace) -> Any:
    try:
        return load_image(path, max_pixels=args.max_pixels)
    except ImageError as exc:
        raise CommandError(str(exc)) from None


def run_chat(args: argparse.Namespace) -> int:
    pending = [_read(path, args) for path in args.image]  # bad files are reported before the model loads
    model = load_model(args)
    require(model, "chat")
    out = Output(args.json)
    interactive = sys.stdin.isatty() and not args.json
    messages: list[dict[str, Any]] = []
    if args.system:
        messages.append({"role": "system", "content": args.system})
    while True:
        if interactive:
            print("you> ", end="", flush=True)
        line = sys.stdin.readline()
        if not line:
            break
        line = line.strip()
        if not line:
            continue
        if line in ("/quit", "/exit"):
            break
        if line == "/reset":
            messages = messages[:1] if args.system else []
            pending = []
            continue
        if line.startswith("/image "):
            try:
                pending.append(_read(line[len("/image ") :].strip(), args))
            except CommandError as exc:
                print(f"vlmkit: {exc}", file=sys.stderr)
            continue
        parts: list[dict[str, Any]] = [{"type": "image", "image": image} for image in pending]
        parts.append({"type": "text", "text": line})
        pending = []
        messages.append({"role": "user", "content": parts})
        options = decoding_options(args)
        if args.json:
            reply = str(model.chat(messages, options=options))
            out.emit({"role": "assistant", "content": reply, "model": model.name}, reply)
        else:
            if interactive:
                print("model> ", end="", flush=True)
            pieces = []
            for piece in model.chat(messages, stream=True, options=options):
                pieces.append(piece)
                print(piece, end="", flush=True)
            print(flush=True)
            reply = "".join(pieces)
        messages.append({"role": "assistant", "content": reply})
    return 0
