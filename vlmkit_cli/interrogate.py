"""`vlmkit interrogate`: prompts for text-to-image generators (a caption plus ranked modifiers)."""

from __future__ import annotations

import argparse

import vlmkit
from vlmkit.interrogate import MODES, InterrogateResult, Interrogator
from vlmkit.models.base import GenerationOptions

from .common import CommandError, Output, add_common, check_inputs, finish, image_batches, load_model, require


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("interrogate", help="turn images into prompts for text-to-image generators")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files to turn into prompts")
    p.add_argument(
        "--ranker",
        default=None,
        help="model that ranks the terms by image-text similarity; it must embed images and texts (default: --model)",
    )
    p.add_argument(
        "--mode",
        choices=MODES,
        default="fast",
        help="fast: caption + best medium, style, lighting and --top-k flavours; "
        "best: greedy search for the prompt most similar to the image (slower)",
    )
    p.add_argument("--top-k", type=int, default=3, help="flavours in fast mode (default: 3)")
    p.add_argument("--max-terms", type=int, default=8, help="most terms best mode adds to the caption (default: 8)")
    p.add_argument("--max-new-tokens", type=int, default=30, help="caption length limit (default: 30)")
    p.add_argument("--num-beams", type=int, default=1, help="beam width for the caption (default: 1, greedy)")
    add_common(p)
    p.set_defaults(run=run_interrogate)


def _load_ranker(args: argparse.Namespace, model: vlmkit.VisionLanguageModel) -> vlmkit.VisionLanguageModel:
    if args.ranker is None or args.ranker == (args.model or vlmkit.DEFAULT_MODEL):
        return model
    ranker = vlmkit.load(args.ranker, device=args.device, dtype=args.dtype)
    ranker.max_pixels = args.max_pixels
    require(ranker, "embed")
    return ranker


def _decoder(model: vlmkit.VisionLanguageModel, ranker: vlmkit.VisionLanguageModel) -> vlmkit.VisionLanguageModel:
    """The model whose input size images decode at: one that has none (a full decode), else the larger."""
    if model.image_size is None or ranker.image_size is None:
        return model if model.image_size is None else ranker
    return model if model.image_size >= ranker.image_size else ranker


def _record(path: str, result: InterrogateResult) -> dict:
    return {
        "image": path,
        "prompt": result.prompt,
        "caption": result.caption,
        "terms": {category: [{"term": t, "score": s} for t, s in ranked] for category, ranked in result.terms.items()},
        "similarity": result.similarity,
        "mode": result.mode,
        "model": result.captioner,
        "ranker": result.ranker,
    }


def run_interrogate(args: argparse.Namespace) -> int:
    if args.top_k < 0:
        raise CommandError("--top-k must be at least 0")
    if args.max_terms < 1:
        raise CommandError("--max-terms must be at least 1")
    generation = GenerationOptions(max_new_tokens=args.max_new_tokens, num_beams=args.num_beams)
    out = Output(args.json)
    images = check_inputs(args.images, out)
    model = load_model(args)
    require(model, "caption")
    ranker = _load_ranker(args, model)
    interrogator = Interrogator(model, None if ranker is model else ranker, generation=generation)
    many = len(args.images) > 1
    for batch in image_batches(images, _decoder(model, ranker), args, out, "interrogate"):
        results = interrogator.interrogate_many(
            [image for _, image in batch], mode=args.mode, top_k=args.top_k, max_terms=args.max_terms, batch_size=args.batch_size
        )
        for (path, _), result in zip(batch, results, strict=True):
            out.emit(_record(path, result), f"{path}: {result.prompt}" if many else result.prompt)
    return finish(out, len(args.images))
