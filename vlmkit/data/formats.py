"""Readers for common dataset formats, streamed as ``Example`` records.

Every reader returns an iterator: examples are built one at a time as the consumer asks for them.
JSON annotation files are parsed once with :mod:`json` (they are small next to the images), but no
image is opened by the reader. Files on disk are yielded as :class:`pathlib.Path` objects; images
inside tar shards are yielded as PIL images opened lazily over the member's bytes (only the header
is parsed; pixels are decoded on first use, e.g. ``.convert("RGB")``).

Each reader checks the format and raises :class:`~vlmkit.errors.InputError` naming the file and what
is wrong (missing key, wrong type, missing image file, unsafe tar member, ...). Problems visible in
the annotation files are reported when the reader is called, before anything is yielded; problems
that need the images (a missing image file, a sample without an image) are reported when the
example concerned is reached.

- :func:`read_coco_captions`: COCO caption JSON (also NoCaps, and the image-info files of the test
  sets, which have no captions), or the Karpathy-split JSON (COCO, Flickr8k, Flickr30k).
- :func:`read_vqa` and :func:`read_vqa_annotations`: VQAv2 (and OK-VQA) questions and annotations.
- :func:`read_gqa` and :func:`read_gqa_annotations`: GQA question files.
- :func:`read_folder`: a folder of images with same-named ``.txt`` caption files.
- :func:`read_image_classes`: a classification folder, one subfolder per class (ImageNet-style).
- :func:`read_webdataset`: WebDataset ``.tar`` shards.
- :func:`read_dataset`: one string spec for all of the above and the built-in sets.

Where to get the files (nothing is downloaded by vlmkit):

- **COCO Karpathy split**: ``caption_datasets.zip`` from Andrej Karpathy's "Deep Visual-Semantic
  Alignments for Generating Image Descriptions" project page (Stanford) holds ``dataset_coco.json``,
  ``dataset_flickr8k.json`` and ``dataset_flickr30k.json``. The COCO images are "2014 Train images" and
  "2014 Val images" from the Download page of cocodataset.org; unpack both under one folder so that
  the ``filepath`` field (``train2014``/``val2014``) resolves, and pass that folder as ``image_dir``.
  The plain COCO caption JSON (``captions_train2014.json``) is in "2014 Train/Val annotations" there.
  Karpathy's "train" split is usually taken together with "restval": ``split=("train", "restval")``.
- **VQAv2**: the Download page of visualqa.org ("Balanced Real Images"): the questions
  (``v2_OpenEnded_mscoco_train2014_questions.json``, ...) and annotations
  (``v2_mscoco_train2014_annotations.json``, ...); the images are COCO 2014 train/val (and COCO 2015
  test for test-dev/test, which has no annotations). The default ``image_name`` matches the COCO
  file names (``COCO_train2014_000000000009.jpg``); ``subset`` comes from ``data_subtype`` in the
  questions file.
- **Flickr30K**: the images from the "Flickr30k" dataset page of the University of Illinois
  (Denotation Graph project; access by request form), and the captions and splits from Karpathy's
  ``dataset_flickr30k.json`` above: ``read_coco_captions("dataset_flickr30k.json", "flickr30k-images",
  split="test")``.
- **NoCaps**: the validation captions (``nocaps_val_4500_captions.json``, COCO caption format) and the
  test image list (``nocaps_test_image_info.json``, no captions: results go to the evaluation server)
  from the Download section of nocaps.org. The images are Open Images validation/test images; the
  ``file_name`` of each entry is the name to store them under in ``image_dir``. Read with
  :func:`read_coco_captions` (``coco:`` spec); the extra image keys (``open_images_id``, ``height``,
  ...) are ignored. COCO's own ``image_info_test2014.json`` reads the same way.
- **OK-VQA**: the questions (``OpenEnded_mscoco_val2014_questions.json``) and annotations
  (``mscoco_val2014_annotations.json``) from okvqa.allenai.org, in the VQAv2 layout over COCO 2014
  images, so :func:`read_vqa` (``vqa:`` spec) reads them as they are.
- **GQA**: from the Download page of cs.stanford.edu/people/dorarad/gqa, the questions archive (use
  the ``*_balanced_questions.json`` files, e.g. ``testdev_balanced_questions.json``; the "all"
  files are far larger) and the images archive, whose ``images/`` folder is the ``image_dir``.
- **ImageNet** (zero-shot classification): the ILSVRC2012 validation images from image-net.org (after
  registration), sorted into one folder per WordNet id (``val/n01440764/*.JPEG``); the Kaggle copy's
  ``LOC_synset_mapping.txt`` is a ready ``class_names`` file, and without one the names come from
  the ImageNet-1k class descriptions vlmkit ships (timm's).
"""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
import zlib
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from tarfile import ReadError
from typing import Any, Literal, Self

