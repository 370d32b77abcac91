"""Checks shared by the readers: JSON values of the expected kind, with errors that name the file
and the entry; annotation files, image folders and image files that exist."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ...errors import InputError

_KIND_NAMES = {str: "a string", int: "an integer", list: "a list", dict: "an object"}


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
