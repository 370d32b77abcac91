"""Contrastive image-text losses: CLIP's symmetric InfoNCE (Radford et al., 2021) and SigLIP's
pairwise sigmoid loss (Zhai et al., 2023).

Both take L2-normalised embeddings and run unchanged in one process and under a process group:

- ``gather="full"`` compares every local row with the global batch gathered *with* gradients
  (:func:`vlmkit.distributed.gather_with_grad`), and averages over the global batch. Under DDP's
  gradient averaging the update equals single-process training on the concatenated batch.
- ``gather="local"`` (open_clip's ``local_loss``) scores only this rank's rows against the global
  batch, gathered without gradients for the other ranks' rows: the loss value on each rank is the
  mean over its own rows, and the cost of the backward pass stays per-rank. Averaged over ranks it
  equals the full loss; gradients reach the other ranks' embeddings only through their own loss.

Both take optional group keys (:mod:`vlmkit.losses.groups`): pairs of one group are not negatives.
InfoNCE then spreads each row's target over its group's columns; SigLIP labels those pairs positive.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import distributed
from ..layers.logit_scale import LOGIT_SCALE_MAX, clamp_logit_scale
from .groups import batch_same_group, soft_targets

__all__ = ["LOGIT_SCALE_MAX", "clamp_logit_scale", "clip_loss", "siglip_loss", "gather_features"]


Gather = Literal["full", "local"]


def gather_features(local: Tensor, gather: Gather) -> Tensor:
    """The global batch ``(W * B, D)`` in rank order. ``full`` keeps gradients for every row; ``local``
    keeps them only for this rank's own slice (the other rows are constants)."""
    if distributed.world_size() == 1:
        return local
    if gather == "full":
        return distributed.gather_with_grad(local)
    everything = distributed.gather_no_grad(local)  # (W * B, D), detached
    start = distributed.rank() * local.shape[0]
    return torch.cat([everything[:start], local, everything[start + local.shape[0] :]])


def _pairs(groups: Tensor | None, rows: int, first: int, scored: int, device: torch.device) -> tuple[Tensor, Tensor | None]:
    """Each scored row's own column, and the (scored, W*B) same-group mask (None without keys).

    ``scored`` rows start at global row ``first``: this rank's rows (local) or all of them (full)."""
    positives = torch.arange(scored, device=device) + first
    return positives, None if groups is None else batch_same_group(groups.to(device), rows, first, scored)


def clip_loss(
    image_feats: Tensor, text_feats: Tensor, logit_scale: Tensor, *, gather: Gather = "full", groups: Tensor | None = None
) -> Tensor:
    """Symmetric InfoNCE over image-text pairs: row ``i`` of ``image_feats`` (B, D) matches row ``i``
    of ``text_feats`` (B, D) and every other row of the global batch is a negative, unless ``groups``
    (B,) or (B, K) int64 keys put it in row ``i``'s group: the target is then spread evenly over the
    group's columns.

    ``logit_scale`` is the multiplier itself (``log_scale.exp()``), not its log.
    """
    if image_feats.shape != text_feats.shape:
        raise ValueError(f"clip_loss: image {tuple(image_feats.shape)} and text {tuple(text_feats.shape)} features differ in shape")
    rows, rank = image_feats.shape[0], distributed.rank()
    all_images = gather_features(image_feats, gather)  # (W*B, D)
    all_texts = gather_features(text_feats, gather)
    if gather == "local" or distributed.world_size() == 1:
        # This rank's rows against the global batch: targets are this rank's diagonal.
        logits_i2t = logit_scale * image_feats @ all_texts.T  # (B, W*B)
        logits_t2i = logit_scale * text_feats @ all_images.T  # (B, W*B)
        positives, same = _pairs(groups, rows, rank * rows, rows, image_feats.device)
    else:
        # full: the whole (W*B, W*B) problem on every rank, so the loss is the global-batch mean.
        logits_i2t = logit_scale * all_images @ all_texts.T  # (W*B, W*B)
        logits_t2i = logits_i2t.T
        positives, same = _pairs(groups, rows, 0, all_images.shape[0], image_feats.device)
    targets = positives if same is None else soft_targets(same).to(logits_i2t.dtype)
    return 0.5 * (F.cross_entropy(logits_i2t, targets) + F.cross_entropy(logits_t2i, targets))


def siglip_loss(
    image_feats: Tensor,
    text_feats: Tensor,
    logit_scale: Tensor,
    logit_bias: Tensor,
    *,
    gather: Gather = "full",
    groups: Tensor | None = None,
) -> Tensor:
    """SigLIP: every (image, text) pair of the global batch is a binary problem, positive on the
    diagonal (and, with ``groups`` keys, wherever image and text share a group);
    ``-sum log sigmoid(z * (scale * <x, y> + bias))`` divided by the number of images.

    With ``full`` the loss is over the whole global batch (the paper's all-gather variant, divided by
    the global batch size); with ``local`` only this rank's images are scored against every text.
    """
    if image_feats.shape != text_feats.shape:
        raise ValueError(f"siglip_loss: image {tuple(image_feats.shape)} and text {tuple(text_feats.shape)} features differ in shape")
    rows, rank = image_feats.shape[0], distributed.rank()
    all_texts = gather_features(text_feats, gather)  # (W*B, D)
    if gather == "local" or distributed.world_size() == 1:
        images = image_feats  # (B, D)
        first = rank * rows
    else:
        images = gather_features(image_feats, gather)  # (W*B, D)
        first = 0
    logits = logit_scale * images @ all_texts.T + logit_bias  # (B or W*B, W*B)
    signs = -torch.ones_like(logits)
    diagonal, same = _pairs(groups, rows, first, images.shape[0], logits.device)
    if same is None:
        signs[torch.arange(images.shape[0], device=logits.device), diagonal] = 1.0
    else:
        signs[same] = 1.0  # the own column included
    return -F.logsigmoid(signs * logits).sum() / images.shape[0]