from PIL import Image, UnidentifiedImageError

from ..errors import InputError
from .easy_vqa import load_easy_vqa
from .records import Example
from .shapes import make_scene, to_example

__all__ = [
    "IMAGE_EXTENSIONS",
    "WDS_IMAGE_EXTENSIONS",
    "VQA_IMAGE_NAME",
    "VqaAnnotation",
    "read_coco_captions",
    "read_vqa",
    "read_vqa_annotations",
    "read_gqa",
    "read_gqa_annotations",
    "read_folder",
    "read_image_classes",
    "read_webdataset",
    "expand_braces",
    "read_dataset",
    "dataset_schemes",
]

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
WDS_IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")  # in order of preference within one sample
VQA_IMAGE_NAME = "COCO_{subset}_{image_id:012d}.jpg"

_KIND_NAMES = {str: "a string", int: "an integer", list: "a list", dict: "an object"}


# ---------------------------------------------------------------------------------------------------
# JSON checks


def _describe_kind(kinds: type | tuple[type, ...]) -> str:
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    return " or ".join(_KIND_NAMES.get(kind, kind.__name__) for kind in kinds)


def _type_name(value: object) -> str:
    return {dict: "object", list: "list", str: "string", int: "integer", float: "number"}.get(
        type(value), "null" if value is None else type(value).__name__
    )


def _check_kind(value: object, kinds: type | tuple[type, ...], where: str) -> Any:
    if isinstance(value, bool) or not isinstance(value, kinds):  # JSON true/false are not ids
        raise InputError(f"{where} must be {_describe_kind(kinds)}, not {_type_name(value)}")
    return value


def _field(entry: object, key: str, kinds: type | tuple[type, ...], where: str) -> Any:
    """``entry[key]`` checked to be an object with that key of that type; ``where`` names the entry."""
    _check_kind(entry, dict, where)
    assert isinstance(entry, dict)
    if key not in entry:
        raise InputError(f"{where} has no {key!r} key")
    return _check_kind(entry[key], kinds, f"{where}[{key!r}]")


def _optional(entry: dict[str, Any], key: str, where: str) -> str:
    """``entry[key]`` checked to be a string when present; ``""`` when absent."""
    return _field(entry, key, str, where) if key in entry else ""


def _load_json(path: str | os.PathLike[str], what: str) -> tuple[Path, dict[str, Any]]:
    """Parse a JSON file whose top level must be an object."""
    file = Path(path)
    if not file.is_file():
        raise InputError(f"{what} file not found: {file}")
    try:
        with file.open("rb") as handle:
            data = json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InputError(f"{file}: not valid JSON ({error})") from error
    return file, _check_kind(data, dict, f"{file}: the top level")


def _image_dir(image_dir: str | os.PathLike[str]) -> Path:
    directory = Path(image_dir)
    if not directory.is_dir():
        raise InputError(f"image directory not found: {directory}")
    return directory


def _existing(path: Path, source: Path, what: str, check: bool) -> Path:
    if check and not path.is_file():
        raise InputError(f"{source}: image file missing for {what}: {path}")
    return path


def _id(value: int | str) -> str:
    return str(value)


# ---------------------------------------------------------------------------------------------------
# COCO captions and the Karpathy split


