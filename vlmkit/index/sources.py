"""Finding the images to index: folders (walked recursively), file lists, WebDataset shards and
parquet tables of paths. Each source yields :class:`Entry` records (an id, a size and an mtime, and
a way to read the bytes); what cannot be listed is reported as a :class:`Skipped` with the reason,
never raised, so one bad file or folder does not stop a run.
"""

from __future__ import annotations

import errno
import os
import stat
import tarfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..images import NOT_A_FILE, os_reason

__all__ = ["Entry", "Skipped", "IMAGE_SUFFIXES", "scan", "read_bytes", "TAR_SEPARATOR"]

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".jfif", ".ppm", ".pgm", ".ico"}
)
#: Joins a WebDataset shard's path and a member name into one id: ``shard-000.tar::0001.jpg``.
TAR_SEPARATOR = "::"


@dataclass(frozen=True)
class Entry:
    """One image to index: ``path`` is its id in the index (absolute file path, or shard::member)."""

    path: str
    size: int
    mtime_ns: int
    root: str  # the input this entry was found under (removals are judged per root)


@dataclass(frozen=True)
class Skipped:
    path: str
    reason: str


def _walk(root: Path, report: Callable[[Skipped], None]) -> Iterator[Entry]:
    """Image files under ``root``, following directory symlinks once (a loop is reported, not followed)."""
    root_id = str(root)
    seen_dirs: set[tuple[int, int]] = set()
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            info = folder.stat()
        except OSError as exc:
            report(Skipped(str(folder), os_reason(exc, folder)))
            continue
        key = (info.st_dev, info.st_ino)
        if key in seen_dirs:
            report(Skipped(str(folder), "symlink loop (directory already visited)"))
            continue
        seen_dirs.add(key)
        try:
            with os.scandir(folder) as it:
                children = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            report(Skipped(str(folder), os_reason(exc, folder)))
            continue
        subdirs = []
        for child in children:
            path = Path(child.path)
            try:
                info = child.stat()  # follows symlinks
            except OSError as exc:
                if path.suffix.lower() in IMAGE_SUFFIXES or child.is_symlink():
                    report(Skipped(str(path), os_reason(exc, path)))
                continue
            if stat.S_ISDIR(info.st_mode):
                if not child.name.startswith("."):
                    subdirs.append(path)
            elif stat.S_ISREG(info.st_mode) and path.suffix.lower() in IMAGE_SUFFIXES and not child.name.startswith("."):
                yield Entry(str(path), info.st_size, info.st_mtime_ns, root_id)
        stack.extend(reversed(subdirs))


def _tar_members(shard: Path, report: Callable[[Skipped], None]) -> Iterator[Entry]:
    try:
        info = shard.stat()
        with tarfile.open(shard) as tar:
            members = tar.getmembers()
    except (OSError, tarfile.TarError) as exc:
        report(Skipped(str(shard), f"cannot read the shard: {exc}"))
        return
    for member in members:
        if member.isfile() and Path(member.name).suffix.lower() in IMAGE_SUFFIXES:
            # A member is as new as its shard: rewriting the shard re-checks its images (by hash).
            yield Entry(f"{shard}{TAR_SEPARATOR}{member.name}", member.size, info.st_mtime_ns, str(shard))


def _listed(paths: Iterable[str], root: str, report: Callable[[Skipped], None]) -> Iterator[Entry]:
    for text in paths:
        path = Path(text).expanduser().absolute()
        try:
            info = path.stat()
        except OSError as exc:
            report(Skipped(str(path), os_reason(exc, path)))
            continue
        if not stat.S_ISREG(info.st_mode):
            report(Skipped(str(path), NOT_A_FILE))
            continue
        yield Entry(str(path), info.st_size, info.st_mtime_ns, root)


def _parquet_paths(table_path: Path, column: str | None) -> list[str]:
    import pyarrow.parquet as pq

    table = pq.read_table(table_path)
    names = [column] if column else [c for c in ("path", "image", "image_path", "file", "filename", "url") if c in table.column_names]
    if not names or names[0] not in table.column_names:
        raise ValueError(f"no image path column (tried {', '.join(names) or 'path, image, url, ...'}); found {', '.join(table.column_names)}")
    values = [str(v) for v in table.column(names[0]).to_pylist() if v]
    base = table_path.parent
    return [v if v.startswith(("http://", "https://")) or os.path.isabs(v) else str(base / v) for v in values]


def scan(inputs: Sequence[str | os.PathLike], *, parquet_column: str | None = None) -> tuple[list[Entry], list[Skipped]]:
    """Every image under ``inputs``: a folder (recursive), an image file, a ``.txt`` list of paths
    (one per line, relative to the list), a WebDataset ``.tar`` shard, or a ``.parquet`` table with
    a path column (``parquet_column``, or the first of path/image/image_path/file/filename/url).

    Returns the entries (in a stable order, each once) and what was skipped with why.
    """
    skipped: list[Skipped] = []
    entries: dict[str, Entry] = {}
    for raw in inputs:
        path = Path(raw).expanduser().absolute()
        found: Iterable[Entry]
        try:
            info = path.stat()
        except OSError as exc:
            skipped.append(Skipped(str(path), os_reason(exc, path)))
            continue
        suffix = path.suffix.lower()
        if stat.S_ISDIR(info.st_mode):
            found = _walk(path, skipped.append)
        elif suffix == ".tar":
            found = _tar_members(path, skipped.append)
        elif suffix == ".txt":
            try:
                lines = [line.strip() for line in path.read_text().splitlines()]
            except (OSError, UnicodeDecodeError) as exc:
                skipped.append(Skipped(str(path), f"cannot read the file list: {exc}"))
                continue
            found = _listed([str(path.parent / line) for line in lines if line and not line.startswith("#")], str(path), skipped.append)
        elif suffix == ".parquet":
            try:
                listed = _parquet_paths(path, parquet_column)
            except Exception as exc:  # noqa: BLE001 - pyarrow raises many types; all mean "unreadable"
                skipped.append(Skipped(str(path), f"cannot read the parquet table: {exc}"))
                continue
            remote = [v for v in listed if v.startswith(("http://", "https://"))]
            skipped.extend(Skipped(v, "remote URLs are not fetched; download the images first") for v in remote)
            found = _listed([v for v in listed if v not in remote], str(path), skipped.append)
        else:
            found = _listed([str(path)], str(path), skipped.append)
        for entry in found:
            entries.setdefault(entry.path, entry)
    return list(entries.values()), skipped


def read_bytes(path: str) -> bytes:
    """The bytes of an entry: a file, or a member of a WebDataset shard (``shard.tar::member``)."""
    if TAR_SEPARATOR in path:
        shard, _, member = path.partition(TAR_SEPARATOR)
        with tarfile.open(shard) as tar:
            handle = tar.extractfile(member)
            if handle is None:
                raise OSError(errno.ENOENT, f"no file {member!r} in the shard")
            return handle.read()
    with open(path, "rb") as f:
        return f.read()
