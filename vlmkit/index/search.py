"""Searching an :class:`~vlmkit.index.ImageIndex`: text, image and combined queries, filters, a
"no match" threshold, keyword search merged with semantic search, and near-duplicate groups.

How keyword and semantic results are combined
---------------------------------------------
A query's text terms also go to LanceDB's full-text index over each image's file-name words and
tags (BM25). The semantic list holds the images whose cosine similarity to the query vector is at
least the threshold; the keyword list holds the BM25 matches (they need no threshold: the word is
there). The two lists are merged by reciprocal rank fusion, ``sum(1 / (60 + rank))`` over the lists
an image appears in, so an image found both ways comes first. Every hit reports its cosine
similarity as ``score`` and how it was found as ``match`` ("semantic", "keyword" or "both").
"""

from __future__ import annotations

import datetime as _dt
import fnmatch
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..errors import InputError
from ..images import load_image
from .pipeline import Embedder
from .sources import IMAGE_SUFFIXES, TAR_SEPARATOR

__all__ = ["Term", "Query", "Filters", "Hit", "search", "dedupe", "default_threshold", "DEFAULT_THRESHOLDS", "RRF_K"]

#: Cosine similarity below which a hit is "no real match", per model. The built-in's was measured
#: with ``bench/index_threshold.py`` on scikit-image's 26 photos: at 0.45, 9 of 10 queries without a
#: matching photo return nothing and 5 of 10 with one still find it.
DEFAULT_THRESHOLDS: dict[str, float] = {"conse-lite0-minilm": 0.45}
RRF_K = 60
#: Search settings for the approximate index: partitions probed and the exact re-ranking factor.
ANN_NPROBES = 32
ANN_REFINE = 10


def default_threshold(model_name: str) -> float | None:
    """The calibrated threshold for a model, or None (rank everything) when none was measured."""
    return DEFAULT_THRESHOLDS.get(model_name)


@dataclass(frozen=True)
class Term:
    """One part of a query: a text or an image path, added (weight > 0) or subtracted (< 0)."""

    weight: float
    text: str | None = None
    image: str | Image.Image | None = None  # a path, or an image already decoded


def _is_image_path(text: str) -> bool:
    path = Path(text).expanduser()
    return path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()


@dataclass(frozen=True)
class Query:
    terms: tuple[Term, ...]

    @classmethod
    def parse(
        cls,
        expression: str = "",
        *,
        images: Sequence[str | Image.Image] = (),
        subtract: Sequence[str] = (),
        paths: bool = True,
    ) -> Query:
        """``"beach + photo.jpg - people"``: terms joined by `` + `` and `` - `` (spaces around the
        sign); a term naming an existing image file is an image (unless ``paths`` is False, as for
        queries that arrive over the network), anything else is text. ``images`` (paths or decoded
        images) are added and ``subtract`` (texts or image paths) subtracted."""
        terms: list[Term] = []
        parts = re.split(r"\s+([+-])\s+", expression.strip()) if expression.strip() else []
        signs = ["+"] + parts[1::2] if parts else []
        for sign, part in zip(signs, parts[0::2], strict=True):
            terms.append(cls._term(part.strip(), 1.0 if sign == "+" else -1.0, paths=paths))
        terms.extend(Term(1.0, image=i) if isinstance(i, Image.Image) else cls._term(str(i), 1.0, image=True) for i in images)
        terms.extend(cls._term(s, -1.0, paths=paths) for s in subtract)
        if not terms or all(t.weight < 0 for t in terms):
            raise InputError("a query needs at least one text or image to search for")
        return cls(tuple(terms))

    @staticmethod
    def _term(text: str, weight: float, image: bool = False, paths: bool = True) -> Term:
        if not text:
            raise InputError("empty term in the query")
        if image or (paths and _is_image_path(text)):
            return Term(weight, image=str(Path(text).expanduser()))
        return Term(weight, text=text)

    def keywords(self) -> str:
        return " ".join(t.text for t in self.terms if t.text and t.weight > 0)

    def vector(self, model: Embedder) -> np.ndarray:
        """The normalised weighted sum of the terms' embeddings."""
        texts = [t for t in self.terms if t.text is not None]
        images = [t for t in self.terms if t.image is not None]
        parts = []
        if texts:
            parts.append(np.asarray(model.embed_texts([t.text for t in texts]), np.float32) * np.array([[t.weight] for t in texts], np.float32))
        if images:
            loaded = [load_image(t.image) for t in images]  # type: ignore[arg-type]
            parts.append(np.asarray(model.embed_images(loaded), np.float32) * np.array([[t.weight] for t in images], np.float32))
        vector = np.concatenate(parts).sum(axis=0)
        norm = float(np.linalg.norm(vector))
        if norm < 1e-6:
            raise InputError("the query's terms cancel out; nothing is left to search for")
        return vector / norm