def read_coco_captions(
    annotation_json: str | os.PathLike[str],
    image_dir: str | os.PathLike[str],
    *,
    split: str | Collection[str] | None = None,
    check_files: bool = True,
) -> Iterator[Example]:
    """One example per image, with all its captions, in the order of the file's ``images`` list.

    Two layouts are recognised. COCO (``{"images": [{"id", "file_name"}], "annotations": [{"image_id",
    "caption"}]}``): the id is the COCO image id and the image ``image_dir / file_name``; images without
    a caption are yielded with none. A COCO "image info" file (``images`` but no ``annotations``: the
    COCO test2014 and NoCaps test image lists) gives every image with no captions, e.g. to write a
    result file for an evaluation server. Other keys of the entries (NoCaps' ``open_images_id``,
    ``height``, ...) are ignored. Karpathy (``{"images": [{"filename", "filepath"?, "split",
    "sentences": [{"raw"}]}]}``): the id is ``cocoid`` when present (the same id as in COCO), else the
    file name without extension (Flickr ids); the image is ``image_dir / filepath / filename``.
    ``split`` keeps only the Karpathy images of that split or those splits (``"train"``, ``"restval"``,
    ``"val"``, ``"test"``). Captions are stripped of surrounding whitespace; empty ones are dropped.
    With ``check_files`` each image file is checked to exist (not opened) when its example is reached.
    """
    file, data = _load_json(annotation_json, "caption annotation")
    directory = _image_dir(image_dir)
    if "images" not in data:
        raise InputError(
            f"{file}: the top level has no 'images' key: not a COCO caption, COCO image-info or Karpathy file"
        )
    images = _field(data, "images", list, f"{file}: the top level")
    if images and isinstance(images[0], dict) and "sentences" in images[0] and "annotations" not in data:
        splits = None if split is None else ({split} if isinstance(split, str) else set(split))
        return _iter_karpathy(file, directory, images, splits, check_files)
    if split is not None:
        kind = "COCO caption" if "annotations" in data else "COCO image-info"
        raise InputError(f"{file}: split= applies to the Karpathy format; this is a {kind} file")
    annotations = _field(data, "annotations", list, f"{file}: the top level") if "annotations" in data else []
    return _iter_coco(file, directory, images, annotations, check_files)


def _iter_coco(
    file: Path, directory: Path, images: list[Any], annotations: list[Any], check: bool
) -> Iterator[Example]:
    names: dict[int | str, str] = {}
    for i, image in enumerate(images):
        where = f"{file}: images[{i}]"
        image_id = _field(image, "id", (int, str), where)
        if image_id in names:
            raise InputError(f"{where}: image id {image_id!r} appears twice")
        names[image_id] = _field(image, "file_name", str, where)
    captions: dict[int | str, list[str]] = {image_id: [] for image_id in names}
    for i, annotation in enumerate(annotations):
        where = f"{file}: annotations[{i}]"
        image_id = _field(annotation, "image_id", (int, str), where)
        caption = _field(annotation, "caption", str, where).strip()
        if image_id not in captions:
            raise InputError(f"{where}: image_id {image_id!r} is not in 'images'")
        if caption:
            captions[image_id].append(caption)
    return _coco_examples(file, directory, names, captions, check)


def _coco_examples(
    file: Path,
    directory: Path,
    names: dict[int | str, str],
    captions: dict[int | str, list[str]],
    check: bool,
) -> Iterator[Example]:
    for image_id, name in names.items():
        path = _existing(directory / name, file, f"image {image_id!r}", check)
        yield Example(id=_id(image_id), image=path, captions=tuple(captions[image_id]))


def _karpathy_entry(file: Path, i: int, image: object) -> tuple[str, str, Path, tuple[str, ...]]:
    """(id, split, relative path, captions) of one Karpathy image entry, checked."""
    where = f"{file}: images[{i}]"
    filename = _field(image, "filename", str, where)
    assert isinstance(image, dict)
    filepath = _field(image, "filepath", str, where) if "filepath" in image else ""
    image_split = _field(image, "split", str, where)
    sentences = _field(image, "sentences", list, where)
    raw = [_field(s, "raw", str, f"{where}['sentences'][{j}]").strip() for j, s in enumerate(sentences)]
    image_id = _id(_field(image, "cocoid", (int, str), where)) if "cocoid" in image else Path(filename).stem
    return image_id, image_split, Path(filepath) / filename, tuple(r for r in raw if r)


