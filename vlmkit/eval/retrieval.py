"""Image-text retrieval recall: R@K in both directions and the mean rank of the first right answer."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["RetrievalScores", "retrieval_scores"]


@dataclass(frozen=True)
class RetrievalScores:
    image_to_text: dict[int, float]  # K -> recall in percent
    text_to_image: dict[int, float]
    image_to_text_mean_rank: float
    text_to_image_mean_rank: float


def retrieval_scores(
    similarity: np.ndarray,
    text_image: Sequence[int],
    ks: Sequence[int] = (1, 5, 10),
    *,
    image_groups: Sequence[Hashable] | None = None,
) -> RetrievalScores:
    """``similarity`` (N_images, N_texts); ``text_image[j]`` is the image text ``j`` describes.

    Image -> text: an image is retrieved correctly at K when any of its texts ranks in the top K.
    Text -> image: a text's own image ranks in the top K. Ranks are 1-based; ties count against us.

    ``image_groups`` (one key per image) makes images with the same key interchangeable: a gallery
    of generated scenes holds different images that one caption describes equally well (two scenes
    of "a red circle" in other places), and no text can tell them apart. Then any image of the
    text's group counts as its image, and any text of an image of the group as the image's text.
    """
    sim = np.asarray(similarity, dtype=np.float64)
    owner = np.asarray(text_image)
    if sim.ndim != 2 or owner.shape != (sim.shape[1],):
        raise ValueError(f"similarity must be (N_images, N_texts) with one image per text; got {sim.shape} and {owner.shape}")
    if image_groups is None:
        group = np.arange(sim.shape[0])
    else:
        if len(image_groups) != sim.shape[0]:
            raise ValueError(f"{len(image_groups)} image groups for {sim.shape[0]} images")
        ids: dict[Hashable, int] = {}
        group = np.array([ids.setdefault(g, len(ids)) for g in image_groups])
    right = group[:, None] == group[owner][None, :]  # (N_images, N_texts): image i is right for text j
    # Text -> image: 1 + the wrong images scoring at least as high as the best right one.
    best_image = np.where(right, sim, -np.inf).max(axis=0)  # (N_texts,)
    t2i_rank = 1 + ((sim >= best_image[None, :]) & ~right).sum(axis=0)  # (N_texts,)
    # Image -> text: 1 + the wrong texts scoring at least as high as the image's best right one.
    has_text = right.any(axis=1)
    best_text = np.where(right, sim, -np.inf).max(axis=1)  # (N_images,)
    i2t_rank = 1 + ((sim >= best_text[:, None]) & ~right).sum(axis=1)  # (N_images,)
    # An image no text describes is left out of image -> text (it has nothing to retrieve).
    i2t_rank = i2t_rank[has_text]
    return RetrievalScores(
        image_to_text={k: float(100 * np.mean(i2t_rank <= k)) for k in ks},
        text_to_image={k: float(100 * np.mean(t2i_rank <= k)) for k in ks},
        image_to_text_mean_rank=float(np.mean(i2t_rank)),
        text_to_image_mean_rank=float(np.mean(t2i_rank)),
    )
