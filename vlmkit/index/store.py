"""The image index: embeddings of a photo collection in LanceDB, updated incrementally, searched by
text, image, combinations of both, and keywords.

Layout of an index directory::

    index.json        the model it was built with, the embedding size, the format version
    images.lance/     the LanceDB table, one row per file (see ``SCHEMA_FIELDS``)
    finished          the table version the last completed run ended at
    .lock             held while a process writes, so two runs never interleave

Crash safety comes from Lance itself: every commit (an upsert of one batch, one delete) writes new
data files and then atomically switches the table to a new version, so a process killed at any
instant leaves the last committed version intact and the next run continues from it. Rows are
keyed by path and written with ``merge_insert`` (an upsert), so re-running never duplicates a row.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import os
import re
import shutil
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..errors import InputError, VlmkitError
from .pipeline import Decoded, Embedder, decode_entry, default_workers, embed_decoded, ordered_map
from .search import dedupe, default_threshold, search
from .sources import Entry, Skipped, scan

__all__ = [
    "ImageIndex",
    "Engine",
    "LocalEngine",
    "Embedded",
    "ImageIndexError",
    "IndexModelMismatch",
    "UpdateReport",
    "IndexStatus",
    "default_index_path",
    "INDEX_ENV",
    "ANN_MIN_ROWS",
    "ann_index_options",
    "create_ann_index",
]

INDEX_ENV = "VLMKIT_INDEX"
FORMAT_VERSION = 1
TABLE = "images"
#: Below this many rows search is exact (a flat scan); at or above it an IVF-PQ index is built.
ANN_MIN_ROWS = 100_000
#: Rebuild the approximate index when this fraction of rows has arrived since it was built.
ANN_STALE_FRACTION = 0.1
#: Superseded table versions are deleted once this old, so readers (a running server) that opened
#: an older version keep working while an indexing run commits.
CLEANUP_AFTER = _dt.timedelta(minutes=10)
SCHEMA_FIELDS = (
    "path", "sha256", "size", "mtime_ns", "width", "height", "taken", "date",
    "model", "dim", "vector", "caption", "text", "indexed_at",
)


class ImageIndexError(VlmkitError):
    """The index cannot be opened or written (missing, busy, or built by an incompatible version)."""


class IndexModelMismatch(ImageIndexError):
    """The index was built with another model (or embedding size) than the one given."""


def default_index_path() -> Path:
    """``$VLMKIT_INDEX`` if set, else ``index`` in the user data directory."""
    if os.environ.get(INDEX_ENV):
        return Path(os.environ[INDEX_ENV]).expanduser()
    from platformdirs import user_data_dir

    return Path(user_data_dir("vlmkit")) / "index"


def _lancedb() -> Any:
    try:
        import lancedb
    except ImportError:
        raise ImageIndexError("the image index needs LanceDB: pip install 'vlmkit[index]'") from None
    return lancedb


def ann_index_options(rows: int, dim: int) -> dict[str, Any]:
    """Settings of the approximate index (``lancedb.index.IvfPq`` arguments): IVF-PQ over cosine
    distance with about sqrt(N) partitions and 4-dimensional PQ sub-vectors (D/4 bytes a row).
    Searches probe ``ANN_NPROBES`` partitions and re-rank ``ANN_REFINE * limit`` candidates exactly.
    ``bench/index_ann.py`` measures build time, latency and recall."""
    return {
        "distance_type": "cosine",
        "num_partitions": max(1, int(np.sqrt(rows))),
        "num_sub_vectors": dim // 4 if dim % 4 == 0 else dim,
    }


def create_ann_index(table: Any, options: dict[str, Any]) -> None:
    """Build (replacing any) the IVF-PQ index on a LanceDB table's ``vector`` column."""
    from lancedb.index import IvfPq

    table.create_index("vector", config=IvfPq(**options), replace=True)


def _words(path: str) -> str:
    """File-name words for keyword search: ``IMG_2041-beach.jpg`` -> ``IMG 2041 beach``."""
    stem = Path(path.rsplit("::", 1)[-1]).stem
    return " ".join(w for w in re.split(r"[\W_]+", stem) if w)


