"""BLIP-2's two-step retrieval: rank by ITC similarity, then re-score the top k with the ITM head.

The paper (section 4.4, following ALBEF/BLIP) first takes the k = 128 candidates of highest
image-text contrastive similarity for every query, then re-ranks them by image-text matching, the
multimodal pass that lets queries and text attend to each other. Works with any model whose
``match`` is an ITM head (``MatchResult.kind == "itm"``: BLIP, BLIP-2, vlmkit's own BLIP-2).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InputError, UnsupportedTaskError

__all__ = ["RerankedScores", "rerank", "rerank_with_itm", "ITM_MODELS"]

#: The model kinds whose ``match`` is an ITM head.
ITM_MODELS = ("BlipForImageTextRetrieval", "Blip2ForImageTextRetrieval", "VlmkitBlip2")


@dataclass(frozen=True)
class RerankedScores:
    """Scores to rank by in each direction, (N_images, N_texts): ITC similarity plus the ITM match
    probability for the top-k candidates, ``-inf`` outside them. Feed each to
    :func:`vlmkit.eval.retrieval_scores` for its own direction."""

    image_to_text: np.ndarray
    text_to_image: np.ndarray
    itc: np.ndarray  # the first-step similarity


def rerank(itc: np.ndarray, itm: Callable[[list[tuple[int, int]]], np.ndarray], *, k: int = 128) -> RerankedScores:
    """The two steps on a precomputed ITC similarity (N_images, N_texts): ``itm(pairs)`` scores a list
    of (image index, text index) pairs with the ITM head; the top ``k`` of every row and column get
    ITC + ITM, the rest ``-inf``."""
    if k < 1:
        raise InputError(f"rerank: k must be at least 1, got {k}")
    itc = np.asarray(itc, dtype=np.float64)
    i2t = np.full(itc.shape, -np.inf)
    top_texts = np.argsort(-itc, axis=1, kind="stable")[:, :k]  # (N_images, k)
    pairs = [(i, int(j)) for i in range(itc.shape[0]) for j in top_texts[i]]
    for (i, j), score in zip(pairs, itm(pairs), strict=True):
        i2t[i, j] = itc[i, j] + score
    t2i = np.full(itc.shape, -np.inf)
    top_images = np.argsort(-itc, axis=0, kind="stable")[:k]  # (k, N_texts)
    pairs = [(int(i), j) for j in range(itc.shape[1]) for i in top_images[:, j]]
    for (i, j), score in zip(pairs, itm(pairs), strict=True):
        t2i[i, j] = itc[i, j] + score
    return RerankedScores(image_to_text=i2t, text_to_image=t2i, itc=itc)


def rerank_with_itm(model: Any, images: Sequence[Any], texts: Sequence[str], *, k: int = 128, batch_size: int = 16) -> RerankedScores:
    """ITC top-``k`` per image and per text, re-scored by ``model.match`` (the ITM head)."""
    from ..images import load_image

    if k < 1:
        raise InputError(f"rerank: k must be at least 1, got {k}")
    if not images or not texts:
        raise InputError("rerank: give at least one image and one text")
    decoded = [load_image(image) for image in images]  # decode once, score many pairs
    probe = model.match(decoded[0], texts[0])
    if probe.kind != "itm":
        kind = getattr(getattr(model, "kind", None), "architecture", f"match kind {probe.kind}")
        raise UnsupportedTaskError("rerank", model.name, kind, list(ITM_MODELS))

    def itm(pairs: list[tuple[int, int]]) -> np.ndarray:
        scores = [
            model.match([decoded[i] for i, _ in pairs[s : s + batch_size]], [texts[j] for _, j in pairs[s : s + batch_size]]).scores
            for s in range(0, len(pairs), batch_size)
        ]
        return np.concatenate(scores)

    return rerank(model.similarity(decoded, list(texts)), itm, k=k)
