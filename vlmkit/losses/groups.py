"""Which pairs of a contrastive batch are not negatives of each other.

Web-scale data rarely holds two identical captions in one batch; small or templated data often
does (easy-VQA has 24 distinct captions, so most items of a batch of 32 share theirs). Treating an
identical caption as a wrong match teaches the model to separate things that are the same, and ITM
then mines exact duplicates as "hard negatives". Each example therefore carries one or more group
keys, as int64 ids: two examples belong together when ANY of their keys are equal (e.g. key 0 the
caption's text, key 1 the image's content). A negative key means "no key" and matches nothing.

The losses use the resulting (B, N) mask for soft contrastive targets, spread evenly over the
same-group columns (BLIP's targets from image ids), and to keep same-group pairs out of hard
negatives (LAVIS's BLIP-2 masks same-image-id pairs there). Without keys each example is its own
group, and the losses are the plain one-hot ones.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch
from torch import Tensor

from .. import distributed

__all__ = ["group_keys", "same_group", "gather_groups", "batch_same_group", "soft_targets"]


def _key(text: str) -> int:
    # A stable hash (Python's hash() is salted per process, and ranks compare keys across processes).
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=7).digest(), "big")


def group_keys(*columns: Sequence[str]) -> Tensor:
    """(B, K) int64 keys from K columns of strings (e.g. the captions, and the examples' content
    groups); an empty string gives key -1, which matches nothing."""
    if not columns or len({len(c) for c in columns}) != 1:
        raise ValueError("group_keys needs one or more columns of equal length")
    rows = [[_key(text) if text else -1 for text in column] for column in columns]
    return torch.tensor(rows, dtype=torch.long).T.contiguous()  # (B, K)


def _as_keys(groups: Tensor, batch: int) -> Tensor:
    if groups.ndim == 1:
        groups = groups[:, None]
    if groups.ndim != 2 or groups.shape[0] != batch or groups.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"groups must be integer ids of shape (B,) or (B, K) with B={batch}, got {tuple(groups.shape)} {groups.dtype}")
    return groups


def gather_groups(groups: Tensor, batch: int) -> Tensor:
    """This rank's (B, K) keys gathered across processes: (B * W, K), rank order."""
    return distributed.gather_no_grad(_as_keys(groups, batch))


def same_group(rows: Tensor, columns: Tensor) -> Tensor:
    """(R, C) bool: row key set ``rows[i]`` shares a non-negative key with ``columns[j]``.

    ``rows`` (R, K) and ``columns`` (C, K) are keys as :func:`group_keys` makes them."""
    equal = (rows[:, None, :] == columns[None, :, :]) & (rows[:, None, :] >= 0)  # (R, C, K)
    return equal.any(dim=-1)


def batch_same_group(groups: Tensor, batch: int, first: int, scored: int) -> Tensor:
    """(scored, B * W) bool: global rows ``first .. first + scored`` against every row of the gathered
    batch. ``groups`` are this rank's (B,) or (B, K) keys; each row's own column is always set (an
    example is in its own group even when it has no keys)."""
    everything = gather_groups(groups, batch)  # (B * W, K)
    same = same_group(everything[first : first + scored], everything)
    rows = torch.arange(scored, device=same.device)
    same[rows, rows + first] = True
    return same


def soft_targets(same: Tensor) -> Tensor:
    """Contrastive targets that spread each row's mass evenly over its same-group columns (the
    rows of :func:`batch_same_group`, which include each row's own column)."""
    mask = same.float()
    return mask / mask.sum(dim=1, keepdim=True)  # (R, C), rows sum to 1
