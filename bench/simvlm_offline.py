"""SimVLM's prefix-LM recipe trained from scratch on CPU, and the figures that show it learns.

For each data set (shapes world: 4,000 training scenes, 1,000 held-out scenes whose colour-shape pairs
never occur in training; easy-VQA: its training split and whole test split):

1. the frozen EfficientNet-Lite0 features of the training and test images, cached once in float16
   (``features_<data>_<split><n>/`` beside ``out``, so other recipes and reruns reuse them);
2. ``vlmkit train simvlm`` (preset ``shapes``, bfloat16 autocast): one decoder-only transformer over
   image tokens + text under the prefix-LM mask, captions split at random and question-answer pairs;
3. the exported checkpoint loaded with ``vlmkit.load`` and scored through its task interface by
   ``bench/_recipes.py``: VQA exact match (2,000 held-out shapes questions; every easy-VQA test
   question) and greedy caption CIDEr-D. The test images' encoder features come from the cache
   (as in ``blip2_offline.py``) instead of being recomputed per call; everything else is the
   checkpoint's own ``ask`` / ``caption``.

Run: ``python bench/simvlm_offline.py [--scale smoke|full|equal] [--out DIR]``.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _recipes import (  # noqa: E402
    EQUAL_STEPS,
    Data,
    Timer,
    bench_main,
    budget,
    easy_vqa,
    save,
    score,
    shapes,
    token_features,
    token_features_dir,
)


@dataclass(frozen=True)
class Scale:
    train: int  # training scenes (and at most this many easy-VQA training images)
    test: int | None  # held-out scenes / easy-VQA test images (None: the whole easy-VQA test split)
    shapes_steps: int
    easy_steps: int


SCALES = {
    "smoke": Scale(train=200, test=100, shapes_steps=40, easy_steps=30),
    "full": Scale(train=4000, test=None, shapes_steps=700, easy_steps=400),
    "equal": Scale(train=4000, test=None, shapes_steps=EQUAL_STEPS, easy_steps=EQUAL_STEPS),
}

#: On top of the ``shapes`` preset: bfloat16 autocast (about twice as fast on a CPU with AVX-512 BF16).
RECIPE = ["mixed_precision=bf16", "log_every=50"]


def _with_cached_features(model: Any, images: list[Any], cache: Any) -> Any:
    """Have ``model`` read the test images' encoder tokens from ``cache`` rather than run the encoder:
    the features the training run saw (float16 rounded), computed once for all questions."""
    from vlmkit.models.simvlm import _image_key

    row_of = {_image_key(image): row for row, image in enumerate(images)}

    def features(batch: list[Any], batch_size: int) -> tuple[Any, list[int]]:
        wanted = [row_of[_image_key(image)] for image in batch]
        unique = list(dict.fromkeys(wanted))
        position = {row: i for i, row in enumerate(unique)}
        return cache.batch(unique), [position[row] for row in wanted]

    model._features = features
    return model


def _train(data: Data, steps: int, out: Path, extra: list[str]) -> Path:
    from vlmkit_train.simvlm import simvlm_config, train_simvlm

    features = token_features_dir(data, "train", out.parent)
    config = simvlm_config("shapes", [*RECIPE, f"data={data.name}", f"train_size={len(data.train)}",
                                      f"features_dir={features}", f"max_steps={steps}", *extra])
    run = out / data.name
    train_simvlm(config, run)
    return run


def run(scale_name: str, out: Path) -> dict[str, Any]:
    import vlmkit

    scale = SCALES[scale_name]
    figures: dict[str, Any] = {"recipe": "simvlm", "scale": scale_name}
    timer = Timer(figures)
    for data, steps in ((shapes(scale.train, scale.test or 1000), scale.shapes_steps), (easy_vqa(scale.train, scale.test), scale.easy_steps)):
        cache = timer(f"{data.name}_test_features", lambda data=data: token_features(data, "test", out.parent))
        run_dir = timer(f"{data.name}_train", lambda data=data, steps=steps: _train(data, steps, out, budget(scale_name)))
        model = _with_cached_features(vlmkit.load(run_dir / "model"), [e.image for e in data.test], cache)
        figures[data.name] = timer(f"{data.name}_eval", lambda data=data, model=model: score(model, data, ("vqa", "caption")))
        last = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
        figures[data.name].update(steps=last["step"], final_loss=round(last["loss"], 4), train_seconds=round(last["seconds"], 1))
    timer.total()
    save(figures, out)
    return figures


def main() -> None:
    bench_main("simvlm", __doc__, SCALES, run)


if __name__ == "__main__":
    main()
