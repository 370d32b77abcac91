"""Caption (or ask a question of) a whole dataset: folders, image files, ``.txt`` file lists,
``.parquet`` path tables and WebDataset ``.tar`` shards, into one of four outputs:

- a JSON-lines file (``captions.jsonl``): one row per image, appended and flushed batch by batch;
- a Parquet table (``captions.parquet``): rows collect in a JSON-lines journal beside it
  (``captions.parquet.partial.jsonl``) and become the table when the run ends;
- sidecar files: ``photo.txt`` beside ``photo.jpg`` (an existing one is kept unless ``overwrite``);
- new WebDataset shards: every member of each input shard, plus a ``KEY.txt`` member holding the
  caption of each image, so the output feeds the training recipes directly.

Every output is resumable: a killed run, run again with the same arguments, continues where it
stopped and never writes a row twice (images already in the output are not captioned again; a
line cut off by the kill is dropped). Files that cannot be read are skipped and listed with the
reason, as the image index does: files are read and decoded by the index's reader, on worker
threads while the model captions the previous batch.
"""

from __future__ import annotations

import functools
import io
import json
import os
import tarfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .errors import ImageError, InputError
from .index.pipeline import decode_entry, default_workers, ordered_map
from .index.sources import TAR_SEPARATOR, Entry, Skipped, scan
from .models.base import GenerationOptions

__all__ = ["CaptionReport", "caption_dataset", "OUTPUT_KINDS"]

OUTPUT_KINDS = ("jsonl", "parquet", "sidecar", "shards")


@dataclass
class CaptionReport:
    """What a run did: ``done`` images captioned now, ``already`` found in the output from an earlier
    run, ``skipped`` files that could not be read (with why), and where the output is."""

    output: str
    kind: str
    found: int = 0
    done: int = 0
    already: int = 0
    skipped: list[Skipped] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        rate = f", {self.done / self.seconds:.1f} images/s" if self.done and self.seconds > 0 else ""
        return (f"{self.found} images: {self.done} captioned, {self.already} already in the output, "
                f"{len(self.skipped)} skipped ({self.seconds:.1f} s{rate})")


# -- outputs -------------------------------------------------------------------------------------------