def _epoch(value: str | float | _dt.date | None) -> float | None:
    if value is None or isinstance(value, (int, float)):
        return value
    if isinstance(value, _dt.datetime):
        return (value if value.tzinfo else value.replace(tzinfo=_dt.UTC)).timestamp()
    if isinstance(value, _dt.date):
        return _dt.datetime(value.year, value.month, value.day, tzinfo=_dt.UTC).timestamp()
    try:
        parsed = _dt.datetime.fromisoformat(value)
    except ValueError:
        raise InputError(f"not a date: {value!r} (use YYYY-MM-DD or YYYY-MM-DDTHH:MM)") from None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=_dt.UTC)).timestamp()


@dataclass(frozen=True)
class Filters:
    """Restrict a search. ``glob`` matches the file name (a pattern without ``/``) or the whole path;
    dates (capture time where EXIF has it, else mtime) are ``after <= date < before``; sizes in bytes."""

    glob: str | None = None
    after: str | float | _dt.date | None = None
    before: str | float | _dt.date | None = None
    min_size: int | None = None
    max_size: int | None = None

    def where(self) -> str | None:
        clauses = []
        if self.glob:
            like = self.glob.replace("'", "''").replace("*", "%").replace("?", "_")
            clauses.append(f"path LIKE '%/{like}'" if "/" not in self.glob else f"path LIKE '{like}'")
        after, before = _epoch(self.after), _epoch(self.before)
        if after is not None:
            clauses.append(f"date >= {after!r}")
        if before is not None:
            clauses.append(f"date < {before!r}")
        if self.min_size is not None:
            clauses.append(f"size >= {int(self.min_size)}")
        if self.max_size is not None:
            clauses.append(f"size <= {int(self.max_size)}")
        return " AND ".join(clauses) or None

    def accepts(self, path: str) -> bool:
        """The exact glob test (SQL LIKE also lets ``_`` match any character)."""
        if not self.glob:
            return True
        name = path.rsplit(TAR_SEPARATOR, 1)[-1]
        return fnmatch.fnmatchcase(Path(name).name if "/" not in self.glob else path, self.glob)


@dataclass(frozen=True)
class Hit:
    path: str
    score: float  # cosine similarity to the query vector
    rank: int
    match: str  # "semantic", "keyword" or "both"
    sha256: str
    caption: str | None
    width: int
    height: int
    date: float | None
    duplicates: tuple[str, ...] = field(default=())  # other paths with identical content

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "score": round(self.score, 6),
            "rank": self.rank,
            "match": self.match,
            "sha256": self.sha256,
            "caption": self.caption,
            "width": self.width,
            "height": self.height,
            "date": self.date,
            "duplicates": list(self.duplicates),
        }


_COLUMNS = ["path", "sha256", "caption", "width", "height", "date", "vector"]