def _sql_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


@dataclass
class UpdateReport:
    """What an indexing run did. ``skipped`` lists every file left out, with the reason."""

    scanned: int = 0
    added: int = 0  # embedded afresh
    reused: int = 0  # moved, renamed or duplicate content: embedding copied, not recomputed
    touched: int = 0  # mtime changed, content did not
    unchanged: int = 0
    removed: int = 0
    skipped: list[Skipped] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        return (
            f"{self.scanned} files: {self.added} embedded, {self.reused} reused by content hash, "
            f"{self.touched} touched, {self.unchanged} unchanged, {self.removed} removed, "
            f"{len(self.skipped)} skipped ({self.seconds:.1f} s)"
        )


@dataclass(frozen=True)
class IndexStatus:
    path: str
    model: str | None
    dim: int | None
    rows: int
    unique_contents: int
    approximate_index: bool
    unindexed_rows: int
    threshold: float | None
    created: str | None
    updated: str | None
    bytes_on_disk: int


@dataclass
class Embedded:
    """An engine's result for one file: what was read, and its embedding unless its content was
    already known (``vector`` None) or it could not be read (``decoded.error``)."""

    decoded: Decoded
    vector: np.ndarray | None = None
    caption: str | None = None


class Engine(Protocol):
    """Decodes and embeds the files an update needs, yielding one :class:`Embedded` per entry."""

    def embed(
        self, entries: Sequence[Entry], model: Embedder, known: frozenset[str], *, batch_size: int, max_pixels: int | None
    ) -> Iterator[Embedded]: ...


class LocalEngine:
    """Threads in this process: ``workers`` read, hash and decode up to ``4 * batch_size`` files ahead
    while the model embeds the current batch on the calling thread. Content seen earlier in the run
    is embedded once."""

    def __init__(self, workers: int | None = None) -> None:
        self.workers = workers or default_workers()

    def embed(
        self, entries: Sequence[Entry], model: Embedder, known: frozenset[str], *, batch_size: int, max_pixels: int | None
    ) -> Iterator[Embedded]:
        seen: set[str] = set()  # hashes embedded (or queued) in this run

        def is_known(sha: str) -> bool:
            return sha in known or sha in seen

        decoded = ordered_map(
            lambda e: decode_entry(e, is_known, draft_size=getattr(model, "image_size", None), max_pixels=max_pixels),
            entries,
            workers=self.workers,
            prefetch=max(4 * batch_size, 32),
        )
        waiting: list[Embedded] = []  # in input order; the ones with an image await the model
        batch: list[Embedded] = []
        for d in decoded:
            result = Embedded(d)
            waiting.append(result)
            if d.image is not None:
                if d.sha256 in seen:  # same content twice before the first was embedded
                    d.image.close()
                    d.image = None
                else:
                    seen.add(d.sha256)
                    batch.append(result)
            if not batch:  # nothing awaits the model: pass results on at once
                yield from waiting
                waiting.clear()
            elif len(batch) >= batch_size:
                self._run(model, batch, batch_size)
                yield from waiting
                waiting.clear()
        self._run(model, batch, batch_size)
        yield from waiting

    @staticmethod
    def _run(model: Embedder, batch: list[Embedded], batch_size: int) -> None:
        if not batch:
            return
        vectors, tags = embed_decoded(model, [r.decoded.image for r in batch], batch_size)  # type: ignore[misc]
        for i, result in enumerate(batch):
            result.vector = vectors[i]
            result.caption = tags[i] if tags else None
            result.decoded.image.close()  # type: ignore[union-attr]
            result.decoded.image = None
        batch.clear()


