"""Folders of images: with same-named ``.txt`` caption files (:func:`read_folder`), or one
subfolder per class, ImageNet-style (:func:`read_image_classes`)."""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path

from ...errors import InputError
from ..records import Example

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})


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
    from ... import resources

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
