"""BLIP-2 stage-1 (representation learning) losses: ITC, ITM with hard negatives, ITG.

Li et al., 2023, "BLIP-2: Bootstrapping Language-Image Pre-training with Frozen Image Encoders and
Large Language Models", section 3.2. The Q-Former is trained with the sum of three losses:

- ITC, image-text contrastive: an image's similarity to a text is the maximum over its Q query outputs
  of the cosine with the text's [CLS] feature, divided by a learned temperature (initialised to 0.07);
  negatives come from the whole global batch.
- ITM, image-text matching: binary match / no-match on (image, text) pairs, with one hard negative
  text per image and one hard negative image per text drawn from the ITC similarity softmax; the ITM
  head's logits are averaged over the query outputs.
- ITG, image-grounded text generation: next-token prediction of the text, where text tokens attend
  to all queries and earlier text and queries never attend to text (the mask is the model's job).

Examples may carry group keys (:mod:`vlmkit.losses.groups`): ITC then spreads its targets over the
same-group columns and ITM never draws a same-group pair as a negative, as LAVIS does with image ids.

Everything here takes plain tensors (the Q-Former's outputs), not the model. Cross-process negatives
go through :mod:`vlmkit.distributed`, so each function runs unchanged with or without a process group.

LAVIS's reference recipe (``blip2_qformer.py``) uses label smoothing 0.1 in both ITC cross-entropies
and in the ITG loss (``BertLMHeadModel``); both functions default to it (pass 0.0 for plain
cross-entropy).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import distributed
from .groups import batch_same_group, soft_targets

__all__ = [
    "ItcOutput",
    "Stage1Losses",
    "itc_loss",
    "sample_hard_negatives",
    "itm_loss",
    "itg_loss",
    "stage1_loss",
]

IGNORE_INDEX = -100


@dataclass(frozen=True)
class ItcOutput:
    """The ITC loss and this rank's similarity rows against the global batch.

    ``sim_i2t[i, j]`` scores local image ``i`` against global text ``j``, ``sim_t2i[i, j]`` local text
    ``i`` against global image ``j``; both are divided by the temperature and detached (they feed
    hard-negative mining). The positive of local row ``i`` is column ``rank * B + i``.
    ``same_group[i, j]`` says that local pair ``i`` and global pair ``j`` share a group (their own
    column included); None when the batch had no group keys.
    """

    loss: Tensor  # ()
    sim_i2t: Tensor  # (B, B * W)
    sim_t2i: Tensor  # (B, B * W)
    same_group: Tensor | None = None  # (B, B * W) bool


@dataclass(frozen=True)
class Stage1Losses:
    """The three stage-1 losses and their sum, the quantity BLIP-2 minimises."""

    itc: Tensor
    itm: Tensor
    itg: Tensor
    total: Tensor


def itc_loss(
    query_feats: Tensor,
    text_feats: Tensor,
    temperature: Tensor | float,
    *,
    label_smoothing: float = 0.1,
    groups: Tensor | None = None,
) -> ItcOutput:
    """BLIP-2 image-text contrastive loss with max-over-queries similarity and global negatives.

    ``query_feats`` are the L2-normalised projected query outputs of this rank's images and
    ``text_feats`` the L2-normalised projected [CLS] features of their paired texts (pair ``i`` is the
    positive). Each rank scores its own B rows against all B * W columns of the gathered batch and
    the loss is the mean of the image->text and text->image cross-entropies over those rows.

    Both sides are gathered with :func:`~vlmkit.distributed.gather_with_grad`, so gradients also flow
    into the columns: with W ranks, the mean over ranks of this loss equals the single-process loss
    on the concatenated batch, and each rank's feature gradient is W times the single-process one
    (DDP's gradient averaging divides the W back out). BLIP-2 in LAVIS instead gathers the "other"
    side with ``concat_all_gather`` (no grad) and computes each rank's rows against all columns with
    targets ``rank * B + arange(B)``: the forward value is the same but the gradient through other
    ranks' columns is dropped, so the result differs from single-process training.

    ``groups`` (B,) or (B, K) int64 keys (:func:`~vlmkit.losses.groups.group_keys`): each row's target
    is then spread evenly over the columns of its group instead of one-hot on its own column (the
    same on both sides, since the pair relation is symmetric); they are gathered with the features.

    Every rank must pass the same B.
    """
    if query_feats.ndim != 3 or text_feats.ndim != 2:
        raise ValueError(
            f"expected query_feats (B, Q, D) and text_feats (B, D), got {tuple(query_feats.shape)} "
            f"and {tuple(text_feats.shape)}"
        )
    if query_feats.shape[0] != text_feats.shape[0] or query_feats.shape[2] != text_feats.shape[1]:
        raise ValueError(
            f"query_feats {tuple(query_feats.shape)} and text_feats {tuple(text_feats.shape)} "
            "disagree on the batch size or the feature size"
        )
    batch = query_feats.shape[0]
    query_all = distributed.gather_with_grad(query_feats)  # (B * W, Q, D)
    text_all = distributed.gather_with_grad(text_feats)  # (B * W, D)

    sim_q2t = torch.einsum("bqd,nd->bnq", query_feats, text_all)  # (B, B * W, Q)
    sim_i2t = sim_q2t.amax(dim=-1) / temperature  # (B, B * W)
    sim_t2q = torch.einsum("bd,nqd->bnq", text_feats, query_all)  # (B, B * W, Q)
    sim_t2i = sim_t2q.amax(dim=-1) / temperature  # (B, B * W)

    offset = distributed.rank() * batch
    positives = torch.arange(offset, offset + batch, device=query_feats.device)  # (B,)
    same = None
    targets: Tensor = positives
    if groups is not None:
        same = batch_same_group(groups.to(query_feats.device), batch, offset, batch)  # (B, B * W)
        targets = soft_targets(same).to(sim_i2t.dtype)  # (B, B * W)
    loss = (
        F.cross_entropy(sim_i2t, targets, label_smoothing=label_smoothing)
        + F.cross_entropy(sim_t2i, targets, label_smoothing=label_smoothing)
    ) / 2
    return ItcOutput(loss=loss, sim_i2t=sim_i2t.detach(), sim_t2i=sim_t2i.detach(), same_group=same)


def _sample_excluding_positive(
    sim: Tensor, offset: int, exclude: Tensor | None, generator: torch.Generator | None
) -> Tensor:
    """One column per row drawn from softmax(row) with column ``offset + row`` and the ``exclude``d
    columns masked out; -1 for a row with no column left."""
    batch = sim.shape[0]
    rows = torch.arange(batch, device=sim.device)
    if torch.isnan(sim).any() or (sim == float("inf")).any():
        raise ValueError("cannot sample hard negatives: no finite negative score (a similarity is NaN or +inf)")
    banned = sim == float("-inf")  # (B, N); a -inf column has no weight in the softmax
    if exclude is not None:
        banned |= exclude.to(sim.device)
    banned[rows, rows + offset] = True
    logits = sim.detach().float().masked_fill(banned, float("-inf"))  # (B, N); float32 for bf16 scores
    has_negative = ~banned.all(dim=1)  # (B,)
    weights = torch.softmax(logits[has_negative], dim=1)  # (B', N)
    picked = torch.full((batch,), -1, dtype=torch.long, device=sim.device)
    if has_negative.any():
        picked[has_negative] = torch.multinomial(weights, 1, generator=generator).squeeze(1)
    return picked  # (B,)


def sample_hard_negatives(
    sim_i2t: Tensor,
    sim_t2i: Tensor,
    *,
    generator: torch.Generator | None = None,
    rank: int | None = None,
    exclude: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Draw one hard negative text per image and one hard negative image per text, as in BLIP-2.

    Negatives are sampled from the softmax of the ITC similarity rows (:class:`ItcOutput`'s
    ``sim_i2t`` / ``sim_t2i``) with the positive at column ``rank * B + i`` excluded, so similar but
    wrong pairs are chosen more often. ``exclude`` (B, B * W) bool marks further columns that are
    never drawn: pass :class:`ItcOutput`'s ``same_group`` so that a pair of the same group (an
    identical caption, the same content) is never called a non-match. Returns
    ``(neg_text_index, neg_image_index)``, each (B,), indices into the GATHERED global batch (index
    the gathered text ids / image embeddings with them); -1 where a row has no allowed column.
    ``rank`` defaults to this process's rank.
    """
    if sim_i2t.ndim != 2 or sim_i2t.shape != sim_t2i.shape:
        raise ValueError(
            f"expected two (B, B * W) similarity matrices, got {tuple(sim_i2t.shape)} and "
            f"{tuple(sim_t2i.shape)}"
        )
    batch, global_batch = sim_i2t.shape
    if global_batch < 2:
        raise ValueError(
            f"ITM hard-negative mining needs at least 2 examples in the global batch (got {global_batch}): "
            "there is no negative to sample"
        )
    offset = (distributed.rank() if rank is None else rank) * batch
    if offset + batch > global_batch:
        raise ValueError(
            f"similarities of shape {tuple(sim_i2t.shape)} have no positive block for rank offset {offset}"
        )
    if exclude is not None and exclude.shape != sim_i2t.shape:
        raise ValueError(f"exclude must have the similarities' shape {tuple(sim_i2t.shape)}, got {tuple(exclude.shape)}")
    with torch.no_grad():
        neg_text = _sample_excluding_positive(sim_i2t, offset, exclude, generator)  # (B,)
        neg_image = _sample_excluding_positive(sim_t2i, offset, exclude, generator)  # (B,)
    return neg_text, neg_image


def itm_loss(logits: Tensor, num_positives: int | None = None) -> Tensor:
    """Binary image-text matching cross-entropy over ``[positives; negatives]``.

    ``logits`` (N, 2) are the ITM head's outputs averaged over the query outputs: the first
    ``num_positives`` rows are positive pairs (label 1), the rest negatives (label 0). By default
    the layout is BLIP-2's (3B, 2): B positives, then B pairs (image, hard negative text) and B
    pairs (hard negative image, text). LAVIS orders the two negative blocks the other way round;
    both carry label 0, so the loss is the same. Pass ``num_positives`` when rows without a
    negative were left out (:func:`sample_hard_negatives` returns -1 for them).
    """
    if num_positives is None:
        if logits.ndim != 2 or logits.shape[1] != 2 or logits.shape[0] % 3 != 0 or logits.shape[0] == 0:
            raise ValueError(f"expected ITM logits of shape (3B, 2), got {tuple(logits.shape)}")
        num_positives = logits.shape[0] // 3
    elif logits.ndim != 2 or logits.shape[1] != 2 or not 0 < num_positives <= logits.shape[0]:
        raise ValueError(f"expected ITM logits of shape (N, 2) with 0 < num_positives <= N, got {tuple(logits.shape)} and {num_positives}")
    labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)  # (N,)
    labels[:num_positives] = 1
    return F.cross_entropy(logits, labels)