def _iter_karpathy(
    file: Path, directory: Path, images: list[Any], splits: set[str] | None, check: bool
) -> Iterator[Example]:
    entries = [_karpathy_entry(file, i, image) for i, image in enumerate(images)]  # checked up front
    return (
        Example(
            id=image_id, image=_existing(directory / rel, file, f"image {image_id!r}", check), captions=caps
        )
        for image_id, image_split, rel, caps in entries
        if splits is None or image_split in splits
    )


# ---------------------------------------------------------------------------------------------------
# VQAv2


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


# ---------------------------------------------------------------------------------------------------
# GQA


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


# ---------------------------------------------------------------------------------------------------
# A folder of images and captions


def read_folder(directory: str | os.PathLike[str]) -> Iterator[Example]:
    """Images under ``directory`` (recursively), each with the captions of its same-named ``.txt``.

    A caption file holds one caption per non-empty line (UTF-8); ``a.jpg`` and ``a.png`` in one folder
    both take ``a.txt``. Images without a caption file are yielded with no captions (a gallery or
    pseudo-labelling source); caption files without an image are ignored. Order is deterministic: in
    each folder its files by name, then its subfolders by name. Hidden files and folders (``.name``)
    are skipped. The id is the image's path relative to ``directory`` (``"cats/001.jpg"``).
    Extensions (any case): see :data:`IMAGE_EXTENSIONS`. Raises when no image is found.
    """
    root = Path(directory)
    if not root.is_dir():
        raise InputError(f"image folder not found: {root}")
    return _iter_folder(root)


def _image_files(directory: Path) -> Iterator[Path]:
    """Image files under ``directory``: in each folder its files by name, then its subfolders by
    name; hidden files and folders skipped."""
    for current, folders, files in os.walk(directory):
        folders[:] = sorted(f for f in folders if not f.startswith("."))
        here = Path(current)
        for name in sorted(files):
            path = here / name
            if not name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS:
                yield path


def _no_images(root: Path, where: str) -> InputError:
    return InputError(f"{root}: no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) {where}")


def _iter_folder(root: Path) -> Iterator[Example]:
    found = 0
    for path in _image_files(root):
        found += 1
        yield Example(id=path.relative_to(root).as_posix(), image=path, captions=_caption_lines(path))
    if not found:
        raise _no_images(root, "in this folder or below")


def _caption_lines(image: Path) -> tuple[str, ...]:
    text_file = image.with_suffix(".txt")
    try:
        text = text_file.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        return ()
    except UnicodeDecodeError as error:
        raise InputError(f"{text_file}: caption file is not UTF-8 text ({error})") from error
    except OSError as error:
        raise InputError(f"{text_file}: caption file cannot be read ({error})") from error
    return tuple(line.strip() for line in text.splitlines() if line.strip())


# ---------------------------------------------------------------------------------------------------
# Image classes (ImageNet-style folders)

_WORDNET_ID = re.compile(r"n\d{8}")
ClassNames = str | os.PathLike[str] | Mapping[str, str]


