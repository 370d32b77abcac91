"""The frozen LM of the BLIP-2 benches: what ``bench/lm_ceiling.py`` trains for each dataset, and
what ``bench/blip2_offline.py`` trains or reuses (``--lm``); and how both group its answers."""

from __future__ import annotations

#: dataset -> (steps, overrides of the LM preset ``shapes``): what the bench LMs are trained with.
#: easy-VQA's texts are short: ten segments to a text fit in 128 positions.
RECIPES: dict[str, tuple[int, list[str]]] = {
    "shapes": (1000, ["mixed_precision=bf16"]),
    "easy-vqa": (800, ["segments_per_text=10", "n_positions=128", "mixed_precision=bf16"]),
}


def answer_kind(question: str, answer: str, data: str) -> str:
    """How a question is scored separately: its type on shapes, yes/no or other on easy-VQA."""
    from vlmkit.data.shapes import question_type

    return question_type(question) if data == "shapes" else ("yes/no" if answer in ("yes", "no") else "other")
