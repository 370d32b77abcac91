"""InstructBLIP's offline recipe on CPU, and the figures that show what instruction tuning does.

Steps (each a vlmkit_train recipe, run in-process):
1. the small frozen LM every soft-prompt recipe shares (``bench/_recipes.shared_lm``) and a BLIP-2 stage-1 run
   (``vlmkit_train.stage1``; or ``--stage1 DIR`` to reuse one trained on the same data);
2. instruction tuning on shapes-world scenes with the HELD-IN templates and task types of
   ``vlmkit.data.instructions`` (``vlmkit_train.instruct``): the Q-Former reads the instruction;
3. the ablation: the same run with ``instruction_aware=false`` (a BLIP-2 Q-Former, the LM still
   reads the instruction);
4. the headline figures through ``vlmkit.load`` and ``bench/_recipes.score``: VQA exact match on
   2,000 held-out shapes questions and CIDEr-D of captions. ``ask`` and ``caption`` use the
   checkpoint's default prompts, "Question: {} Answer:" and "a photo of": both HELD-IN templates
   (the first of each family). The 2,000 questions include "how many" questions, the held-out task
   type, as in the BLIP-2 bench;
5. generalisation, on the held-out scenes (colour-shape pairs never seen in training): accuracy per
   task type (CIDEr-D for captions) under the held-in and under the held-out templates (each
   template of a set used on an equal share of the samples), for the count questions (a task type
   never trained) and for the ablation;
6. easy-VQA: stage 1 and instruction tuning on its training split, VQA exact match on every test
   question and CIDEr-D, and the held-in / held-out template figures.

The generalisation figures run the loaded checkpoints' own generation (``model.net.generate``, the
code ``ask`` and ``caption`` call) on the test images' features computed once; ``score`` runs the
loaded models with each test image encoded once too (:func:`_encode_once`).

``--scale equal`` (the recipes table's budget) runs steps 1, 2, 4 and 6 without the template
figures.

Run: ``python bench/instructblip_offline.py [--scale smoke|full|equal] [--out DIR] [--stage1 DIR]
[--easy-stage1 DIR]``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _recipes import (  # noqa: E402
    EQUAL_STEPS,
    Data,
    Timer,
    _clean,
    bench_main,
    budget,
    easy_vqa,
    save,
    score,
    shapes,
    shared_lm,
)


@dataclass(frozen=True)
class Scale:
    train: int  # training scenes (and easy-VQA training images)
    test: int | None  # held-out shapes scenes; easy-VQA test images (None: all)
    easy_test: int | None
    lm_steps: int
    stage1_steps: int
    instruct_steps: int
    per_cell: int  # samples per (template set, task type) figure


SCALES = {
    "smoke": Scale(train=100, test=50, easy_test=50, lm_steps=30, stage1_steps=20, instruct_steps=30, per_cell=40),
    "full": Scale(train=4000, test=1000, easy_test=None, lm_steps=500, stage1_steps=1000, instruct_steps=1200, per_cell=300),
    "equal": Scale(train=4000, test=1000, easy_test=None, lm_steps=EQUAL_STEPS, stage1_steps=EQUAL_STEPS,
                   instruct_steps=EQUAL_STEPS, per_cell=0),
}

#: On top of the recipes' ``shapes`` presets (a scratch Q-Former with a corpus vocabulary): bfloat16 autocast.
MIXED = ["mixed_precision=bf16"]


def _encode_once(model: Any) -> Any:
    """Let a loaded model encode each image once, as ``blip2_offline.py`` does: ``score`` asks about
    the same test image many times (about ten questions per easy-VQA image), and ``caption`` /
    ``ask`` would run the frozen encoder again each time. The features are the model's own (its
    encoder, float32), so the answers are unchanged; only the repeated encoding goes."""
    encode = model._features
    memo: dict[Any, torch.Tensor] = {}

    def features(images: Any, batch_size: int) -> torch.Tensor:
        keys = [str(image) if isinstance(image, (str, Path)) else id(image) for image in images]
        new = {key: image for key, image in zip(keys, images, strict=True) if key not in memo}
        if new:
            memo.update(zip(new, encode(list(new.values()), batch_size), strict=True))
        return torch.stack([memo[key] for key in keys])  # (B, P, E)

    model._features = features
    return model


def _test_features(model: Any, data: Data, out: Path) -> torch.Tensor:
    """The frozen encoder's features of the test images, once: (N, P, E)."""
    from vlmkit.feature_cache import FeatureCache

    cache = FeatureCache.build(model.net.encoder, [e.image for e in data.test], out)
    return cache.batch(np.arange(len(data.test)))