def read_image_classes(
    root: str | os.PathLike[str], *, class_names: ClassNames | None = None
) -> tuple[list[str], Iterator[Example]]:
    """The class names and the labelled examples of a folder laid out as ``root/<class>/<images>``.

    Each non-hidden subfolder of ``root`` is a class; its images, at any depth below it, are that
    class's examples (files directly in ``root`` are not). Classes come in folder-name order, and
    so do their examples, each folder's images in :func:`read_folder`'s order; the id is the path
    relative to ``root`` (``"n01440764/ILSVRC2012_val_00000293.JPEG"``) and ``label`` the class name.
    A class folder with no image is left out (of the names too); no class folder, or no image in
    any, is an error.

    ``class_names`` maps folder names to class names: a dict, or a text file with one
    ``FOLDER NAME`` per line (separated by a tab or spaces; the name may contain spaces), such as
    ImageNet's ``LOC_synset_mapping.txt``; it must name every non-empty class folder. Without it the
    folder names are the class names, except that when every folder is a WordNet id (``n01440764``)
    the names are the ImageNet-1k descriptions vlmkit ships (timm's: ``"tench, Tinca tinca"``; other
    ids keep the folder name). Names given to several folders (ImageNet's two "crane"s) get the folder name
    appended, ``"crane (n02012849)"``, so that the class names stay distinct.
    """
    directory = Path(root)
    if not directory.is_dir():
        raise InputError(f"image folder not found: {directory}")
    folders = sorted(p.name for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise InputError(f"{directory}: no class folders (expected ROOT/<class name>/<image files>)")
    kept = [f for f in folders if next(_image_files(directory / f), None) is not None]
    if not kept:
        raise _no_images(directory, "in any of its class folders")
    names = _distinct(kept, _class_names(directory, kept, class_names))
    return names, _iter_classes(directory, kept, names)


def _class_names(directory: Path, folders: list[str], class_names: ClassNames | None) -> list[str]:
    """The name of each folder, from ``class_names``, the ImageNet descriptions or the folder."""
    if class_names is None:
        if all(_WORDNET_ID.fullmatch(f) for f in folders):
            descriptions = _wordnet_descriptions(directory)
            return [descriptions.get(f, f) for f in folders]
        return list(folders)
    if isinstance(class_names, Mapping):
        source, mapping = "class_names", dict(class_names)
        for folder, name in mapping.items():
            if not isinstance(name, str) or not name.strip():
                raise InputError(f"class_names[{folder!r}] must be a non-empty string, not {name!r}")
    elif isinstance(class_names, (str, os.PathLike)):
        source, mapping = str(class_names), _read_class_names(Path(class_names))
    else:
        raise InputError(
            f"class_names must be a file path or a dict of folder -> name, not {type(class_names).__name__}"
        )
    missing = [f for f in folders if f not in mapping]
    if missing:
        raise InputError(
            f"{source}: no name for {len(missing)} of the {len(folders)} class folders of {directory} "
            f"(first: {missing[0]!r})"
        )
    return [mapping[f].strip() for f in folders]


def _read_class_names(file: Path) -> dict[str, str]:
    if not file.is_file():
        raise InputError(f"class names file not found: {file}")
    try:
        text = file.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise InputError(f"{file}: class names file is not UTF-8 text ({error})") from error
    mapping: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.strip().split(maxsplit=1)
        if len(fields) != 2:
            raise InputError(f"{file}:{number}: expected 'FOLDER NAME' (tab or spaces between), got {line!r}")
        folder, name = fields
        if folder in mapping:
            raise InputError(f"{file}:{number}: folder {folder!r} is named twice")
        mapping[folder] = name.strip()
    return mapping


def _wordnet_descriptions(directory: Path) -> dict[str, str]:
    """WordNet id -> description for the 1,000 ImageNet-1k ids (the text of timm's
    ``ImageNetInfo.index_to_description``), from the class files vlmkit ships."""
    from .. import resources

    try:
        return resources.imagenet_lemmas()
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"{directory}: the class folders are WordNet ids, and the ImageNet descriptions cannot be read ({error}); "
                         "pass class_names=") from error


def _distinct(folders: list[str], names: list[str]) -> list[str]:
    counts = Counter(names)
    return [
        f"{name} ({folder})" if counts[name] > 1 else name
        for folder, name in zip(folders, names, strict=True)
    ]


def _iter_classes(directory: Path, folders: list[str], names: list[str]) -> Iterator[Example]:
    for folder, name in zip(folders, names, strict=True):
        for path in _image_files(directory / folder):
            yield Example(id=path.relative_to(directory).as_posix(), image=path, label=name)


# ---------------------------------------------------------------------------------------------------
# WebDataset shards

_BRACE = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"(-?\d+)\.\.(-?\d+)")
_MEMBER = re.compile(r"^((?:.*/)?[^./][^.]*)\.([^/]*)$")  # WebDataset: key = path up to the first dot


