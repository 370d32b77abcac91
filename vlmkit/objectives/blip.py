"""The BLIP pre-training objective: ITC (momentum distillation) + ITM (hard negatives) + LM.

Composes :class:`vlmkit.models.blip_pretrain.BlipPretrainModel`'s passes with the pure losses of
:mod:`vlmkit.losses.blip` and :mod:`vlmkit.losses.blip2`; this module is the one place that knows
both. It runs unchanged in one process and under a process group: ITC's columns and ITM's hard
negatives come from the global batch. The momentum update is not done here: the training step calls
:func:`vlmkit.models.blip_pretrain.momentum_update` explicitly.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import distributed
from ..losses.blip import BlipLosses, blip_losses, itc_distill_loss, lm_loss
from ..losses.blip2 import itm_loss, sample_hard_negatives
from ..losses.contrastive import gather_features
from ..models.blip_pretrain import BlipPretrainModel
from .blip2 import TEMPERATURE_RANGE

__all__ = ["blip_pretrain_losses"]


def blip_pretrain_losses(
    model: BlipPretrainModel,
    pixel_values: Tensor,
    input_ids: Tensor,
    attention_mask: Tensor,
    groups: Tensor | None = None,
    *,
    alpha: float = 0.4,
    generator: torch.Generator | None = None,
    prompt_length: int = 0,
    lm: bool = True,
) -> BlipLosses:
    """ITC + ITM + LM for a batch of (image, caption) pairs.

    ``pixel_values`` (B, 3, H, W) as the model's image processor makes them; ``input_ids`` /
    ``attention_mask`` (B, T) the captions tokenised with [CLS] first (the model swaps in [DEC] for
    LM). ``alpha`` weighs the momentum targets (BLIP: 0.4, ramped up from 0 over the first epoch by
    the caller). ``groups`` (B, K) keys mark pairs that are not negatives of each other.
    ``prompt_length`` leading tokens are context, not LM targets. ``lm=False`` leaves the decoder out
    (BLIP's retrieval fine-tuning: ITC + ITM; the returned ``lm`` is 0). The learned temperature is
    clamped to BLIP's [0.001, 0.5] first.
    """
    with torch.no_grad():
        model.temp.clamp_(*TEMPERATURE_RANGE)
    out = model(pixel_values, input_ids, attention_mask)
    itc = itc_distill_loss(out.image_feats, out.text_feats, out.image_feats_m, out.text_feats_m, model.temp, alpha, groups=groups)

    # ITM: the positives, each image with a hard negative text, each text with a hard negative image.
    # Other ranks' image outputs come with gradients (BLIP's all_gather_with_grad), so the ViT learns
    # from every negative it provides.
    all_images = gather_features(out.image_embeds, "full")  # (W*B, 1+P, Dv)
    all_ids = distributed.gather_no_grad(input_ids)  # (W*B, T)
    all_mask = distributed.gather_no_grad(attention_mask)
    neg_text, neg_image = sample_hard_negatives(itc.sim_i2t, itc.sim_t2i, generator=generator, exclude=itc.same_group)
    has_text, has_image = neg_text >= 0, neg_image >= 0  # (B,) rows that have a negative at all
    images = torch.cat([out.image_embeds, out.image_embeds[has_text], all_images[neg_image[has_image]]])  # (B + B1 + B2, 1+P, Dv)
    ids = torch.cat([input_ids, all_ids[neg_text[has_text]], input_ids[has_image]])  # (B + B1 + B2, T)
    mask = torch.cat([attention_mask, all_mask[neg_text[has_text]], attention_mask[has_image]])
    itm = itm_loss(model.itm_logits(images, ids, mask), num_positives=input_ids.shape[0])

    if not lm:
        return blip_losses(itc.loss, itm, torch.zeros((), device=itm.device))
    caption = lm_loss(model.lm_logits(out.image_embeds, input_ids, attention_mask), input_ids, attention_mask, prompt_length=prompt_length)
    return blip_losses(itc.loss, itm, caption)

