"""easy-VQA (Victor Zhou, 2020) as vlmkit examples, read from the installed PyPI package ``easy-vqa``.

Each 64x64 image shows one shape (circle, rectangle or triangle) in one of eight colours. The package
ships 4,000 train and 1,000 test images with 38,575 and 9,673 questions, and 13 possible answers. The
data stays inside the package; examples point at its image files.

The package has no captions, but every question reveals the shape or the colour ("what color is the
shape?" -> "blue"; "is there not a triangle?" -> "no" means there is one; there is only one shape),
so each example gets the caption its questions determine: "a blue rectangle" for 89% of train images,
"a blue shape" or "a rectangle" when the questions fix only one attribute, none for 1%.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Literal

from ..errors import InputError, VlmkitError
from .records import Example

__all__ = ["load_easy_vqa", "easy_vqa_answers", "EASY_VQA_SHAPES"]

EASY_VQA_SHAPES = ("circle", "rectangle", "triangle")
_NEGATIONS = frozenset({"not", "no"})
_Questions = tuple[
    list[str], list[str], list[int]
]  # (texts, answers, image ids), as the package returns them


def _package() -> ModuleType:
    try:
        import easy_vqa
    except ImportError as error:
        raise VlmkitError("easy-VQA data needs the PyPI package 'easy-vqa': pip install easy-vqa") from error
    return easy_vqa


def easy_vqa_answers() -> list[str]:
    """The 13 answers, in the package's order (the label set of its classifier baseline)."""
    return [str(answer) for answer in _package().get_answers()]


def _content(qa: list[tuple[str, str]], colours: frozenset[str]) -> tuple[str | None, str | None]:
    """The (colour, shape) the QA pairs determine; None for a part they leave open (or, defensively,
    contradict)."""
    shapes: set[str] = set()
    seen: set[str] = set()
    for question, answer in qa:
        words = question.rstrip("?").split()
        if answer in ("yes", "no") and (answer == "yes") == bool(_NEGATIONS.intersection(words)):
            continue  # the question names something that is not in the image
        words.append(answer)
        shapes.update(w for w in words if w in EASY_VQA_SHAPES)
        seen.update(w for w in words if w in colours)
    return (seen.pop() if len(seen) == 1 else None), (shapes.pop() if len(shapes) == 1 else None)


def _caption(colour: str | None, shape: str | None) -> tuple[str, ...]:
    """The caption a known colour and shape give; none when neither is known."""
    if shape and colour:
        return (f"a {colour} {shape}",)
    if colour:
        return (f"a {colour} shape",)
    return (f"a {shape}",) if shape else ()


def load_easy_vqa(split: Literal["train", "test"] = "train") -> list[Example]:
    """One example per image, ordered by image id, with all of that image's questions in file order."""
    if split not in ("train", "test"):
        raise InputError(f"easy-VQA split must be 'train' or 'test', not {split!r}")
    package = _package()
    readers: dict[str, tuple[Callable[[], _Questions], Callable[[], dict[int, str]]]] = {
        "train": (package.get_train_questions, package.get_train_image_paths),
        "test": (package.get_test_questions, package.get_test_image_paths),
    }
    read_questions, read_paths = readers[split]
    questions, answers, image_ids = read_questions()
    paths = read_paths()
    qa: dict[int, list[tuple[str, str]]] = {image_id: [] for image_id in sorted(paths)}
    for question, answer, image_id in zip(questions, answers, image_ids, strict=True):
        if image_id not in qa:
            raise VlmkitError(f"easy-VQA {split}: question {question!r} refers to missing image {image_id}")
        qa[image_id].append((question, answer))
    colours = frozenset(easy_vqa_answers()) - {"yes", "no", *EASY_VQA_SHAPES}
    examples = []
    for image_id, pairs in qa.items():
        colour, shape = _content(pairs, colours)
        caption = _caption(colour, shape)
        examples.append(
            Example(
                id=f"easy-vqa-{split}-{image_id}",
                image=Path(paths[image_id]),
                captions=caption,
                qa=tuple(pairs),
                group=f"{colour} {shape}" if colour and shape else "",  # the whole content of the image
                description=caption[0] if caption else "",  # all that is known of it
            )
        )
    return examples
