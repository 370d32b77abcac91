"""Attention masks shared by models and the losses that train them."""

from __future__ import annotations

import torch

__all__ = ["prefix_lm_mask"]


def prefix_lm_mask(prefix_lengths: torch.Tensor, length: int, key_padding: torch.Tensor | None = None) -> torch.Tensor:
    """Who may attend to whom, (B, T, T) boolean, True = allowed.

    Query ``i`` of row ``b`` sees key ``j`` when ``j < prefix_lengths[b]`` (the whole prefix, in both
    directions) or ``j <= i`` (causal after the prefix). ``key_padding`` (B, T), True for real
    tokens, hides padded keys; the first key stays visible to every query, so no row is empty."""
    positions = torch.arange(length, device=prefix_lengths.device)
    query, key = positions[:, None], positions[None, :]  # (T, 1), (1, T)
    allowed = (key[None] < prefix_lengths[:, None, None]) | (key <= query)[None]  # (B, T, T)
    if key_padding is not None:
        allowed = allowed & key_padding[:, None, :].bool()
    return allowed