def search(
    index: Any,
    model: Embedder,
    query: Query | str,
    *,
    k: int = 10,
    threshold: float | None = None,
    filters: Filters | None = None,
    keyword: bool = True,
) -> list[Hit]:
    """The best ``k`` images for ``query``; files with identical content come back as one hit.

    ``threshold`` (default: the model's calibrated value, see ``DEFAULT_THRESHOLDS``) drops semantic
    hits below that cosine similarity, so a query with no real match returns nothing; pass
    ``float('-inf')`` to rank everything.
    """
    if k < 1:
        raise InputError(f"k must be >= 1, got {k}")
    index.check_model(model)
    table = index._table()
    if table is None:
        return []
    query = Query.parse(query) if isinstance(query, str) else query
    vector = query.vector(model)
    if threshold is None:
        threshold = default_threshold(model.name)
    filters = filters or Filters()
    where = filters.where()
    fetch = 2 * k + 4  # room for identical files collapsing into one hit and for the exact glob test

    semantic_query = table.search(vector, vector_column_name="vector").distance_type("cosine").select([*_COLUMNS, "_distance"]).limit(fetch)
    if index._vector_index_name(table) is not None:  # per query: list the indexes, no statistics
        semantic_query = semantic_query.nprobes(ANN_NPROBES).refine_factor(ANN_REFINE)
    if where:
        semantic_query = semantic_query.where(where, prefilter=True)
    rows: dict[str, dict[str, Any]] = {}
    semantic: list[str] = []
    for row in semantic_query.to_list():
        score = 1.0 - float(row["_distance"])
        if threshold is not None and score < threshold:
            break
        if filters.accepts(row["path"]):
            rows[row["path"]] = row | {"score": score}
            semantic.append(row["path"])

    keyword_hits: list[str] = []
    words = query.keywords()
    if keyword and words:
        try:
            fts = table.search(words, query_type="fts", fts_columns="text").select([*_COLUMNS, "_score"]).limit(fetch)
            if where:
                fts = fts.where(where, prefilter=True)
            found = fts.to_list()
        except Exception:  # noqa: BLE001 - no keyword index yet (an interrupted first run): semantic only
            found = []
        for row in found:
            if not filters.accepts(row["path"]):
                continue
            if row["path"] not in rows:
                score = float(np.dot(np.asarray(row["vector"], np.float32), vector))
                rows[row["path"]] = row | {"score": score}
            keyword_hits.append(row["path"])

    fused: dict[str, float] = {}
    for ranking in (semantic, keyword_hits):
        for rank, path in enumerate(ranking):
            fused[path] = fused.get(path, 0.0) + 1.0 / (RRF_K + rank + 1)
    order = sorted(fused, key=lambda p: (-fused[p], -rows[p]["score"], p))
    in_semantic, in_keyword = set(semantic), set(keyword_hits)
    hits: list[Hit] = []
    by_content: dict[str, int] = {}
    for path in order:
        row = rows[path]
        if row["sha256"] in by_content:
            first = hits[by_content[row["sha256"]]]
            hits[by_content[row["sha256"]]] = _with_duplicate(first, path)
            continue
        if len(hits) == k:
            continue
        how = "both" if path in in_semantic and path in in_keyword else ("semantic" if path in in_semantic else "keyword")
        by_content[row["sha256"]] = len(hits)
        hits.append(
            Hit(path, float(row["score"]), len(hits) + 1, how, row["sha256"], row["caption"], int(row["width"]), int(row["height"]), row["date"])
        )
    return hits


def _with_duplicate(hit: Hit, path: str) -> Hit:
    from dataclasses import replace

    return replace(hit, duplicates=(*hit.duplicates, path))


def dedupe(index: Any, *, threshold: float = 0.95, block: int = 2048) -> list[list[tuple[str, float]]]:
    """Groups of near-duplicate images (cosine >= ``threshold`` to another member), largest first.

    Each member is ``(path, similarity to the group's first member)``. Identical files are always in
    one group (similarity 1). Exact: blockwise products over all stored embeddings.
    """
    if not 0.0 < threshold <= 1.0:
        raise InputError(f"threshold must be in (0, 1], got {threshold}")
    table = index._table()
    if table is None:
        return []
    data = table.search().select(["path", "vector"]).limit(None).to_arrow()
    paths = data.column("path").to_pylist()
    if not paths:
        return []
    vectors = np.asarray(data.column("vector").combine_chunks().flatten(), np.float32).reshape(len(paths), -1)
    parent = list(range(len(paths)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for start in range(0, len(paths), block):
        sims = vectors[start : start + block] @ vectors.T  # (B, N)
        rows, cols = np.nonzero(sims >= threshold - 1e-6)
        for r, c in zip(rows.tolist(), cols.tolist(), strict=True):
            a, b = find(start + r), find(c)
            if a != b:
                parent[max(a, b)] = min(a, b)
    groups: dict[int, list[int]] = {}
    for i in range(len(paths)):
        groups.setdefault(find(i), []).append(i)
    result = []
    for members in groups.values():
        if len(members) < 2:
            continue
        members.sort(key=lambda i: paths[i])
        first = vectors[members[0]]
        result.append([(paths[i], float(np.dot(first, vectors[i]))) for i in members])
    result.sort(key=lambda g: (-len(g), g[0][0]))
    return result
