"""Training objectives: a model's forward passes composed with the pure losses of
:mod:`vlmkit.losses` (which take tensors, never models), or with the model's own next-token loss
(LLaVA's). Above both models and losses."""

from .blip import blip_pretrain_losses
from .blip2 import TEMPERATURE_RANGE, blip2_stage1_losses
from .llava import LlavaObjective

__all__ = ["blip_pretrain_losses", "blip2_stage1_losses", "TEMPERATURE_RANGE", "LlavaObjective"]
