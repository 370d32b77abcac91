"""Which part of BLIP's pre-training collapses its text embeddings? Variants of the recipes-table BLIP
row (``blip_offline.py --scale equal``: shapes, 4,000 training scenes, batch 32, 500 steps, bfloat16,
one seed), each switching one part off, scored on 300 training and 300 held-out scenes: the mean
pairwise cosine of the captions' ITC embeddings (and of the images'), strict R@1 both ways over the
300, and how many distinct images text-to-image retrieval sends the 300 captions to.

Run: ``python bench/blip_collapse.py --out DIR [VARIANT ...]`` (default: every variant; a variant
whose run is in DIR is scored again, not retrained). About 2 minutes a variant on an idle 2-core CPU.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

VARIANTS = {
    "recipe": [],
    "no_lm": ["task=retrieval"],  # ITC + ITM from scratch, no LM loss
    "no_sharing": ["sharing=none"],
    "no_groups": ["group_negatives=false"],
    "late_alpha": ["alpha_warmup_steps=400"],  # the soft targets ramped in over 400 steps, not 63
    "no_distillation": ["alpha=0"],  # momentum encoders kept (0.995), their soft targets off
    "momentum_copy": ["momentum=0"],  # soft targets kept (0.4), from a momentum model equal to the online one
    "neither": ["momentum=0", "alpha=0"],
}


def _mean_cosine(x: np.ndarray) -> float:
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    n = len(x)
    return float(((x @ x.T).sum() - n) / (n * n - n))


def diagnose(model_dir: Path, n: int = 300) -> dict[str, Any]:
    import vlmkit
    from vlmkit.data import make_split

    model = vlmkit.load(model_dir)
    figures = {}
    for split in ("train", "test"):
        examples = make_split(n, 0, split)
        texts = np.asarray(model.embed_texts([e.captions[0] for e in examples]))
        images = np.asarray(model.embed_images([e.image for e in examples]))
        similarity = images @ texts.T  # (images, texts)
        figures[split] = {
            "text_cosine": round(_mean_cosine(texts), 3), "image_cosine": round(_mean_cosine(images), 3),
            "strict_i2t": round(100 * float((similarity.argmax(1) == np.arange(n)).mean()), 1),
            "strict_t2i": round(100 * float((similarity.argmax(0) == np.arange(n)).mean()), 1),
            "t2i_distinct_images": len(set(similarity.argmax(0).tolist())),
        }
    return figures


def run(name: str, out: Path) -> dict[str, Any]:
    from vlmkit_train.blip import RETRIEVAL_DIR, blip_train_config, train_blip
    from vlmkit_train.driver import MODEL_DIR

    run_dir = out / name
    if not (run_dir / MODEL_DIR / "config.json").is_file():
        overrides = ["data=shapes", "train_size=4000", "max_steps=500", "run.batch_size=32", "log_every=50", *VARIANTS[name]]
        train_blip(blip_train_config("shapes", overrides), run_dir)
    retrieval = run_dir / (MODEL_DIR if "task=retrieval" in VARIANTS[name] else RETRIEVAL_DIR)
    last = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    return {"variant": name, "overrides": VARIANTS[name], **diagnose(retrieval), "itc": last.get("itc")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="the variants' runs and figures.json")
    parser.add_argument("variants", nargs="*", help=f"some of {', '.join(VARIANTS)} (default: all)")
    args = parser.parse_args()
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    out = Path(args.out)
    rows = [run(name, out) for name in args.variants or VARIANTS]
    (out / "figures.json").write_text(json.dumps(rows, indent=1))
    print("| variant | overrides | text cosine | strict I2T % | strict T2I % | T2I distinct images | train strict T2I % |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        t = r["test"]
        print(f"| {r['variant']} | {' '.join(r['overrides']) or '(the recipe)'} | {t['text_cosine']} | {t['strict_i2t']} | "
              f"{t['strict_t2i']} | {t['t2i_distinct_images']} | {r['train']['strict_t2i']} |")


if __name__ == "__main__":
    main()