def expand_braces(pattern: str) -> list[str]:
    """Expand shell-style braces: ``"d-{000..002}.tar"`` -> ``["d-000.tar", "d-001.tar", "d-002.tar"]``.

    A group is a numeric range ``{A..B}`` (A <= B; zero-padded to the longer bound when either bound
    has a leading zero) or a list ``{x,y,z}``; several groups give every combination, left to right.
    Nested braces are not supported.
    """
    depth = 0
    for char in pattern:
        depth += (char == "{") - (char == "}")
        if depth < 0 or depth > 1:
            raise InputError(f"brace pattern {pattern!r}: unbalanced or nested braces")
    if depth:
        raise InputError(f"brace pattern {pattern!r}: unbalanced or nested braces")
    match = _BRACE.search(pattern)
    if match is None:
        return [pattern]
    body = match.group(1)
    span = _RANGE.fullmatch(body)
    if span:
        low, high = span.group(1), span.group(2)
        if int(low) > int(high):
            raise InputError(f"brace pattern {pattern!r}: range {body} runs backwards")
        padded = any(
            len(bound.lstrip("-")) > 1 and bound.lstrip("-").startswith("0") for bound in (low, high)
        )
        width = max(len(low), len(high)) if padded else 0
        items = [str(n).zfill(width) for n in range(int(low), int(high) + 1)]
    elif "," in body:
        items = body.split(",")
    else:
        raise InputError(f"brace pattern {pattern!r}: {{{body}}} is neither a range A..B nor a list x,y")
    head, tail = pattern[: match.start()], pattern[match.end() :]
    return [head + item + rest for item in items for rest in expand_braces(tail)]


def read_webdataset(shards: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]) -> Iterator[Example]:
    """Samples of WebDataset ``.tar`` shards, read as a stream (``tarfile`` mode ``r|*``, any compression).

    ``shards`` is a path, a brace pattern (``"data-{000..009}.tar"``), or a list of either. A sample
    is the run of adjacent members sharing a key (the path up to the first dot of the file name:
    ``a/0001.jpg`` and ``a/0001.txt`` form sample ``a/0001``). Its image is the first of
    ``jpg, jpeg, png, webp`` present, yielded as a PIL image opened lazily over the member's bytes
    (header parsed, pixels decoded on first use); its captions are the non-empty lines of ``txt``,
    or else ``json``'s ``"caption"`` string or ``"captions"`` list (a sample with neither has none).
    The id is ``"<shard file name>/<key>"``. Other members (``cls``, ``seg.png``, ...) are ignored,
    as are names without an extension; a member with an absolute or ``..`` path, a link, a sample
    without an image, or samples whose members are not adjacent are errors naming shard and key.
    """
    patterns = [shards] if isinstance(shards, (str, os.PathLike)) else list(shards)
    paths = [Path(p) for pattern in patterns for p in expand_braces(os.fspath(pattern))]
    if not paths:
        raise InputError("read_webdataset: no shards given")
    for path in paths:
        if not path.is_file():
            raise InputError(f"WebDataset shard not found: {path}")
    return _iter_shards(paths)


# Raised by tarfile when a header block is missing, short or garbage; past the first member tarfile
# swallows them and ends the archive early, so a truncated shard would silently lose its tail.
_BAD_HEADERS: tuple[type[Exception], ...] = tuple(
    getattr(tarfile, name) for name in ("EmptyHeaderError", "TruncatedHeaderError", "InvalidHeaderError")
)


class _StrictTarInfo(tarfile.TarInfo):
    """Reads member headers like ``TarInfo`` but insists on the end-of-archive marker."""

    @classmethod
    def fromtarfile(cls, archive: tarfile.TarFile) -> Self:
        try:
            return super().fromtarfile(archive)
        except _BAD_HEADERS as error:
            raise ReadError(f"truncated or corrupt archive: {error}") from None


def _iter_shards(paths: list[Path]) -> Iterator[Example]:
    for path in paths:
        yield from _iter_shard(path)


def _iter_shard(shard: Path) -> Iterator[Example]:
    done: set[str] = set()
    key: str | None = None
    files: dict[str, bytes] = {}
    try:
        with tarfile.open(shard, mode="r|*", tarinfo=_StrictTarInfo) as tar:
            for member in tar:
                name = _safe_member_name(shard, member)
                if name is None:
                    continue
                match = _MEMBER.match(name)
                if match is None:
                    continue  # no extension, or a hidden file: not part of any sample
                member_key, extension = match.group(1), match.group(2).lower()
                if member_key != key:
                    if key is not None:
                        yield _sample(shard, key, files)
                        done.add(key)
                    if member_key in done:
                        raise InputError(
                            f"{shard}: sample {member_key!r}: its files are not adjacent in the shard "
                            "(WebDataset shards must be written sample by sample)"
                        )
                    key, files = member_key, {}
                if extension in files:
                    raise InputError(f"{shard}: sample {member_key!r} has two {extension!r} files")
                handle = tar.extractfile(member)
                assert handle is not None  # regular files only, checked above
                files[extension] = handle.read()
            if key is not None:
                yield _sample(shard, key, files)
    except (tarfile.TarError, EOFError, OSError, zlib.error) as error:
        raise InputError(f"{shard}: not a readable tar archive ({type(error).__name__}: {error})") from error


