"""CLIP's learned logit scale: kept as its logarithm and clamped so logits grow at most 100-fold.
Shared by the models that hold one and the contrastive losses that train it."""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["LOGIT_SCALE_MAX", "clamp_logit_scale", "logit_scale"]

#: CLIP clips its learned temperature so that logits are scaled by at most 100.
LOGIT_SCALE_MAX = 100.0


@torch.no_grad()
def clamp_logit_scale(log_scale: Tensor, maximum: float = LOGIT_SCALE_MAX) -> None:
    """Clamp a learned *log* logit scale in place to ``[0, ln(maximum)]``, as CLIP does every step."""
    log_scale.clamp_(0.0, math.log(maximum))


def logit_scale(log_scale: Tensor, maximum: float = LOGIT_SCALE_MAX) -> Tensor:
    """The multiplier itself, ``exp`` of the log scale clamped to ``[0, ln(maximum)]`` (differentiable)."""
    return log_scale.clamp(0.0, math.log(maximum)).exp()
