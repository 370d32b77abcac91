"""BLIP-2 stage-1 losses: values worked out by hand, properties, hard negatives, and a real two-process
gloo run checked against one process on the concatenated batch.

Run as a script, this file is one rank of that two-process run (see ``_itc_rank``).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from numerics import REORDERED, assert_close

from vlmkit import distributed
from vlmkit.losses import itc_loss, itg_loss, itm_loss, sample_hard_negatives, stage1_loss

# Hand-worked values against a handful of float32 operations: a few ulps (eps 1.2e-7) of the value.
REL = 1e-6


def _softplus(x: float) -> float:
    """log(1 + e^x): the cross-entropy of a two-way softmax whose wrong-minus-right margin is x."""
    return math.log(1.0 + math.exp(x))


def _unit(*values: float) -> list[float]:
    norm = math.sqrt(sum(v * v for v in values))
    return [v / norm for v in values]


# A 2x2 ITC case with Q=2 queries per image, D=2, every vector of unit length:
#   text 0 = (1, 0), text 1 = (0, 1)
#   image 0 queries: (1, 0) and (0.6, 0.8) -> cosines with text 0: 1, 0.6 -> max 1
#                                             cosines with text 1: 0, 0.8 -> max 0.8
#   image 1 queries: (0, 1) and (0.6, -0.8) -> cosines with text 0: 0, 0.6 -> max 0.6
#                                              cosines with text 1: 1, -0.8 -> max 1
# so the max-over-queries similarity is S = [[1, 0.8], [0.6, 1]] (rows images, columns texts).
QUERIES_2X2 = torch.tensor([[[1.0, 0.0], [0.6, 0.8]], [[0.0, 1.0], [0.6, -0.8]]])  # (B=2, Q=2, D=2)
TEXTS_2X2 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # (B=2, D=2)
S_2X2 = [[1.0, 0.8], [0.6, 1.0]]


def _two_way_ce(margin: float, eps: float) -> float:
    """Smoothed CE of a 2-class row whose positive logit exceeds the negative by ``margin``:
    -log p_pos = log(1 + e^-margin), -log p_neg = log(1 + e^margin), and smoothing puts eps/2 on each."""
    nll_pos, nll_neg = _softplus(-margin), _softplus(margin)
    return (1 - eps) * nll_pos + eps * (nll_pos + nll_neg) / 2


@pytest.mark.parametrize("temperature", [0.5, 0.07, 1.0])
@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_itc_2x2_by_hand(temperature: float, eps: float) -> None:
    # image->text rows: image 0 margin (1 - 0.8)/t, image 1 margin (1 - 0.6)/t
    # text->image rows: text 0 sees images (S[0][0], S[1][0]) = (1, 0.6) -> margin 0.4/t,
    #                   text 1 sees images (S[0][1], S[1][1]) = (0.8, 1) -> margin 0.2/t
    i2t = (_two_way_ce(0.2 / temperature, eps) + _two_way_ce(0.4 / temperature, eps)) / 2
    t2i = (_two_way_ce(0.4 / temperature, eps) + _two_way_ce(0.2 / temperature, eps)) / 2
    expected = (i2t + t2i) / 2

    out = itc_loss(QUERIES_2X2, TEXTS_2X2, torch.tensor(temperature), label_smoothing=eps)
    assert out.loss.item() == pytest.approx(expected, rel=REL)
    assert_close(out.sim_i2t, torch.tensor(S_2X2) / temperature, rtol=REL)
    assert_close(out.sim_t2i, torch.tensor(S_2X2).T / temperature, rtol=REL)
    assert not out.sim_i2t.requires_grad and not out.sim_t2i.requires_grad


def _soft_ce(row: list[float], target: list[float], eps: float) -> float:
    """Cross-entropy of logits ``row`` against a probability target, smoothed as torch does:
    q' = (1 - eps) q + eps / C, loss = sum_k q'_k (logsumexp(row) - row_k)."""
    lse = math.log(sum(math.exp(v) for v in row))
    return sum(((1 - eps) * q + eps / len(row)) * (lse - v) for q, v in zip(target, row, strict=True))


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_itc_3x3_by_hand_with_groups(eps: float) -> None:
    # One query per image, texts e0, e1, e2; image queries e0, e1 and (0.6, 0, 0.8), so the
    # similarity is S = [[1, 0, 0], [0, 1, 0], [0.6, 0, 0.8]] (rows images). Pairs 0 and 1 are one
    # group (an identical caption, say): their targets are (1/2, 1/2, 0) on both sides, pair 2's is
    # one-hot. Temperature 0.5 doubles every logit.
    t = 0.5
    queries = torch.tensor([[[1.0, 0.0, 0.0]], [[0.0, 1.0, 0.0]], [[0.6, 0.0, 0.8]]])  # (B=3, Q=1, D=3)
    texts = torch.eye(3)  # (B=3, D=3)
    S = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.6, 0.0, 0.8]]
    targets = [[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]]
    i2t = sum(_soft_ce([v / t for v in S[i]], targets[i], eps) for i in range(3)) / 3
    t2i = sum(_soft_ce([S[i][j] / t for i in range(3)], targets[j], eps) for j in range(3)) / 3
    out = itc_loss(queries, texts, torch.tensor(t), label_smoothing=eps, groups=torch.tensor([5, 5, 9]))
    assert out.loss.item() == pytest.approx((i2t + t2i) / 2, rel=REL)
    assert out.same_group is not None and out.same_group.tolist() == [[True, True, False], [True, True, False], [False, False, True]]
    # Without groups the same inputs give the one-hot loss, and keys that differ change nothing.
    plain = itc_loss(queries, texts, torch.tensor(t), label_smoothing=eps)
    assert plain.same_group is None and plain.loss.item() == pytest.approx(
        (sum(_soft_ce([v / t for v in S[i]], [float(k == i) for k in range(3)], eps) for i in range(3))
         + sum(_soft_ce([S[i][j] / t for i in range(3)], [float(k == j) for k in range(3)], eps) for j in range(3))) / 6,
        rel=REL,
    )
    assert itc_loss(queries, texts, t, label_smoothing=eps, groups=torch.tensor([1, 2, 3])).loss.item() == pytest.approx(plain.loss.item(), rel=REL)


def test_itc_label_smoothing_raises_a_confident_loss() -> None:
    # Margins 0.2/0.07 and 0.4/0.07 are large: the model is confidently right, smoothing penalises it.
    plain = itc_loss(QUERIES_2X2, TEXTS_2X2, 0.07, label_smoothing=0.0).loss
    smooth = itc_loss(QUERIES_2X2, TEXTS_2X2, 0.07, label_smoothing=0.1).loss
    assert smooth > plain + 0.1


def _random_feats(batch: int, queries: int, dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    query = F.normalize(torch.randn(batch, queries, dim, generator=g), dim=-1)  # (B, Q, D)
    text = F.normalize(torch.randn(batch, dim, generator=g), dim=-1)  # (B, D)
    return query, text


def test_itc_similarity_is_the_max_over_queries() -> None:
    query, text = _random_feats(3, 4, 5, seed=1)
    out = itc_loss(query, text, 1.0)
    for i in range(3):
        for j in range(3):
            best = max(float(query[i, q] @ text[j]) for q in range(4))
            assert out.sim_i2t[i, j].item() == pytest.approx(best, rel=REL, abs=REL)
            assert out.sim_t2i[j, i].item() == pytest.approx(best, rel=REL, abs=REL)

    # Order of queries is irrelevant.
    permuted = itc_loss(query[:, torch.randperm(4)], text, 1.0)
    assert_close(permuted.loss, out.loss, rtol=REORDERED)  # the max is exact; the sums reorder


def test_itc_ignores_a_query_that_never_wins() -> None:
    # All entries non-negative, so every cosine is >= 0; the extra query -mean(texts) has cosine <= 0
    # with every text, never beats the max, and leaves the loss unchanged. Raising one query to match
    # a text exactly changes the loss.
    query, text = _random_feats(3, 2, 4, seed=3)
    query, text = F.normalize(query.abs(), dim=-1), F.normalize(text.abs(), dim=-1)
    base = itc_loss(query, text, 0.1).loss
    weak = F.normalize(-text.mean(0), dim=-1).expand(3, 1, 4)  # (B, 1, D)
    assert_close(itc_loss(torch.cat([query, weak], dim=1), text, 0.1).loss, base, rtol=REORDERED)
    strong = text.unsqueeze(1)  # (B, 1, D): a query equal to its own text, cosine 1
    assert not torch.allclose(itc_loss(torch.cat([query, strong], dim=1), text, 0.1).loss, base, atol=1e-3)


def test_itc_temperature_scales_logits_and_receives_gradient() -> None:
    query, text = _random_feats(4, 3, 6, seed=2)
    base = itc_loss(query, text, 1.0)
    temperature = torch.tensor(0.07, requires_grad=True)
    hot = itc_loss(query, text, temperature)
    assert_close(hot.sim_i2t * 0.07, base.sim_i2t, rtol=REL)  # one division and one multiplication
    assert_close(hot.sim_t2i * 0.07, base.sim_t2i, rtol=REL)
    hot.loss.backward()
    assert temperature.grad is not None and torch.isfinite(temperature.grad)


def test_itc_rejects_mismatched_shapes() -> None:
    query, text = _random_feats(2, 3, 4, seed=0)
    with pytest.raises(ValueError, match="Q, D"):
        itc_loss(query[:, 0], text, 1.0)
    with pytest.raises(ValueError, match="disagree"):
        itc_loss(query, text[:1], 1.0)


def test_itm_3x2_by_hand() -> None:
    # B = 1: rows are [positive pair; (image, negative text); (negative image, text)], labels [1, 0, 0].
    logits = torch.tensor([[0.0, 1.0], [2.0, 0.0], [0.0, 0.0]])  # (3B, 2)
    # row 0, label 1: -log(e^1 / (e^0 + e^1)) = log(1 + e^-1)
    # row 1, label 0: -log(e^2 / (e^2 + e^0)) = log(1 + e^-2)
    # row 2, label 0: -log(1/2) = log 2
    expected = (_softplus(-1.0) + _softplus(-2.0) + math.log(2.0)) / 3
    assert itm_loss(logits).item() == pytest.approx(expected, rel=REL)


def test_itm_labels_positive_block_first() -> None:
    # B = 2: a head that says "match" on exactly the first B rows and "no match" elsewhere is near 0.
    good = torch.tensor([[-20.0, 20.0]] * 2 + [[20.0, -20.0]] * 4)
    assert itm_loss(good).item() < 1e-8
    assert itm_loss(good.flip(0)).item() > 10
    with pytest.raises(ValueError, match="3B, 2"):
        itm_loss(torch.zeros(4, 2))


# ITG with B=2, T=3, V=3, pad id 0. Position t predicts token t + 1; the last position predicts nothing.
#   text 0: ids [1, 2, 1], mask [1, 1, 1] -> targets 2 (position 0) and 1 (position 1)
#   text 1: ids [2, 1, 0], mask [1, 1, 0] -> target 1 (position 0); position 1's target is padding
# Logits are chosen as logs so the softmax is exact:
#   text 0, position 0: log [1, 1, 2] -> p = [1/4, 1/4, 1/2]; target 2: -log p = log 2
#   text 0, position 1: log [1, 2, 1] -> p = [1/4, 1/2, 1/4]; target 1: -log p = log 2
#   text 1, position 0: [0, 0, 0]     -> p = 1/3 each;       target 1: -log p = log 3
# Smoothing eps spreads eps/V over every class: the smoothing term is mean_k(-log p_k):
#   (log 4 + log 4 + log 2) / 3 = 5/3 log 2 for both text-0 tokens, log 3 for the text-1 token.
# Large garbage logits sit where no target is read, to show they are ignored.
ITG_IDS = torch.tensor([[1, 2, 1], [2, 1, 0]])
ITG_MASK = torch.tensor([[1, 1, 1], [1, 1, 0]])
ITG_LOGITS = torch.tensor(
    [
        [[0.0, 0.0, math.log(2.0)], [0.0, math.log(2.0), 0.0], [100.0, -100.0, 7.0]],
        [[0.0, 0.0, 0.0], [50.0, -50.0, 0.0], [-30.0, 30.0, 1.0]],
    ]
)  # (B=2, T=3, V=3)


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_itg_by_hand(eps: float) -> None:
    log2, log3 = math.log(2.0), math.log(3.0)
    text0 = (1 - eps) * log2 + eps * (5 / 3) * log2
    text1 = (1 - eps) * log3 + eps * log3
    expected = (2 * text0 + text1) / 3  # mean over the three target tokens of the batch
    got = itg_loss(ITG_LOGITS, ITG_IDS, ITG_MASK, label_smoothing=eps, pad_token_id=0)
    assert got.item() == pytest.approx(expected, rel=REL)
    # The attention mask alone, or the pad id alone, each drop the padded target.
    by_mask = itg_loss(ITG_LOGITS, ITG_IDS, ITG_MASK, label_smoothing=eps)
    by_pad = itg_loss(ITG_LOGITS, ITG_IDS, torch.ones_like(ITG_MASK), label_smoothing=eps, pad_token_id=0)
    assert by_mask.item() == pytest.approx(expected, rel=REL)
    assert by_pad.item() == pytest.approx(expected, rel=REL)


def test_itg_default_smoothing_is_lavis_01() -> None:
    default = itg_loss(ITG_LOGITS, ITG_IDS, ITG_MASK)
    explicit = itg_loss(ITG_LOGITS, ITG_IDS, ITG_MASK, label_smoothing=0.1)
    plain = itg_loss(ITG_LOGITS, ITG_IDS, ITG_MASK, label_smoothing=0.0)
    assert default.item() == explicit.item() != plain.item()


def test_itg_without_any_target_is_an_error() -> None:
    with pytest.raises(ValueError, match="at least one text"):
        itg_loss(ITG_LOGITS, ITG_IDS, torch.tensor([[1, 0, 0], [1, 0, 0]]))


def test_stage1_sums_the_three_losses() -> None:
    losses = stage1_loss(torch.tensor(1.5), torch.tensor(0.25), torch.tensor(2.0))
    assert losses.total.item() == pytest.approx(3.75)


def test_hard_negatives_follow_a_near_one_hot_softmax_and_skip_the_positive() -> None:
    # The positive (diagonal) scores highest by far; each row has one obvious wrong pick.
    g = torch.Generator().manual_seed(0)
    obvious = torch.tensor([2, 3, 0, 1])
    sim = torch.randn(4, 4, generator=g)
    sim[torch.arange(4), torch.arange(4)] = 100.0
    sim[torch.arange(4), obvious] = 40.0
    for _ in range(100):
        neg_text, neg_image = sample_hard_negatives(sim, sim, generator=g)
        assert torch.equal(neg_text, obvious) and torch.equal(neg_image, obvious)


def test_hard_negatives_never_return_the_positive_at_the_rank_offset() -> None:
    # Rank 2 of 3 with B = 2: its positives sit at global columns 4 and 5.
    g = torch.Generator().manual_seed(1)
    sim = torch.zeros(2, 6)
    sim[0, 4] = sim[1, 5] = 5.0
    seen = torch.zeros(2, 6)
    for _ in range(300):
        neg_text, neg_image = sample_hard_negatives(sim, sim, generator=g, rank=2)
        seen[torch.arange(2), neg_text] += 1
        seen[torch.arange(2), neg_image] += 1
    assert seen[0, 4] == 0 and seen[1, 5] == 0
    assert (seen[0, [0, 1, 2, 3, 5]] > 0).all() and (seen[1, :5] > 0).all()


def test_hard_negatives_match_the_softmax_weights() -> None:
    # Row 0 (positive at column 0): negatives 1 and 2 with logits 0 and log 3 -> weights 1/4, 3/4.
    # Row 1 (positive at column 1): negatives 0 and 2 with equal logits -> 1/2 each.
    # Row 2 (positive at column 2): negatives 0 and 1 with logits log 4 and 0 -> 4/5, 1/5.
    sim = torch.tensor([[9.0, 0.0, math.log(3.0)], [1.0, 9.0, 1.0], [math.log(4.0), 0.0, 9.0]])
    g = torch.Generator().manual_seed(1234)
    draws = 2000
    counts = torch.zeros(3, 3)
    for _ in range(draws):
        neg_text, _ = sample_hard_negatives(sim, sim.bfloat16(), generator=g)
        counts[torch.arange(3), neg_text] += 1
    freq = counts / draws
    expected = torch.tensor([[0.0, 0.25, 0.75], [0.5, 0.0, 0.5], [0.8, 0.2, 0.0]])
    # Binomial standard error is at most sqrt(0.25 / 2000) ~ 0.011; allow 4 of them.
    assert torch.allclose(freq, expected, atol=0.045), freq


def test_hard_negatives_never_draw_a_pair_of_the_same_group() -> None:
    # Row 0's most similar wrong column (1) is of its own group: excluded, so column 2 is drawn every
    # time. Row 1's only other columns are both of its group: it has no negative (-1).
    sim = torch.tensor([[9.0, 8.0, 0.0], [8.0, 9.0, 8.0], [0.0, 0.0, 9.0]])
    exclude = torch.tensor([[True, True, False], [True, True, True], [False, False, True]])
    g = torch.Generator().manual_seed(3)
    for _ in range(50):
        neg_text, neg_image = sample_hard_negatives(sim, sim, generator=g, exclude=exclude)
        assert neg_text.tolist()[:2] == [2, -1] and neg_image.tolist()[:2] == [2, -1]
        assert neg_text[2].item() in (0, 1)
    with pytest.raises(ValueError, match="exclude must have"):
        sample_hard_negatives(sim, sim, exclude=exclude[:2])


def test_itm_with_rows_left_out() -> None:
    # 2 positives and 1 negative (the other rows had no negative): labels [1, 1, 0].
    logits = torch.tensor([[0.0, 1.0], [0.0, 0.0], [2.0, 0.0]])
    expected = (_softplus(-1.0) + math.log(2.0) + _softplus(-2.0)) / 3
    assert itm_loss(logits, num_positives=2).item() == pytest.approx(expected, rel=REL)
    with pytest.raises(ValueError, match="num_positives"):
        itm_loss(logits, num_positives=4)


def test_hard_negatives_need_two_examples_in_the_global_batch() -> None:
    with pytest.raises(ValueError, match="at least 2 examples in the global batch"):
        sample_hard_negatives(torch.zeros(1, 1), torch.zeros(1, 1))
    with pytest.raises(ValueError, match="no finite negative"):
        sample_hard_negatives(torch.tensor([[0.0, float("nan")], [0.0, 0.0]]), torch.zeros(2, 2))


def test_gathers_are_identities_in_one_process() -> None:
    x = torch.randn(3, 2, requires_grad=True)
    assert distributed.world_size() == 1 and distributed.rank() == 0
    assert distributed.gather_with_grad(x) is x
    gathered = distributed.gather_no_grad(x)
    assert torch.equal(gathered, x) and not gathered.requires_grad


# ---------------------------------------------------------------------------------------------------
# Two real processes on gloo against one process on the concatenated batch.
#
# Gradient convention: rank r computes the mean loss L_r over its own B rows (against all 2B columns)
# and calls backward. The gather's backward sums over ranks, so rank r's local feature gradient is
#     g_r = sum_s dL_s / dx_r.
# The single-process loss on the concatenated batch is L = (L_0 + L_1) / 2 (equal-sized means), so
#     g_r = W * dL / dx_r   (W = 2),
# which is what is compared: g_r / W against the single-process gradient of rank r's rows. DDP's
# averaging of parameter gradients over ranks divides the W back out. The temperature is replicated,
# so the DDP-averaged temperature gradient (mean over ranks of each rank's) must equal dL / dtemp.

WORLD = 2
GLOBAL_BATCH, QUERIES, DIM = 6, 4, 8
TEMPERATURE = 0.07
SMOOTHING = 0.1
RANK_TIMEOUT_S = 30  # the process-group timeout; the parent gives up 10 s later


# Group keys of the global batch (two keys a row): rows 0 and 4 share key 0 across the ranks, rows 1
# and 2 share key 1 within rank 0; row 3 has only a missing second key, row 5 is alone.
GROUPS = torch.tensor([[10, -1], [11, 20], [12, 20], [13, -1], [10, -1], [15, -1]])


def _itc_case(query: torch.Tensor, text: torch.Tensor, groups: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """itc_loss and backward on leaf copies; LAVIS-style variant for contrast (no grad through columns)."""
    query = query.clone().requires_grad_(True)
    text = text.clone().requires_grad_(True)
    temperature = torch.tensor(TEMPERATURE, requires_grad=True)
    out = itc_loss(query, text, temperature, label_smoothing=SMOOTHING, groups=groups)
    out.loss.backward()
    assert query.grad is not None and text.grad is not None and temperature.grad is not None
    return {
        "loss": out.loss.detach(),
        "sim_i2t": out.sim_i2t,
        "sim_t2i": out.sim_t2i,
        "query_grad": query.grad,
        "text_grad": text.grad,
        "temperature_grad": temperature.grad,
        **({"same_group": out.same_group} if out.same_group is not None else {}),
    }


def _lavis_style_query_grad(query: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """The gradient LAVIS gets: the other side gathered without grad, so only this rank's rows count."""
    query = query.clone().requires_grad_(True)
    text_all = distributed.gather_no_grad(text)  # (B * W, D)
    query_all = distributed.gather_no_grad(query)  # (B * W, Q, D)
    b = query.shape[0]
    targets = torch.arange(b) + distributed.rank() * b
    sim_i2t = torch.einsum("bqd,nd->bnq", query, text_all).amax(-1) / TEMPERATURE
    sim_t2i = torch.einsum("bd,nqd->bnq", text, query_all).amax(-1) / TEMPERATURE
    loss = (
        F.cross_entropy(sim_i2t, targets, label_smoothing=SMOOTHING)
        + F.cross_entropy(sim_t2i, targets, label_smoothing=SMOOTHING)
    ) / 2
    loss.backward()
    assert query.grad is not None
    return query.grad


