"""Answer normalisation and exact-match accuracy for single-answer VQA sets (easy-VQA, shapes world).

The normalisation follows the VQAv2 evaluation's spirit: lower case, punctuation stripped, articles
dropped, number words mapped to digits, so "Two." and "2" agree.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = ["normalize_answer", "exact_match_accuracy"]

_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
            "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = {"a", "an", "the"}
_PUNCT = re.compile(r"[^\w\s]")


def normalize_answer(answer: str) -> str:
    words = _PUNCT.sub(" ", answer.lower()).split()
    return " ".join(_NUMBERS.get(w, w) for w in words if w not in _ARTICLES)


def exact_match_accuracy(predictions: Sequence[str], answers: Sequence[str]) -> float:
    """Percent of predictions equal to the answer after normalisation."""
    if len(predictions) != len(answers):
        raise ValueError(f"{len(predictions)} predictions for {len(answers)} answers")
    if not answers:
        raise ValueError("no answers to score")
    hits = sum(normalize_answer(p) == normalize_answer(a) for p, a in zip(predictions, answers, strict=True))
    return 100.0 * hits / len(answers)
