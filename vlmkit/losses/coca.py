"""CoCa's objective (Yu et al., 2022): contrastive loss on the unimodal embeddings plus a weighted
captioning loss from the multimodal decoder, ``L = L_con + lambda * L_cap`` (the paper: lambda = 2).

The contrastive part is CLIP's symmetric InfoNCE (:func:`vlmkit.losses.contrastive.clip_loss`), with
negatives gathered across processes; the captioning part is the next-token cross-entropy of this
process's captions, padding ignored (labels ``-100``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from .contrastive import Gather, clip_loss

__all__ = ["CoCaLosses", "coca_loss", "IGNORE_INDEX"]

IGNORE_INDEX = -100


@dataclass(frozen=True)
class CoCaLosses:
    contrastive: Tensor  # ()
    caption: Tensor  # () mean over the labelled caption tokens
    total: Tensor  # () contrastive + caption_weight * caption


def coca_loss(
    image_emb: Tensor,
    text_emb: Tensor,
    logit_scale: Tensor,
    caption_logits: Tensor,
    caption_labels: Tensor,
    *,
    caption_weight: float = 2.0,
    gather: Gather = "full",
    groups: Tensor | None = None,
) -> CoCaLosses:
    """``image_emb`` / ``text_emb`` (B, E) L2-normalised, row i of each a pair; ``logit_scale`` the
    multiplier (not its log); ``caption_logits`` (B, T, V) with ``caption_labels`` (B, T) already
    aligned (position t's logits predict label t; ``-100`` is ignored); ``groups`` keys as in
    :func:`~vlmkit.losses.contrastive.clip_loss`."""
    if caption_logits.shape[:2] != caption_labels.shape:
        raise ValueError(f"coca_loss: logits {tuple(caption_logits.shape)} and labels {tuple(caption_labels.shape)} do not line up")
    contrastive = clip_loss(image_emb, text_emb, logit_scale, gather=gather, groups=groups)
    caption = F.cross_entropy(caption_logits.flatten(0, 1).float(), caption_labels.flatten(), ignore_index=IGNORE_INDEX)
    return CoCaLosses(contrastive, caption, contrastive + caption_weight * caption)
