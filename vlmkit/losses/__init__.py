"""Training losses as pure functions of tensors; cross-process gathers live in ``vlmkit.distributed``."""

from .blip import BlipLosses, blip_losses, itc_distill_loss, lm_loss
from .blip2 import (
    ItcOutput,
    Stage1Losses,
    itc_loss,
    itg_loss,
    itm_loss,
    sample_hard_negatives,
    stage1_loss,
)
from .coca import CoCaLosses, coca_loss
from .contrastive import LOGIT_SCALE_MAX, clamp_logit_scale, clip_loss, siglip_loss
from .groups import batch_same_group, gather_groups, group_keys, same_group, soft_targets
from .prefix_lm import prefix_lm_loss, prefix_lm_mask

__all__ = [
    "ItcOutput",
    "Stage1Losses",
    "itc_loss",
    "itm_loss",
    "itg_loss",
    "sample_hard_negatives",
    "stage1_loss",
    "BlipLosses",
    "itc_distill_loss",
    "lm_loss",
    "blip_losses",
    "clip_loss",
    "siglip_loss",
    "clamp_logit_scale",
    "LOGIT_SCALE_MAX",
    "prefix_lm_loss",
    "prefix_lm_mask",
    "CoCaLosses",
    "coca_loss",
    "group_keys",
    "gather_groups",
    "batch_same_group",
    "same_group",
    "soft_targets",
]
