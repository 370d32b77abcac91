"""CLIP, LiT and SigLIP trained offline on CPU (``vlmkit train clip``), and retrieval figures that show
they learn.

Variants, each trained on the shapes world's training scenes and scored through ``vlmkit.load`` on the
1,000 held-out scenes (colour-shape pairs never seen in training) by ``bench/_recipes.py``:

- ``clip`` (the main row): CLIP from scratch, a small ViT and a small BERT, symmetric InfoNCE;
- ``siglip``: the same towers with SigLIP's sigmoid loss (the ``siglip`` preset: the logit bias starts
  at -4, about -ln(batch - 1), rather than the paper's -10, from which this short run stays on the
  collapsed plateau where every similarity is the same);
- ``lit``: LiT, the ImageNet-pretrained EfficientNet-Lite0 locked (features cached once), the
  all-MiniLM-L6-v2 text tower tuned to read it out.

Plus CLIP trained on easy-VQA's training images and scored on the test images that have a caption.
easy-VQA's captions are a colour and a shape (35 distinct captions over 984 test images), so the
strict figure is capped far below 100 (``strict_t2i_r1_ceiling`` says where); the grouped figure
counts any image with the same caption as right.

Run: ``python bench/clip_offline.py [--scale smoke|full|equal] [--out DIR]``.
"""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _recipes  # noqa: E402


@dataclass(frozen=True)
class Scale:
    train: int  # training scenes / easy-VQA training images
    test: int  # held-out scenes (the gallery) / easy-VQA test images (0: all)
    clip_steps: int
    siglip_steps: int
    lit_steps: int
    easy_steps: int


SCALES = {
    "smoke": Scale(train=200, test=100, clip_steps=10, siglip_steps=10, lit_steps=10, easy_steps=10),
    "full": Scale(train=4000, test=1000, clip_steps=300, siglip_steps=200, lit_steps=100, easy_steps=150),
    "equal": Scale(train=4000, test=1000, clip_steps=_recipes.EQUAL_STEPS, siglip_steps=_recipes.EQUAL_STEPS,
                   lit_steps=_recipes.EQUAL_STEPS, easy_steps=_recipes.EQUAL_STEPS),
}

#: On top of each preset, for every variant (one process holds one accelerate state: one precision);
#: bfloat16 autocast is about 1.5x faster on a CPU with AVX512-BF16, and the losses stay in float32.
COMMON = ["mixed_precision=bf16"]

VARIANTS = {
    "clip": ("shapes", "clip_steps"),
    "siglip": ("siglip", "siglip_steps"),
    "lit": ("lit", "lit_steps"),
}


def _train(preset: str, overrides: list[str], out: Path) -> dict[str, Any]:
    from vlmkit_train.contrastive import contrastive_config, train_contrastive

    config = contrastive_config(preset, [*COMMON, *overrides, "log_every=10"])
    result = train_contrastive(config, out)
    return {"steps": result.steps, "final_loss": round(result.final_losses["loss"], 4), "logit_scale": round(result.final_losses["scale"], 2)}


def _strict_ceiling(data: _recipes.Data) -> float:
    """Best strict text->image R@1 possible: a caption shared by k test images finds its own 1 in k."""
    counts = Counter(e.captions[0] for e in data.test if e.captions)
    return 100.0 * len(counts) / sum(counts.values())


def run(scale_name: str, out: Path) -> dict[str, Any]:
    import vlmkit

    scale = SCALES[scale_name]
    figures: dict[str, Any] = {"recipe": "clip", "scale": scale_name, "variants": {}}
    timer = _recipes.Timer(figures)
    shapes = _recipes.shapes(scale.train, scale.test)
    features = [f"features_dir={out / 'features_shapes'}"]
    for name, (preset, steps) in VARIANTS.items():
        overrides = [f"train_size={scale.train}", f"max_steps={getattr(scale, steps)}", *features, *_recipes.budget(scale_name)]
        row = timer(f"train_{name}", lambda: _train(preset, overrides, out / name))  # noqa: B023
        model = vlmkit.load(out / name / "model")
        row.update(timer(f"score_{name}", lambda: _recipes.score(model, shapes, ("retrieval",))))  # noqa: B023
        figures["variants"][name] = row
    figures["shapes"] = {k: v for k, v in figures["variants"]["clip"].items() if "r1" in k}

    # The grouped figure counts every image with the same caption as right (``_recipes.easy_vqa``).
    easy = _recipes.easy_vqa(scale.train, scale.test or None)
    overrides = ["data=easy-vqa", f"train_size={len(easy.train)}", f"max_steps={scale.easy_steps}", *_recipes.budget(scale_name)]
    figures["easy_vqa_training"] = timer("train_easy", lambda: _train("shapes", overrides, out / "easy_clip"))
    model = vlmkit.load(out / "easy_clip" / "model")
    figures["easy-vqa"] = timer("score_easy", lambda: _recipes.score(model, easy, ("retrieval",)))
    figures["easy-vqa"]["strict_t2i_r1_ceiling"] = _strict_ceiling(easy)
    figures["shapes"]["strict_t2i_r1_ceiling"] = _strict_ceiling(shapes)
    timer.total()
    _recipes.save(figures, out)
    return figures


def main() -> None:
    _recipes.bench_main("clip", __doc__, SCALES, run)


if __name__ == "__main__":
    main()
