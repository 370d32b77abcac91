"""The BLIP-2 stage-1 objective: one Q-Former forward per loss, summed as the paper does.

Composes the Q-Former's passes (:mod:`vlmkit.models.qformer`) with the pure loss functions of
:mod:`vlmkit.losses.blip2`, which take tensors only; this module is the one place that knows both. It runs unchanged in one process and under a process group: ITC
negatives and ITM hard negatives come from the global batch through :mod:`vlmkit.distributed`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .. import distributed
from ..losses.blip2 import Stage1Losses, itc_loss, itg_loss, itm_loss, sample_hard_negatives, stage1_loss
from ..models.qformer import QFormer

__all__ = ["blip2_stage1_losses", "TEMPERATURE_RANGE"]

# LAVIS keeps the learned temperature in this range, clamping it before every step (here its logarithm).
TEMPERATURE_RANGE = (0.001, 0.5)


def blip2_stage1_losses(
    qformer: QFormer,
    image_embeds: Tensor,
    input_ids: Tensor,
    attention_mask: Tensor,
    *,
    use_itg: bool = True,
    generator: torch.Generator | None = None,
    groups: Tensor | None = None,
) -> Stage1Losses:
    """ITC + ITM + ITG for a batch of (frozen image features, paired caption) examples.

    ``image_embeds`` (B, P, E) are the frozen encoder's features; ``input_ids``/``attention_mask``
    (B, T) the captions tokenised with [CLS] first. ``use_itg=False`` drops ITG (the paper's Table 6
    ablation); its entry in the result is then zero. ``groups`` (B, K) keys
    (:func:`vlmkit.losses.groups.group_keys`) mark pairs that belong together: ITC spreads its targets
    over them and ITM never takes one as a negative; a row whose every other pair is of its own
    group has no negative and contributes only its positive to ITM.
    """
    with torch.no_grad():
        qformer.log_temp.clamp_(math.log(TEMPERATURE_RANGE[0]), math.log(TEMPERATURE_RANGE[1]))

    image_feats = qformer.image_features(image_embeds)  # (B, Q, d)
    text_feats = qformer.text_features(input_ids, attention_mask)  # (B, d)
    itc = itc_loss(image_feats, text_feats, qformer.temp, groups=groups)

    # ITM: positives, then each image with a hard negative text, then each text with a hard negative image.
    all_images = distributed.gather_no_grad(image_embeds)  # (B*W, P, E)
    all_ids = distributed.gather_no_grad(input_ids)  # (B*W, T)
    all_mask = distributed.gather_no_grad(attention_mask)
    neg_text, neg_image = sample_hard_negatives(itc.sim_i2t, itc.sim_t2i, generator=generator, exclude=itc.same_group)
    has_text, has_image = neg_text >= 0, neg_image >= 0  # (B,) rows that have a negative at all
    images = torch.cat([image_embeds, image_embeds[has_text], all_images[neg_image[has_image]]])  # (B + B1 + B2, P, E)
    ids = torch.cat([input_ids, all_ids[neg_text[has_text]], input_ids[has_image]])  # (B + B1 + B2, T)
    mask = torch.cat([attention_mask, all_mask[neg_text[has_text]], attention_mask[has_image]])
    itm = itm_loss(qformer.itm_logits(images, ids, mask), num_positives=image_embeds.shape[0])

    if use_itg:
        logits = qformer.forward_itg(image_embeds, input_ids, attention_mask).logits  # (B, T, V)
        itg = itg_loss(logits, input_ids, attention_mask)
    else:
        itg = torch.zeros((), device=itc.loss.device)
    return stage1_loss(itc.loss, itm, itg)
