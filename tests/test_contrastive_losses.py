"""CLIP's InfoNCE and SigLIP's sigmoid loss: values worked out by hand, the logit-scale clamp, and the
cross-process gathers in two real processes (gloo) against one process on the concatenated batch."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from numerics import assert_close

from vlmkit.losses import LOGIT_SCALE_MAX, clamp_logit_scale, clip_loss, group_keys, siglip_loss


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


# Image rows x0 = (1, 0), x1 = (0, 1); text rows y0 = (1, 0), y1 = (0.6, 0.8): all unit length.
IMAGES = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
TEXTS = torch.tensor([[1.0, 0.0], [0.6, 0.8]])


def test_clip_loss_by_hand():
    # cosines <xi, yj> = [[1, 0.6], [0, 0.8]]; with scale 2 the logits are [[2, 1.2], [0, 1.6]].
    # image->text rows, target on the diagonal: -log softmax = log(1 + e^(other - own)):
    #   row 0: log(1 + e^(1.2 - 2)) = log(1 + e^-0.8) = 0.371101
    #   row 1: log(1 + e^(0 - 1.6)) = log(1 + e^-1.6) = 0.183901
    # text->image (the columns): column 0 = (2, 0) -> log(1 + e^-2) = 0.126928,
    #   column 1 = (1.2, 1.6) -> log(1 + e^-0.4) = 0.513015
    # loss = (mean of the i2t rows + mean of the t2i rows) / 2 = 1.194945 / 4 = 0.298736
    expected = (softplus(-0.8) + softplus(-1.6) + softplus(-2.0) + softplus(-0.4)) / 4
    assert expected == pytest.approx(0.298736, abs=1e-6)
    for gather in ("full", "local"):  # one process: the two agree
        loss = clip_loss(IMAGES, TEXTS, torch.tensor(2.0), gather=gather)
        assert loss.item() == pytest.approx(expected, rel=1e-6)  # a few float32 ops: a few ulps


def test_siglip_loss_by_hand():
    # logits z = 2 * cosine - 1 = [[1, 0.2], [-1, 0.6]]; labels +1 on the diagonal, -1 elsewhere;
    # each pair costs -log sigmoid(label * z) = log(1 + e^(-label * z)):
    #   (0,0): log(1 + e^-1) = 0.313262    (0,1): log(1 + e^0.2) = 0.798139
    #   (1,0): log(1 + e^-1) = 0.313262    (1,1): log(1 + e^-0.6) = 0.437488
    # summed (1.862151) and divided by the number of images (2): 0.931076
    expected = (2 * softplus(-1.0) + softplus(0.2) + softplus(-0.6)) / 2
    assert expected == pytest.approx(0.931076, abs=1e-6)
    for gather in ("full", "local"):
        loss = siglip_loss(IMAGES, TEXTS, torch.tensor(2.0), torch.tensor(-1.0), gather=gather)
        assert loss.item() == pytest.approx(expected, rel=1e-6)  # a few float32 ops: a few ulps


def test_clip_loss_by_hand_with_one_group():
    # Both pairs in one group: every row's target is (1/2, 1/2), and a two-way row with margin m
    # then costs -(log p + log(1 - p)) / 2 = (softplus(-m) + softplus(m)) / 2. Same logits as above.
    def even(m: float) -> float:
        return (softplus(-m) + softplus(m)) / 2

    expected = (even(0.8) + even(1.6) + even(2.0) + even(0.4)) / 4
    for gather in ("full", "local"):
        loss = clip_loss(IMAGES, TEXTS, torch.tensor(2.0), gather=gather, groups=torch.tensor([7, 7]))
        assert loss.item() == pytest.approx(expected, rel=1e-6)  # a few float32 ops: a few ulps
    # Separate groups give the plain loss.
    plain = clip_loss(IMAGES, TEXTS, torch.tensor(2.0))
    assert clip_loss(IMAGES, TEXTS, torch.tensor(2.0), groups=torch.tensor([1, 2])).item() == pytest.approx(plain.item(), rel=1e-6)


def test_siglip_loss_by_hand_with_one_group():
    # Both pairs in one group: all four pairs are positives, each costing log(1 + e^-z) with
    # z = [[1, 0.2], [-1, 0.6]]; summed and divided by the 2 images.
    expected = (softplus(-1.0) + softplus(-0.2) + softplus(1.0) + softplus(-0.6)) / 2
    for gather in ("full", "local"):
        loss = siglip_loss(IMAGES, TEXTS, torch.tensor(2.0), torch.tensor(-1.0), gather=gather, groups=torch.tensor([[3], [3]]))
        assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_group_keys_match_on_any_key_and_never_on_a_missing_one():
    from vlmkit.losses import same_group

    keys = group_keys(["a red circle", "a red circle", "a blue star", "a star"], ["red circle", "", "", ""])  # (4, 2)
    assert keys.shape == (4, 2) and keys.dtype == torch.long and (keys[1:, 1] == -1).all()
    same = same_group(keys, keys)
    assert same.tolist() == [
        [True, True, False, False],  # 0 and 1 share a caption
        [True, True, False, False],
        [False, False, True, False],
        [False, False, False, True],  # 2 and 3 have no key in common; their missing keys never match
    ]
    assert torch.equal(group_keys(["x"]), group_keys(["x"]))  # stable: ranks compare keys


def test_losses_reject_mismatched_shapes():
    with pytest.raises(ValueError, match="differ in shape"):
        clip_loss(IMAGES, TEXTS[:1], torch.tensor(1.0))
    with pytest.raises(ValueError, match="differ in shape"):
        siglip_loss(IMAGES, TEXTS[:1], torch.tensor(1.0), torch.tensor(0.0))


def test_logit_scale_clamp():
    log_scale = torch.nn.Parameter(torch.tensor(5.0))  # e^5 = 148 > 100
    clamp_logit_scale(log_scale)
    assert log_scale.item() == pytest.approx(math.log(LOGIT_SCALE_MAX)) and LOGIT_SCALE_MAX == 100
    assert log_scale.requires_grad  # clamped in place: still the same trainable parameter
    below = torch.tensor(-0.5)
    clamp_logit_scale(below)
    assert below.item() == 0.0
    inside = torch.tensor(math.log(1 / 0.07))
    clamp_logit_scale(inside)
    assert inside.item() == pytest.approx(math.log(1 / 0.07))


# -- two processes ---------------------------------------------------------------------------------

WORLD, ROWS, DIM = 2, 3, 4  # each rank holds ROWS of a global batch of WORLD * ROWS


def global_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The same inputs in every process: raw image and text inputs (W*B, D) and a shared projection."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(WORLD * ROWS, DIM, generator=generator)
    texts = torch.randn(WORLD * ROWS, DIM, generator=generator)
    weight = torch.randn(DIM, DIM, generator=generator)
    return images, texts, weight


# Group keys of the global batch: rows 0 and 4 share a group across the two ranks, 1 and 2 within one.
GROUPS = torch.tensor([0, 1, 1, 2, 0, 3])


def losses_and_grads(
    images: torch.Tensor, texts: torch.Tensor, weight: torch.Tensor, loss: str, gather: str, groups: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """One (shared-projection) dual-encoder step: the loss and the gradients of inputs, projection,
    scale and bias."""
    images, texts = images.clone().requires_grad_(True), texts.clone().requires_grad_(True)
    weight = weight.clone().requires_grad_(True)
    log_scale = torch.tensor(math.log(10.0), requires_grad=True)
    bias = torch.tensor(-2.0, requires_grad=True)
    image_feats = torch.nn.functional.normalize(images @ weight, dim=-1)  # (B, D)
    text_feats = torch.nn.functional.normalize(texts @ weight, dim=-1)  # (B, D)
    if loss == "clip":
        value = clip_loss(image_feats, text_feats, log_scale.exp(), gather=gather, groups=groups)  # type: ignore[arg-type]
    else:
        value = siglip_loss(image_feats, text_feats, log_scale.exp(), bias, gather=gather, groups=groups)  # type: ignore[arg-type]
    value.backward()
    return {
        "loss": value.detach(), "images": images.grad, "texts": texts.grad, "weight": weight.grad,
        "log_scale": log_scale.grad, "bias": bias.grad if bias.grad is not None else torch.zeros(()),
    }


def worker(rank: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist
    from safetensors.torch import save_file

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        images, texts, weight = global_batch()
        mine = slice(rank * ROWS, (rank + 1) * ROWS)
        results = {}
        for loss in ("clip", "siglip", "clip-grouped", "siglip-grouped"):
            for gather in ("full", "local"):
                groups = GROUPS[mine] if loss.endswith("grouped") else None
                grads = losses_and_grads(images[mine], texts[mine], weight, loss.removesuffix("-grouped"), gather, groups)
                for name, value in grads.items():
                    results[f"{loss}.{gather}.{name}"] = value.detach().clone().contiguous()
                # What DDP does to the shared parameters' gradients: the mean over ranks.
                for name in ("weight", "log_scale", "bias"):
                    averaged = grads[name].detach().clone()
                    dist.all_reduce(averaged)
                    results[f"{loss}.{gather}.{name}.ddp"] = (averaged / WORLD).contiguous()
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


def _single(loss: str, gather: str) -> dict[str, torch.Tensor]:
    images, texts, weight = global_batch()
    groups = GROUPS if loss.endswith("grouped") else None
    return losses_and_grads(images, texts, weight, loss.removesuffix("-grouped"), gather, groups)


@pytest.mark.parametrize("loss", ["clip", "siglip", "clip-grouped", "siglip-grouped"])
def test_full_gather_equals_one_process_on_the_whole_batch(two_ranks, loss):
    single = _single(loss, "full")
    for rank, got in enumerate(two_ranks):
        mine = slice(rank * ROWS, (rank + 1) * ROWS)
        # Two processes sum the same terms in another order: a few ulps of each result's magnitude,
        # so every check is relative to it (numerics.REORDERED, ~80 ulps; a dropped term is O(1)).
        assert_close(got[f"{loss}.full.loss"], single["loss"], what="loss")
        # The gather's backward sums every rank's gradient for this rank's rows: W times the
        # gradient of the global mean, which DDP's averaging divides back out.
        assert_close(got[f"{loss}.full.images"] / WORLD, single["images"][mine], what="image gradient")
        assert_close(got[f"{loss}.full.texts"] / WORLD, single["texts"][mine], what="text gradient")
        for name in ("weight", "log_scale", "bias"):
            assert_close(got[f"{loss}.full.{name}.ddp"], single[name], what=name)
    assert single["images"].abs().sum() > 0 and single["weight"].abs().sum() > 0
    if loss.endswith("grouped"):  # the groups change the problem: not the ungrouped loss
        assert abs(single["loss"].item() - _single(loss.removesuffix("-grouped"), "full")["loss"].item()) > 1e-3


@pytest.mark.parametrize("loss", ["clip", "siglip", "clip-grouped", "siglip-grouped"])
def test_local_losses_average_to_the_full_loss(two_ranks, loss):
    single = _single(loss, "full")
    local = [got[f"{loss}.local.loss"] for got in two_ranks]
    assert_close(sum(local) / WORLD, single["loss"], what="mean of the local losses")
    assert not torch.allclose(local[0], local[1])  # each rank scores only its own rows
