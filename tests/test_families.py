"""Every family on a tiny checkpoint built at test time: vlmkit equals direct transformers calls,
gives the same results at batch size 1 and N, and refuses tasks its kind cannot do."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers
from numerics import DEEP, REORDERED, assert_close
from PIL import Image

import vlmkit
from vlmkit import GenerationOptions
from vlmkit.errors import InputError, UnsupportedTaskError

QUESTIONS = ["what is it?", "what colour is the big cup on the table?", "where?"]


@pytest.fixture(scope="module")
def paths(photos):
    # PNG photos: JPEGs may decode at reduced scale in vlmkit (draft mode), PNGs decode identically.
    return [str(photos[k]) for k in ("cat", "coffee", "astronaut")]


@pytest.fixture(scope="module")
def pils(paths):
    return [Image.open(p).convert("RGB") for p in paths]


def reference(path, architecture):
    model = getattr(transformers, architecture).from_pretrained(path).eval()
    return model, transformers.AutoProcessor.from_pretrained(path)


def unit(x: torch.Tensor) -> np.ndarray:
    return torch.nn.functional.normalize(x.float(), dim=-1).numpy()


def generate_each(ref, proc, pils, texts, **kwargs):
    """The unpadded ground truth: transformers on one (image, prompt) pair at a time."""
    answers = []
    with torch.inference_mode():
        for image, text in zip(pils, texts, strict=True):
            inputs = proc(images=[image], text=[text], return_tensors="pt")
            answers += decode_new(proc, ref.generate(**inputs, **kwargs), inputs)
    return answers


def decode_new(processor, out, inputs):
    ids = inputs["input_ids"]
    if out.shape[1] >= ids.shape[1] and torch.equal(out[:, : ids.shape[1]], ids):
        out = out[:, ids.shape[1] :]
    return [t.strip() for t in processor.tokenizer.batch_decode(out, skip_special_tokens=True)]


def assert_same_ranking(a, b):
    assert [[s.label for s in row] for row in a] == [[s.label for s in row] for row in b]
    # The rankings come from image batches of different sizes: the whole forward pass may reorder.
    assert_close([[s.score for s in row] for row in a], [[s.score for s in row] for row in b], rtol=DEEP, what="scores")


# -- dual encoders ---------------------------------------------------------------------------


@pytest.mark.parametrize("name, arch", [("clip", "CLIPModel"), ("siglip", "SiglipModel")])
def test_dual_encoder_parity_and_batching(tiny, paths, pils, name, arch):
    model = vlmkit.load(tiny[name])
    ref, proc = reference(tiny[name], arch)
    texts = ["a cat", "a cup of coffee on a table", "an astronaut"]
    with torch.inference_mode():
        ref_img = unit(ref.get_image_features(**proc(images=pils, return_tensors="pt")).pooler_output)
        kwargs = {"padding": "max_length", "truncation": True, "max_length": ref.config.text_config.max_position_embeddings} if name == "siglip" else {"padding": True}
        ref_txt = unit(ref.get_text_features(**proc.tokenizer(texts, return_tensors="pt", **kwargs)).pooler_output)
    image_emb = model.embed_images(paths, batch_size=3)
    np.testing.assert_allclose(image_emb, ref_img, atol=1e-5)
    np.testing.assert_allclose(model.embed_texts(texts), ref_txt, atol=1e-5)
    assert_close(model.embed_images(paths, batch_size=1), image_emb, rtol=DEEP, what="images one at a time")
    # One at a time, a text is not padded to the longest: another shape, the whole pass may reorder.
    assert_close(model.embed_texts(texts, batch_size=1), ref_txt, rtol=DEEP, what="texts one at a time")
    assert image_emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(image_emb, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(model.similarity(paths, texts), ref_img @ ref_txt.T, atol=1e-5)

    ranked = model.classify(paths, ["cat", "coffee", "astronaut"], templates=["a photo of a {}.", "{}"])
    assert all(len(r) == 3 and abs(sum(s.score for s in r) - 1) < 1e-5 for r in ranked)
    assert all([s.score for s in r] == sorted((s.score for s in r), reverse=True) for r in ranked)
    assert_same_ranking(model.classify(paths[:1], ["cat", "coffee", "astronaut"], templates=["a photo of a {}.", "{}"]), ranked[:1])
    with pytest.raises(InputError, match="not one string"):
        model.classify(paths, "cat,dog")
    with pytest.raises(InputError, match="expected strings"):
        model.embed_texts([1, 2])
    match = model.match(paths[0], texts)
    assert match.kind == "cosine"
    assert_close(match.scores, (ref_img[:1] @ ref_txt.T)[0], rtol=DEEP, what="match")  # the image alone, not in a batch of 3
    with pytest.raises(UnsupportedTaskError, match=r"cannot 'caption'.*blip2 \(Blip2ForConditionalGeneration, VlmkitBlip2\)"):
        model.caption(paths)


# -- BLIP ------------------------------------------------------------------------------------


def test_blip_caption(tiny, paths, pils):
    model = vlmkit.load(tiny["blip_caption"])
    ref, proc = reference(tiny["blip_caption"], "BlipForConditionalGeneration")
    with torch.inference_mode():
        expected = proc.batch_decode(ref.generate(**proc(images=pils, return_tensors="pt"), max_new_tokens=8), skip_special_tokens=True)
        prompted = proc.batch_decode(
            ref.generate(**proc(images=pils, text=["a picture of"] * 3, return_tensors="pt"), max_new_tokens=8),
            skip_special_tokens=True,
        )
    assert model.caption(paths, options=GenerationOptions(max_new_tokens=8)) == [t.strip() for t in expected]
    assert model.caption(paths, options=GenerationOptions(max_new_tokens=8), batch_size=1) == [t.strip() for t in expected]
    assert all(t.startswith("a picture of") for t in prompted)
    assert model.caption(paths, prompt="a picture of", options=GenerationOptions(max_new_tokens=8)) == [t[len("a picture of") :].strip() for t in prompted]
    assert model.caption(paths[:1], options=GenerationOptions(max_new_tokens=6, num_beams=3)) == model.caption(paths, options=GenerationOptions(max_new_tokens=6, num_beams=3))[:1]
    with pytest.raises(UnsupportedTaskError, match=r"blip \(BlipForQuestionAnswering\)"):
        model.ask(paths, "what?")
    with pytest.raises(InputError, match="max_new_tokens"):
        model.caption(paths, options=GenerationOptions(max_new_tokens=0))


def test_blip_vqa(tiny, paths, pils):
    model = vlmkit.load(tiny["blip_vqa"])
    ref, proc = reference(tiny["blip_vqa"], "BlipForQuestionAnswering")
    with torch.inference_mode():
        inputs = proc(images=pils, text=QUESTIONS, padding=True, return_tensors="pt")
        expected = [t.strip() for t in proc.batch_decode(ref.generate(**inputs, max_new_tokens=6), skip_special_tokens=True)]
    assert model.ask(paths, QUESTIONS, options=GenerationOptions(max_new_tokens=6)) == expected
    assert model.ask(paths, QUESTIONS, options=GenerationOptions(max_new_tokens=6), batch_size=1) == expected
    with pytest.raises(InputError, match="3 images and 2 texts"):
        model.ask(paths, QUESTIONS[:2])


def test_blip_retrieval(tiny, paths, pils):
    model = vlmkit.load(tiny["blip_itm"])
    ref, proc = reference(tiny["blip_itm"], "BlipForImageTextRetrieval")
    texts = ["a cat", "a cup of coffee on a table", "an astronaut"]
    with torch.inference_mode():
        inputs = proc(images=pils, text=texts, padding=True, return_tensors="pt")
        itm = ref(**inputs, use_itm_head=True).itm_score.softmax(dim=-1)[:, 1].numpy()
        itc = ref(**inputs, use_itm_head=False).itm_score.numpy()  # (images, texts) cosine
    result = model.match(paths, texts)
    assert result.kind == "itm"
    np.testing.assert_allclose(result.scores, itm, atol=1e-5)
    assert_close(model.match(paths, texts, batch_size=1).scores, itm, rtol=DEEP, what="itm one pair at a time")
    # The same features; the cosines are normalised and multiplied in another order.
    assert_close(model.similarity(paths, texts), itc, rtol=REORDERED, what="itc")
    assert_close(model.embed_images(paths, batch_size=1), model.embed_images(paths), rtol=DEEP, what="images one at a time")


# -- BLIP-2 ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name, prompt", [("blip2_opt", "Question: {} Answer:"), ("blip2_t5", "Question: {} Short answer:")])
def test_blip2_generation(tiny, paths, pils, name, prompt):
    model = vlmkit.load(tiny[name])
    ref, proc = reference(tiny[name], "Blip2ForConditionalGeneration")
    proc.tokenizer.padding_side = "left"
    assert model.vqa_prompt == prompt
    answers = generate_each(ref, proc, pils, [prompt.format(q) for q in QUESTIONS], max_new_tokens=6, do_sample=False)
    with torch.inference_mode():  # one prompt for all: a padded batch is the same as one at a time
        inputs = proc(images=pils, text=["a photo of"] * 3, return_tensors="pt")
        captions = decode_new(proc, ref.generate(**inputs, max_new_tokens=6), inputs)
    assert model.ask(paths, QUESTIONS, options=GenerationOptions(max_new_tokens=6)) == answers
    assert model.ask(paths, QUESTIONS, options=GenerationOptions(max_new_tokens=6), batch_size=1) == answers
    assert model.caption(paths, options=GenerationOptions(max_new_tokens=6)) == captions
    assert model.caption(paths, options=GenerationOptions(max_new_tokens=6), batch_size=1) == captions
    generated = model.generate(paths, ["Describe:", "A long prompt that pads the others:", "Hi"], options=GenerationOptions(max_new_tokens=5))
    assert generated == model.generate(paths, ["Describe:", "A long prompt that pads the others:", "Hi"], options=GenerationOptions(max_new_tokens=5), batch_size=1)
    with pytest.raises(UnsupportedTaskError, match="llava"):
        model.chat([{"role": "user", "content": "hi"}])


def test_blip2_retrieval(tiny, paths, pils):
    model = vlmkit.load(tiny["blip2_itm"])
    ref, proc = reference(tiny["blip2_itm"], "Blip2ForImageTextRetrieval")
    texts = ["a cat", "a cup of coffee on a table", "an astronaut"]
    with torch.inference_mode():
        inputs = proc(images=pils, text=texts, padding=True, return_tensors="pt")
        itm = ref(**inputs, use_image_text_matching_head=True).logits_per_image.softmax(dim=-1)[:, 1].numpy()
        itc = ref(**inputs, use_image_text_matching_head=False).logits_per_image.numpy()  # max over queries
    result = model.match(paths, texts)
    assert result.kind == "itm"
    np.testing.assert_allclose(result.scores, itm, atol=1e-5)
    # The same query and text features; the max over queries' cosines is taken in another order.
    assert_close(model.similarity(paths, texts), itc, rtol=REORDERED, what="itc")
    assert_close(model.match(paths, texts, batch_size=1).scores, itm, rtol=DEEP, what="itm one pair at a time")
    queries = model.embed_image_queries(paths)
    assert queries.shape[:2] == (3, ref.config.num_query_tokens)
    assert_close(model.embed_image_queries(paths, batch_size=1), queries, rtol=DEEP, what="queries one image at a time")
    ranked = model.classify(paths, ["cat", "coffee", "astronaut"])
    assert len(ranked) == 3
    assert_same_ranking(model.classify(paths[1:2], ["cat", "coffee", "astronaut"]), ranked[1:2])


# -- InstructBLIP and LLaVA ------------------------------------------------------------------


def test_instructblip(tiny, paths, pils):
    model = vlmkit.load(tiny["instructblip"])
    ref, proc = reference(tiny["instructblip"], "InstructBlipForConditionalGeneration")
    proc.tokenizer.padding_side = "left"
    prompts = [f"Question: {q} Short answer:" for q in QUESTIONS]
    answers = generate_each(ref, proc, pils, prompts, max_new_tokens=6)
    assert model.ask(paths, QUESTIONS, options=GenerationOptions(max_new_tokens=6)) == answers
    assert model.ask(paths, QUESTIONS, options=GenerationOptions(max_new_tokens=6), batch_size=1) == answers
    assert model.caption(paths, options=GenerationOptions(max_new_tokens=5)) == model.caption(paths, options=GenerationOptions(max_new_tokens=5), batch_size=1)


def test_llava(tiny, paths, pils):
    model = vlmkit.load(tiny["llava"])
    ref, proc = reference(tiny["llava"], "LlavaForConditionalGeneration")
    proc.tokenizer.padding_side = "left"
    suffix = "\nAnswer the question using a single word or phrase."
    texts = [
        proc.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q + suffix}]}], add_generation_prompt=True)
        for q in QUESTIONS
    ]
    answers = generate_each(ref, proc, pils, texts, max_new_tokens=6, do_sample=False)
    assert model.ask(paths, QUESTIONS, options=GenerationOptions(max_new_tokens=6)) == answers
    assert model.ask(paths, QUESTIONS, options=GenerationOptions(max_new_tokens=6), batch_size=1) == answers
    assert model.caption(paths, options=GenerationOptions(max_new_tokens=5)) == model.caption(paths, options=GenerationOptions(max_new_tokens=5), batch_size=1)

    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": paths[0]}}, {"type": "text", "text": "What is it?"}]},
        {"role": "assistant", "content": "A cat."},
        {"role": "user", "content": [{"type": "text", "text": "And this?"}, {"type": "image", "image": pils[1]}]},
    ]
    reply = model.chat(messages, options=GenerationOptions(max_new_tokens=6))
    assert isinstance(reply, str)
    assert "".join(model.chat(messages, stream=True, options=GenerationOptions(max_new_tokens=6))) == reply
    with pytest.raises(InputError, match="last message must come from the user"):
        model.chat(messages[:3])
    with pytest.raises(InputError, match="role"):
        model.chat([{"role": "robot", "content": "hi"}])
    with pytest.raises(vlmkit.ImageError, match="remote"):
        model.chat([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}, {"type": "text", "text": "?"}]}])
