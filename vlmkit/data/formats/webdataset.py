"""WebDataset ``.tar`` shards, read as a stream, and the brace patterns that name them."""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath
from tarfile import ReadError
from typing import Self

from PIL import Image, UnidentifiedImageError

from ...errors import InputError
from ..records import Example
from ._checks import _check_kind

WDS_IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")  # in order of preference within one sample

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
