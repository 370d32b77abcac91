"""VQA scoring: the VQAv2 answer normalisation and accuracy, and exact match for single-answer sets.

The VQAv2 protocol (Antol et al. 2015; Goyal et al. 2017) compares a prediction with the ten answers
human annotators gave. Both sides are normalised first:

- lower case; tabs and newlines are spaces;
- a period is dropped unless a digit follows it ("2.5" keeps its point), a comma between digits is
  dropped ("1,000" -> "1000"), and the other punctuation (``; / [ ] " { } ( ) = + \\ _ - > < @ ` , ? !``)
  becomes a space; apostrophes and colons stay ("don't", "10:30");
- number words up to ten become digits ("two" -> "2", "none" -> "0"), the articles a/an/the are
  dropped, and contractions written without their apostrophe get it back ("dont" -> "don't"; words
  that are also ordinary words, such as "its", "well" or "were", are left alone).

A prediction then scores ``min(1, matches / 3)`` where ``matches`` counts the human answers equal to
it, averaged over the ten ways of leaving one annotator out (so 1, 2, 3 and 4+ matching annotators
give 0.3, 0.6, 0.9 and 1.0). The official script normalises the human answers only when they are not
all the same; here both sides are always normalised, which differs only for unnormalised
annotations (VQAv2's are already lower case and mostly clean).

Sets with one answer per question (easy-VQA, GQA, the shapes world) use :func:`exact_match_accuracy`
on the same normalisation.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["normalize_answer", "exact_match_accuracy", "vqa_question_accuracy", "vqa_accuracy", "VqaScores"]

_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
            "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = frozenset({"a", "an", "the"})
# Contractions as annotators type them without the apostrophe. Forms that are English words in
# their own right (its, well, were, hell, ill, id, shell, wed, shed, cant, wont) are not listed.
_CONTRACTIONS = {
    form.replace("'", ""): form
    for form in (
        "ain't aren't couldn't could've couldn't've didn't doesn't don't hadn't hasn't haven't he'd "
        "he'd've he's how'd how'll how's i'd've i'm i've isn't it'd it'd've it'll let's ma'am mightn't "
        "might've mustn't must've needn't o'clock oughtn't shan't she'd've she's should've shouldn't "
        "shouldn't've somebody'd somebody's someone'd someone'll someone's something'd something's "
        "that'll that's there'd there're there's they'd they'd've they'll they're they've twas wasn't "
        "we'd've we've weren't what'll what're what's what've when's where'd where's where've who'd "
        "who'd've who'll who're who's who've why'll why're why's would've wouldn't wouldn't've y'all "
        "you'd you'd've you'll you're you've"
    ).split()
    if "'" in form
}
_PUNCTUATION = re.compile(r"[;/\[\]\"{}()=+\\_\-><@`,?!]")
_PERIOD = re.compile(r"\.(?!\d)")
_DIGIT_COMMA = re.compile(r"(?<=\d),(?=\d)")


def normalize_answer(answer: str) -> str:
    """The VQAv2 normalisation of one answer (see the module docstring)."""
    text = answer.replace("\n", " ").replace("\t", " ").strip().lower()
    text = _DIGIT_COMMA.sub("", text)
    text = _PERIOD.sub("", text)
    text = _PUNCTUATION.sub(" ", text)
    words = (_NUMBERS.get(w, w) for w in text.split())
    return " ".join(_CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES)


def exact_match_accuracy(predictions: Sequence[str], answers: Sequence[str]) -> float:
    """Percent of predictions equal to the answer after normalisation."""
    if len(predictions) != len(answers):
        raise ValueError(f"{len(predictions)} predictions for {len(answers)} answers")
    if not answers:
        raise ValueError("no answers to score")
    hits = sum(normalize_answer(p) == normalize_answer(a) for p, a in zip(predictions, answers, strict=True))
    return 100.0 * hits / len(answers)


def vqa_question_accuracy(prediction: str, human_answers: Sequence[str]) -> float:
    """One question's VQAv2 accuracy in [0, 1]: min(1, matches / 3) averaged over leaving each
    annotator out. Needs at least two human answers (with one, nobody is left to agree)."""
    if isinstance(human_answers, str) or len(human_answers) < 2:
        raise ValueError(f"VQA accuracy needs the human answers (usually ten), got {human_answers!r}")
    guess = normalize_answer(prediction)
    agree = [normalize_answer(a) == guess for a in human_answers]
    matches = sum(agree)
    # Leaving out an agreeing annotator leaves matches - 1 agreeing among the others, else matches.
    total = sum(min(1.0, (matches - hit) / 3.0) for hit in agree)
    return total / len(agree)


@dataclass(frozen=True)
class VqaScores:
    """VQAv2 accuracy in percent: overall, per answer type ("yes/no", "number", "other") and per question."""

    overall: float
    per_answer_type: dict[str, float]
    per_question: list[float]  # in [0, 1], in input order


def vqa_accuracy(
    predictions: Sequence[str],
    human_answers: Sequence[Sequence[str]],
    answer_types: Sequence[str] | None = None,
) -> VqaScores:
    """The VQAv2 accuracy of ``predictions`` against each question's human answers."""
    if len(predictions) != len(human_answers):
        raise ValueError(f"{len(predictions)} predictions for {len(human_answers)} questions")
    if not predictions:
        raise ValueError("no answers to score")
    if answer_types is not None and len(answer_types) != len(predictions):
        raise ValueError(f"{len(answer_types)} answer types for {len(predictions)} questions")
    per_question = [vqa_question_accuracy(p, a) for p, a in zip(predictions, human_answers, strict=True)]
    by_type: dict[str, list[float]] = {}
    for i, score in enumerate(per_question):
        if answer_types is not None and answer_types[i]:
            by_type.setdefault(answer_types[i], []).append(score)
    return VqaScores(
        overall=100.0 * sum(per_question) / len(per_question),
        per_answer_type={t: 100.0 * sum(s) / len(s) for t, s in sorted(by_type.items())},
        per_question=per_question,
    )
