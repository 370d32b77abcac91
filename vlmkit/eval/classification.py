"""Zero-shot classification accuracy: top-k over class scores, with prompt-template ensembles.

The class embeddings come from :meth:`~vlmkit.models.base.VisionLanguageModel.label_embeddings`:
every label is written into each template ("a photo of a {}.", "a blurry photo of a {}.", ...), the
text embeddings are averaged and re-normalised (CLIP's prompt ensembling). :data:`IMAGENET_TEMPLATES`
is a short ensemble in that spirit, written for vlmkit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["TopKScores", "topk_accuracy", "IMAGENET_TEMPLATES"]

#: A small prompt ensemble for photos of objects (the single default is "a photo of a {}.").
IMAGENET_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a close-up photo of a {}.",
    "a blurry photo of a {}.",
    "a photo of the small {}.",
    "a photo of the large {}.",
    "a cropped photo of a {}.",
    "a bright photo of a {}.",
    "a dark photo of a {}.",
)


@dataclass(frozen=True)
class TopKScores:
    accuracy: dict[int, float]  # k -> percent of images whose true class is among the top k
    per_class_top1: dict[int, float]  # class index -> top-1 percent over that class's images


def topk_accuracy(scores: np.ndarray, targets: Sequence[int], ks: Sequence[int] = (1, 5)) -> TopKScores:
    """``scores`` (N_images, N_classes), higher is better; ``targets[i]`` the class of image ``i``.

    Ties count against the prediction: the true class is in the top k when fewer than k other
    classes score at least as high as it.
    """
    s = np.asarray(scores, dtype=np.float64)
    t = np.asarray(targets)
    if s.ndim != 2 or t.shape != (s.shape[0],):
        raise ValueError(f"scores must be (N_images, N_classes) with one target per image; got {s.shape} and {t.shape}")
    if not len(t):
        raise ValueError("no images to score")
    if t.min() < 0 or t.max() >= s.shape[1]:
        raise ValueError(f"targets must be class indices in [0, {s.shape[1]})")
    true = s[np.arange(len(t)), t]
    others_ahead = (s >= true[:, None]).sum(axis=1) - 1  # the true class itself is not ahead of itself
    rank = 1 + others_ahead
    per_class = {int(c): float(100 * np.mean(rank[t == c] <= 1)) for c in np.unique(t)}
    return TopKScores(accuracy={int(k): float(100 * np.mean(rank <= k)) for k in ks}, per_class_top1=per_class)
