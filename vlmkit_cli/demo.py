"""``vlmkit demo``: the built-in model on real photos that ship with scikit-image, offline.

Captions each sample photo, then answers text queries by ranking the photos, so a new user sees the
whole path (decode, embed, compare) work on real images with no download.
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
    scores = model.embed_texts(queries) @ image_emb.T  # (Q, N)
    for query, row in zip(queries, scores, strict=True):
        order = np.argsort(-row)
        ranked = [{"path": str(photos[i]), "score": float(row[i]), "rank": rank + 1} for rank, i in enumerate(order)]
        text = f"{query!r:18s} -> {photos[order[0]].name} ({row[order[0]]:.3f}); next {photos[order[1]].name} ({row[order[1]]:.3f})"
        out.emit({"query": query, "hits": ranked, "model": model.name}, text)
    return 0
