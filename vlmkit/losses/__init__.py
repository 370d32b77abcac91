"""Training losses as pure functions of tensors; cross-process gathers live in ``vlmkit.distributed``."""

from .blip2 import (
    ItcOutput,
    Stage1Losses,
    itc_loss,
    itg_loss,
    itm_loss,
    sample_hard_negatives,
    stage1_loss,
)

__all__ = [
    "ItcOutput",
    "Stage1Losses",
    "itc_loss",
    "itm_loss",
    "itg_loss",
    "sample_hard_negatives",
    "stage1_loss",
]
