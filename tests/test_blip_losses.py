"""BLIP's pre-training losses: ITC with momentum distillation and LM with label smoothing against
values worked out by hand, the hard-negative sampler's group rule, and the distilled ITC in two real
processes (gloo) against one process on the concatenated batch, forward and backward."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from numerics import assert_close

from vlmkit.losses import clip_loss, itc_distill_loss, lm_loss, sample_hard_negatives


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def two_way(p: float, own: float, other: float) -> float:
    """Cross-entropy of a two-column row with logits (own, other) and targets (p, 1 - p)."""
    return p * softplus(other - own) + (1 - p) * softplus(own - other)


SIGMA2 = 1 / (1 + math.exp(-2))  # softmax of (2, 0): (0.880797, 0.119203)

# Online image rows x0 = (1, 0), x1 = (0, 1); online text rows y0 = (1, 0), y1 = (0.6, 0.8).
# The momentum encoders give images xm = x and texts ym = (1, 0), (0, 1). Temperature 0.5.
IMAGES = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
TEXTS = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
TEXTS_M = torch.tensor([[1.0, 0.0], [0.0, 1.0]])


def test_distilled_itc_by_hand():
    # Online rows against the momentum columns, / 0.5: i2t = x @ ym.T / 0.5 = [[2, 0], [0, 2]],
    # t2i = y @ xm.T / 0.5 = [[2, 0], [1.2, 1.6]].
    # Momentum against momentum: [[2, 0], [0, 2]] both ways; softmax rows (0.880797, 0.119203) and
    # the mirror. Targets with alpha 0.4: 0.4 * softmax + 0.6 * one-hot:
    #   row 0: (0.952319, 0.047681), row 1: (0.047681, 0.952319), the same for both directions.
    # i2t rows: 0.952319 * softplus(-2) + 0.047681 * softplus(2) = 0.222290 each;
    # t2i row 0 the same, row 1 (logits 1.2, 1.6, own 1.6): 0.047681 * softplus(0.4) + 0.952319 *
    #   softplus(-0.4) = 0.532088.
    # loss = (mean i2t + mean t2i) / 2 = (0.222290 + (0.222290 + 0.532088) / 2) / 2 = 0.299740
    p = 0.4 * SIGMA2 + 0.6
    i2t = two_way(p, 2.0, 0.0)
    t2i = (two_way(p, 2.0, 0.0) + two_way(p, 1.6, 1.2)) / 2
    expected = (i2t + t2i) / 2
    # The hand value is printed to 6 decimals: rel 1e-5 is a few units of its last digit.
    assert expected == pytest.approx(0.299740, rel=1e-5)
    out = itc_distill_loss(IMAGES, TEXTS, IMAGES, TEXTS_M, 0.5, 0.4)
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)  # a few float32 ops: a few ulps
    assert out.sim_i2t.tolist() == [[2.0, 0.0], [0.0, 2.0]] and out.same_group is None
    assert_close(out.sim_t2i, torch.tensor([[2.0, 0.0], [1.2, 1.6]]), what="t2i similarities")


def test_distilled_itc_by_hand_with_one_group():
    # Both pairs in one group: the ground truth is (1/2, 1/2) in every row, so the targets are
    # 0.4 * softmax + 0.3: row 0 (0.652319, 0.347681), row 1 the mirror. Same logits as above:
    # i2t rows 0.652319 * softplus(-2) + 0.347681 * softplus(2) = 0.822290; t2i row 1 = 0.652088.
    g = 0.4 * SIGMA2 + 0.3
    expected = (two_way(g, 2.0, 0.0) + (two_way(g, 2.0, 0.0) + two_way(g, 1.6, 1.2)) / 2) / 2
    assert expected == pytest.approx(0.779740, rel=1e-5)
    out = itc_distill_loss(IMAGES, TEXTS, IMAGES, TEXTS_M, 0.5, 0.4, groups=torch.tensor([7, 7]))
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)
    assert out.same_group is not None and out.same_group.all()
    # Separate groups give the plain loss.
    plain = itc_distill_loss(IMAGES, TEXTS, IMAGES, TEXTS_M, 0.5, 0.4).loss
    assert itc_distill_loss(IMAGES, TEXTS, IMAGES, TEXTS_M, 0.5, 0.4, groups=torch.tensor([1, 2])).loss.item() == pytest.approx(plain.item(), rel=1e-6)


def test_distilled_itc_by_hand_three_pairs_two_groups():
    # D = 4. Momentum texts e0, e1, e2; momentum images all e3: every momentum similarity is 0, so
    # the momentum softmax is (1/3, 1/3, 1/3). Groups (1, 1, 2): the ground truth of rows 0 and 1 is
    # (1/2, 1/2, 0), of row 2 (0, 0, 1). With alpha 0.4 the targets are 0.4/3 + 0.6 * truth:
    #   rows 0, 1: (0.433333, 0.433333, 0.133333), row 2: (0.133333, 0.133333, 0.733333).
    # Online images e0, e1, e2 at temperature 1: i2t row i has logit 1 on column i, 0 elsewhere;
    # -log softmax is L - 1 on the own column and L elsewhere, L = log(e + 2) = 1.551445:
    #   row 0: 0.433333 (L - 1) + 0.566667 L = L - 0.433333 = 1.118111, row 1 the same,
    #   row 2: L - 0.733333 = 0.818111; mean 1.018111.
    # Online texts all e3: every t2i logit is 1, each row costs log 3 = 1.098612 whatever its target.
    # loss = (1.018111 + 1.098612) / 2 = 1.058362
    eye = torch.eye(4)
    images, texts_m = eye[:3], eye[:3]
    images_m, texts = eye[3].expand(3, 4), eye[3].expand(3, 4)
    big_l = math.log(math.e + 2)
    i2t = (2 * (big_l - (0.4 / 3 + 0.3)) + big_l - (0.4 / 3 + 0.6)) / 3
    expected = (i2t + math.log(3)) / 2
    assert expected == pytest.approx(1.058362, rel=1e-5)
    out = itc_distill_loss(images, texts, images_m, texts_m, 1.0, 0.4, groups=torch.tensor([1, 1, 2]))
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)


def test_distilled_itc_limits():
    # alpha = 0 and momentum features equal to the online ones: CLIP's InfoNCE at scale 1 / temperature.
    torch.manual_seed(0)
    images, texts = F.normalize(torch.randn(3, 4), dim=-1), F.normalize(torch.randn(3, 4), dim=-1)
    plain = itc_distill_loss(images, texts, images, texts, 0.1, 0.0).loss
    assert plain.item() == pytest.approx(clip_loss(images, texts, torch.tensor(10.0)).item(), rel=1e-6)
    # alpha = 1: the targets are the momentum softmax alone; with momentum = online the loss is the
    # entropy of each row's softmax, and its gradient through the rows is zero at this point.
    rows = images.clone().requires_grad_(True)
    loss = itc_distill_loss(rows, texts, images, texts, 0.1, 1.0).loss
    (grad,) = torch.autograd.grad(loss, rows)
    assert grad.abs().max() < 1e-5  # ~100 ulps of gradients of size ~1: zero up to rounding
    with pytest.raises(ValueError, match="alpha"):
        itc_distill_loss(images, texts, images, texts, 0.1, 1.5)
    with pytest.raises(ValueError, match="one shape"):
        itc_distill_loss(images, texts[:2], images, texts, 0.1, 0.4)


def test_lm_loss_with_label_smoothing_by_hand():
    # V = 3; one caption [DEC] w1 w2 [PAD] with ids (2, 0, 1, 0) and mask (1, 1, 1, 0). Position t
    # predicts token t + 1: position 0 -> 0, position 1 -> 1, position 2 -> the pad (not a target).
    # Logits (0, 2, 0) at position 1, (2, 0, 0) at position 0: the target gets e^2 / (e^2 + 2)
    # either way, log p = -log(1 + 2 e^-2) = -0.239545, each other token log p - 2.
    # Smoothing 0.1 puts 0.9 + 0.1/3 on the target and 0.1/3 on each other token:
    #   cost = 0.933333 * 0.239545 + 0.066667 * 2.239545 = 0.372878 per target.
    log_p = -math.log(1 + 2 * math.exp(-2))
    smoothed = -(0.9 + 0.1 / 3) * log_p - (0.1 / 3) * 2 * (log_p - 2)
    assert smoothed == pytest.approx(0.372878, rel=1e-5)
    logits = torch.zeros(1, 4, 3)
    logits[0, 0] = torch.tensor([2.0, 0.0, 0.0])
    logits[0, 1] = torch.tensor([0.0, 2.0, 0.0])
    logits[0, 2] = torch.tensor([9.0, -9.0, 5.0])  # predicts the pad: ignored
    ids, mask = torch.tensor([[2, 0, 1, 0]]), torch.tensor([[1, 1, 1, 0]])
    assert lm_loss(logits, ids, mask).item() == pytest.approx(smoothed, rel=1e-6)
    assert lm_loss(logits, ids, mask, label_smoothing=0.0).item() == pytest.approx(-log_p, rel=1e-6)
    # A prompt of 2 tokens ([DEC] w1): only w2 is a target; make position 0 wrong to show it is skipped.
    logits[0, 0] = torch.tensor([-5.0, 5.0, 0.0])
    assert lm_loss(logits, ids, mask, prompt_length=2).item() == pytest.approx(smoothed, rel=1e-6)
    assert lm_loss(logits, ids, mask).item() > smoothed + 1  # without the prompt rule position 0 counts
    with pytest.raises(ValueError):
        lm_loss(logits, ids, mask, prompt_length=3)  # nothing left to predict


def test_hard_negatives_never_come_from_the_same_group():
    torch.manual_seed(0)
    groups = torch.tensor([0, 0, 1, 2, 2, 2, 3])  # 3 has no other member: every other column is allowed
    images, texts = F.normalize(torch.randn(7, 8), dim=-1), F.normalize(torch.randn(7, 8), dim=-1)
    out = itc_distill_loss(images, texts, images, texts, 0.05, 0.4, groups=groups)
    same = groups[:, None] == groups[None, :]
    assert out.same_group is not None and torch.equal(out.same_group, same)
    generator = torch.Generator().manual_seed(0)
    drawn = torch.zeros(7, 7, dtype=torch.long)
    for _ in range(300):
        neg_text, neg_image = sample_hard_negatives(out.sim_i2t, out.sim_t2i, generator=generator, exclude=out.same_group)
        for picks in (neg_text, neg_image):
            assert (picks >= 0).all()
            assert not same[torch.arange(7), picks].any()
            drawn[torch.arange(7), picks] += 1
    assert (drawn[~same] > 0).float().mean() > 0.5  # drawn from many columns, not one
    # A batch that is one group has no negative: -1 everywhere.
    one = itc_distill_loss(images[:3], texts[:3], images[:3], texts[:3], 0.05, 0.4, groups=torch.zeros(3, dtype=torch.long))
    neg_text, neg_image = sample_hard_negatives(one.sim_i2t, one.sim_t2i, generator=generator, exclude=one.same_group)
    assert neg_text.tolist() == [-1, -1, -1] and neg_image.tolist() == [-1, -1, -1]


# -- two processes ---------------------------------------------------------------------------------

WORLD, ROWS, DIM = 2, 3, 4  # each rank holds ROWS of a global batch of WORLD * ROWS
ALPHA = 0.4
# Rows 0 and 4 share a group across the two ranks, 1 and 2 within one.
GROUPS = torch.tensor([0, 1, 1, 2, 0, 3])


def global_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The same inputs in every process: raw images and texts (W*B, D), the online projection and
    the momentum one."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(WORLD * ROWS, DIM, generator=generator)
    texts = torch.randn(WORLD * ROWS, DIM, generator=generator)
    weight = torch.randn(DIM, DIM, generator=generator)
    weight_m = weight + 0.3 * torch.randn(DIM, DIM, generator=generator)
    return images, texts, weight, weight_m


def losses_and_grads(
    images: torch.Tensor, texts: torch.Tensor, weight: torch.Tensor, weight_m: torch.Tensor, groups: torch.Tensor | None
) -> dict[str, torch.Tensor]:
    """One step of a (shared-projection) dual encoder with a momentum projection: the distilled ITC
    loss and the gradients of the inputs, the projection and the temperature."""
    images, texts = images.clone().requires_grad_(True), texts.clone().requires_grad_(True)
    weight = weight.clone().requires_grad_(True)
    temp = torch.tensor(0.2, requires_grad=True)
    image_feats = F.normalize(images @ weight, dim=-1)  # (B, D)
    text_feats = F.normalize(texts @ weight, dim=-1)
    with torch.no_grad():
        image_m = F.normalize(images @ weight_m, dim=-1)
        text_m = F.normalize(texts @ weight_m, dim=-1)
    value = itc_distill_loss(image_feats, text_feats, image_m, text_m, temp, ALPHA, groups=groups).loss
    value.backward()
    return {"loss": value.detach(), "images": images.grad, "texts": texts.grad, "weight": weight.grad, "temp": temp.grad}  # type: ignore[dict-item]


def worker(rank: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist
    from safetensors.torch import save_file

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        images, texts, weight, weight_m = global_batch()
        mine = slice(rank * ROWS, (rank + 1) * ROWS)
        results = {}
        for case in ("plain", "grouped"):
            grads = losses_and_grads(images[mine], texts[mine], weight, weight_m, GROUPS[mine] if case == "grouped" else None)
            for name, value in grads.items():
                results[f"{case}.{name}"] = value.detach().clone().contiguous()
            for name in ("weight", "temp"):  # what DDP does to the shared parameters' gradients: the mean
                averaged = grads[name].detach().clone()
                dist.all_reduce(averaged)
                results[f"{case}.{name}.ddp"] = (averaged / WORLD).contiguous()
        save_file(results, str(Path(out_dir) / f"rank{rank}.safetensors"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, torch.Tensor]]:
    import torch.multiprocessing as mp
    from safetensors.torch import load_file

    root = tmp_path_factory.mktemp("gloo")
    mp.spawn(worker, args=(str(root / "init"), str(root)), nprocs=WORLD, join=True)
    return [load_file(str(root / f"rank{r}.safetensors")) for r in range(WORLD)]


@pytest.mark.parametrize("case", ["plain", "grouped"])
def test_two_processes_equal_one_process_on_the_whole_batch(two_ranks, case):
    images, texts, weight, weight_m = global_batch()
    single = losses_and_grads(images, texts, weight, weight_m, GROUPS if case == "grouped" else None)
    # Two processes sum the same terms in another order: a few ulps of each result's magnitude,
    # so every check is relative to it (numerics.REORDERED, ~80 ulps; a dropped term is O(1)).
    # Each rank's loss is the mean over its own rows: their mean is the global-batch mean.
    assert_close(sum(got[f"{case}.loss"] for got in two_ranks) / WORLD, single["loss"], what="mean of the rank losses")
    assert not torch.allclose(two_ranks[0][f"{case}.loss"], two_ranks[1][f"{case}.loss"])
    for rank, got in enumerate(two_ranks):
        mine = slice(rank * ROWS, (rank + 1) * ROWS)
        # A rank's rows are 1/B of its loss and 1/(W*B) of the global one: W times the gradient,
        # which DDP's averaging divides back out. The momentum columns carry no gradient.
        assert_close(got[f"{case}.images"] / WORLD, single["images"][mine], what="image gradient")
        assert_close(got[f"{case}.texts"] / WORLD, single["texts"][mine], what="text gradient")
        for name in ("weight", "temp"):
            assert_close(got[f"{case}.{name}.ddp"], single[name], what=name)
    assert single["images"].abs().sum() > 0 and single["weight"].abs().sum() > 0
    if case == "grouped":  # the groups change the problem: not the ungrouped loss
        plain = losses_and_grads(images, texts, weight, weight_m, None)
        assert abs(single["loss"].item() - plain["loss"].item()) > 1e-3
