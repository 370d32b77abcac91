"""The "no match" threshold of the built-in model, measured on scikit-image's sample photos.

What is measured
----------------
Every PNG/JPEG colour or grey photo in ``skimage.data`` is embedded with ``vlmkit.load("default")``.
Two query sets are scored against all of them (cosine similarity, as ``vlmkit search`` does):

- queries with a matching photo (e.g. "a cat" -> chelsea.png): the score of the matching photo and
  whether it ranks first;
- queries with no matching photo (e.g. "a xylophone"): the best score over all photos.

For a sweep of thresholds the script prints the share of matching queries whose photo is still
returned (above the threshold) and the share of no-match queries that return nothing, and marks
the default in ``vlmkit.index.DEFAULT_THRESHOLDS``.

How to run
----------
::

    python bench/index_threshold.py        # about 15 s on a 2-core CPU
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

MATCHING = {
    "a cat": ["chelsea.png"],
    "a cup of coffee": ["coffee.png"],
    "coffee": ["coffee.png"],
    "a rocket": ["rocket.jpg"],
    "a motorcycle": ["motorcycle_left.png", "motorcycle_right.png"],
    "a man with a camera": ["camera.png"],
    "an astronaut": ["astronaut.png"],
    "a horse": ["horse.png"],
    "stars and galaxies in space": ["hubble_deep_field.jpg"],
    "coins": ["coins.png"],
    "a bowl of spaghetti": [],
    "a giraffe": [],
    "a piano": [],
    "a birthday cake": [],
    "a xylophone": [],
    "a tax return form": [],
    "a sunset at the beach": [],
    "a dog": [],
    "a submarine": [],
    "a wedding dress": [],
}


def main() -> None:
    import skimage.data

    import vlmkit
    from vlmkit.index import default_threshold

    model = vlmkit.load("default")
    root = Path(skimage.data.data_dir)
    photos = []
    for path in sorted(root.iterdir()):
        if path.suffix.lower() in (".png", ".jpg"):
            try:
                vlmkit.load_image(path)
            except vlmkit.ImageError:
                continue
            photos.append(path)
    names = [p.name for p in photos]
    images = model.embed_images([str(p) for p in photos])
    queries = list(MATCHING)
    scores = model.embed_texts(queries) @ images.T  # (Q, N)
    print(f"{len(photos)} photos from skimage.data, model {model.name}\n")
    print(f"{'query':30s} {'expected':22s} {'its score':>9s} {'rank':>4s}   best other")
    matched, unmatched = [], []
    for query, row in zip(queries, scores, strict=True):
        order = np.argsort(-row)
        expected = [names.index(n) for n in MATCHING[query] if n in names]
        other = next(i for i in order if i not in expected)
        if expected:
            best = max(expected, key=lambda i: row[i])
            rank = int(np.where(order == best)[0][0]) + 1
            matched.append(float(row[best]))
            print(f"{query:30s} {names[best]:22s} {row[best]:9.3f} {rank:4d}   {names[other]} {row[other]:.3f}")
        else:
            unmatched.append(float(row[other]))
            print(f"{query:30s} {'(none)':22s} {'':9s} {'':4s}   {names[other]} {row[other]:.3f}")
    default = default_threshold(model.name)
    print(f"\n{'threshold':>9s} {'matches kept':>13s} {'no-match queries empty':>23s}")
    for t in sorted({0.3, 0.35, 0.4, 0.45, 0.5, 0.55, default or 0.45}):
        kept = sum(s >= t for s in matched) / len(matched)
        empty = sum(s < t for s in unmatched) / len(unmatched)
        mark = "  <- default" if t == default else ""
        print(f"{t:9.2f} {kept:12.0%} {empty:23.0%}{mark}")


if __name__ == "__main__":
    main()
