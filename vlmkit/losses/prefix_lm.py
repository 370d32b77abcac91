"""The prefix language-modelling objective of SimVLM (Wang et al., 2022).

A sequence is split into a prefix, read bidirectionally (for SimVLM: the image's patch tokens and the
first words of the text), and a suffix predicted one token at a time. In a decoder-only transformer
the split is an attention mask (:func:`prefix_lm_mask`, a building block in ``vlmkit.layers.masks``
re-exported here) and the loss counts only suffix tokens (:func:`prefix_lm_loss`): the prefix
is given, never predicted.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..layers.masks import prefix_lm_mask

__all__ = ["IGNORE_INDEX", "prefix_lm_mask", "prefix_lm_loss"]

#: Label value that carries no loss (padding), as in PyTorch's cross-entropy.
IGNORE_INDEX = -100


def prefix_lm_loss(logits: Tensor, labels: Tensor, prefix_lengths: Tensor) -> Tensor:
    """Mean next-token cross-entropy over the suffix tokens.

    ``logits`` (B, T, V) at position ``t`` predict ``labels[:, t + 1]`` (B, T); a target counts
    when its position is at or after ``prefix_lengths`` (B,) and its label is not
    :data:`IGNORE_INDEX`. Positions here are those of ``labels``: the prefix length is measured in
    the same sequence the logits cover."""
    targets = labels[:, 1:].clone()  # (B, T-1): the token each position predicts
    positions = torch.arange(1, labels.shape[1], device=labels.device)  # (T-1,)
    targets[positions[None, :] < prefix_lengths[:, None]] = IGNORE_INDEX
    return F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), ignore_index=IGNORE_INDEX
    )