def _itc_rank(rank: int, init_file: str, out_file: str) -> None:
    """One rank of the two-process run: its half of the fixed batch through itc_loss, results saved."""
    import datetime

    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=WORLD,
        timeout=datetime.timedelta(seconds=RANK_TIMEOUT_S),
    )
    try:
        query, text = _random_feats(GLOBAL_BATCH, QUERIES, DIM, seed=7)
        b = GLOBAL_BATCH // WORLD
        local = slice(rank * b, (rank + 1) * b)
        result = _itc_case(query[local], text[local])
        result["lavis_query_grad"] = _lavis_style_query_grad(query[local], text[local])
        result["gathered_text"] = distributed.gather_no_grad(text[local])
        neg_text, neg_image = sample_hard_negatives(
            result["sim_i2t"], result["sim_t2i"], generator=torch.Generator().manual_seed(rank)
        )
        result["neg_text"], result["neg_image"] = neg_text, neg_image
        result["world_rank"] = torch.tensor([distributed.world_size(), distributed.rank()])
        grouped = _itc_case(query[local], text[local], GROUPS[local])
        negatives = [
            sample_hard_negatives(grouped["sim_i2t"], grouped["sim_t2i"], generator=torch.Generator().manual_seed(rank + 10 * k), exclude=grouped["same_group"])
            for k in range(20)
        ]
        grouped["neg_text"] = torch.stack([n[0] for n in negatives])  # (20, B)
        grouped["neg_image"] = torch.stack([n[1] for n in negatives])
        result.update({f"grouped_{k}": v for k, v in grouped.items()})
        dist.barrier()
        torch.save(result, out_file)
    finally:
        dist.destroy_process_group()


