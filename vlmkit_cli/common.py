"""What every command shares: common options, model loading, image batches, output and progress."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

import vlmkit
from vlmkit.errors import ImageError, UnsupportedTaskError
from vlmkit.images import file_problem, iter_loaded


class CommandError(Exception):
    """A failure the command reports in one line before exiting non-zero."""


def add_common(parser: argparse.ArgumentParser, *, batch_size: int = 8) -> None:
    parser.add_argument("--model", "-m", default=None, help=f"built-in name, checkpoint directory or hub id (default: {vlmkit.DEFAULT_MODEL})")
    parser.add_argument("--json", action="store_true", help="print one JSON object per result")
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    parser.add_argument("--dtype", default=None, help="float32 (default), bfloat16 or float16")
    parser.add_argument("--batch-size", type=_positive_int, default=batch_size, help=f"images per model call (default: {batch_size})")
    parser.add_argument(
        "--max-pixels",
        type=_positive_int,
        default=None,
        help="refuse images with more pixels than this (default: VLMKIT_MAX_PIXELS or 100,000,000)",
    )


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def decoding_options(args: argparse.Namespace, *, sampling: bool = True) -> vlmkit.GenerationOptions:
    """The decoding flags as the one value the models take: --max-new-tokens and --num-beams, and
    with ``sampling`` --sample, --top-p and --temperature (where the command has them)."""
    fields: dict[str, Any] = {"max_new_tokens": args.max_new_tokens, "num_beams": getattr(args, "num_beams", 1)}
    if sampling:
        fields.update(do_sample=args.sample, top_p=args.top_p, temperature=args.temperature)
    return vlmkit.GenerationOptions(**fields)


def load_model(args: argparse.Namespace) -> vlmkit.VisionLanguageModel:
    model = vlmkit.load(args.model or vlmkit.DEFAULT_MODEL, device=args.device, dtype=args.dtype)
    model.max_pixels = args.max_pixels
    return model


def require(model: vlmkit.VisionLanguageModel, task: str) -> None:
    """Fail before reading any input when the model cannot do the task, naming the families that
    can and the way to make one offline."""
    try:
        model.require(task)
    except UnsupportedTaskError as exc:
        raise CommandError(f"{exc}; or train one offline with `vlmkit train` (`vlmkit train --help` lists the recipes)") from None


def input_problem(source: str, *, folders: bool = False) -> str | None:
    """Why an input argument cannot be read, checked before any model loads (see
    :func:`vlmkit.images.file_problem`; ``folders`` where a folder is an input); data: URLs are
    left to the decoder."""
    if source.startswith("data:"):
        return None
    if source.startswith(("http://", "https://")):
        return "remote image URLs are not fetched; download the file first"
    return file_problem(os.path.expanduser(source), folders=folders)


def check_input(source: str) -> None:
    """One image argument: a one-line error, before any model loads, when it cannot be read."""
    problem = input_problem(source)
    if problem is not None:
        raise CommandError(f"{source}: {problem}")


def check_inputs(sources: list[str], out: Output, *, folders: bool = False) -> list[str]:
    """Several input arguments (image files; with ``folders``, also folders, file lists and shards):
    those that cannot be read are reported (and counted as failed) before any model loads; the rest
    are returned. One bad input, or nothing readable, is an error."""
    good = []
    for source in sources:
        problem = input_problem(source, folders=folders)
        if problem is None:
            good.append(source)
        elif len(sources) > 1:
            out.fail(source, problem)
        else:
            raise CommandError(f"{source}: {problem}")
    if sources and not good:
        raise CommandError(f"none of the {len(sources)} inputs can be read (listed above)")
    return good


@dataclass
class Output:
    """Writes results as text or JSON lines, and collects the inputs that failed."""

    as_json: bool
    failures: list[str] = field(default_factory=list)

    def emit(self, record: dict[str, Any], text: str) -> None:
        print(json.dumps(record, ensure_ascii=False) if self.as_json else text, flush=True)

    def fail(self, source: str, reason: str) -> None:
        self.failures.append(source)
        print(f"vlmkit: skipped {source}: {reason}", file=sys.stderr, flush=True)


def progress(total: int, args: argparse.Namespace, desc: str, *, leave: bool = False) -> Any:
    """A progress bar on stderr for more than a handful of items (done / total, images/s, ETA), only
    when both output streams are a terminal and --json is off (so pipes and logs stay clean);
    ``leave`` keeps the finished bar on screen."""
    from tqdm import tqdm

    quiet = total < 4 or not show_progress(args)
    return tqdm(total=total, desc=desc, unit="img", disable=quiet, file=sys.stderr, leave=leave)


def show_progress(args: argparse.Namespace) -> bool:
    """Progress bars only when both output streams are a terminal and --json is off."""
    terminal = sys.stderr.isatty() and sys.stdout.isatty()
    return bool(terminal and not getattr(args, "json", False) and not os.environ.get("VLMKIT_NO_PROGRESS"))


def image_batches(
    paths: list[str], model: vlmkit.VisionLanguageModel, args: argparse.Namespace, out: Output, desc: str
) -> Iterator[list[tuple[str, Image.Image]]]:
    """Decode images on worker threads; yield batches of the good ones, report the bad ones."""
    batch: list[tuple[str, Image.Image]] = []
    with progress(len(paths), args, desc) as bar:
        for source, item in iter_loaded(paths, max_pixels=args.max_pixels, draft_size=model.image_size):
            if isinstance(item, ImageError):
                out.fail(str(source), item.reason)
                bar.update(1)
                continue
            batch.append((str(source), item))
            if len(batch) == args.batch_size:
                yield batch
                bar.update(len(batch))
                batch = []
        if batch:
            yield batch
            bar.update(len(batch))


def finish(out: Output, total: int) -> int:
    """Exit status: 0 when every input was processed, 1 when any failed (the rest were still done)."""
    if out.failures:
        print(f"vlmkit: {len(out.failures)} of {total} inputs failed", file=sys.stderr)
        return 1
    return 0


def ray_engine(args: argparse.Namespace, model: vlmkit.VisionLanguageModel) -> Any:
    """``--engine ray [--address A]``: a Ray engine whose actors each load their own copy of ``model``."""
    import functools

    from vlmkit.index.ray_engine import RayEngine

    # What the user named, not model.name: an ONNX export goes by its source model's name.
    source = getattr(args, "model", None) or model.name
    return RayEngine(functools.partial(vlmkit.load, source, device=args.device, dtype=args.dtype), address=args.address)