def _safe_member_name(shard: Path, member: tarfile.TarInfo) -> str | None:
    """The member's normalised name; None for folders; an error for unsafe names and non-files."""
    parts = PurePosixPath(member.name).parts
    if member.name.startswith(("/", "\\")) or ".." in parts or re.match(r"^[A-Za-z]:", member.name):
        raise InputError(f"{shard}: member {member.name!r} has an unsafe path (absolute or with '..')")
    if member.isdir():
        return None
    if not member.isfile():
        raise InputError(f"{shard}: member {member.name!r} is not a regular file (link or device)")
    return "/".join(part for part in parts if part != ".")


def _sample(shard: Path, key: str, files: dict[str, bytes]) -> Example:
    extension = next((e for e in WDS_IMAGE_EXTENSIONS if e in files), None)
    where = f"{shard}: sample {key!r}"
    if extension is None:
        raise InputError(
            f"{where} has no image (expected one of {', '.join(WDS_IMAGE_EXTENSIONS)}; found {', '.join(sorted(files))})"
        )
    try:
        image = Image.open(io.BytesIO(files[extension]))
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as error:
        raise InputError(f"{where}: {extension} file is not a readable image ({error})") from error
    return Example(id=f"{shard.name}/{key}", image=image, captions=_wds_captions(where, files))


def _wds_captions(where: str, files: dict[str, bytes]) -> tuple[str, ...]:
    if "txt" in files:
        try:
            text = files["txt"].decode("utf-8-sig")
        except UnicodeDecodeError as error:
            raise InputError(f"{where}: txt is not UTF-8 text ({error})") from error
        return tuple(line.strip() for line in text.splitlines() if line.strip())
    if "json" not in files:
        return ()
    try:
        meta = json.loads(files["json"])
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InputError(f"{where}: json is not valid JSON ({error})") from error
    _check_kind(meta, dict, f"{where}: json")
    if "caption" in meta:
        captions = [_check_kind(meta["caption"], str, f"{where}: json['caption']")]
    elif "captions" in meta:
        listed = _check_kind(meta["captions"], list, f"{where}: json['captions']")
        captions = [_check_kind(c, str, f"{where}: json['captions'][{i}]") for i, c in enumerate(listed)]
    else:
        return ()
    return tuple(c.strip() for c in captions if c.strip())


# ---------------------------------------------------------------------------------------------------
# One entry point


def _coco_spec(rest: str) -> Iterator[Example]:
    fields = rest.split(":")
    if len(fields) not in (2, 3):
        raise InputError(
            "expected 'coco:ANNOTATIONS.json:IMAGE_DIR' or 'coco:ANNOTATIONS.json:IMAGE_DIR:SPLIT[,SPLIT]'"
        )
    split = tuple(fields[2].split(",")) if len(fields) == 3 else None
    return read_coco_captions(fields[0], fields[1], split=split)


def _vqa_spec(rest: str) -> Iterator[Example]:
    fields = rest.split(":")
    if len(fields) != 3:
        raise InputError(
            "expected 'vqa:QUESTIONS.json:ANNOTATIONS.json:IMAGE_DIR' (ANNOTATIONS empty for test)"
        )
    return read_vqa(fields[0], fields[1] or None, fields[2])


def _gqa_spec(rest: str) -> Iterator[Example]:
    fields = rest.split(":")
    if len(fields) != 2 or not all(fields):
        raise InputError("expected 'gqa:QUESTIONS.json:IMAGE_DIR'")
    return read_gqa(fields[0], fields[1])


