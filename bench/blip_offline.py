"""BLIP (``vlmkit train blip``) offline: pre-training, then VQA fine-tuning, scored as every recipe
of ``bench/recipes_table.py`` is.

Steps, each a ``vlmkit_train.blip`` run in-process, from pixels (the ViT trains with the rest):
1. pre-training, ITC with momentum distillation + ITM on hard negatives + LM, on the training
   scenes (preset ``shapes``); it exports the captioner (``model/``) and the retrieval model
   (``retrieval/``), both transformers BLIP checkpoints;
2. VQA fine-tuning from it (``task=vqa``, ``init=`` the pre-training run): BLIP's answer decoder over
   the image-grounded question encoding;
3. the same two runs on easy-VQA's training split.

Figures (``bench/_recipes.py``, through ``vlmkit.load`` of each export): retrieval R@1 on the 1,000
held-out shapes scenes (grouped and strict) and on easy-VQA's test split, CIDEr-D of the
pre-trained captioner's greedy captions (no prompt: pre-training's LM loss has none), and VQA exact
match of the fine-tuned model on 2,000 held-out shapes questions and every easy-VQA test question.

CapFilt (issue 18's bootstrapping from noisy captions) is not here yet.

Run: ``python bench/blip_offline.py [--scale smoke|full|equal] [--out DIR]``.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _recipes as recipes  # noqa: E402


@dataclass(frozen=True)
class Scale:
    train: int  # training scenes (and easy-VQA training images)
    test: int  # held-out shapes scenes
    easy_test: int | None  # easy-VQA test images (None: all)
    pretrain_steps: int
    vqa_steps: int


SCALES = {
    "smoke": Scale(train=200, test=100, easy_test=100, pretrain_steps=20, vqa_steps=20),
    "full": Scale(train=4000, test=1000, easy_test=None, pretrain_steps=1000, vqa_steps=500),
    "equal": Scale(train=4000, test=1000, easy_test=None, pretrain_steps=recipes.EQUAL_STEPS, vqa_steps=recipes.EQUAL_STEPS),
}


def _train(overrides: list[str], out: Path) -> dict[str, Any]:
    from vlmkit_train.blip import blip_train_config, train_blip

    if not (out / "model" / "config.json").is_file():
        train_blip(blip_train_config("shapes", [*overrides, "log_every=50"]), out)
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    return {key: round(value, 4) if isinstance(value, float) else value for key, value in last.items() if key not in ("lr", "processes")}


def _recipe(data: recipes.Data, out: Path, scale: Scale, extra: list[str], timer: recipes.Timer) -> dict[str, Any]:
    import vlmkit

    name = data.name.replace("-", "_")
    common = [f"data={data.name}", f"train_size={len(data.train)}", *extra]
    pretrain = timer(f"{name}_pretrain", lambda: _train([*common, f"max_steps={scale.pretrain_steps}"], out / f"{name}_pretrain"))
    vqa = timer(f"{name}_vqa", lambda: _train([*common, "task=vqa", f"init={out / f'{name}_pretrain'}", f"max_steps={scale.vqa_steps}"],
                                             out / f"{name}_vqa"))
    figures: dict[str, Any] = {"training": {"pretrain": pretrain, "vqa": vqa}}
    retrieval = vlmkit.load(out / f"{name}_pretrain" / "retrieval")
    figures.update(timer(f"{name}_score_retrieval", lambda: recipes.score(retrieval, data, ("retrieval",))))
    captioner = vlmkit.load(out / f"{name}_pretrain" / "model")
    figures.update(timer(f"{name}_score_caption", lambda: recipes.score(captioner, data, ("caption",))))
    answerer = vlmkit.load(out / f"{name}_vqa" / "model")
    figures.update(timer(f"{name}_score_vqa", lambda: recipes.score(answerer, data, ("vqa",))))
    return figures


def run(scale_name: str, out: Path) -> dict[str, Any]:
    scale = SCALES[scale_name]
    figures: dict[str, Any] = {"recipe": "blip", "scale": scale_name}
    timer = recipes.Timer(figures)
    extra = recipes.budget(scale_name)
    figures["shapes"] = _recipe(recipes.shapes(scale.train, scale.test), out, scale, extra, timer)
    figures["easy-vqa"] = _recipe(recipes.easy_vqa(scale.train, scale.easy_test), out, scale, extra, timer)
    timer.total()
    recipes.save(figures, out)
    return figures


def main() -> None:
    recipes.bench_main("blip", __doc__, SCALES, run)


if __name__ == "__main__":
    main()
