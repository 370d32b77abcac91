"""VQAv2 (and OK-VQA) questions and annotations."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ...errors import InputError
from ..records import Example
from ._checks import _existing, _field, _id, _image_dir, _load_json, _optional

VQA_IMAGE_NAME = "COCO_{subset}_{image_id:012d}.jpg"


@dataclass(frozen=True)
class VqaAnnotation:
    """One VQA question with everything the VQA accuracy needs (``Example.qa`` keeps only the pair).

    ``answer`` is the ``multiple_choice_answer`` (OK-VQA, which has none: the most frequent of the
    human answers); ``answers`` the ten human answers in file order.
    Without an annotation file (test-dev, test) ``answer`` is ``""`` and the other answer fields empty.
    For GQA (:func:`read_gqa_annotations`) ``answers`` holds the one answer and the types come from
    the question's ``types``.
    """

    question_id: int | str
    image_id: int | str
    question: str
    answer: str = ""
    answers: tuple[str, ...] = ()
    answer_type: str = ""
    question_type: str = ""


ImageNamer = Callable[[int | str], str]


def read_vqa(
    questions_json: str | os.PathLike[str],
    annotations_json: str | os.PathLike[str] | None,
    image_dir: str | os.PathLike[str],
    *,
    image_name: str | ImageNamer = VQA_IMAGE_NAME,
    subset: str | None = None,
    check_files: bool = True,
) -> Iterator[Example]:
    """One example per image with its (question, multiple-choice answer) pairs, in question-file order.

    Images come in the order of their first question; the id is the image id. ``image_name`` is a
    format string with ``{image_id}`` and ``{subset}`` (default: COCO's names), or a function of the
    image id; the result is relative to ``image_dir``. ``subset`` defaults to the questions file's
    ``data_subtype`` (e.g. ``"train2014"``). Without ``annotations_json`` every answer is ``""``. The
    ten human answers and the answer types are in :func:`read_vqa_annotations`, aligned with ``qa``.

    OK-VQA's annotations read as they are: where an annotation has no ``multiple_choice_answer``, the
    answer is the most frequent of its ``answers`` (on a tie, the one that comes first in the file);
    ``answer_type`` and ``question_type`` are optional (``""`` when absent); other keys of the
    annotations and of their answers (``raw_answer``, ``answer_confidence``, ...) are ignored.
    """
    questions_file, grouped, data_subtype = _load_vqa(questions_json, annotations_json)
    directory = _image_dir(image_dir)
    namer = _image_namer(questions_file, image_name, subset if subset is not None else data_subtype)
    return _iter_vqa(questions_file, directory, grouped, namer, check_files)


def read_vqa_annotations(
    questions_json: str | os.PathLike[str], annotations_json: str | os.PathLike[str] | None = None
) -> dict[str, tuple[VqaAnnotation, ...]]:
    """For each example id of :func:`read_vqa`, its questions in the same order as ``Example.qa``.

    ``read_vqa_annotations(q, a)[example.id][i]`` describes ``example.qa[i]``: the question id (for
    result files), the ten human answers and the answer type (for the VQA accuracy).
    """
    _, grouped, _ = _load_vqa(questions_json, annotations_json)
    return {_id(image_id): tuple(items) for image_id, items in grouped.items()}


def _image_namer(file: Path, image_name: str | ImageNamer, subset: str | None) -> ImageNamer:
    if callable(image_name):
        return image_name
    if not isinstance(image_name, str):
        raise InputError(f"image_name must be a format string or a function, not {type(image_name).__name__}")
    if subset is None and "{subset" in image_name:
        raise InputError(
            f"{file}: no 'data_subtype' string to fill {{subset}} in {image_name!r}; pass subset="
        )
    template = image_name

    def name(image_id: int | str) -> str:
        try:
            return template.format(image_id=image_id, subset=subset)
        except (KeyError, IndexError, ValueError) as error:
            raise InputError(
                f"image_name {template!r} cannot name image {image_id!r} ({type(error).__name__}: {error}); "
                "the fields are {image_id} and {subset}"
            ) from error

    return name


def _load_vqa(
    questions_json: str | os.PathLike[str], annotations_json: str | os.PathLike[str] | None
) -> tuple[Path, dict[int | str, list[VqaAnnotation]], str | None]:
    """Questions grouped by image id (first-appearance order), each joined to its annotation; and
    the questions file's ``data_subtype`` (None when absent)."""
    file, data = _load_json(questions_json, "VQA questions")
    questions = _field(data, "questions", list, f"{file}: the top level")
    truth = _vqa_truth(annotations_json) if annotations_json is not None else None
    grouped: dict[int | str, list[VqaAnnotation]] = {}
    seen: set[int | str] = set()
    for i, entry in enumerate(questions):
        where = f"{file}: questions[{i}]"
        image_id = _field(entry, "image_id", (int, str), where)
        question = _field(entry, "question", str, where)
        question_id = _field(entry, "question_id", (int, str), where)
        if question_id in seen:
            raise InputError(f"{where}: question_id {question_id!r} appears twice")
        seen.add(question_id)
        item = VqaAnnotation(question_id, image_id, question)
        if truth is not None:
            annotations_file, by_question = truth
            if question_id not in by_question:
                raise InputError(
                    f"{annotations_file}: no annotation for question_id {question_id!r} of {file}"
                )
            answer, answers, answer_type, question_type = by_question[question_id]
            item = VqaAnnotation(question_id, image_id, question, answer, answers, answer_type, question_type)
        grouped.setdefault(image_id, []).append(item)
    if truth is not None:
        annotations_file, by_question = truth
        extra = [q for q in by_question if q not in seen]
        if extra:
            raise InputError(
                f"{annotations_file}: {len(extra)} annotations have no question in {file} "
                f"(first: question_id {extra[0]!r}); are the two files from the same split?"
            )
    data_subtype = data.get("data_subtype")
    return file, grouped, data_subtype if isinstance(data_subtype, str) else None


def _vqa_truth(
    annotations_json: str | os.PathLike[str],
) -> tuple[Path, dict[int | str, tuple[str, tuple[str, ...], str, str]]]:
    file, data = _load_json(annotations_json, "VQA annotations")
    annotations = _field(data, "annotations", list, f"{file}: the top level")
    by_question: dict[int | str, tuple[str, tuple[str, ...], str, str]] = {}
    for i, entry in enumerate(annotations):
        where = f"{file}: annotations[{i}]"
        question_id = _field(entry, "question_id", (int, str), where)
        if question_id in by_question:
            raise InputError(f"{where}: question_id {question_id!r} appears twice")
        raw = _field(entry, "answers", list, where)
        answers = tuple(_field(a, "answer", str, f"{where}['answers'][{j}]") for j, a in enumerate(raw))
        if "multiple_choice_answer" in entry:
            answer = _field(entry, "multiple_choice_answer", str, where)
        elif answers:  # OK-VQA: the most frequent answer; max() keeps the first of equals
            counts = Counter(answers)
            answer = max(answers, key=counts.__getitem__)
        else:
            raise InputError(f"{where} has no 'multiple_choice_answer' and no 'answers' to take one from")
        answer_type = _optional(entry, "answer_type", where)
        question_type = _optional(entry, "question_type", where)
        by_question[question_id] = (answer, answers, answer_type, question_type)
    return file, by_question


def _iter_vqa(
    file: Path, directory: Path, grouped: dict[int | str, list[VqaAnnotation]], namer: ImageNamer, check: bool
) -> Iterator[Example]:
    for image_id, items in grouped.items():
        name = namer(image_id)
        if not isinstance(name, str):
            raise InputError(
                f"image_name returned {type(name).__name__} for image {image_id!r}, not a string"
            )
        path = _existing(directory / name, file, f"image {image_id!r}", check)
        yield Example(id=_id(image_id), image=path, qa=tuple((q.question, q.answer) for q in items))
