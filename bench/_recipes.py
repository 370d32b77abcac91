"""What every recipe bench shares: the same training and held-out data as ``bench/blip2_offline.py``,
the same scoring through the model's public task interface (``vlmkit.load(dir)``), and one shape of
result, so ``bench/recipes_table.py`` can put every recipe in one table beside BLIP-2.

Data (seed 0): shapes-world training scenes and 1,000 held-out scenes whose colour-shape pairs never
occur in training; easy-VQA's train split and its whole test split.

Figures, each computed the same way for every model that can do the task:

- ``i2t_r1`` / ``t2i_r1``: retrieval R@1 on the held-out gallery with each scene's first caption,
  "grouped" (shapes scenes holding the same objects, or easy-VQA images with the same caption, are
  interchangeable, as in ``blip2_offline.py``), and ``strict_*`` (only the own image counts);
- ``vqa``: exact match (VQAv2 normalisation) on 2,000 held-out shapes questions (the same sample as
  ``blip2_offline.py``) and on every easy-VQA test question;
- ``cider``: pycocoevalcap's CIDEr-D of greedy captions on lower-cased, punctuation-free text.
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

SHAPES_QUESTIONS = 2000


@dataclass(frozen=True)
class Data:
    name: str  # "shapes" or "easy-vqa"
    train: list[Any]
    test: list[Any]
    groups: list[Any] | None  # retrieval groups of the test scenes (shapes only)


def shapes(train: int = 4000, test: int = 1000) -> Data:
    from vlmkit.data import make_split
    from vlmkit.data.shapes import make_scenes

    groups = [tuple(sorted((o.size, o.colour, o.shape) for o in s.objects)) for s in make_scenes(test, 0, "test")]
    return Data("shapes", make_split(train, 0, "train"), make_split(test, 0, "test"), groups)


def easy_vqa(train: int = 4000, test: int | None = None) -> Data:
    from vlmkit.data import load_easy_vqa

    examples = [e for e in load_easy_vqa("train") if e.captions][:train]
    held_out = load_easy_vqa("test")[:test] if test else load_easy_vqa("test")
    # An easy-VQA caption names one shape and its colour, so images with the same caption are
    # interchangeable for retrieval; strict R@1 is capped near 1/(images per caption).
    groups = [e.captions[0] if e.captions else e.id for e in held_out]
    return Data("easy-vqa", examples, held_out, groups)


#: ``--scale equal``, the budget of ``bench/recipes_table.py``: every trained stage of every recipe
#: takes ``EQUAL_STEPS`` optimiser steps of ``EQUAL_BATCH`` examples (one process, bfloat16), on the
#: same 4,000 training scenes or easy-VQA images. Parts a recipe shares with another are made once
#: and counted with the recipe that trains them: the frozen LM (``shared_lm``), the frozen
#: EfficientNet-Lite0 features, BLIP-2's stage 1 (InstructBLIP starts from it) and the CLIP row's
#: image tower (LLaVA's).
EQUAL_STEPS = 500
EQUAL_BATCH = 32


def budget(scale_name: str) -> list[str]:
    """The overrides every run of a recipe bench adds at ``scale_name``: the equal batch size at
    ``equal``, nothing otherwise (each recipe's preset then decides)."""
    return [f"run.batch_size={EQUAL_BATCH}"] if scale_name == "equal" else []


def shared_lm(out: Path, data: Data, scale_name: str, smoke_steps: int) -> Path:
    """The frozen LM of ``data`` that every soft-prompt recipe (and ``bench/blip2_offline.py --lm``)
    uses: ``out.parent/lms/<data>_lm/lm``, trained once as ``bench/_lm.py`` says. At the smoke scale
    (and when no shared one exists) a small one of ``smoke_steps`` in ``out`` instead."""
    from _lm import train_frozen_lm

    shared = out.parent / "lms" / f"{data.name}_lm"
    if scale_name != "smoke" or (shared / "lm" / "config.json").is_file():
        return train_frozen_lm(shared, data.train, data.name)
    return train_frozen_lm(out / f"lm_{data.name}", data.train, data.name, smoke_steps)


def token_features(data: Data, split: str, root: Path) -> Any:
    """The frozen EfficientNet-Lite0 tokens of ``data``'s ``split`` ("train" or "test"), cached once
    in ``root/features_<data>_<split><n>/`` so every recipe bench beside it reuses them. The training
    split's key is the one the recipes' own cache uses (``vlmkit_train.data.images_key``), so ``features_dir``
    can point there."""
    from vlmkit.feature_cache import FeatureCache
    from vlmkit.models.image_encoders import load_image_encoder

    examples = data.train if split == "train" else data.test
    key = f"{data.name}:seed=0:n={len(examples)}:size=64" if split == "train" else f"{data.name}:test:n={len(examples)}"
    return FeatureCache.build(load_image_encoder("efficientnet-lite0"), [e.image for e in examples],
                              token_features_dir(data, split, root), images_key=key)


def token_features_dir(data: Data, split: str, root: Path) -> Path:
    return root / f"features_{data.name}_{split}{len(data.train if split == 'train' else data.test)}"


def _clean(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def retrieval(model: Any, data: Data) -> dict[str, float]:
    from vlmkit.eval import retrieval_scores

    rows = [i for i, e in enumerate(data.test) if e.captions]  # easy-VQA leaves a few images uncaptioned
    test = [data.test[i] for i in rows]
    similarity = np.asarray(model.similarity([e.image for e in test], [e.captions[0] for e in test]))
    own = list(range(len(test)))
    strict = retrieval_scores(similarity, own, ks=(1, 5))
    figures = {"strict_i2t_r1": strict.image_to_text[1], "strict_t2i_r1": strict.text_to_image[1], "gallery": len(test)}
    if data.groups is not None:
        grouped = retrieval_scores(similarity, own, ks=(1, 5), image_groups=[data.groups[i] for i in rows])
        figures.update(i2t_r1=grouped.image_to_text[1], t2i_r1=grouped.text_to_image[1])
    return figures


def vqa(model: Any, data: Data, limit: int | None = None, batch_size: int = 64) -> float:
    """Exact match on ``limit`` questions drawn as ``blip2_offline.py`` draws them (all when None)."""
    from vlmkit.eval import exact_match_accuracy

    pairs = [(i, q, a) for i, e in enumerate(data.test) for q, a in e.qa]
    order = np.random.default_rng(0).permutation(len(pairs))
    chosen = [pairs[i] for i in (order[:limit] if limit else order)]
    answers = model.ask([data.test[i].image for i, _, _ in chosen], [q for _, q, _ in chosen], batch_size=batch_size)
    return exact_match_accuracy(answers, [a for _, _, a in chosen])


def cider(model: Any, data: Data, batch_size: int = 64, prompt: str | None = None) -> tuple[float, list[tuple[str, str]]]:
    """CIDEr-D over the test examples that have captions (captioned after ``prompt``, when given),
    and three (reference, generated) pairs."""
    from pycocoevalcap.cider.cider import Cider

    examples = [e for e in data.test if e.captions]
    captions = model.caption([e.image for e in examples], batch_size=batch_size, **({"prompt": prompt} if prompt else {}))
    gts = {str(i): [_clean(c) for c in e.captions] for i, e in enumerate(examples)}
    res = {str(i): [_clean(c) or "empty"] for i, c in enumerate(captions)}
    return float(Cider().compute_score(gts, res)[0]), [(examples[i].captions[0], captions[i]) for i in range(3)]


def score(model: Any, data: Data, tasks: tuple[str, ...], *, batch_size: int = 64) -> dict[str, Any]:
    """The figures of ``tasks`` ("retrieval", "vqa", "caption") for a loaded model on ``data``."""
    figures: dict[str, Any] = {}
    if "retrieval" in tasks:
        figures.update(retrieval(model, data))
    if "vqa" in tasks:
        figures["vqa"] = vqa(model, data, SHAPES_QUESTIONS if data.name == "shapes" else None, batch_size)
    if "caption" in tasks:
        figures["cider"], figures["caption_examples"] = cider(model, data, batch_size)
    return figures


class Timer:
    """Minutes per named phase, into ``figures["minutes"]``."""

    def __init__(self, figures: dict[str, Any]) -> None:
        self.figures = figures
        self.began = time.perf_counter()

    def __call__(self, name: str, work: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        result = work()
        self.figures.setdefault("minutes", {})[name] = round((time.perf_counter() - start) / 60, 2)
        return result

    def total(self) -> None:
        self.figures["total_minutes"] = round((time.perf_counter() - self.began) / 60, 2)


def save(figures: dict[str, Any], out: Path) -> None:
    """``out/figures.json``, which ``bench/recipes_table.py`` reads."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "figures.json").write_text(json.dumps(figures, indent=1))


def bench_main(recipe: str, doc: str, scales: Iterable[str], run: Callable[..., dict[str, Any]],
               options: dict[str, str] | None = None) -> None:
    """The command line every recipe bench shares: ``--scale`` (default full), ``--out`` (default: a
    temporary directory) and the script's own ``options`` (flag -> help), given to ``run`` as
    keywords; prints the figures as JSON."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--scale", choices=sorted(scales), default="full")
    parser.add_argument("--out", default=None, help="keep runs here (default: a temporary directory)")
    for flag, text in (options or {}).items():
        parser.add_argument(flag, default=None, help=text)
    args = vars(parser.parse_args())
    scale, out = args.pop("scale"), args.pop("out")
    if out:
        figures = run(scale, Path(out), **args)
    else:
        with tempfile.TemporaryDirectory(prefix=f"vlmkit-{recipe}-") as tmp:
            figures = run(scale, Path(tmp) / recipe, **args)
    print(json.dumps(figures, indent=1))