def _generate(model: Any, features: torch.Tensor, prompts: list[str], max_new_tokens: int) -> list[str]:
    texts: list[str] = []
    with torch.inference_mode():
        for start in range(0, len(prompts), 64):
            texts += model.net.generate(features[start : start + 64], prompts[start : start + 64], max_new_tokens=max_new_tokens)
    return texts


def _cells(model: Any, features: torch.Tensor, data: Data, templates: Any, tasks: tuple[str, ...], per_cell: int) -> dict[str, Any]:
    """Accuracy per VQA task type (CIDEr-D for captions) with the ``templates``, each template of a
    family on an equal share of the ``per_cell`` samples; plus VQA accuracy per template."""
    from pycocoevalcap.cider.cider import Cider

    from vlmkit.data.instructions import task_type
    from vlmkit.eval import normalize_answer

    figures: dict[str, Any] = {}
    per_template: dict[str, list[bool]] = {t: [] for t in templates.vqa}
    for task in tasks:
        if task == "caption":
            rows = [i for i, e in enumerate(data.test) if e.captions][:per_cell]
            prompts = [templates.caption[k % len(templates.caption)] for k in range(len(rows))]
            captions = _generate(model, features[rows], prompts, max_new_tokens=24)
            gts = {str(k): [_clean(c) for c in data.test[i].captions] for k, i in enumerate(rows)}
            res = {str(k): [_clean(c) or "empty"] for k, c in enumerate(captions)}
            figures["caption_cider"] = round(float(Cider().compute_score(gts, res)[0]), 3)
            continue
        pairs = [(i, q, a) for i, e in enumerate(data.test) for q, a in e.qa if task_type(q, a) == task]
        if not pairs:
            continue
        chosen = [pairs[k] for k in np.random.default_rng(0).permutation(len(pairs))[:per_cell]]
        used = [templates.vqa[k % len(templates.vqa)] for k in range(len(chosen))]
        answers = _generate(model, features[[i for i, _, _ in chosen]], [t.format(q) for t, (_, q, _) in zip(used, chosen, strict=True)], 4)
        hits = [normalize_answer(p) == normalize_answer(a) for p, (_, _, a) in zip(answers, chosen, strict=True)]
        figures[task] = round(100.0 * float(np.mean(hits)), 2)
        for template, hit in zip(used, hits, strict=True):
            per_template[template].append(hit)
    figures["vqa_by_template"] = {t: round(100.0 * float(np.mean(h)), 2) for t, h in per_template.items() if h}
    return figures


def _generalisation(model: Any, features: torch.Tensor, data: Data, per_cell: int) -> dict[str, Any]:
    """Held-in vs held-out templates on the held-in task types, and the held-out task type (count)
    under both template sets."""
    from vlmkit.data.instructions import HELD_IN_TASKS, HELD_IN_TEMPLATES, HELD_OUT_TASKS, HELD_OUT_TEMPLATES

    tasks = (*HELD_IN_TASKS, *HELD_OUT_TASKS)
    figures = {
        "held_in_templates": _cells(model, features, data, HELD_IN_TEMPLATES, tasks, per_cell),
        "held_out_templates": _cells(model, features, data, HELD_OUT_TEMPLATES, tasks, per_cell),
    }
    for name in ("held_in_templates", "held_out_templates"):
        cells = figures[name]
        vqa = [cells[t] for t in HELD_IN_TASKS if t in cells and t != "caption"]
        cells["held_in_tasks_vqa_mean"] = round(float(np.mean(vqa)), 2)
    return figures