def test_itc_two_gloo_processes_match_one_process(tmp_path: Path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if sys.platform.startswith("linux"):
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")  # loopback only: no dependence on the host's name
    init_file = tmp_path / "pg_init"
    outs = [tmp_path / f"rank{r}.pt" for r in range(WORLD)]
    logs = [tmp_path / f"rank{r}.log" for r in range(WORLD)]
    procs = []
    try:
        for r in range(WORLD):
            with logs[r].open("w") as log:
                procs.append(
                    subprocess.Popen(
                        [sys.executable, __file__, str(r), str(init_file), str(outs[r])],
                        env=env,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                )
        # Poll rather than wait on one rank: if a rank dies, its peer would block in a collective.
        deadline = time.monotonic() + RANK_TIMEOUT_S + 10
        while time.monotonic() < deadline:
            codes = [proc.poll() for proc in procs]
            if all(code == 0 for code in codes) or any(code not in (None, 0) for code in codes):
                break
            time.sleep(0.05)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    report = "\n".join(
        f"--- rank {r} (exit {proc.returncode}) ---\n{logs[r].read_text()}" for r, proc in enumerate(procs)
    )
    assert all(proc.returncode == 0 for proc in procs), report

    ranks = [torch.load(out) for out in outs]
    query, text = _random_feats(GLOBAL_BATCH, QUERIES, DIM, seed=7)
    single = _itc_case(query, text)
    b = GLOBAL_BATCH // WORLD

    # Two processes sum the same terms in another order than one: a few float32 ulps of each
    # result's magnitude (the temperature gradient is ~45, where one ulp is ~4e-6), so every check
    # is relative to the magnitude (numerics.REORDERED, ~80 ulps; a wrong gradient is off by O(1)).
    mean_loss = torch.stack([r["loss"] for r in ranks]).mean()
    assert_close(mean_loss, single["loss"], what="loss")
    mean_temperature_grad = torch.stack([r["temperature_grad"] for r in ranks]).mean()
    assert_close(mean_temperature_grad, single["temperature_grad"], what="temperature gradient")
    for r, res in enumerate(ranks):
        rows = slice(r * b, (r + 1) * b)
        assert res["world_rank"].tolist() == [WORLD, r]
        assert torch.equal(res["gathered_text"], text)
        assert_close(res["sim_i2t"], single["sim_i2t"][rows], what="sim_i2t")
        assert_close(res["sim_t2i"], single["sim_t2i"][rows], what="sim_t2i")
        assert_close(res["query_grad"] / WORLD, single["query_grad"][rows], what="query gradient")
        assert_close(res["text_grad"] / WORLD, single["text_grad"][rows], what="text gradient")
        # Gathering the other side without grad (LAVIS) loses the column terms: not the same gradient.
        assert (res["lavis_query_grad"] / WORLD - single["query_grad"][rows]).abs().max() > 1e-3
        positives = torch.arange(b) + r * b
        assert not (res["neg_text"] == positives).any() and not (res["neg_image"] == positives).any()
        assert ((res["neg_text"] >= 0) & (res["neg_text"] < GLOBAL_BATCH)).all()

    # With group keys: the same equalities, and no same-group pair (across ranks too) is a negative.
    grouped = _itc_case(query, text, GROUPS)
    assert_close(torch.stack([r["grouped_loss"] for r in ranks]).mean(), grouped["loss"], what="grouped loss")
    assert abs(grouped["loss"].item() - single["loss"].item()) > 1e-3  # the groups do change the loss
    grads = torch.stack([r["grouped_temperature_grad"] for r in ranks]).mean()
    assert_close(grads, grouped["temperature_grad"], what="grouped temperature gradient")
    for r, res in enumerate(ranks):
        rows = slice(r * b, (r + 1) * b)
        assert torch.equal(res["grouped_same_group"], grouped["same_group"][rows])
        assert_close(res["grouped_query_grad"] / WORLD, grouped["query_grad"][rows], what="grouped query gradient")
        assert_close(res["grouped_text_grad"] / WORLD, grouped["text_grad"][rows], what="grouped text gradient")
        for negatives in (res["grouped_neg_text"], res["grouped_neg_image"]):  # (20, B) global columns
            for i in range(b):
                row = r * b + i
                allowed = {j for j in range(GLOBAL_BATCH) if not grouped["same_group"][row, j]}
                assert set(negatives[:, i].tolist()) <= allowed, (row, negatives[:, i].tolist())
    assert grouped["same_group"][0, 4] and grouped["same_group"][4, 0] and grouped["same_group"][1, 2]
    assert not grouped["same_group"][3, 5]  # missing keys never match


if __name__ == "__main__":
    _itc_rank(int(sys.argv[1]), sys.argv[2], sys.argv[3])
