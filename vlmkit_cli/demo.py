"""``vlmkit demo``: the built-in model on real photos that ship with scikit-image, offline.

Captions each sample photo, then answers text queries by ranking the photos, so a new user sees the
whole path (decode, embed, compare) work on real images with no download. A photo counts as a match
by the rule ``vlmkit search`` uses: a similarity of at least the model's calibrated threshold; a
query with no match says so and shows its best photo for reference.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from .common import Output, add_common, load_model, require

SAMPLE_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "hubble_deep_field.jpg")
DEFAULT_QUERIES = ("a cat", "coffee", "a rocket", "an astronaut", "a motorcycle", "stars in space")


def sample_photos() -> list[Path]:
    """Paths of the colour photos in scikit-image's data directory."""
    import skimage.data

    root = Path(skimage.data.data_dir)
    return [root / name for name in SAMPLE_PHOTOS if (root / name).is_file()]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="caption and search scikit-image's sample photos with the built-in model")
    p.add_argument("queries", nargs="*", metavar="QUERY", help=f"text queries (default: {', '.join(DEFAULT_QUERIES)})")
    add_common(p)
    p.set_defaults(run=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    model = load_model(args)
    require(model, "embed")
    photos = sample_photos()
    queries = args.queries or list(DEFAULT_QUERIES)
    out = Output(args.json)
    image_emb = model.embed_images([str(p) for p in photos])
    if model.supports("caption"):
        for photo, caption in zip(photos, model.caption([str(p) for p in photos]), strict=True):
            out.emit({"image": str(photo), "caption": caption, "model": model.name}, f"{photo.name:24s} {caption}")
        if not args.json:
            print()
    from vlmkit.index import default_threshold

    threshold = default_threshold(model.name)  # the rule of `vlmkit search`; None: not calibrated
    scores = model.embed_texts(queries) @ image_emb.T  # (Q, N)
    for query, row in zip(queries, scores, strict=True):
        order = np.argsort(-row)
        ranked = [
            {"path": str(photos[i]), "score": float(row[i]), "rank": rank + 1, "match": threshold is None or bool(row[i] >= threshold)}
            for rank, i in enumerate(order)
        ]
        matches = [f"{photos[i].name} ({row[i]:.3f})" for i in order if threshold is None or row[i] >= threshold]
        if matches:
            text = f"{query!r:18s} -> {', '.join(matches[:2])}"
        else:
            best = order[0]
            text = f"{query!r:18s} -> no match at {threshold:.2f} or more, the threshold `vlmkit search` uses (best: {photos[best].name} {row[best]:.3f})"
        out.emit({"query": query, "threshold": threshold, "hits": ranked, "model": model.name}, text)
    return 0
