"""`vlmkit describe`: images as text, the way VLLaVO reads them (tags, attributes, captions)."""

from __future__ import annotations

import argparse
import dataclasses

import vlmkit
from vlmkit.models.vllavo import Describer, DescriberConfig

from .common import CommandError, Output, add_common, check_inputs, finish, image_batches, load_model


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("describe", help="describe images as tags, attributes and captions (VLLaVO's descriptions)")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files or data: URLs")
    p.add_argument("--tagger", default=None,
                   help="model that ranks the tags and attributes; it must embed images and texts (default: --model)")
    defaults = DescriberConfig()
    p.add_argument("--tags", default=defaults.tags, help="tag list: shipped 'tags' (default) or a text file, one a line")
    p.add_argument("--attributes", default=defaults.attributes, help="attribute list: shipped 'attributes' (default) or a text file")
    p.add_argument("--top-k", type=int, default=defaults.top_k, help=f"tags and attributes per image (default: {defaults.top_k})")
    p.add_argument("--min-similarity", type=float, default=defaults.min_similarity,
                   help=f"image-text cosine a tag or attribute needs (default: {defaults.min_similarity})")
    p.add_argument("--sampled-captions", type=int, default=defaults.sampled_captions,
                   help=f"nucleus-sampled captions besides the beam-search one (default: {defaults.sampled_captions})")
    add_common(p, batch_size=32)
    p.set_defaults(run=run_describe)


def _describer(args: argparse.Namespace, model: vlmkit.VisionLanguageModel) -> Describer:
    """A VLLaVO checkpoint's own describer, or one made of --model (captions) and --tagger."""
    own = getattr(model, "describer", None)
    if isinstance(own, Describer):
        if args.tagger is not None:
            raise CommandError("--tagger: a VLLaVO model describes with the tagger it was trained with")
        return own
    config = DescriberConfig(
        tagger=args.tagger or model.name, captioner=model.name, tags=args.tags, attributes=args.attributes,
        top_k=args.top_k, min_similarity=args.min_similarity, sampled_captions=args.sampled_captions,
    )
    tagger = model if args.tagger in (None, model.name) else vlmkit.load(args.tagger, device=args.device, dtype=args.dtype)
    return Describer(config, tagger, model)


def run_describe(args: argparse.Namespace) -> int:
    out = Output(args.json)
    images = check_inputs(args.images, out)
    model = load_model(args)
    describer = _describer(args, model)
    many = len(args.images) > 1
    for batch in image_batches(images, model, args, out, "describe"):
        for (path, _), description in zip(batch, describer.describe([image for _, image in batch], batch_size=args.batch_size), strict=True):
            record = {"image": path, **dataclasses.asdict(description), "description": description.text, "model": model.name}
            out.emit(record, f"{path}:\n{description.text}" if many else description.text)
    return finish(out, len(args.images))
