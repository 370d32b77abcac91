"""The frozen LM's text-only ceiling: how well the offline LM answers when it reads the TRUE scene
description where BLIP-2's stage 2 puts the visual prompts (``[bos] description. Question: q
Answer:``). No stage 2 can read more from an image than the LM reads from this text, so this is the
upper bound of every soft-prompt recipe that freezes this LM.

The LM is ``vlmkit train lm`` (preset ``shapes``, with the per-dataset settings in ``bench/_lm.py``'s ``RECIPES``) on
the training corpus with complete descriptions (``Example.description``: every object with size,
colour, shape and region, the counts, and the relations). Scored by exact match, per question type
on the held-out shapes scenes (every one holds a colour-shape pair the corpus never mentions) and on
easy-VQA's whole test split.

Run: ``python bench/lm_ceiling.py [--steps N] [--data shapes easy-vqa] [--out DIR] [--set KEY=VALUE]``.
``bench/blip2_offline.py --lm DIR`` then freezes the LMs of ``--out DIR``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from _lm import RECIPES, answer_kind, train_frozen_lm  # bench/ is sys.path[0] when run


def score(lm_dir: Path, examples: list[Any], kind: str) -> dict[str, Any]:
    """Exact-match accuracy (%) overall and per question type (shapes) or answer kind (easy-VQA);
    on shapes also per number of objects in the scene."""
    from vlmkit.eval import exact_match_accuracy
    from vlmkit_train.lm import answer_from_descriptions

    triples = answer_from_descriptions(lm_dir, examples)
    objects = [e.description.split(":")[0] for e in examples for _ in e.qa]  # "three shapes"
    groups: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for (question, answer, predicted), count in zip(triples, objects, strict=True):
        groups[answer_kind(question, answer, kind)].append((predicted, answer))
        if kind == "shapes":
            groups[count].append((predicted, answer))
    per_type = {key: round(exact_match_accuracy([p for p, _ in pairs], [a for _, a in pairs]), 2) for key, pairs in sorted(groups.items())}
    overall = exact_match_accuracy([p for _, _, p in triples], [a for _, a, _ in triples])
    wrong = [t for t in triples if t[2].split()[:1] != [t[1]]][:5]
    return {"accuracy": round(overall, 2), "questions": len(triples), "per_type": per_type, "wrong_examples": wrong}


def measure(out: Path, steps: int | None, datasets: list[str], test_scenes: int = 1000, extra: tuple[str, ...] = ()) -> dict[str, Any]:
    from vlmkit.data import load_easy_vqa, make_split

    figures: dict[str, Any] = {}
    for name in datasets:
        recipe_steps, recipe = RECIPES[name]
        figures[f"{name}_lm"] = {"steps": steps or recipe_steps, "overrides": [*recipe, *extra]}
        began = time.perf_counter()
        if name == "shapes":
            train_examples, test = make_split(4000, 0, "train"), make_split(test_scenes, 0, "test")
        else:
            train_examples, test = load_easy_vqa("train"), load_easy_vqa("test")
        lm_dir = train_frozen_lm(out / f"{name}_lm", train_examples, name, steps, extra)
        trained = time.perf_counter()
        figures[name] = {
            **score(lm_dir, test, name),
            # Scenes the LM was trained on: whether it reads at all, apart from the held-out pairs.
            **({"train_scenes_300": score(lm_dir, train_examples[:300], name)} if name == "shapes" else {}),
            "train_minutes": round((trained - began) / 60, 2),
            "score_minutes": round((time.perf_counter() - trained) / 60, 2),
        }
        print(json.dumps({name: figures[name]}, indent=1), flush=True)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None, help="LM training steps (batch 64; default: RECIPES's)")
    parser.add_argument("--data", nargs="+", choices=["shapes", "easy-vqa"], default=["easy-vqa", "shapes"])
    parser.add_argument("--out", default=None, help="keep the LMs here (default: a temporary directory)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="an LM config override, e.g. mixed_precision=bf16 (repeatable)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out) if args.out else Path(tmp)
        figures = measure(out, args.steps, args.data, extra=tuple(args.overrides))
        print(json.dumps(figures, indent=1))
        if args.out:
            (out / "ceiling.json").write_text(json.dumps(figures, indent=1) + "\n")
            print(f"figures: {out / 'ceiling.json'}")


if __name__ == "__main__":
    main()
