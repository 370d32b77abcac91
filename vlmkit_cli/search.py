"""``vlmkit index``, ``vlmkit search`` and ``vlmkit dedupe``: the image search engine's commands,
thin wrappers over :class:`vlmkit.index.ImageIndex`."""

from __future__ import annotations

import argparse
import json
import re
import sys
from typing import Any

from .common import CommandError, Output, _positive_int, check_inputs, ray_engine, require

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?\s*$", re.IGNORECASE)


def _size(text: str) -> int:
    """``2000``, ``500K``, ``1.5MB``, ``2GiB`` -> bytes (K = 1024)."""
    match = _SIZE.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"expected a size such as 500K or 2MB, got {text!r}")
    number, unit = float(match.group(1)), match.group(2).lower()
    return int(number * 1024 ** "_kmgt".index(unit or "_"))


def _threshold(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not -1.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"a cosine threshold is between -1 and 1, got {text!r}")
    return value


def _add_index_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--index", default=None, metavar="PATH", help="index directory (default: $VLMKIT_INDEX or the user data directory)")
    parser.add_argument("--model", "-m", default=None, help="model (default: the one the index was built with, else the built-in)")
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    parser.add_argument("--dtype", default=None, help="float32 (default), bfloat16 or float16")
    parser.add_argument("--json", action="store_true", help="print one JSON object per line")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("index", help="index (or update the index of) folders of images for search")
    p.add_argument("inputs", nargs="*", metavar="DIR", help="folders, image files, .txt file lists, WebDataset .tar shards, .parquet tables")
    _add_index_option(p)
    p.add_argument("--status", action="store_true", help="describe the index and exit")
    p.add_argument("--reindex", action="store_true", help="drop the index and build it again (e.g. for another model)")
    p.add_argument("--keep-missing", action="store_true", help="keep rows of files that disappeared from under DIR")
    p.add_argument("--batch-size", type=_positive_int, default=32, help="images per model call (default: 32)")
    p.add_argument("--commit-every", type=_positive_int, default=256, help="files per committed batch (default: 256)")
    p.add_argument("--max-pixels", type=_positive_int, default=None, help="skip images with more pixels (default: 100,000,000)")
    p.add_argument("--engine", choices=("local", "ray"), default="local", help="local threads (default) or a Ray cluster")
    p.add_argument("--address", default=None, help="Ray cluster address (default: start a local one)")
    p.set_defaults(run=run_index)

    p = sub.add_parser("search", help="search the index by text, by image, or both")
    p.add_argument("query", nargs="?", default="", help='text, an image path, or a combination: "beach + photo.jpg - people"')
    _add_index_option(p)
    p.add_argument("--image", action="append", default=[], metavar="IMG", help="add an image to the query (repeatable)")
    p.add_argument("--minus", action="append", default=[], metavar="TERM", help="subtract a text or image (repeatable)")
    p.add_argument("-k", type=_positive_int, default=10, help="number of results (default: 10)")
    p.add_argument("--threshold", type=_threshold, default=None, help="minimum cosine similarity (default: calibrated per model)")
    p.add_argument("--all", action="store_true", help="no threshold: rank everything")
    p.add_argument("--glob", default=None, help="only paths matching this pattern (file name, or whole path if it has a /)")
    p.add_argument("--after", default=None, metavar="DATE", help="taken (EXIF) or modified on or after DATE (YYYY-MM-DD)")
    p.add_argument("--before", default=None, metavar="DATE", help="taken or modified before DATE")
    p.add_argument("--min-size", type=_size, default=None, metavar="SIZE", help="files of at least SIZE (e.g. 100K)")
    p.add_argument("--max-size", type=_size, default=None, metavar="SIZE", help="files of at most SIZE (e.g. 5MB)")
    p.add_argument("--no-keywords", action="store_true", help="semantic search only (no file-name and tag matches)")
    p.set_defaults(run=run_search)

    p = sub.add_parser("dedupe", help="list groups of near-duplicate images in the index")
    _add_index_option(p)
    p.add_argument("--threshold", type=_threshold, default=0.95, help="minimum cosine similarity within a group (default: 0.95)")
    p.set_defaults(run=run_dedupe)


def _open(args: argparse.Namespace, *, must_exist: bool) -> Any:
    from vlmkit.index import ImageIndex

    index = ImageIndex(args.index)
    if must_exist and not len(index):
        raise CommandError(f"no index at {index.path}: build one with `vlmkit index DIR...`")
    return index


def _model(args: argparse.Namespace, index: Any) -> Any:
    import vlmkit

    name = args.model or index.model_name or vlmkit.DEFAULT_MODEL
    model = vlmkit.load(name, device=args.device, dtype=args.dtype)
    require(model, "embed")
    return model


