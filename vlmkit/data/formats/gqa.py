"""GQA question files (questions keyed by id; scored by exact match of the one answer)."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

from ...errors import InputError
from ..records import Example
from ._checks import _field, _id, _image_dir, _load_json, _optional
from .vqa import VqaAnnotation, _iter_vqa

_PLAIN_NAME = re.compile(r"[^/\\\0]+")  # an image id must not reach outside image_dir


def read_gqa(
    questions_json: str | os.PathLike[str], image_dir: str | os.PathLike[str], *, check_files: bool = True
) -> Iterator[Example]:
    """One example per image with its (question, answer) pairs, from a GQA questions file.

    The file (e.g. ``testdev_balanced_questions.json``) maps each question id to an object with
    ``imageId``, ``question`` and ``answer``; images come in the order of their first question, the
    id is the ``imageId`` and the image ``image_dir / "<imageId>.jpg"``. Files without answers (the
    test and challenge submission sets) give ``""`` answers. Question ids and answer types are in
    :func:`read_gqa_annotations`, aligned with ``qa``. GQA is scored by exact match of the one answer.
    """
    file, grouped = _load_gqa(questions_json)
    directory = _image_dir(image_dir)
    return _iter_vqa(file, directory, grouped, lambda image_id: f"{image_id}.jpg", check_files)


def read_gqa_annotations(questions_json: str | os.PathLike[str]) -> dict[str, tuple[VqaAnnotation, ...]]:
    """For each example id of :func:`read_gqa`, its questions in the same order as ``Example.qa``.

    ``question_id`` is the GQA question id (the key, a string), ``answers`` is ``(answer,)`` (empty
    without an answer), ``answer_type`` is ``types["structural"]`` (``"verify"``, ``"query"``, ...)
    and ``question_type`` is ``types["detailed"]``, each ``""`` when absent.
    """
    _, grouped = _load_gqa(questions_json)
    return {_id(image_id): tuple(items) for image_id, items in grouped.items()}


def _load_gqa(questions_json: str | os.PathLike[str]) -> tuple[Path, dict[int | str, list[VqaAnnotation]]]:
    """Questions grouped by image id, in the order of each image's first question."""
    file, data = _load_json(questions_json, "GQA questions")
    if isinstance(data.get("questions"), list):
        raise InputError(
            f"{file}: a 'questions' list is the VQAv2 layout; a GQA file maps question ids to questions"
        )
    grouped: dict[int | str, list[VqaAnnotation]] = {}
    for question_id, entry in data.items():
        where = f"{file}: question {question_id!r}"
        image_id = _field(entry, "imageId", (str, int), where)
        if isinstance(image_id, str) and (image_id.startswith(".") or not _PLAIN_NAME.fullmatch(image_id)):
            raise InputError(f"{where}['imageId'] {image_id!r} is not a plain file name")
        question = _field(entry, "question", str, where)
        answer = _optional(entry, "answer", where)
        types = _field(entry, "types", dict, where) if "types" in entry else {}
        item = VqaAnnotation(
            question_id,
            image_id,
            question,
            answer,
            (answer,) if "answer" in entry else (),
            _optional(types, "structural", f"{where}['types']"),
            _optional(types, "detailed", f"{where}['types']"),
        )
        grouped.setdefault(image_id, []).append(item)
    return file, grouped