def _train(name: str, data: Data, out: Path, scale: Scale, lm_dir: Path, stage1_dir: Path, extra: list[str], timer: Timer) -> Any:
    import vlmkit
    from vlmkit_train.instruct import instruct_config, train_instruct

    overrides = [*MIXED, f"data={data.name}", f"train_size={len(data.train)}", f"features_dir={out / f'features_{data.name}'}",
                 f"stage1={stage1_dir}", f"language_model={lm_dir}", f"max_steps={scale.instruct_steps}", "log_every=50", *extra]
    result = timer(name, lambda: train_instruct(instruct_config("shapes", overrides), out / name))
    return _encode_once(vlmkit.load(out / name / "model")), result.final_losses["loss"]


def _stage1(name: str, data: Data, out: Path, scale: Scale, given: str | None, timer: Timer, extra: list[str]) -> Path:
    from vlmkit_train.stage1 import stage1_config, train_stage1

    if given:
        return Path(given)
    overrides = [*MIXED, f"data={data.name}", f"train_size={len(data.train)}", f"features_dir={out / f'features_{data.name}'}",
                 f"max_steps={scale.stage1_steps}", "log_every=50", *extra]
    timer(name, lambda: train_stage1(stage1_config("shapes", overrides), out / name))
    return out / name


def run(scale_name: str, out: Path, stage1: str | None = None, easy_stage1: str | None = None) -> dict[str, Any]:
    from vlmkit.data.instructions import HELD_IN_TEMPLATES

    scale = SCALES[scale_name]
    out.mkdir(parents=True, exist_ok=True)
    figures: dict[str, Any] = {"recipe": "instructblip", "scale": scale_name}
    timer = Timer(figures)
    figures["default_prompts"] = {"caption": HELD_IN_TEMPLATES.caption[0], "vqa": HELD_IN_TEMPLATES.vqa[0], "held_in": True}

    # Shapes: stage 1, instruction tuning, the ablation.
    extra = budget(scale_name)
    data = shapes(scale.train, scale.test or 1000)
    lm_dir = timer("lm_shapes", lambda: shared_lm(out, data, scale_name, scale.lm_steps))
    s1 = _stage1("stage1", data, out, scale, stage1, timer, extra)
    model, loss = _train("instruct", data, out, scale, lm_dir, s1, extra, timer)
    assert model.kind.architecture == "VlmkitInstructBlip" and model.net.config.vqa_prompt in HELD_IN_TEMPLATES.vqa
    figures["shapes"] = {"final_loss": loss, **timer("shapes_score", lambda: score(model, data, ("vqa", "caption")))}
    if scale.per_cell:  # the template figures and the ablation (not at the recipes table's budget)
        features = timer("test_features", lambda: _test_features(model, data, out / "test_features"))
        figures["shapes"]["generalisation"] = timer("shapes_generalisation", lambda: _generalisation(model, features, data, scale.per_cell))
        plain, plain_loss = _train("instruct_not_aware", data, out, scale, lm_dir, s1, ["instruction_aware=false", *extra], timer)
        figures["shapes"]["ablation_not_instruction_aware"] = {
            "final_loss": plain_loss,
            **timer("ablation_generalisation", lambda: _generalisation(plain, features, data, scale.per_cell)),
        }

    # easy-VQA: the same recipe on its own training split and LM.
    easy = easy_vqa(scale.train, scale.easy_test)
    easy_lm = timer("lm_easy", lambda: shared_lm(out, easy, scale_name, scale.lm_steps))
    easy_s1 = _stage1("easy_stage1", easy, out, scale, easy_stage1, timer, extra)
    easy_model, easy_loss = _train("easy_instruct", easy, out, scale, easy_lm, easy_s1, ["qa_fraction=0.8", *extra], timer)
    figures["easy-vqa"] = {"final_loss": easy_loss, **timer("easy_score", lambda: score(easy_model, easy, ("vqa", "caption")))}
    if scale.per_cell:
        easy_features = timer("easy_test_features", lambda: _test_features(easy_model, easy, out / "easy_test_features"))
        figures["easy-vqa"]["generalisation"] = timer(
            "easy_generalisation", lambda: _generalisation(easy_model, easy_features, easy, scale.per_cell)
        )
    timer.total()
    save(figures, out)
    return figures


def main() -> None:
    bench_main("instructblip", __doc__, SCALES, run, {"--stage1": "a BLIP-2 stage-1 run on the same shapes data to start from", "--easy-stage1": "the same for easy-VQA"})


if __name__ == "__main__":
    main()
