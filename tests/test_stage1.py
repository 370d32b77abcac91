"""The BLIP-2 stage-1 objective end to end on a tiny Q-Former: finite losses, gradients everywhere,
the ITG ablation, and a few optimisation steps that lower the loss."""

from __future__ import annotations

import math

import pytest
import torch

from vlmkit.models.qformer import QFormer, QFormerConfig
from vlmkit.objectives import TEMPERATURE_RANGE, blip2_stage1_losses


def tiny_batch(seed: int = 0, batch: int = 4):
    generator = torch.Generator().manual_seed(seed)
    config = QFormerConfig(
        hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64, vocab_size=50,
        num_query_tokens=4, encoder_hidden_size=24, embed_dim=16, dec_token_id=49,
        hidden_dropout=0.0, attention_dropout=0.0,
    )
    image_embeds = torch.randn(batch, 9, 24, generator=generator)  # (B, P, E)
    input_ids = torch.randint(5, 40, (batch, 6), generator=generator)
    input_ids[:, 0] = 1  # [CLS]
    attention_mask = torch.ones_like(input_ids)
    attention_mask[0, 4:] = 0
    return config, image_embeds, input_ids, attention_mask


def test_losses_are_finite_and_reach_every_trainable_part():
    config, images, ids, mask = tiny_batch()
    torch.manual_seed(0)
    model = QFormer(config)
    losses = blip2_stage1_losses(model, images, ids, mask, generator=torch.Generator().manual_seed(1))
    assert all(torch.isfinite(x) for x in (losses.itc, losses.itm, losses.itg, losses.total))
    torch.testing.assert_close(losses.total, losses.itc + losses.itm + losses.itg)
    losses.total.backward()
    for name in ("query_tokens", "log_temp", "vision_proj.weight", "text_proj.weight", "itm_head.weight"):
        grad = model.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_itg_ablation_and_temperature_clamp():
    config, images, ids, mask = tiny_batch()
    model = QFormer(config)
    with torch.no_grad():
        model.log_temp.fill_(math.log(5.0))
    losses = blip2_stage1_losses(model, images, ids, mask, use_itg=False, generator=torch.Generator().manual_seed(1))
    assert losses.itg.item() == 0.0
    assert model.temp.item() == pytest.approx(TEMPERATURE_RANGE[1], rel=1e-6)  # exp(log(x)) in float32: a few ulps


def test_a_few_steps_lower_the_loss():
    config, images, ids, mask = tiny_batch(batch=6)
    torch.manual_seed(0)
    model = QFormer(config)
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-2)
    totals = []
    for step in range(40):
        losses = blip2_stage1_losses(model, images, ids, mask, generator=torch.Generator().manual_seed(step))
        optimiser.zero_grad()
        losses.total.backward()
        optimiser.step()
        totals.append(losses.total.item())
    assert totals[-1] < 0.6 * totals[0], totals


def test_group_keys_keep_same_group_pairs_out_of_itm():
    """With every pair in one group there is no negative: ITM sees the B positives alone (its loss is
    then the positives' cross-entropy); with two groups each row draws from the other group only."""
    import torch.nn.functional as F

    config, images, ids, mask = tiny_batch()
    torch.manual_seed(0)
    model = QFormer(config).eval()
    seen: list[torch.Tensor] = []
    original = model.itm_logits

    def record(images_: torch.Tensor, ids_: torch.Tensor, mask_: torch.Tensor) -> torch.Tensor:
        seen.append(ids_)
        return original(images_, ids_, mask_)

    model.itm_logits = record  # type: ignore[method-assign]
    one = blip2_stage1_losses(model, images, ids, mask, generator=torch.Generator().manual_seed(1), groups=torch.zeros(4, dtype=torch.long))
    assert seen[-1].shape[0] == 4 and torch.equal(seen[-1], ids)  # positives only
    positives = original(images, ids, mask)  # (4, 2)
    expected = F.cross_entropy(positives, torch.ones(4, dtype=torch.long))
    torch.testing.assert_close(one.itm, expected, rtol=1e-5, atol=0)  # the same forward: float32 reorder at most
    two = blip2_stage1_losses(model, images, ids, mask, generator=torch.Generator().manual_seed(2), groups=torch.tensor([0, 0, 1, 1]))
    negatives = seen[-1][4:8]  # (image, negative text) rows: each text from the other group
    for row, text in enumerate(negatives):
        assert any(torch.equal(text, ids[j]) for j in ((2, 3) if row < 2 else (0, 1)))
    assert torch.isfinite(two.total)
