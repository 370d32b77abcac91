"""CoCa: the loss against hand-worked values, the model's structure (poolers, the image-free unimodal
text embedding, causal captioning, exact beam search), checkpoints through ``vlmkit.load``, batch
invariance, and ``vlmkit train coca`` on the tiny preset (CLI, exact resume, checked overrides)."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch
from numerics import DEEP, assert_close

from vlmkit import GenerationOptions
from vlmkit.errors import InputError
from vlmkit.losses.coca import coca_loss
from vlmkit.models.coca import AttentionalPooler, CoCa, CoCaConfig, caption_labels, tokenize

TEXTS = ["a red circle", "two shapes: a large blue square and a small green star", "a green star", "a blue triangle"]


def tiny_config(**changes) -> CoCaConfig:
    fields = dict(vocab_size=40, pad_token_id=0, bos_token_id=5, eos_token_id=3, image_feature_size=12, image_tokens=6,
                  hidden_size=16, num_heads=2, caption_queries=3, embed_dim=8, max_text_length=12)
    return CoCaConfig(**{**fields, **changes})


def tiny_model(**changes) -> CoCa:
    torch.manual_seed(0)
    model = CoCa(tiny_config(**changes)).eval()
    with torch.no_grad():  # a random model's weights of the size a trained one has: distinct tokens, distinct rows
        for parameter in model.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    return model


# -- the loss ---------------------------------------------------------------------------------------


def test_coca_loss_by_hand():
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    text = torch.tensor([[0.6, 0.8], [0.0, 1.0]])
    # Scale 2: image->text logits [[1.2, 0], [1.6, 2]]; text->image is the transpose.
    i2t = ((-1.2 + math.log(math.exp(1.2) + 1)) + (-2 + math.log(math.exp(1.6) + math.exp(2)))) / 2
    t2i = ((-1.2 + math.log(math.exp(1.2) + math.exp(1.6))) + (-2 + math.log(1 + math.exp(2)))) / 2
    # Vocabulary of 2: position 0 uniform (log 2), position 1 gives label 1 a probability 1/4 (log 4),
    # position 2 is ignored, and so is the second caption's only position.
    logits = torch.tensor([[[0.0, 0.0], [math.log(3), 0.0], [5.0, -5.0]], [[9.0, 0.0], [0.0, 0.0], [0.0, 0.0]]])
    labels = torch.tensor([[0, 1, -100], [-100, -100, -100]])
    losses = coca_loss(image, text, torch.tensor(2.0), logits, labels, caption_weight=2.0)
    # float32 against exact arithmetic: a few ulps of the largest value summed, the total (~2.5, ulp
    # 2.4e-7); the contrastive part is a difference of log-sum-exps of that size. 1e-6 of the total
    # is ~10 ulps; a wrong term (scale, direction, an ignored position) moves a loss by > 1e-2.
    tol = 1e-6 * ((i2t + t2i) / 2 + 3 * math.log(2))
    assert losses.contrastive.item() == pytest.approx((i2t + t2i) / 2, abs=tol)
    assert losses.caption.item() == pytest.approx(1.5 * math.log(2), abs=tol)
    assert losses.total.item() == pytest.approx((i2t + t2i) / 2 + 3 * math.log(2), abs=tol)


def test_coca_loss_parts():
    image = torch.nn.functional.normalize(torch.randn(3, 4), dim=-1)
    text = torch.nn.functional.normalize(torch.randn(3, 4), dim=-1)
    logits, labels = torch.randn(3, 5, 7), torch.randint(0, 7, (3, 5))
    only_contrastive = coca_loss(image, text, torch.tensor(10.0), logits, labels, caption_weight=0.0)
    assert only_contrastive.total.item() == pytest.approx(only_contrastive.contrastive.item())
    weighted = coca_loss(image, text, torch.tensor(10.0), logits, labels, caption_weight=0.5)
    assert weighted.total.item() == pytest.approx(weighted.contrastive.item() + 0.5 * weighted.caption.item(), rel=1e-6)
    assert weighted.caption.item() == pytest.approx(torch.nn.functional.cross_entropy(logits.reshape(15, 7), labels.reshape(15)).item())
    with pytest.raises(ValueError, match="do not line up"):
        coca_loss(image, text, torch.tensor(1.0), logits, labels[:, :4])


def test_caption_labels_shift_and_ignore_padding():
    ids = torch.tensor([[5, 10, 11, 3], [5, 12, 3, 0]])
    mask = (ids != 0).long()
    assert caption_labels(ids, mask).tolist() == [[10, 11, 3, -100], [12, 3, -100, -100]]


# -- the model --------------------------------------------------------------------------------------


def test_attentional_pooler_shapes():
    pooler = AttentionalPooler(16, 2, 5)
    assert pooler(torch.randn(3, 7, 16)).shape == (3, 5, 16)
    model = tiny_model()
    tokens = model.image_tokens(torch.randn(2, 6, 12))
    assert tokens.shape == (2, 6, 16)
    assert model.contrastive_pooler(tokens).shape == (2, 1, 16)
    assert model.caption_pooler(tokens).shape == (2, 3, 16)
    assert model.image_embedding(tokens).shape == (2, 8)
    with pytest.raises(InputError, match="expects"):
        model.image_tokens(torch.randn(2, 5, 12))


def test_text_embedding_does_not_see_the_image():
    model = tiny_model()
    ids = torch.tensor([[5, 10, 11, 12, 3]])
    mask = torch.ones_like(ids)
    first, second = model(torch.randn(1, 6, 12), ids, mask), model(torch.randn(1, 6, 12), ids, mask)
    assert torch.equal(first.text_emb, second.text_emb)
    assert not torch.allclose(first.image_emb, second.image_emb)
    assert not torch.allclose(first.caption_logits, second.caption_logits)  # the multimodal half does see it
    assert torch.allclose(first.text_emb.norm(dim=-1), torch.ones(1)) and torch.allclose(first.image_emb.norm(dim=-1), torch.ones(1))


def test_captioning_is_causal():
    model = tiny_model()
    features = torch.randn(1, 6, 12)
    a = torch.tensor([[5, 10, 11, 12, 13, 3]])
    b = torch.tensor([[5, 10, 11, 20, 21, 22]])  # the same up to position 2
    out_a, out_b = model(features, a, torch.ones_like(a)), model(features, b, torch.ones_like(b))
    assert torch.allclose(out_a.caption_logits[:, :3], out_b.caption_logits[:, :3], atol=1e-6)
    assert not torch.allclose(out_a.caption_logits[:, 3:], out_b.caption_logits[:, 3:])
    assert not torch.allclose(out_a.text_emb, out_b.text_emb)  # [CLS] reads the whole text


def test_padding_does_not_change_a_text():
    model = tiny_model()
    features = torch.randn(1, 6, 12)
    ids = torch.tensor([[5, 10, 11, 3]])
    padded = torch.tensor([[5, 10, 11, 3, 0, 0]])
    short, long = model(features, ids, torch.ones_like(ids)), model(features, padded, (padded != 0).long())
    # Another sequence length: every matmul has another shape, so the whole pass may round differently.
    assert_close(short.text_emb, long.text_emb, rtol=DEEP, what="text_emb")
    assert_close(short.caption_logits, long.caption_logits[:, :4], rtol=DEEP, what="caption_logits")


def scripted_logprobs(ids: torch.Tensor, context: torch.Tensor, banned: list[int]) -> torch.Tensor:
    """A made-up next-token distribution of (image, prefix): a random table, the same on every call."""
    rows = []
    for prefix, image in zip(ids.tolist(), context[:, 0, 0].tolist(), strict=True):
        generator = torch.Generator().manual_seed(hash((round(image, 4), *prefix)) % 2**31)
        logits = 2.0 * torch.randn(6, generator=generator)
        logits[banned] = float("-inf")
        rows.append(logits.log_softmax(-1))
    return torch.stack(rows)  # (B, V)


@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
def test_beam_search_finds_the_best_caption(monkeypatch, length_penalty):
    """With as many beams as there are live prefixes, beam search is exhaustive: its caption is the one
    of highest score (total log-probability / length ** length_penalty, [EOS] counted) among every
    caption of up to 3 tokens, under a scripted next-token distribution where greedy decoding is not."""
    model = tiny_model(vocab_size=6, pad_token_id=0, bos_token_id=1, eos_token_id=2, max_text_length=4)
    monkeypatch.setattr(model, "_next_logprobs", scripted_logprobs)
    features = torch.randn(8, 6, 12)
    context = model.caption_pooler(model.image_tokens(features)).detach()  # what the search conditions on
    best = model.generate(features, max_new_tokens=3, num_beams=9, length_penalty=length_penalty)
    greedy = model.generate(features, max_new_tokens=3)
    words = [3, 4, 5]
    captions = [[*w, 2] for n in range(3) for w in itertools.product(words, repeat=n)] + [list(w) for w in itertools.product(words, repeat=3)]
    expected = []
    for row in range(8):
        scores: dict[tuple[int, ...], float] = {}
        for caption in captions:
            total = sum(
                float(scripted_logprobs(torch.tensor([[1, *caption[:t]]]), context[row : row + 1], [0, 1])[0, token])
                for t, token in enumerate(caption)
            )
            scores[tuple(caption)] = total / len(caption) ** length_penalty
        expected.append([t for t in max(scores, key=lambda c: scores[c]) if t != 2])
    assert best == expected
    assert best != greedy  # the table is one where searching matters


# -- checkpoints and the task interface -------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A random CoCa with a corpus WordPiece tokenizer, saved; and the frozen encoder's features."""
    from vlmkit.data import make_split
    from vlmkit.models.image_encoders import load_image_encoder
    from vlmkit_train.vocab import train_wordpiece

    tokenizer = train_wordpiece([c for e in make_split(30, 0, "train") for c in e.captions] + TEXTS, vocab_size=120)
    encoder = load_image_encoder("efficientnet-lite0")
    images = [e.image for e in make_split(3, 1, "test")]
    features = encoder.encode(images).float()
    torch.manual_seed(0)
    config = CoCaConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                        eos_token_id=tokenizer.sep_token_id, hidden_size=32, num_heads=2, caption_queries=4, embed_dim=16,
                        max_text_length=16)
    model = CoCa(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.2 * torch.randn_like(parameter))
    path = tmp_path_factory.mktemp("coca") / "model"
    model.save_pretrained(path, tokenizer)
    return {"path": path, "model": model, "tokenizer": tokenizer, "images": images, "features": features}


