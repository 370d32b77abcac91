"""COCO caption JSON (also NoCaps, and the image-info files of the test sets) and the Karpathy
split JSON (COCO, Flickr8k, Flickr30k)."""

from __future__ import annotations

import os
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

from ...errors import InputError
from ..records import Example
from ._checks import _existing, _field, _id, _image_dir, _load_json


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
