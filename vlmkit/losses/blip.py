"""BLIP pre-training losses (Li et al., 2022, section 3.2): ITC with momentum distillation, ITM on
hard negatives, LM with label smoothing.

- ITC, image-text contrastive, as ALBEF (Li et al., 2021), which BLIP follows: an online image
  feature is scored against the momentum encoder's text features (and an online text feature
  against the momentum image features), divided by a learned temperature. The targets are soft:
  ``alpha * softmax(momentum similarities / temp) + (1 - alpha) * ground truth``, where the momentum
  similarities compare momentum features with momentum features, and the ground truth is one-hot on
  the own pair or, with group keys (:mod:`vlmkit.losses.groups`), spread evenly over the pairs of the
  same group (BLIP's targets from image ids).
- ITM, image-text matching: binary cross-entropy on positives and on one hard negative text per
  image and one hard negative image per text, drawn from the ITC similarity softmax and never from
  the same group: BLIP-2's sampler and loss (:func:`vlmkit.losses.blip2.sample_hard_negatives`,
  :func:`vlmkit.losses.blip2.itm_loss`) do exactly this and are used as they are.
- LM: next-token cross-entropy of the image-grounded decoder with label smoothing 0.1, on the
  caption's tokens only (padding and a prompt such as "a picture of" are not predicted).

There is no feature queue: the columns of ITC are the momentum features of the global batch,
gathered across processes with :func:`vlmkit.losses.contrastive.gather_features` (the group keys
with them), so the same function runs in one process and under a process group.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import distributed
from .blip2 import ItcOutput, itg_loss
from .contrastive import gather_features
from .groups import batch_same_group, soft_targets

__all__ = ["BlipLosses", "itc_distill_loss", "lm_loss", "blip_losses"]


@dataclass(frozen=True)
class BlipLosses:
    """The three pre-training losses and their sum, the quantity BLIP minimises."""

    itc: Tensor
    itm: Tensor
    lm: Tensor
    total: Tensor


def itc_distill_loss(
    image_feats: Tensor,
    text_feats: Tensor,
    image_feats_m: Tensor,
    text_feats_m: Tensor,
    temperature: Tensor | float,
    alpha: float,
    *,
    groups: Tensor | None = None,
) -> ItcOutput:
    """ITC with momentum distillation over this rank's B pairs against the global batch.

    ``image_feats`` / ``text_feats`` (B, D) are the online encoders' L2-normalised features (they
    carry the gradient), ``image_feats_m`` / ``text_feats_m`` (B, D) the momentum encoders' (treated
    as constants). Row ``i`` of this rank is scored against every column of the gathered momentum
    features; its positive is column ``rank * B + i``. ``alpha`` in [0, 1] weighs the momentum
    model's softmax in the targets (0 gives plain InfoNCE against the momentum columns). ``groups``
    (B,) or (B, K) int64 keys spread the ground truth over the same-group columns.

    The loss is the mean over this rank's rows of the two cross-entropies, halved. Averaged over
    ranks it equals the single-process loss on the concatenated batch; each rank's gradient for
    its own features is W times the single-process one, which DDP's averaging divides back out.
    Every rank must pass the same B.
    """
    shape = image_feats.shape
    if image_feats.ndim != 2 or any(t.shape != shape for t in (text_feats, image_feats_m, text_feats_m)):
        raise ValueError(
            f"itc_distill_loss: expected four (B, D) features of one shape, got {tuple(image_feats.shape)}, "
            f"{tuple(text_feats.shape)}, {tuple(image_feats_m.shape)} and {tuple(text_feats_m.shape)}"
        )
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"itc_distill_loss: alpha must be in [0, 1], got {alpha}")
    batch, first = shape[0], distributed.rank() * shape[0]
    image_m = image_feats_m.detach()
    text_m = text_feats_m.detach()
    all_image_m = gather_features(image_m, "local")  # (W*B, D), constants
    all_text_m = gather_features(text_m, "local")  # (W*B, D)

    sim_i2t = image_feats @ all_text_m.T / temperature  # (B, W*B)
    sim_t2i = text_feats @ all_image_m.T / temperature  # (B, W*B)

    same = None if groups is None else batch_same_group(groups.to(image_feats.device), batch, first, batch)  # (B, W*B)
    with torch.no_grad():
        if same is None:
            truth = torch.zeros_like(sim_i2t)
            truth[torch.arange(batch, device=truth.device), torch.arange(batch, device=truth.device) + first] = 1.0
        else:
            truth = soft_targets(same).to(sim_i2t.dtype)  # (B, W*B), rows sum to 1
        sim_i2t_m = image_m @ all_text_m.T / temperature  # (B, W*B)
        sim_t2i_m = text_m @ all_image_m.T / temperature
        targets_i2t = alpha * sim_i2t_m.softmax(dim=1) + (1 - alpha) * truth
        targets_t2i = alpha * sim_t2i_m.softmax(dim=1) + (1 - alpha) * truth

    loss = (F.cross_entropy(sim_i2t, targets_i2t) + F.cross_entropy(sim_t2i, targets_t2i)) / 2
    return ItcOutput(loss=loss, sim_i2t=sim_i2t.detach(), sim_t2i=sim_t2i.detach(), same_group=same)


def lm_loss(
    lm_logits: Tensor,
    input_ids: Tensor,
    attention_mask: Tensor,
    *,
    prompt_length: int = 0,
    label_smoothing: float = 0.1,
) -> Tensor:
    """The decoder's caption loss: position t of ``lm_logits`` (B, T, V) predicts token t + 1 of
    ``input_ids`` (B, T); padding (``attention_mask`` 0) and the first ``prompt_length`` tokens
    ([DEC] and a prompt's words, BLIP's ``decoder_targets[:, :prompt_length] = -100``) are not
    targets. Cross-entropy with ``label_smoothing`` (BLIP: 0.1), averaged over the batch's targets.
    """
    if prompt_length < 0:
        raise ValueError(f"prompt_length must not be negative, got {prompt_length}")
    targets = attention_mask.clone()
    targets[:, :prompt_length] = 0
    return itg_loss(lm_logits, input_ids, targets, label_smoothing=label_smoothing)


def blip_losses(itc: Tensor, itm: Tensor, lm: Tensor) -> BlipLosses:
    """Sum the three losses with equal weights, as BLIP does."""
    return BlipLosses(itc=itc, itm=itm, lm=lm, total=itc + itm + lm)
