"""LLaVA-1.5's two-stage recipe offline on CPU (``vlmkit train llava-stage1`` / ``llava-stage2``), and
the figures that show it learns.

Parts, all trained here or by the other recipes' benches, nothing downloaded:

- the vision tower: the CLIP recipe's ViT (``vlmkit_train.contrastive``, preset "shapes": 64x64
  scenes, 8x8 patches, so 64 image tokens), taken from the CLIP bench's run beside this one
  (``OUT/../clip/clip/model``, ``.../easy_clip/model``) when it exists, else given with ``--vision``
  / ``--easy-vision``, else trained here;
- the LM: the small GPT-2 every soft-prompt recipe shares (``bench/_recipes.shared_lm``, the one
  BLIP-2's bench freezes; stage 2 grows its learned positions to its ``max_length``).

Stage 1 trains the MLP projector alone on brief-description conversations answered by a caption;
stage 2 the projector and the whole LM on multi-turn conversations (short answers with LLaVA-1.5's
"Answer the question using a single word or phrase." suffix, one-sentence captions, some with two
images). Samples the validation pass flags (too long for ``max_length`` with their image tokens)
are skipped and counted in the figures. Scored through ``vlmkit.load`` (the ``Llava`` wrapper, the
checkpoint's chat template, bfloat16 to keep generation within the time budget) by
``bench/_recipes.score``: VQA exact match on 2,000 held-out shapes questions and on every easy-VQA
test question, and CIDEr-D of captions.

Run: ``python bench/llava_offline.py [--scale smoke|full|equal] [--out DIR] [--vision DIR] [--easy-vision DIR]``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _recipes import EQUAL_STEPS, Data, Timer, bench_main, budget, easy_vqa, save, score, shapes, shared_lm  # noqa: E402


@dataclass(frozen=True)
class Scale:
    train: int  # training scenes (and easy-VQA training images)
    test: int  # held-out shapes scenes
    easy_test: int | None  # easy-VQA test images (None: all)
    lm_steps: int  # only when no shared LM exists and the scale is not "full"
    clip_steps: int  # only when no CLIP tower is found or given
    stage1_steps: int
    stage2_steps: int


SCALES = {
    "smoke": Scale(train=200, test=50, easy_test=50, lm_steps=30, clip_steps=10, stage1_steps=10, stage2_steps=10),
    "full": Scale(train=4000, test=1000, easy_test=None, lm_steps=500, clip_steps=240, stage1_steps=100, stage2_steps=160),
    "equal": Scale(train=4000, test=1000, easy_test=None, lm_steps=EQUAL_STEPS, clip_steps=EQUAL_STEPS,
                   stage1_steps=EQUAL_STEPS, stage2_steps=EQUAL_STEPS),
}

#: One process holds one accelerate state: every run here (and the shared LM) trains in bfloat16.
COMMON = ["mixed_precision=bf16", "on_invalid=skip", "log_every=10"]
EVAL_DTYPE = "bfloat16"


def _vision(out: Path, data: Data, scale: Scale, given: str | None, extra: list[str]) -> Path:
    """The CLIP recipe's image tower for ``data``: given, the CLIP bench's, or trained here."""
    if given:
        return Path(given)
    shared = out.parent / "clip" / ("clip" if data.name == "shapes" else "easy_clip") / "model"
    if (shared / "config.json").is_file() and scale.train == SCALES["full"].train:  # full and equal
        return shared
    from vlmkit_train.contrastive import contrastive_config, train_contrastive

    run_dir = out / f"clip_{data.name}"
    if not (run_dir / "model" / "config.json").is_file():
        overrides = [f"data={data.name}", f"train_size={len(data.train)}", f"max_steps={scale.clip_steps}", "mixed_precision=bf16", *extra]
        train_contrastive(contrastive_config("shapes", overrides), run_dir)
    return run_dir / "model"


def _recipe(data: Data, out: Path, scale: Scale, vision: Path, lm: Path, timer: Timer, extra: list[str]) -> dict[str, Any]:
    """Stage 1 and stage 2 (the recipes' "shapes" presets) on ``data``'s training examples, then the
    scores of the result."""
    import vlmkit
    from vlmkit_train.llava import stage1_config, stage2_config, train_stage1, train_stage2

    name = data.name.replace("-", "_")
    shared = [f"data={data.name}", f"train_size={len(data.train)}", f"features_dir={out / f'features_{name}'}", *COMMON, *extra]
    first = timer(f"{name}_stage1", lambda: train_stage1(stage1_config("shapes", [
        *shared, f"vision_tower={vision}", f"language_model={lm}", f"max_steps={scale.stage1_steps}",
    ]), out / f"{name}_stage1"))
    second = timer(f"{name}_stage2", lambda: train_stage2(stage2_config("shapes", [
        *shared, f"stage1={out / f'{name}_stage1'}", f"max_steps={scale.stage2_steps}",
    ]), out / f"{name}_stage2"))
    model = vlmkit.load(out / f"{name}_stage2" / "model", dtype=EVAL_DTYPE)
    figures: dict[str, Any] = {
        "stage1_loss": round(first.final_losses["loss"], 4), "stage2_loss": round(second.final_losses["loss"], 4),
        "stage1_samples": first.final_record["samples"], "stage1_skipped": first.final_record["skipped"],
        "stage2_samples": second.final_record["samples"], "stage2_skipped": second.final_record["skipped"],
    }
    figures.update(timer(f"{name}_score", lambda: score(model, data, ("vqa", "caption"))))
    return figures


def run(scale_name: str, out: Path, vision: str | None = None, easy_vision: str | None = None) -> dict[str, Any]:
    scale = SCALES[scale_name]
    out.mkdir(parents=True, exist_ok=True)
    figures: dict[str, Any] = {"recipe": "llava", "scale": scale_name, "eval_dtype": EVAL_DTYPE}
    timer = Timer(figures)

    data = shapes(scale.train, scale.test)
    lm = timer("lm_shapes", lambda: shared_lm(out, data, scale_name, scale.lm_steps))
    tower = timer("clip_shapes", lambda: _vision(out, data, scale, vision, budget(scale_name)))
    figures["parts"] = {"shapes": {"vision_tower": str(tower), "language_model": str(lm)}}
    figures["shapes"] = _recipe(data, out, scale, tower, lm, timer, budget(scale_name))

    easy = easy_vqa(scale.train, scale.easy_test)
    easy_lm = timer("lm_easy", lambda: shared_lm(out, easy, scale_name, scale.lm_steps))
    easy_tower = timer("clip_easy", lambda: _vision(out, easy, scale, easy_vision, budget(scale_name)))
    figures["parts"]["easy-vqa"] = {"vision_tower": str(easy_tower), "language_model": str(easy_lm)}
    figures["easy-vqa"] = _recipe(easy, out, scale, easy_tower, easy_lm, timer, budget(scale_name))
    timer.total()
    save(figures, out)
    return figures


def main() -> None:
    bench_main("llava", __doc__, SCALES, run, {"--vision": "a CLIP model directory trained on the shapes scenes (its vision tower is used)", "--easy-vision": "the same for easy-VQA"})


if __name__ == "__main__":
    main()
