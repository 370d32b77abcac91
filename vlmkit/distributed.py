"""Process-group helpers that degrade to no-ops in a single process.

Losses call these instead of ``torch.distributed`` directly, so the same loss function runs in a
notebook (no process group) and under ``torchrun`` (many). All gathers concatenate along dim 0 and
require every rank to pass a tensor of the same shape (use ``drop_last=True`` in the sampler).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["world_size", "rank", "gather_with_grad", "gather_no_grad"]


def _initialised() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """Number of processes in the default group; 1 without an initialised process group."""
    return dist.get_world_size() if _initialised() else 1


def rank() -> int:
    """This process's rank in the default group; 0 without an initialised process group."""
    return dist.get_rank() if _initialised() else 0


def _all_gather_cat(x: Tensor) -> Tensor:
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x)
    return torch.cat(parts, dim=0)


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums every rank's gradient for the gathered tensor and hands each
    rank the slice that belongs to its input.

    Uses all_reduce rather than reduce_scatter so that it runs on every backend (gloo included).
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        ctx.local_rows = x.shape[0]
        return _all_gather_cat(x.contiguous())  # (W * B, ...)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        grad = grad.contiguous().clone()  # (W * B, ...); all_reduce works in place
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = dist.get_rank() * ctx.local_rows
        return grad[start : start + ctx.local_rows]  # (B, ...)


def gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate ``x`` from all ranks along dim 0, rank order, keeping the autograd graph.

    The gradient reaching this rank's ``x`` is the sum over ranks of the gradients of their losses
    with respect to this rank's slice: with a per-rank mean loss, that is ``world_size`` times the
    gradient of the global-batch mean (which DDP's gradient averaging then divides back out).
    Identity when the world size is 1.
    """
    if world_size() == 1:
        return x
    out: Tensor = _GatherWithGrad.apply(x)
    return out


def gather_no_grad(x: Tensor) -> Tensor:
    """Concatenate ``x`` from all ranks along dim 0, rank order, detached from the graph.

    For tensors that need no gradient (token ids, masks, similarity scores). Returns ``x.detach()``
    when the world size is 1, so the result is detached in both regimes.
    """
    if world_size() == 1:
        return x.detach()
    with torch.no_grad():
        return _all_gather_cat(x.detach().contiguous())
