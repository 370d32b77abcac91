"""CoCa (``vlmkit train coca``) offline: does it learn, and what does the captioning loss add?

Steps, each a vlmkit_train recipe run in-process on cached frozen EfficientNet-Lite0 features:
1. CoCa on shapes-world training scenes with the paper's objective, contrastive + 2 x captioning;
2. the ablation: the same run with ``caption_weight=0`` (contrastive only; the multimodal decoder
   then never learns, so only retrieval is scored);
3. CoCa on easy-VQA's training split.

Figures (``bench/_recipes.py``, through ``vlmkit.load`` of each exported checkpoint): retrieval R@1
on the 1,000 held-out shapes scenes (grouped and strict; every test scene holds a colour-shape pair
never seen in training) and on easy-VQA's test split (strict: its captions repeat, so many images
fit a text equally well; the grouped figures count the images of one caption as interchangeable),
and CIDEr-D of greedy captions from the multimodal decoder. The ablation's retrieval is under
``figures["variants"]["caption_weight=0"]`` (not at ``--scale equal``, the recipes table's budget,
which trains the main rows only).

Run: ``OMP_NUM_THREADS=1 python bench/coca_offline.py [--scale smoke|full|equal] [--out DIR]``.
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
    steps: int  # shapes runs (the recipe and its ablation)
    easy_steps: int


SCALES = {
    "smoke": Scale(train=200, test=100, easy_test=100, steps=30, easy_steps=30),
    "full": Scale(train=4000, test=1000, easy_test=None, steps=800, easy_steps=500),
    "equal": Scale(train=4000, test=1000, easy_test=None, steps=recipes.EQUAL_STEPS, easy_steps=recipes.EQUAL_STEPS),
}


def _steps_per_s(run: Path) -> float:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return round(rows[-1]["step"] / rows[-1]["seconds"], 2)


def run(scale_name: str, out: Path) -> dict[str, Any]:
    import vlmkit
    from vlmkit_train.coca import coca_config, train_coca

    scale = SCALES[scale_name]
    figures: dict[str, Any] = {"recipe": "coca", "scale": scale_name}
    timer = recipes.Timer(figures)
    training: dict[str, Any] = {}

    def train(name: str, data: recipes.Data, steps: int, extra: list[str]) -> Any:
        overrides = [f"data={data.name}", f"train_size={scale.train}", f"max_steps={steps}", "log_every=50",
                     f"features_dir={out / ('features_' + data.name)}", *recipes.budget(scale_name), *extra]
        result = timer(name, lambda: train_coca(coca_config("shapes", overrides), out / name))
        training[name] = {"steps": result.steps, "steps_per_s": _steps_per_s(out / name),
                          **{k: round(v, 4) for k, v in result.final_losses.items()}}
        return vlmkit.load(out / name / "model")

    shapes = recipes.shapes(scale.train, scale.test)
    model = train("shapes", shapes, scale.steps, [])
    figures["shapes"] = timer("shapes_eval", lambda: recipes.score(model, shapes, ("retrieval", "caption")))
    if scale_name != "equal":  # the equal-budget table has the main rows only
        contrastive_only = train("shapes_caption_weight_0", shapes, scale.steps, ["caption_weight=0"])
        figures["variants"] = {
            "caption_weight=0": {"shapes": timer("shapes_caption_weight_0_eval", lambda: recipes.score(contrastive_only, shapes, ("retrieval",)))}
        }

    easy = recipes.easy_vqa(scale.train, scale.easy_test)
    easy_model = train("easy-vqa", easy, scale.easy_steps, [])
    # easy-VQA's test captions are a few dozen colour-shape strings shared by tens of images each, so
    # the grouped figures count the images of one caption as interchangeable (``recipes.easy_vqa``).
    easy_figures = timer("easy_eval", lambda: recipes.score(easy_model, easy, ("retrieval", "caption")))
    figures["easy-vqa"] = easy_figures
    figures["training"] = training
    timer.total()
    recipes.save(figures, out)
    return figures


def main() -> None:
    recipes.bench_main("coca", __doc__, SCALES, run)


if __name__ == "__main__":
    main()