class _JsonLines:
    """Rows appended to a JSON-lines file, flushed and synced per batch. Opening it reads the images
    already there and drops a last line cut off by a killed run."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.done: set[str] = set()
        if path.is_file():
            data = path.read_bytes()
            if data and not data.endswith(b"\n"):  # a kill mid-write: the partial row is dropped
                data = data[: data.rfind(b"\n") + 1]
                with open(path, "r+b") as f:
                    f.truncate(len(data))
            for number, line in enumerate(data.decode("utf-8").splitlines(), 1):
                if line.strip():
                    try:
                        self.done.add(json.loads(line)["image"])
                    except (ValueError, KeyError, TypeError):
                        raise InputError(f"{path}:{number}: not a row of captions; give another --out file") from None
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def write(self, rows: list[dict[str, Any]]) -> None:
        self.file.write("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
        self.file.flush()
        os.fsync(self.file.fileno())

    def close(self) -> None:
        self.file.close()


class _Parquet:
    """A journal of JSON lines beside the table; at the end the table holds the earlier rows and the
    journal's, written to a temporary file and renamed (a kill never leaves half a table)."""

    def __init__(self, path: Path) -> None:
        import pyarrow.parquet as pq

        self.path = path
        self.old: list[dict[str, Any]] = pq.read_table(path).to_pylist() if path.is_file() else []
        self.journal = _JsonLines(path.with_name(path.name + ".partial.jsonl"))
        self.done = self.journal.done | {row["image"] for row in self.old}

    def write(self, rows: list[dict[str, Any]]) -> None:
        self.journal.write(rows)

    def close(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.journal.close()
        rows = self.old + [json.loads(line) for line in self.journal.path.read_text(encoding="utf-8").splitlines() if line.strip()]
        tmp = self.path.with_name(self.path.name + ".tmp")
        pq.write_table(pa.Table.from_pylist(rows), tmp)
        tmp.replace(self.path)
        self.journal.path.unlink()


class _Sidecars:
    """``photo.txt`` beside ``photo.jpg``; an image with one already is done unless ``overwrite``."""

    def __init__(self, overwrite: bool, field_name: str) -> None:
        self.overwrite, self.field = overwrite, field_name
        self.done: set[str] = set()

    def is_done(self, path: str) -> bool:
        return not self.overwrite and Path(path).with_suffix(".txt").exists()

    def write(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            target = Path(row["image"]).with_suffix(".txt")
            tmp = target.with_name(f".{target.name}.tmp")
            tmp.write_text(row[self.field] + "\n", encoding="utf-8")
            tmp.replace(target)

    def close(self) -> None:
        pass


def _member_key(member: str) -> str:
    """A WebDataset sample key: the member's path up to the first dot of its file name."""
    folder, _, name = member.rpartition("/")
    return (folder + "/" if folder else "") + name.split(".", 1)[0]


def _write_shard(source: Path, target: Path, texts: dict[str, str]) -> None:
    """``source``'s members in order, each image's sample followed by ``KEY.txt`` (``texts`` by
    member name); written to a temporary file and renamed, so a shard is whole or absent."""
    by_key = {_member_key(member): text for member, text in texts.items()}
    tmp = target.with_name(f".{target.name}.tmp")
    with tarfile.open(source) as reader, tarfile.open(tmp, "w") as writer:
        members = reader.getmembers()
        for i, member in enumerate(members):
            key = _member_key(member.name)
            if not (member.name == f"{key}.txt" and key in by_key):  # an old caption is replaced by the new one
                writer.addfile(member, reader.extractfile(member) if member.isfile() else None)
            last_of_sample = i + 1 == len(members) or _member_key(members[i + 1].name) != key
            if last_of_sample and key in by_key:
                data = (by_key[key] + "\n").encode("utf-8")
                info = tarfile.TarInfo(f"{key}.txt")
                info.size, info.mtime, info.mode = len(data), int(member.mtime), 0o644
                writer.addfile(info, io.BytesIO(data))
    tmp.replace(target)


# -- the run -------------------------------------------------------------------------------------------


def _answer(model: Any, images: list[Any], *, question: str | None, prompt: str | None, generation: GenerationOptions | None,
            batch_size: int) -> list[str]:
    """The model's text for each image: its caption, or its answer to ``question`` (picklable for Ray)."""
    if question is not None:
        return list(model.ask(images, [question] * len(images), options=generation, batch_size=batch_size))
    return list(model.caption(images, prompt=prompt, options=generation, batch_size=batch_size))


def _local_results(model: Any, entries: Sequence[Entry], call: Callable[..., list[Any]], *, batch_size: int,
                   max_pixels: int | None, with_paths: bool = False) -> Iterator[tuple[Entry, Any]]:
    """(entry, its text or the ImageError reading it raised), ``batch_size`` images per model call
    (``call(model, images)``, or ``call(model, images, paths)`` ``with_paths``).
    Entries are read and decoded ahead on threads by the index's own reader (``decode_entry``, as
    the Ray engine's tasks do), so both engines see the same pixels."""

    def apply(batch: list[tuple[Entry, Any]]) -> list[Any]:
        images = [image for _, image in batch]
        return call(model, images, [e.path for e, _ in batch]) if with_paths else call(model, images)

    draft = getattr(model, "image_size", None)
    decoded = ordered_map(lambda e: decode_entry(e, lambda _: False, draft_size=draft, max_pixels=max_pixels), entries,
                          workers=default_workers(), prefetch=max(4 * batch_size, 32))
    batch: list[tuple[Entry, Any]] = []
    for d in decoded:
        if d.error is not None:
            yield d.entry, d.error
            continue
        batch.append((d.entry, d.image))
        if len(batch) >= batch_size:
            yield from zip([e for e, _ in batch], apply(batch), strict=True)
            batch = []
    if batch:
        yield from zip([e for e, _ in batch], apply(batch), strict=True)


def caption_dataset(
    model: Any,
    inputs: Sequence[str | os.PathLike[str]],
    *,
    out: str | os.PathLike[str] | None = None,
    sidecar: bool = False,
    shards_out: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    question: str | None = None,
    prompt: str | None = None,
    generation: GenerationOptions | None = None,
    batch_size: int = 8,
    max_pixels: int | None = None,
    progress: Callable[[int], None] | None = None,
    on_plan: Callable[[int], None] | None = None,
    engine: Any = None,
) -> CaptionReport:
    """Caption every image under ``inputs`` (see :func:`vlmkit.index.sources.scan`) with ``model``,
    or answer ``question`` about each, into exactly one output: ``out`` (``.jsonl`` or ``.parquet``),
    ``sidecar`` text files, or ``shards_out`` (a folder of new WebDataset shards; the inputs must be
    shards). ``generation`` is the model's decoding options (the task's defaults when
    ``None``). ``on_plan(n)`` is called once with the number of images to caption, ``progress(1)`` as each
    is done or skipped. ``engine`` runs the model elsewhere: a
    :class:`vlmkit.index.ray_engine.RayEngine` decodes on Ray Data tasks and captions in its actors
    (each loads the model itself), giving the same rows as this process would. Returns what was
    done; see the module docstring for resuming."""
    chosen = [name for name, on in (("out", out is not None), ("sidecar", sidecar), ("shards_out", shards_out is not None)) if on]
    if len(chosen) != 1:
        raise InputError("give exactly one output: a .jsonl or .parquet file, sidecar .txt files, or a folder for new shards")
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    model.require("ask" if question is not None else "caption")
    start = time.perf_counter()
    entries, skipped = scan(inputs)
    field_name = "answer" if question is not None else "caption"
    kind: Literal["jsonl", "parquet", "sidecar", "shards"]
    sink: Any
    if out is not None:
        path = Path(out).expanduser()
        suffix = path.suffix.lower()
        if suffix not in (".jsonl", ".parquet"):
            raise InputError(f"{path}: the output file must end in .jsonl or .parquet")
        kind = "parquet" if suffix == ".parquet" else "jsonl"
        sink = _Parquet(path) if kind == "parquet" else _JsonLines(path)
        output = str(path)
    elif sidecar:
        in_shards = [e.path for e in entries if TAR_SEPARATOR in e.path]
        if in_shards:
            raise InputError(f"{in_shards[0].split(TAR_SEPARATOR)[0]}: images inside a shard have no folder for sidecar files; "
                             "give --shards-out DIR to write new shards with a .txt member")
        sidecars: dict[Path, str] = {}
        for e in entries:
            other = sidecars.setdefault(Path(e.path).with_suffix(".txt"), e.path)
            if other != e.path:
                raise InputError(f"{other} and {e.path} would share one sidecar file; write them to --out FILE instead")
        kind, sink, output = "sidecar", _Sidecars(overwrite, field_name), "sidecar .txt files beside the images"
    else:
        kind, output = "shards", str(Path(shards_out).expanduser())  # type: ignore[arg-type]
        not_shards = sorted({e.path for e in entries if TAR_SEPARATOR not in e.path})
        if not_shards:
            raise InputError(f"{not_shards[0]}: --shards-out writes new WebDataset shards; its inputs must be .tar shards")
        Path(output).mkdir(parents=True, exist_ok=True)
        sink = None
    report = CaptionReport(output=output, kind=kind, found=len(entries), skipped=list(skipped))

    by_shard: dict[str, list[Entry]] = {}
    if kind == "shards":
        for e in entries:
            by_shard.setdefault(e.path.split(TAR_SEPARATOR)[0], []).append(e)
        finished = {s for s in by_shard if (Path(output) / Path(s).name).exists() and not overwrite}
        by_shard = {s: members for s, members in by_shard.items() if s not in finished}
        todo = [e for members in by_shard.values() for e in members]
    elif kind == "sidecar":
        todo = [e for e in entries if not sink.is_done(e.path)]
    else:
        todo = [e for e in entries if e.path not in sink.done]
    report.already = len(entries) - len(todo)
    if on_plan is not None:
        on_plan(len(todo))

    call = functools.partial(_answer, question=question, prompt=prompt, generation=generation, batch_size=batch_size)
    if engine is None:
        results = _local_results(model, todo, call, batch_size=batch_size, max_pixels=max_pixels)
    else:  # e.g. vlmkit.index.ray_engine.RayEngine: the same decode-then-call path as indexing on a cluster
        paths = {e.path: e for e in todo}
        results = ((paths[path], ImageError(path, error) if error else text)
                   for path, text, error in engine.map_images(todo, call, batch_size=batch_size, max_pixels=max_pixels,
                                                              draft_size=getattr(model, "image_size", None)))

    rows: list[dict[str, Any]] = []
    texts: dict[str, dict[str, str]] = {shard: {} for shard in by_shard}  # shard -> member name -> its text
    left = {shard: len(members) for shard, members in by_shard.items()}
    try:
        for entry, result in results:
            if isinstance(result, ImageError):
                report.skipped.append(Skipped(entry.path, result.reason))
            else:
                record: dict[str, Any] = {"image": entry.path}
                if question is not None:
                    record["question"] = question
                record[field_name] = result
                record["model"] = model.name
                rows.append(record)
                report.done += 1
            if progress is not None:
                progress(1)
            if sink is not None and len(rows) >= batch_size:
                sink.write(rows)
                rows = []
            if kind == "shards":
                shard, _, member = entry.path.partition(TAR_SEPARATOR)
                if not isinstance(result, ImageError):
                    texts[shard][member] = result
                left[shard] -= 1
                if left[shard] == 0:  # every image of the shard is done: write it whole
                    _write_shard(Path(shard), Path(output) / Path(shard).name, texts.pop(shard))
        if sink is not None and rows:
            sink.write(rows)
    finally:
        if sink is not None:
            sink.close()
    report.seconds = time.perf_counter() - start
    return report