def test_save_load_round_trip(checkpoint):
    import vlmkit

    loaded = CoCa.from_pretrained(checkpoint["path"])
    original = checkpoint["model"]
    assert loaded.config == original.config
    for (name, a), (_, b) in zip(original.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    meta = json.loads((checkpoint["path"] / "config.json").read_text())
    assert (meta["model_type"], meta["architectures"]) == ("vlmkit-coca", ["VlmkitCoCa"])
    assert not list(checkpoint["path"].glob("*.bin")) and not list(checkpoint["path"].glob("*.pt"))

    model = vlmkit.load(checkpoint["path"])
    assert model.kind.architecture == "VlmkitCoCa"
    features, tokenizer = checkpoint["features"], checkpoint["tokenizer"]
    with torch.inference_mode():
        image_emb = original.image_embedding(original.image_tokens(features)).numpy()
        text_emb = original.unimodal(*tokenize(tokenizer, TEXTS, 16))[1].numpy()
        expected = tokenizer.batch_decode(original.generate(features, max_new_tokens=6), skip_special_tokens=True)
        expected_beam = tokenizer.batch_decode(original.generate(features, max_new_tokens=6, num_beams=3), skip_special_tokens=True)
    np.testing.assert_allclose(model.embed_images(checkpoint["images"]), image_emb, atol=1e-5)
    np.testing.assert_allclose(model.embed_texts(TEXTS), text_emb, atol=1e-6)
    np.testing.assert_allclose(model.similarity(checkpoint["images"], TEXTS), image_emb @ text_emb.T, atol=1e-5)
    assert model.caption(checkpoint["images"], options=GenerationOptions(max_new_tokens=6)) == [c.strip() for c in expected]
    assert model.caption(checkpoint["images"], options=GenerationOptions(max_new_tokens=6, num_beams=3)) == [c.strip() for c in expected_beam]
    assert model.logit_scale() == pytest.approx(float(original.logit_scale().detach()), rel=1e-6)
    assert len(model.classify(checkpoint["images"][0], ["red", "green", "blue"])[0]) == 3
    assert model.match(checkpoint["images"], TEXTS[0]).kind == "cosine"
    assert all(c.startswith("a large") for c in model.caption(checkpoint["images"], "a large", options=GenerationOptions(max_new_tokens=3)))
    with pytest.raises(InputError, match="sampling"):
        model.caption(checkpoint["images"], options=GenerationOptions(do_sample=True))


def test_batch_size_one_and_many_agree(checkpoint):
    import vlmkit

    model = vlmkit.load(checkpoint["path"])
    images = checkpoint["images"]
    assert_close(model.embed_images(images, batch_size=1), model.embed_images(images, batch_size=3), rtol=DEEP, what="images")
    assert_close(model.embed_texts(TEXTS, batch_size=1), model.embed_texts(TEXTS, batch_size=4), rtol=DEEP, what="texts")
    for beams in (1, 3):
        alone = model.caption(images, options=GenerationOptions(max_new_tokens=6, num_beams=beams), batch_size=1)
        assert alone == model.caption(images, options=GenerationOptions(max_new_tokens=6, num_beams=beams), batch_size=3)


# -- `vlmkit train coca` ----------------------------------------------------------------------------


def read_metrics(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_tiny_run_through_the_cli(tmp_path, capsys):
    import vlmkit
    from vlmkit.data import make_split
    from vlmkit_cli.main import main

    code = main(["train", "coca", "--preset", "tiny", "--out", str(tmp_path / "run")])
    assert code == 0, capsys.readouterr().err
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps"] == 6
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert all(set(r) >= {"contrastive", "caption", "total", "lr", "logit_scale"} for r in rows)
    assert rows[-1]["total"] == pytest.approx(rows[-1]["contrastive"] + 2.0 * rows[-1]["caption"], rel=1e-5)
    assert (tmp_path / "run" / "loss.png").stat().st_size > 1000
    assert (tmp_path / "run" / "features" / "features.npy").is_file()
    model = vlmkit.load(tmp_path / "run" / "model")
    assert model.kind.architecture == "VlmkitCoCa" and model.net.config.hidden_size == 32
    images = [e.image for e in make_split(2, 0, "test")]
    assert model.similarity(images, TEXTS).shape == (2, 4)
    assert len(model.caption(images, options=GenerationOptions(max_new_tokens=4))) == 2


def test_resume_continues_exactly(tmp_path):
    from vlmkit_train.coca import coca_config, train_coca

    config = coca_config("tiny", ["save_every=3"])
    train_coca(config, tmp_path / "straight")
    train_coca(config, tmp_path / "interrupted", stop_after=3)
    assert not (tmp_path / "interrupted" / "model").exists()
    train_coca(config, tmp_path / "interrupted", resume=True)
    keys = ("step", "lr", "contrastive", "caption", "total", "logit_scale")
    straight = read_metrics(tmp_path / "straight" / "metrics.jsonl")
    resumed = read_metrics(tmp_path / "interrupted" / "metrics.jsonl")
    assert [[r[k] for k in keys] for r in resumed] == [[r[k] for k in keys] for r in straight]
    a = CoCa.from_pretrained(tmp_path / "straight" / "model").state_dict()
    b = CoCa.from_pretrained(tmp_path / "interrupted" / "model").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_overrides_are_checked(tmp_path):
    from vlmkit_train.coca import coca_config, train_coca

    with pytest.raises(InputError, match="unknown config key 'learning_rate'"):
        coca_config("tiny", ["learning_rate=1"])
    with pytest.raises(InputError, match="expected float"):
        coca_config("tiny", ["caption_weight=lots"])
    with pytest.raises(InputError, match="caption_weight must not be negative"):
        coca_config("tiny", ["caption_weight=-1"])
    with pytest.raises(InputError, match="not a multiple of num_heads"):
        coca_config("tiny", ["hidden_size=30", "num_heads=4"])
    with pytest.raises(InputError, match="must be one of"):
        coca_config("tiny", ["gather=some"])
    with pytest.raises(InputError, match="unknown preset"):
        coca_config("huge")
    with pytest.raises(InputError, match="nothing to resume"):
        train_coca(coca_config("tiny"), tmp_path / "new", resume=True)
    assert coca_config("tiny", ["caption_weight=0"]).caption_weight == 0.0


def test_minilm_vocabulary(tmp_path):
    import vlmkit
    from vlmkit_train.coca import coca_config, train_coca

    train_coca(coca_config("tiny", ["max_steps=1", "tokenizer=minilm"]), tmp_path / "run")
    model = vlmkit.load(tmp_path / "run" / "model")
    assert model.net.config.vocab_size == 30523 and model.net.config.bos_token_id == model.tokenizer.bos_token_id == 30522
    assert model.embed_texts(TEXTS).shape == (4, 16)
