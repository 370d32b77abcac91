"""Task commands: caption, ask, classify, match, embed."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vlmkit.errors import ImageError
from vlmkit.images import load_image

from .common import (
    CommandError,
    Output,
    _positive_int,
    add_common,
    check_input,
    check_inputs,
    decoding_options,
    finish,
    image_batches,
    load_model,
    progress,
    ray_engine,
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
    dataset = p.add_argument_group(
        "a whole dataset", "IMAGE may then be a folder, a .txt file list, a .parquet path table or a WebDataset .tar shard; "
        "a killed run, run again, continues where it stopped"
    )
    dataset.add_argument("--out", default=None, metavar="FILE", help="write rows to FILE.jsonl or FILE.parquet (resumable)")
    dataset.add_argument("--sidecar", action="store_true", help="write photo.txt beside each photo.jpg (kept if it exists)")
    dataset.add_argument("--overwrite", action="store_true", help="with --sidecar or --shards-out: replace existing outputs")
    dataset.add_argument("--shards-out", default=None, metavar="DIR", help="WebDataset shards in: write new shards to DIR with a .txt member per image")
    dataset.add_argument("--ask", default=None, metavar="QUESTION", help="answer QUESTION about every image instead of captioning (VQA)")
    dataset.add_argument("--engine", choices=("local", "ray"), default="local", help="this process (default) or a Ray cluster, as vlmkit index")
    dataset.add_argument("--address", default=None, help="with --engine ray: the cluster's address (default: start a local one)")
    add_common(p)  # 8 images per call: larger batches were not faster for the built-in (bench/caption_dataset.py)
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
    if args.out is not None or args.sidecar or args.shards_out is not None:
        return _caption_dataset(args)
    if args.ask is not None:
        raise CommandError("--ask answers over a dataset: give --out FILE, --sidecar or --shards-out DIR (or use `vlmkit ask IMAGE QUESTION`)")
    if args.overwrite or args.engine != "local":
        raise CommandError(f"{'--overwrite' if args.overwrite else '--engine'} goes with --out FILE, --sidecar or --shards-out DIR")
    out = Output(args.json)
    images = check_inputs(args.images, out)
    model = load_model(args)
    require(model, "caption")
    many = len(args.images) > 1
    for batch in image_batches(images, model, args, out, "caption"):
        captions = model.caption(
            [image for _, image in batch],
            prompt=args.prompt,
            options=decoding_options(args),
            batch_size=args.batch_size,
        )
        for (path, _), caption in zip(batch, captions, strict=True):
            out.emit({"image": path, "caption": caption, "model": model.name}, f"{path}: {caption}" if many else caption)
    return finish(out, len(args.images))


def _caption_dataset(args: argparse.Namespace) -> int:
    """`vlmkit caption DIR... --out F | --sidecar | --shards-out DIR`: :func:`vlmkit.captioning.caption_dataset`."""
    from vlmkit.captioning import caption_dataset

    outputs = sum((args.out is not None, args.sidecar, args.shards_out is not None))
    if outputs > 1:
        raise CommandError("give one output: --out FILE, --sidecar or --shards-out DIR")
    if args.out is not None and Path(args.out).suffix.lower() not in (".jsonl", ".parquet"):
        raise CommandError(f"--out {args.out}: give a file ending in .jsonl or .parquet")
    unread = Output(as_json=False)
    inputs = check_inputs(args.images, unread, folders=True)  # the unreadable ones are reported already
    model = load_model(args)
    require(model, "ask" if args.ask is not None else "caption")
    generation = decoding_options(args, sampling=args.ask is None)
    bar = None

    def on_plan(total: int) -> None:
        nonlocal bar
        bar = progress(total, args, "answering" if args.ask is not None else "captioning", leave=True)

    engine = ray_engine(args, model) if args.engine == "ray" else None
    try:
        report = caption_dataset(
            model, inputs, out=args.out, sidecar=args.sidecar, shards_out=args.shards_out, overwrite=args.overwrite,
            question=args.ask, prompt=args.prompt, generation=generation, batch_size=args.batch_size,
            max_pixels=args.max_pixels, progress=lambda n: bar.update(n) if bar is not None else None, on_plan=on_plan,
            engine=engine,
        )
    finally:
        if bar is not None:
            bar.close()
    for skipped in report.skipped:
        print(f"vlmkit: skipped {skipped.path}: {skipped.reason}", file=sys.stderr)
    if args.json:
        print(json.dumps({"output": report.output, "kind": report.kind, "found": report.found, "done": report.done,
                          "already": report.already, "seconds": round(report.seconds, 3),
                          "skipped": [{"path": s.path, "reason": s.reason} for s in report.skipped]}))
    else:
        print(f"{report.output}: {report.summary()}")
        follow = {
            "jsonl": f"one JSON row per image ({{\"image\", \"{'answer' if args.ask else 'caption'}\", ...}}); read it with pandas.read_json(..., lines=True)",
            "parquet": "one row per image; read it with pandas.read_parquet or pyarrow",
            "sidecar": "each image's text is in the .txt file of the same name",
            "shards": f"the new shards are in {report.output}; they read as the dataset spec wds:SHARD (or a brace pattern, "
                      f"wds:{report.output}/shard-{{000..009}}.tar), e.g. in `vlmkit eval caption --data`",
        }[report.kind]
        print(f"vlmkit: {follow}; run the same command again to continue after an interruption or to add new images", file=sys.stderr)
    if report.skipped or unread.failures:
        failed = len(report.skipped) + len(unread.failures)
        print(f"vlmkit: {failed} file{'s' if failed != 1 else ''} could not be read (listed above); the rest are done", file=sys.stderr)
        return 1
    return 0


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
    answers = model.ask([image] * len(args.questions), args.questions, options=decoding_options(args, sampling=False))
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