def itg_loss(
    lm_logits: Tensor,
    input_ids: Tensor,
    attention_mask: Tensor,
    *,
    label_smoothing: float = 0.1,
    pad_token_id: int | None = None,
) -> Tensor:
    """Image-grounded text generation loss: next-token cross-entropy over the text positions.

    ``lm_logits`` (B, T, V) are the Q-Former decoder's logits at the T text positions (the queries
    are context, not predicted); position t predicts token t + 1, so the last position predicts
    nothing. Targets where ``attention_mask`` is 0, or equal to ``pad_token_id`` when it is given
    (LAVIS's rule), are ignored; the mean runs over the remaining tokens of the whole batch.
    The default smoothing of 0.1 matches LAVIS's ``BertLMHeadModel``. The caller replaces the first
    token with the decoder's [DEC] / BOS token, as BLIP-2 does.
    """
    if (
        lm_logits.ndim != 3
        or input_ids.shape != lm_logits.shape[:2]
        or attention_mask.shape != input_ids.shape
    ):
        raise ValueError(
            f"expected lm_logits (B, T, V) with input_ids and attention_mask (B, T), got "
            f"{tuple(lm_logits.shape)}, {tuple(input_ids.shape)} and {tuple(attention_mask.shape)}"
        )
    logits = lm_logits[:, :-1]  # (B, T-1, V)
    labels = input_ids[:, 1:].masked_fill(attention_mask[:, 1:] == 0, IGNORE_INDEX)  # (B, T-1)
    if pad_token_id is not None:
        labels = labels.masked_fill(input_ids[:, 1:] == pad_token_id, IGNORE_INDEX)
    if not (labels != IGNORE_INDEX).any():
        raise ValueError("ITG needs at least one text of two or more unmasked tokens in the batch")
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]),  # (B * (T-1), V)
        labels.reshape(-1),  # (B * (T-1),)
        ignore_index=IGNORE_INDEX,
        label_smoothing=label_smoothing,
    )


def stage1_loss(itc: Tensor, itm: Tensor, itg: Tensor) -> Stage1Losses:
    """Sum the three stage-1 losses with equal weights, as BLIP-2 does."""
    return Stage1Losses(itc=itc, itm=itm, itg=itg, total=itc + itm + itg)