def _imagenet_spec(rest: str) -> Iterator[Example]:
    if not rest:
        raise InputError("expected 'imagenet:DIR'")
    return read_image_classes(rest)[1]


def _shapes_spec(rest: str) -> Iterator[Example]:
    fields = rest.split(":")
    if not fields[0].isdigit() or len(fields) > 3:
        raise InputError(f"expected 'shapes:N[:SPLIT[:SEED]]' with N a non-negative integer, not 'shapes:{rest}'")
    split = fields[1] if len(fields) > 1 else "train"
    if split not in ("train", "test"):
        raise InputError(f"shapes split must be 'train' or 'test', not {split!r}")
    if len(fields) > 2 and not fields[2].isdigit():
        raise InputError(f"shapes seed must be a non-negative integer, not {fields[2]!r}")
    n, seed = int(fields[0]), int(fields[2]) if len(fields) > 2 else 0
    # The same examples as make_split(n, seed, split), rendered one at a time.
    chosen: Literal["train", "test"] = "test" if split == "test" else "train"
    return (to_example(make_scene(i, seed, chosen)) for i in range(n))


def _easy_vqa_spec(rest: str) -> Iterator[Example]:
    if rest not in ("train", "test"):
        raise InputError(f"expected 'easy-vqa:train' or 'easy-vqa:test', not 'easy-vqa:{rest}'")
    return iter(load_easy_vqa("train" if rest == "train" else "test"))


def _folder_spec(rest: str) -> Iterator[Example]:
    if not rest:
        raise InputError("expected 'folder:DIR'")
    return read_folder(rest)


def _wds_spec(rest: str) -> Iterator[Example]:
    if not rest:
        raise InputError("expected 'wds:PATTERN'")
    return read_webdataset(rest)


_SCHEMES: dict[str, tuple[str, Callable[[str], Iterator[Example]]]] = {
    "coco": ("coco:ANNOTATIONS.json:IMAGE_DIR[:SPLIT[,SPLIT]]", _coco_spec),
    "vqa": ("vqa:QUESTIONS.json:ANNOTATIONS.json:IMAGE_DIR", _vqa_spec),
    "gqa": ("gqa:QUESTIONS.json:IMAGE_DIR", _gqa_spec),
    "imagenet": ("imagenet:DIR", _imagenet_spec),
    "folder": ("folder:DIR", _folder_spec),
    "wds": ("wds:PATTERN", _wds_spec),
    "shapes": ("shapes:N[:SPLIT[:SEED]]", _shapes_spec),
    "easy-vqa": ("easy-vqa:train|test", _easy_vqa_spec),
}


def dataset_schemes() -> list[str]:
    """The forms :func:`read_dataset` accepts, one per scheme."""
    return [usage for usage, _ in _SCHEMES.values()]


def read_dataset(spec: str) -> Iterator[Example]:
    """Examples from a one-string description (for command lines and configs); see ``dataset_schemes()``.

    ``"coco:..."`` reads COCO or Karpathy caption JSON (an optional fourth field keeps Karpathy splits,
    ``train,restval``), NoCaps and image-info files included; ``"vqa:..."`` VQAv2 or OK-VQA (leave
    ANNOTATIONS empty, ``vqa:Q.json::DIR``, for the test sets); ``"gqa:..."`` a GQA questions file;
    ``"imagenet:DIR"`` a folder of class folders (``read_image_classes``: ``label`` holds the class
    name; call that function for the class list); ``"folder:DIR"`` a folder with ``.txt`` captions; ``"wds:PATTERN"`` WebDataset shards;
    ``"shapes:N[:SPLIT[:SEED]]"`` the first N examples of the shapes world (as ``make_split(N, SEED, SPLIT)``,
    default train split, seed 0);
    ``"easy-vqa:train"`` or ``"easy-vqa:test"`` the easy-VQA package.
    """
    if not isinstance(spec, str):
        raise InputError(f"dataset spec must be a string, not {type(spec).__name__}")
    scheme, colon, rest = spec.partition(":")
    if not colon or scheme not in _SCHEMES:
        raise InputError(f"unknown dataset spec {spec!r}; expected one of: {', '.join(dataset_schemes())}")
    return _SCHEMES[scheme][1](rest)