def run_index(args: argparse.Namespace) -> int:
    index = _open(args, must_exist=False)
    if args.status:
        return _status(index, args)
    if not args.inputs:
        raise CommandError("give folders or files to index (or --status)")
    unread = Output(as_json=False)
    inputs = check_inputs(args.inputs, unread, folders=True)  # the unreadable ones are reported already
    model = _model(args, index)
    if not args.reindex:
        index.check_model(model)
    from tqdm import tqdm

    from .common import progress as _progress_bar

    bar: tqdm | None = None

    def on_plan(total: int) -> None:
        nonlocal bar
        bar = _progress_bar(total, args, "indexing", leave=True)  # the finished bar stays above the summary

    def advance(n: int) -> None:
        if bar is not None:
            bar.update(n)

    options: dict[str, Any] = dict(
        reindex=args.reindex,
        batch_size=args.batch_size,
        commit_every=args.commit_every,
        max_pixels=args.max_pixels,
        remove_missing=not args.keep_missing,
        progress=advance,
        on_plan=on_plan,
    )
    if args.engine == "ray":
        options["engine"] = ray_engine(args, model)
    try:
        report = index.update(inputs, model, **options)
    finally:
        if bar is not None:
            bar.close()
    for skipped in report.skipped:
        print(f"vlmkit: skipped {skipped.path}: {skipped.reason}", file=sys.stderr)
    if args.json:
        record = {k: v for k, v in vars(report).items() if k != "skipped"}
        record["skipped"] = [{"path": s.path, "reason": s.reason} for s in report.skipped]
        record["index"] = str(index.path)
        print(json.dumps(record))
    else:
        print(f"{index.path}: {report.summary()}")
    if report.skipped or unread.failures:
        print(f"vlmkit: {len(report.skipped) + len(unread.failures)} files could not be indexed (listed above); the rest are in the index", file=sys.stderr)
        return 1
    return 0


def _status(index: Any, args: argparse.Namespace) -> int:
    status = index.status()
    if args.json:
        print(json.dumps(vars(status)))
        return 0
    if status.model is None:
        print(f"{status.path}: no index yet (build one with `vlmkit index DIR...`)")
        return 0
    kind = "approximate (IVF-PQ)" if status.approximate_index else "exact (flat scan)"
    threshold = "none calibrated (pass --threshold)" if status.threshold is None else f"{status.threshold:.2f}"
    print(
        f"index      {status.path}\nmodel      {status.model} ({status.dim}-d)\n"
        f"images     {status.rows} files, {status.unique_contents} distinct contents\n"
        f"search     {kind}, {status.unindexed_rows} rows outside the vector index\n"
        f"threshold  {threshold}\ncreated    {status.created}\nupdated    {status.updated}\n"
        f"size       {status.bytes_on_disk / 1e6:.1f} MB"
    )
    return 0


def run_search(args: argparse.Namespace) -> int:
    from vlmkit.index import Filters, Query

    index = _open(args, must_exist=True)
    model = _model(args, index)
    index.check_model(model)
    query = Query.parse(args.query, images=args.image, subtract=args.minus)
    filters = Filters(glob=args.glob, after=args.after, before=args.before, min_size=args.min_size, max_size=args.max_size)
    threshold = float("-inf") if args.all else args.threshold
    hits = index.search(model, query, k=args.k, threshold=threshold, filters=filters, keyword=not args.no_keywords)
    for hit in hits:
        if args.json:
            print(json.dumps(hit.to_dict(), ensure_ascii=False), flush=True)
        else:
            extra = f" (+{len(hit.duplicates)} identical)" if hit.duplicates else ""
            print(f"{hit.rank:3d}  {hit.score:.3f}  {hit.path}{extra}  [{hit.match}]", flush=True)
    if not hits:
        from vlmkit.index import default_threshold

        used = args.threshold if args.threshold is not None else default_threshold(model.name)
        print(f"vlmkit: no match{'' if used is None else f' above the threshold {used:.2f}'} (use --all to rank everything)", file=sys.stderr)
    return 0


def run_dedupe(args: argparse.Namespace) -> int:
    index = _open(args, must_exist=True)
    groups = index.dedupe(threshold=args.threshold)
    for number, group in enumerate(groups, 1):
        if args.json:
            print(json.dumps({"group": number, "members": [{"path": p, "similarity": round(s, 6)} for p, s in group]}))
        else:
            print(f"group {number} ({len(group)} images)")
            for path, similarity in group:
                print(f"  {similarity:.3f}  {path}")
    if not groups:
        print(f"vlmkit: no near-duplicates at similarity >= {args.threshold}", file=sys.stderr)
    return 0
