"""Task commands: caption, ask, classify, match, embed."""

from __future__ import annotations

import argparse

from vlmkit.errors import ImageError
from vlmkit.images import load_image

from .common import (
    CommandError,
    Output,
    _positive_int,
    add_common,
    check_input,
    check_inputs,
    finish,
    image_batches,
    load_model,
    require,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("caption", help="describe images in a sentence")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (JPEG, PNG, WebP, ...) or data: URLs")
    p.add_argument("--prompt", default=None, help="text the caption starts from (where the model takes one)")
    p.add_argument("--max-new-tokens", type=_positive_int, default=30, help="longest caption, in tokens (default: 30)")
    p.add_argument("--num-beams", type=_positive_int, default=1, help="beam width (default: 1, greedy)")
    p.add_argument("--sample", action="store_true", help="sample instead of greedy/beam decoding")
    p.add_argument("--top-p", type=float, default=1.0, help="with --sample: nucleus sampling mass (default: 1.0, all tokens)")
    p.add_argument("--temperature", type=float, default=1.0, help="with --sample: softmax temperature (default: 1.0)")
    add_common(p)
    p.set_defaults(run=run_caption)

    p = sub.add_parser("ask", help="answer questions about an image (VQA)")
    p.add_argument("image", metavar="IMAGE", help="an image file or data: URL")
    p.add_argument("questions", nargs="+", metavar="QUESTION", help="one or more questions about it")
    p.add_argument("--max-new-tokens", type=_positive_int, default=10, help="longest answer, in tokens (default: 10)")
    p.add_argument("--num-beams", type=_positive_int, default=1, help="beam width (default: 1, greedy)")
    add_common(p)
    p.set_defaults(run=run_ask)

    p = sub.add_parser("classify", help="zero-shot classification with your own labels")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files or data: URLs")
    p.add_argument("--labels", required=True, help='comma-separated labels, e.g. "cat,dog,car"')
    p.add_argument("--template", action="append", dest="templates", help='prompt template with {}, repeatable (e.g. "a photo of a {}.")')
    p.add_argument("--top-k", type=int, default=5, help="labels to show per image (default: 5)")
    add_common(p)
    p.set_defaults(run=run_classify)

    p = sub.add_parser("match", help="how well texts describe an image (ITM or cosine)")
    p.add_argument("image", metavar="IMAGE", help="an image file or data: URL")
    p.add_argument("texts", nargs="+", metavar="TEXT", help="one or more texts to score against it")
    add_common(p)
    p.set_defaults(run=run_match)

    p = sub.add_parser("embed", help="L2-normalised embeddings of images and texts")
    p.add_argument("images", nargs="*", metavar="IMAGE", help="image files or data: URLs")
    p.add_argument("--text", action="append", default=[], dest="texts", help="a text to embed, repeatable")
    add_common(p, batch_size=32)
    p.set_defaults(run=run_embed)


def run_caption(args: argparse.Namespace) -> int:
    out = Output(args.json)
    images = check_inputs(args.images, out)
    model = load_model(args)
    require(model, "caption")
    many = len(args.images) > 1
    for batch in image_batches(images, model, args, out, "caption"):
        captions = model.caption(
            [image for _, image in batch],
            prompt=args.prompt,
            max_new_tokens=args.max_new_tokens,
            num_beams=args.num_beams,
            do_sample=args.sample,
            top_p=args.top_p,
            temperature=args.temperature,
            batch_size=args.batch_size,
        )
        for (path, _), caption in zip(batch, captions, strict=True):
            out.emit({"image": path, "caption": caption, "model": model.name}, f"{path}: {caption}" if many else caption)
    return finish(out, len(args.images))


def _one_image(path: str, args: argparse.Namespace, model: object) -> object:
    try:
        return load_image(path, max_pixels=args.max_pixels, draft_size=getattr(model, "image_size", None))
    except ImageError as exc:
        raise CommandError(str(exc)) from None


def run_ask(args: argparse.Namespace) -> int:
    check_input(args.image)
    model = load_model(args)
    require(model, "ask")
    image = _one_image(args.image, args, model)
    answers = model.ask(
        [image] * len(args.questions), args.questions, max_new_tokens=args.max_new_tokens, num_beams=args.num_beams
    )
    out = Output(args.json)
    many = len(args.questions) > 1
    for question, answer in zip(args.questions, answers, strict=True):
        record = {"image": args.image, "question": question, "answer": answer, "model": model.name}
        out.emit(record, f"{question} -> {answer}" if many else answer)
    return 0


def run_classify(args: argparse.Namespace) -> int:
    labels = [label.strip() for label in args.labels.split(",") if label.strip()]
    if not labels:
        raise CommandError("--labels: give at least one label, e.g. --labels \"cat,dog\"")
    if args.top_k < 1:
        raise CommandError("--top-k must be at least 1")
    out = Output(args.json)
    images = check_inputs(args.images, out)
    model = load_model(args)
    require(model, "classify")
    for batch in image_batches(images, model, args, out, "classify"):
        results = model.classify([image for _, image in batch], labels, templates=args.templates, top_k=args.top_k)
        for (path, _), ranked in zip(batch, results, strict=True):
            record = {"image": path, "labels": [{"label": r.label, "score": r.score} for r in ranked], "model": model.name}
            text = f"{path}: " + ", ".join(f"{r.label} ({r.score:.3f})" for r in ranked)
            out.emit(record, text)
    return finish(out, len(args.images))


def run_match(args: argparse.Namespace) -> int:
    check_input(args.image)
    model = load_model(args)
    require(model, "match")
    image = _one_image(args.image, args, model)
    result = model.match([image] * len(args.texts), args.texts)
    out = Output(args.json)
    for text, score in zip(args.texts, result.scores, strict=True):
        record = {"image": args.image, "text": text, "score": float(score), "kind": result.kind, "model": model.name}
        out.emit(record, f"{float(score):.4f}\t{result.kind}\t{text}")
    return 0


def run_embed(args: argparse.Namespace) -> int:
    if not args.images and not args.texts:
        raise CommandError("embed: give images and/or --text")
    out = Output(args.json)
    images = check_inputs(args.images, out)
    model = load_model(args)
    require(model, "embed")

    def emit(source: str, vector: list[float]) -> None:
        preview = ", ".join(f"{v:.4f}" for v in vector[:4])
        out.emit({"input": source, "embedding": vector, "model": model.name}, f"{source}\t[{preview}, ...] (dim {len(vector)})")

    for batch in image_batches(images, model, args, out, "embed"):
        vectors = model.embed_images([image for _, image in batch], batch_size=args.batch_size)
        for (path, _), vector in zip(batch, vectors, strict=True):
            emit(path, vector.tolist())
    if args.texts:
        for text, vector in zip(args.texts, model.embed_texts(args.texts), strict=True):
            emit(text, vector.tolist())
    return finish(out, len(args.images) + len(args.texts))
