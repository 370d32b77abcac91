"""Image-text retrieval recall: R@K in both directions and the mean rank of the first right answer."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["RetrievalScores", "retrieval_scores"]


@dataclass(frozen=True)
class RetrievalScores:
    image_to_text: dict[int, float]  # K -> recall in percent
    text_to_image: dict[int, float]
    image_to_text_mean_rank: float
    text_to_image_mean_rank: float


def retrieval_scores(similarity: np.ndarray, text_image: Sequence[int], ks: Sequence[int] = (1, 5, 10)) -> RetrievalScores:
    """``similarity`` (N_images, N_texts); ``text_image[j]`` is the image text ``j`` describes.

    Image -> text: an image is retrieved correctly at K when any of its texts ranks in the top K.
    Text -> image: a text's own image ranks in the top K. Ranks are 1-based; ties count against us.
    """
    sim = np.asarray(similarity, dtype=np.float64)
    owner = np.asarray(text_image)
    if sim.ndim != 2 or owner.shape != (sim.shape[1],):
        raise ValueError(f"similarity must be (N_images, N_texts) with one image per text; got {sim.shape} and {owner.shape}")
    # Text -> image: rank of the right image among all images for each text.
    right = sim[owner, np.arange(sim.shape[1])]  # (N_texts,)
    t2i_rank = (sim >= right[None, :]).sum(axis=0)  # (N_texts,)
    # Image -> text: best rank among the image's texts.
    i2t_rank = np.full(sim.shape[0], np.inf)
    for image in range(sim.shape[0]):
        mine = np.flatnonzero(owner == image)
        if mine.size == 0:
            continue
        best = sim[image, mine].max()
        i2t_rank[image] = (sim[image] >= best).sum() - (mine.size - 1 if (sim[image, mine] == best).sum() > 1 else 0)
    valid = np.isfinite(i2t_rank)
    return RetrievalScores(
        image_to_text={k: float(100 * np.mean(i2t_rank[valid] <= k)) for k in ks},
        text_to_image={k: float(100 * np.mean(t2i_rank <= k)) for k in ks},
        image_to_text_mean_rank=float(np.mean(i2t_rank[valid])),
        text_to_image_mean_rank=float(np.mean(t2i_rank)),
    )
