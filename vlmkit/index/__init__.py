"""An image search engine over photo collections: index folders, search by text, image or both.

>>> import vlmkit
>>> from vlmkit.index import ImageIndex
>>> model = vlmkit.load("default")
>>> index = ImageIndex("photos.index")
>>> report = index.update(["~/Pictures"], model)     # incremental; safe to interrupt and re-run
>>> index.search(model, "a cat on a sofa", k=5)
>>> index.search(model, Query.parse("beach + photo.jpg - people"))

Stored in LanceDB (``pip install 'vlmkit[index]'``); see :mod:`vlmkit.index.store` for the layout
and :mod:`vlmkit.index.search` for how keyword and semantic results are merged.
"""

from .pipeline import Embedder
from .search import DEFAULT_THRESHOLDS, Filters, Hit, Query, Term, dedupe, default_threshold, search
from .sources import Entry, Skipped, scan
from .store import (
    ANN_MIN_ROWS,
    INDEX_ENV,
    Embedded,
    Engine,
    ImageIndex,
    ImageIndexError,
    IndexModelMismatch,
    IndexStatus,
    LocalEngine,
    UpdateReport,
    ann_index_options,
    default_index_path,
)

__all__ = [
    "ImageIndex",
    "Engine",
    "LocalEngine",
    "Embedded",
    "ImageIndexError",
    "IndexModelMismatch",
    "IndexStatus",
    "UpdateReport",
    "Embedder",
    "Query",
    "Term",
    "Filters",
    "Hit",
    "search",
    "dedupe",
    "default_threshold",
    "DEFAULT_THRESHOLDS",
    "Entry",
    "Skipped",
    "scan",
    "default_index_path",
    "INDEX_ENV",
    "ANN_MIN_ROWS",
    "ann_index_options",
]
