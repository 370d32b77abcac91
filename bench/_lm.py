"""The frozen LM of the offline benches: what ``bench/lm_ceiling.py`` trains for each dataset, what
``bench/blip2_offline.py`` trains or reuses (``--lm``), the one LM every soft-prompt recipe of
``bench/recipes_table.py`` freezes or tunes; and how its answers are grouped."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: dataset -> (steps, overrides of the LM preset ``shapes``): what the bench LMs are trained with.
#: easy-VQA's texts are short: ten segments to a text fit in 128 positions.
RECIPES: dict[str, tuple[int, list[str]]] = {
    "shapes": (1000, ["mixed_precision=bf16"]),
    "easy-vqa": (800, ["segments_per_text=10", "n_positions=128", "mixed_precision=bf16"]),
}


def train_frozen_lm(out: Path, examples: Sequence[Any], dataset: str, steps: int | None = None,
                    extra: Sequence[str] = (), *, progress: bool = True) -> Path:
    """``out/lm``: the LM of ``RECIPES[dataset]`` (``steps`` overrides its own) trained on the
    complete-description corpus of ``examples``; an LM already there is reused."""
    from vlmkit_train.lm import lm_config, lm_texts, train_lm

    recipe_steps, recipe = RECIPES[dataset]
    if not (out / "lm" / "config.json").is_file():
        config = lm_config("shapes", [f"max_steps={steps or recipe_steps}", "log_every=100", *recipe, *extra])
        train_lm(config, lm_texts(config, examples), out, progress=progress)
    return out / "lm"


def answer_kind(question: str, answer: str, data: str) -> str:
    """How a question is scored separately: its type on shapes, yes/no or other on easy-VQA."""
    from vlmkit.data.shapes import question_type

    return question_type(question) if data == "shapes" else ("yes/no" if answer in ("yes", "no") else "other")