class ImageIndex:
    """An image index in a directory (created on first write). See the module docstring."""

    def __init__(self, path: str | os.PathLike | None = None) -> None:
        self.path = Path(path).expanduser() if path is not None else default_index_path()
        if self.path.exists() and not self.path.is_dir():
            raise ImageIndexError(f"{self.path}: exists and is not an index directory")
        self._db: Any = None

    # -- metadata ---------------------------------------------------------------------------

    @property
    def meta_path(self) -> Path:
        return self.path / "index.json"

    def meta(self) -> dict[str, Any] | None:
        """The index's record of its model, or None for an index not created yet."""
        try:
            meta = json.loads(self.meta_path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise ImageIndexError(f"{self.meta_path}: unreadable index metadata ({exc}); rebuild with --reindex") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT_VERSION:
            raise ImageIndexError(f"{self.path}: index format {meta.get('format') if isinstance(meta, dict) else '?'} is not {FORMAT_VERSION}; rebuild with --reindex")
        return meta

    def _write_meta(self, meta: dict[str, Any]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        tmp = self.meta_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(meta, indent=2) + "\n")
        os.replace(tmp, self.meta_path)

    @property
    def model_name(self) -> str | None:
        meta = self.meta()
        return None if meta is None else str(meta["model"])

    def check_model(self, model: Embedder, dim: int | None = None) -> None:
        """Raise :class:`IndexModelMismatch` unless ``model`` is the one the index was built with."""
        meta = self.meta()
        if meta is None:
            return
        if meta["model"] != model.name or (dim is not None and meta["dim"] != dim):
            raise IndexModelMismatch(
                f"the index at {self.path} was built with model {meta['model']!r} ({meta['dim']}-d); "
                f"{model.name!r} gives different embeddings. Search with --model {meta['model']}, or rebuild "
                f"the index for the new model with `vlmkit index DIR... --reindex --model {model.name}`"
            )

    # -- the table --------------------------------------------------------------------------

    def _connect(self) -> Any:
        if self._db is None:
            self._db = _lancedb().connect(str(self.path))
        return self._db

    def _table(self) -> Any | None:
        if not self._committed():
            return None
        try:
            return self._connect().open_table(TABLE)
        except Exception as exc:  # noqa: BLE001 - lance raises several types for a damaged table
            raise ImageIndexError(f"{self.path}: cannot open the index table ({exc}); rebuild with --reindex") from None

    def _committed(self) -> bool:
        """Whether the table has a committed version. A process killed while creating the table
        leaves a directory with data files but no manifest: that is no table yet."""
        versions = self.path / f"{TABLE}.lance" / "_versions"
        return versions.is_dir() and any(p.suffix == ".manifest" for p in versions.iterdir())

    def _schema(self, dim: int) -> Any:
        import pyarrow as pa

        return pa.schema(
            [
                pa.field("path", pa.string(), nullable=False),
                pa.field("sha256", pa.string(), nullable=False),
                pa.field("size", pa.int64()),
                pa.field("mtime_ns", pa.int64()),
                pa.field("width", pa.int32()),
                pa.field("height", pa.int32()),
                pa.field("taken", pa.float64()),  # EXIF capture time, seconds since the epoch
                pa.field("date", pa.float64()),  # capture time where known, else mtime
                pa.field("model", pa.string()),
                pa.field("dim", pa.int32()),
                pa.field("vector", pa.list_(pa.float32(), dim)),
                pa.field("caption", pa.string()),
                pa.field("text", pa.string()),  # file-name words + caption: what keyword search sees
                pa.field("indexed_at", pa.float64()),
            ]
        )

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path / ".lock", "a+") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ImageIndexError(f"{self.path}: another process is writing this index; wait for it to finish") from None
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _rows(self, columns: Sequence[str], where: str | None = None) -> Any:
        table = self._table()
        if table is None:
            import pyarrow as pa

            return pa.table({c: [] for c in columns})
        query = table.search().select(list(columns))
        if where:
            query = query.where(where)
        return query.limit(None).to_arrow()

    # -- writing ----------------------------------------------------------------------------

    def update(
        self,
        inputs: Sequence[str | os.PathLike],
        model: Embedder,
        *,
        reindex: bool = False,
        batch_size: int = 32,
        commit_every: int = 256,
        workers: int | None = None,
        max_pixels: int | None = None,
        remove_missing: bool = True,
        progress: Callable[[int], None] | None = None,
        on_plan: Callable[[int], None] | None = None,
        engine: Engine | None = None,
    ) -> UpdateReport:
        """Bring the index up to date with ``inputs`` (see :func:`vlmkit.index.sources.scan`).

        Only new and changed files are read; a file whose content hash is already indexed (moved,
        renamed, copied) reuses the stored embedding; files gone from under an input leave the
        index. Rows are committed every ``commit_every`` files, so an interrupted run loses at most
        one batch of work. ``progress(1)`` is called as each file is embedded (or skipped), and ``on_plan(total)`` once
        the number of files to read is known. ``engine`` decodes and embeds (default: threads in
        this process, :class:`LocalEngine`; :class:`vlmkit.index.ray_engine.RayEngine` for a cluster).
        """
        if commit_every < 1 or batch_size < 1:
            raise InputError("batch_size and commit_every must be >= 1")
        start = time.perf_counter()
        engine = engine or LocalEngine(workers=workers)
        with self._writing():
            if reindex:
                self._drop()
            self.check_model(model)
            entries, skipped = scan(inputs)
            report = UpdateReport(scanned=len(entries), skipped=list(skipped))
            known = self._rows(["path", "sha256", "size", "mtime_ns"])
            by_path = {
                p: (s, z, m)
                for p, s, z, m in zip(*(known.column(c).to_pylist() for c in ("path", "sha256", "size", "mtime_ns")), strict=True)
            }
            hashes = {s for s, _, _ in by_path.values()}
            todo = []
            for entry in entries:
                old = by_path.get(entry.path)
                if old is not None and old[1] == entry.size and old[2] == entry.mtime_ns:
                    report.unchanged += 1
                else:
                    todo.append(entry)
            if on_plan is not None:
                on_plan(len(todo))
            if todo:
                results = engine.embed(todo, model, frozenset(hashes), batch_size=batch_size, max_pixels=max_pixels)
                self._commit(results, model.name, by_path, hashes, report, commit_every, progress)
            if remove_missing:
                present = {e.path for e in entries} | {s.path for s in report.skipped}
                roots = {str(Path(r).expanduser().absolute()) for r in inputs}
                gone = [p for p in by_path if p not in present and any(self._under(p, r) for r in roots)]
                report.removed = self._delete(gone)
            self._finish(changed=bool(report.added or report.reused or report.touched or report.removed))
        report.seconds = time.perf_counter() - start
        return report

    @staticmethod
    def _under(path: str, root: str) -> bool:
        return path == root or path.startswith(root.rstrip("/") + "/") or path.startswith(root + "::")

    def _drop(self) -> None:
        if self._table() is not None:
            self._connect().drop_table(TABLE)
        shutil.rmtree(self.path / f"{TABLE}.lance", ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            self.meta_path.unlink()

    def _commit(
        self,
        results: Iterable[Embedded],
        model_name: str,
        by_path: dict[str, tuple[str, int, int]],
        hashes: set[str],
        report: UpdateReport,
        commit_every: int,
        progress: Callable[[int], None] | None,
    ) -> None:
        """Upsert the engine's results every ``commit_every`` files; a result without a vector has
        known content and takes the stored (or earlier in this run) embedding."""
        fresh: dict[str, tuple[np.ndarray, str | None]] = {}
        pending: list[Embedded] = []

        def flush() -> None:
            stored = self._stored_vectors([r.decoded.sha256 for r in pending if r.vector is None and r.decoded.sha256 not in fresh])
            rows = []
            for r in pending:
                d = r.decoded
                if r.vector is not None:
                    fresh.setdefault(d.sha256, (r.vector, r.caption))
                    vector, caption = r.vector, r.caption
                    report.added += 1
                else:
                    vector, caption = fresh.get(d.sha256) or stored[d.sha256]
                    old = by_path.get(d.entry.path)
                    if old is not None and old[0] == d.sha256:
                        report.touched += 1
                    else:
                        report.reused += 1
                rows.append(self._row(d, model_name, vector, caption))
            self._upsert(rows)
            hashes.update(r.decoded.sha256 for r in pending)
            pending.clear()

        for result in results:
            if progress is not None:
                progress(1)  # each file as the engine finishes it (committed with its batch)
            if result.decoded.error is not None:
                report.skipped.append(Skipped(result.decoded.entry.path, result.decoded.error.reason))
                continue
            pending.append(result)
            if len(pending) >= commit_every:
                flush()
        if pending:
            flush()

    def _stored_vectors(self, hashes: Sequence[str]) -> dict[str, tuple[np.ndarray, str | None]]:
        wanted = sorted(set(hashes))
        found: dict[str, tuple[np.ndarray, str | None]] = {}
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            where = "sha256 IN (" + ", ".join(_sql_string(s) for s in chunk) + ")"
            table = self._rows(["sha256", "vector", "caption"], where)
            for sha, vector, caption in zip(*(table.column(c).to_pylist() for c in ("sha256", "vector", "caption")), strict=True):
                found.setdefault(sha, (np.asarray(vector, dtype=np.float32), caption))
        return found

    def _row(self, d: Decoded, model_name: str, vector: np.ndarray, caption: str | None) -> dict[str, Any]:
        mtime = d.entry.mtime_ns / 1e9
        return {
            "path": d.entry.path,
            "sha256": d.sha256,
            "size": d.entry.size,
            "mtime_ns": d.entry.mtime_ns,
            "width": d.width,
            "height": d.height,
            "taken": d.taken,
            "date": d.taken if d.taken is not None else mtime,
            "model": model_name,
            "dim": int(vector.shape[0]),
            "vector": vector.astype(np.float32),
            "caption": caption,
            "text": " ".join(filter(None, [_words(d.entry.path), caption or ""])),
            "indexed_at": time.time(),
        }

    def _upsert(self, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        import pyarrow as pa

        dim = int(rows[0]["dim"])
        if self.meta() is None:
            self._write_meta(
                {"format": FORMAT_VERSION, "model": rows[0]["model"], "dim": dim, "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")}
            )
        meta = self.meta()
        assert meta is not None
        if meta["dim"] != dim:
            raise IndexModelMismatch(f"model {rows[0]['model']!r} gives {dim}-d embeddings; the index holds {meta['dim']}-d; rebuild with --reindex")
        schema = self._schema(dim)
        columns = {name: [r[name] for r in rows] for name in schema.names}
        columns["vector"] = np.stack(columns["vector"]).reshape(-1).tolist()
        arrays = [
            pa.FixedSizeListArray.from_arrays(pa.array(columns["vector"], pa.float32()), dim)
            if name == "vector"
            else pa.array(columns[name], schema.field(name).type)
            for name in schema.names
        ]
        batch = pa.Table.from_arrays(arrays, schema=schema)
        table = self._table()
        if table is None:
            shutil.rmtree(self.path / f"{TABLE}.lance", ignore_errors=True)  # an uncommitted first attempt
            self._connect().create_table(TABLE, data=batch, schema=schema)
            return
        table.merge_insert("path").when_matched_update_all().when_not_matched_insert_all().execute(batch)

    def _delete(self, paths: Sequence[str]) -> int:
        table = self._table()
        if table is None or not paths:
            return 0
        for start in range(0, len(paths), 500):
            chunk = paths[start : start + 500]
            table.delete("path IN (" + ", ".join(_sql_string(p) for p in chunk) + ")")
        return len(paths)

    def _finish(self, changed: bool) -> None:
        """After a run that changed rows (or one interrupted before this step): refresh the keyword
        index, build or refresh the approximate index when the table is large enough, and drop
        superseded versions (compacting small fragments)."""
        table = self._table()
        if table is None:
            return
        has_keywords = any(list(i.columns) == ["text"] for i in table.list_indices())
        if not changed and has_keywords and self._finished_version() == table.version:
            return
        from lancedb.index import FTS

        table.create_index("text", config=FTS(with_position=False), replace=True)
        rows = table.count_rows()
        if rows >= ANN_MIN_ROWS:
            stats = self._vector_index_stats(table)
            if stats is None or stats[1] > ANN_STALE_FRACTION * rows:
                self.build_approximate_index(table)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # lancedb's note on concurrent readers: see CLEANUP_AFTER
            table.optimize(cleanup_older_than=CLEANUP_AFTER)
        (self.path / "finished").write_text(str(table.version))

    def _finished_version(self) -> int | None:
        """The table version the last completed run ended at (so an interrupted run is finished)."""
        try:
            return int((self.path / "finished").read_text())
        except (OSError, ValueError):
            return None

    @staticmethod
    def _vector_index_name(table: Any) -> str | None:
        """The name of the approximate vector index, or None when there is none (a listing only)."""
        return next((i.name for i in table.list_indices() if list(i.columns) == ["vector"]), None)

    @classmethod
    def _vector_index_stats(cls, table: Any) -> tuple[int, int] | None:
        """(indexed, unindexed) rows of the vector index, or None when there is none."""
        name = cls._vector_index_name(table)
        if name is None:
            return None
        stats = table.index_stats(name)
        return int(stats.num_indexed_rows), int(stats.num_unindexed_rows)

    def build_approximate_index(self, table: Any | None = None) -> None:
        """Build (or rebuild) the approximate vector index now; see :func:`ann_index_options`."""
        table = table if table is not None else self._table()
        if table is None:
            return
        meta = self.meta()
        dim = int(meta["dim"]) if meta else len(table.search().limit(1).to_list()[0]["vector"])
        create_ann_index(table, ann_index_options(table.count_rows(), dim))

    # -- reading ----------------------------------------------------------------------------

    def __len__(self) -> int:
        table = self._table()
        return 0 if table is None else int(table.count_rows())

    def table(self) -> Any:
        """The LanceDB table (for your own queries); raises when the index is empty."""
        table = self._table()
        if table is None:
            raise ImageIndexError(f"no index at {self.path}: build one with `vlmkit index DIR...`")
        return table

    def status(self) -> IndexStatus:
        meta = self.meta()
        table = self._table()
        rows = unique = unindexed = 0
        approximate = False
        updated = None
        if table is not None:
            rows = int(table.count_rows())
            unique = len(set(self._rows(["sha256"]).column("sha256").to_pylist()))
            stats = self._vector_index_stats(table)
            approximate = stats is not None
            unindexed = rows if stats is None else stats[1]
            marker = self.path / "finished"
            if marker.exists():
                updated = _dt.datetime.fromtimestamp(marker.stat().st_mtime, _dt.UTC).isoformat(timespec="seconds")
        size = sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file()) if self.path.exists() else 0

        return IndexStatus(
            path=str(self.path),
            model=None if meta is None else meta["model"],
            dim=None if meta is None else meta["dim"],
            rows=rows,
            unique_contents=unique,
            approximate_index=approximate,
            unindexed_rows=unindexed,
            threshold=None if meta is None else default_threshold(meta["model"]),
            created=None if meta is None else meta.get("created"),
            updated=updated,
            bytes_on_disk=size,
        )

    def rows_by_path(self, paths: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Stored rows (without vectors) for the given paths."""
        out: dict[str, dict[str, Any]] = {}
        columns = [c for c in SCHEMA_FIELDS if c != "vector"]
        for start in range(0, len(paths), 500):
            chunk = list(paths[start : start + 500])
            table = self._rows(columns, "path IN (" + ", ".join(_sql_string(p) for p in chunk) + ")")
            for row in table.to_pylist():
                out[row["path"]] = row
        return out

    def contains(self, path: str) -> bool:
        return bool(self.rows_by_path([path]))

    # -- searching (see vlmkit.index.search) ------------------------------------------------

    def search(self, model: Embedder, query: Any, **options: Any) -> list[Any]:
        """:func:`vlmkit.index.search.search` on this index."""

        return search(self, model, query, **options)

    def dedupe(self, **options: Any) -> list[list[tuple[str, float]]]:
        """:func:`vlmkit.index.search.dedupe` on this index."""

        return dedupe(self, **options)
