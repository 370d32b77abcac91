"""The tiny checkpoints load with the stock transformers classes and run forward/generate offline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import (
    AutoConfig,
    AutoProcessor,
    Blip2ForConditionalGeneration,
    Blip2ForImageTextRetrieval,
    Blip2Processor,
    BlipForConditionalGeneration,
    BlipForImageTextRetrieval,
    BlipForQuestionAnswering,
    BlipProcessor,
    CLIPModel,
    CLIPProcessor,
    InstructBlipForConditionalGeneration,
    InstructBlipProcessor,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedModel,
    ProcessorMixin,
    SiglipModel,
    SiglipProcessor,
)

from vlmkit.testing import (
    BUILDERS,
    LLAVA_CHAT_TEMPLATE,
    NUM_PATCHES,
    NUM_QUERY_TOKENS,
    build_clip,
)

# name -> (model_type, model class, processor class)
EXPECTED: dict[str, tuple[str, type[PreTrainedModel], type[ProcessorMixin]]] = {
    "clip": ("clip", CLIPModel, CLIPProcessor),
    "siglip": ("siglip", SiglipModel, SiglipProcessor),
    "blip_caption": ("blip", BlipForConditionalGeneration, BlipProcessor),
    "blip_vqa": ("blip", BlipForQuestionAnswering, BlipProcessor),
    "blip_itm": ("blip", BlipForImageTextRetrieval, BlipProcessor),
    "blip2_opt": ("blip-2", Blip2ForConditionalGeneration, Blip2Processor),
    "blip2_t5": ("blip-2", Blip2ForConditionalGeneration, Blip2Processor),
    "blip2_itm": ("blip-2", Blip2ForImageTextRetrieval, Blip2Processor),
    "instructblip": ("instructblip", InstructBlipForConditionalGeneration, InstructBlipProcessor),
    "llava": ("llava", LlavaForConditionalGeneration, LlavaProcessor),
}
MAX_NEW_TOKENS = 3


@pytest.fixture(scope="module")
def checkpoints(tiny: dict[str, Path]) -> dict[str, Path]:
    """All checkpoints, from conftest's session-wide ``tiny`` fixture (``build_all`` into a temp dir)."""
    return tiny


@pytest.fixture(scope="module")
def image() -> Image.Image:
    pixels = np.random.default_rng(0).integers(0, 256, size=(40, 50, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def load(checkpoints: dict[str, Path], name: str) -> tuple[Any, Any]:
    """(processor, model in eval mode); typed Any because transformers' call signatures are too loose for mypy."""
    _, model_cls, _ = EXPECTED[name]
    processor = AutoProcessor.from_pretrained(checkpoints[name])
    model = model_cls.from_pretrained(checkpoints[name]).eval()
    return processor, model


def test_every_builder_is_covered(checkpoints: dict[str, Path]) -> None:
    assert set(BUILDERS) == set(EXPECTED) == set(checkpoints)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_loads_with_auto_classes(checkpoints: dict[str, Path], name: str) -> None:
    model_type, model_cls, processor_cls = EXPECTED[name]
    directory = checkpoints[name]
    assert (directory / "model.safetensors").is_file()

    config = AutoConfig.from_pretrained(directory)
    assert config.model_type == model_type
    assert config.architectures == [model_cls.__name__]

    processor = AutoProcessor.from_pretrained(directory)
    assert type(processor) is processor_cls

    model = model_cls.from_pretrained(directory)
    assert sum(p.numel() for p in model.parameters()) < 3_000_000


@pytest.mark.parametrize("name", ["blip2_opt", "blip2_t5", "instructblip", "llava"])
def test_language_model_ids_match_tokenizer(checkpoints: dict[str, Path], name: str) -> None:
    config = AutoConfig.from_pretrained(checkpoints[name])
    tokenizer = AutoProcessor.from_pretrained(checkpoints[name]).tokenizer
    text = config.text_config
    assert text.vocab_size == len(tokenizer)
    assert config.image_token_id == tokenizer.convert_tokens_to_ids("<image>")
    assert text.eos_token_id == tokenizer.eos_token_id
    assert text.pad_token_id == tokenizer.pad_token_id
    if tokenizer.bos_token is not None:
        assert text.bos_token_id == tokenizer.bos_token_id
        assert tokenizer("a cat")["input_ids"][0] == tokenizer.bos_token_id


def test_classic_vocabulary_files(checkpoints: dict[str, Path]) -> None:
    clip = checkpoints["clip"]
    vocab = json.loads((clip / "vocab.json").read_text(encoding="utf-8"))
    merges = (clip / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert merges[0].startswith("#version") and any(line.endswith("</w>") for line in merges[1:])
    assert {"cat</w>", "<|startoftext|>", "<|endoftext|>"} <= set(vocab)
    assert (checkpoints["blip2_opt"] / "merges.txt").is_file()
    bert_vocab = (checkpoints["blip_caption"] / "vocab.txt").read_text(encoding="utf-8").splitlines()
    assert len(bert_vocab) == 30522 and bert_vocab[101:103] == ["[CLS]", "[SEP]"]
    assert (checkpoints["instructblip"] / "qformer_tokenizer" / "vocab.txt").is_file()


def test_weights_are_deterministic_in_seed(tmp_path: Path) -> None:
    same = [load_file(build_clip(tmp_path / f"a{i}", seed=0) / "model.safetensors") for i in range(2)]
    other = load_file(build_clip(tmp_path / "b", seed=1) / "model.safetensors")
    key = "text_model.embeddings.token_embedding.weight"
    assert same[0].keys() == same[1].keys()
    assert all(torch.equal(same[0][k], same[1][k]) for k in same[0])
    assert not torch.equal(same[0][key], other[key])


@torch.no_grad()
def test_clip(checkpoints: dict[str, Path], image: Image.Image) -> None:
    processor, model = load(checkpoints, "clip")
    tokenizer = processor.tokenizer
    assert tokenizer.convert_ids_to_tokens(tokenizer("a photo of a cat")["input_ids"]) == [
        "<|startoftext|>", "a</w>", "photo</w>", "of</w>", "a</w>", "cat</w>", "<|endoftext|>",
    ]  # fmt: skip
    inputs = processor(text=["a photo of a cat", "a dog"], images=[image], padding=True, return_tensors="pt")
    assert inputs["pixel_values"].shape == (1, 3, 32, 32)
    out = model(**inputs)
    assert out.logits_per_image.shape == (1, 2)
    assert out.text_embeds.shape == (2, 16) and out.image_embeds.shape == (1, 16)
    # transformers 5: get_*_features return a BaseModelOutputWithPooling, projected embeddings in pooler_output.
    image_features = model.get_image_features(pixel_values=inputs["pixel_values"])
    text_features = model.get_text_features(
        input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]
    )
    assert image_features.pooler_output.shape == (1, 16)
    assert text_features.pooler_output.shape == (2, 16)


@torch.no_grad()
def test_siglip(checkpoints: dict[str, Path], image: Image.Image) -> None:
    processor, model = load(checkpoints, "siglip")
    inputs = processor(
        text=["A photo of a cat!", "a dog"], images=[image], padding="max_length", return_tensors="pt"
    )
    assert inputs["input_ids"].shape == (2, 16)
    # lower-cased, punctuation dropped, "</s>" appended: "▁a ▁photo ▁of ▁a ▁cat </s>", then "</s>" padding
    assert inputs["input_ids"][0, 5:].tolist() == [processor.tokenizer.eos_token_id] * 11
    out = model(**inputs)
    assert out.logits_per_image.shape == (1, 2)
    assert model.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output.shape == (1, 32)
    assert model.get_text_features(input_ids=inputs["input_ids"]).pooler_output.shape == (2, 32)


@torch.no_grad()
def test_blip_caption(checkpoints: dict[str, Path], image: Image.Image) -> None:
    processor, model = load(checkpoints, "blip_caption")
    bos = model.config.text_config.bos_token_id
    assert processor.tokenizer.convert_ids_to_tokens(bos) == "[DEC]"

    generated = model.generate(**processor(images=image, return_tensors="pt"), max_new_tokens=MAX_NEW_TOKENS)
    assert generated.shape[0] == 1 and 1 < generated.shape[1] <= 1 + MAX_NEW_TOKENS
    assert generated[0, 0].item() == bos

    inputs = processor(images=image, text="a photo of", return_tensors="pt")  # [CLS] a photo of [SEP]
    generated = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS)
    prompt = inputs["input_ids"].shape[1] - 1  # generate() swaps [CLS] for [DEC] and drops [SEP]
    assert generated[0, 0].item() == bos and prompt < generated.shape[1] <= prompt + MAX_NEW_TOKENS

    out = model(**inputs)
    assert out.logits.shape == (1, inputs["input_ids"].shape[1], model.config.text_config.vocab_size)


@torch.no_grad()
def test_blip_vqa(checkpoints: dict[str, Path], image: Image.Image) -> None:
    processor, model = load(checkpoints, "blip_vqa")
    inputs = processor(images=image, text="what is it?", return_tensors="pt")
    generated = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS)
    assert generated[0, 0].item() == model.config.text_config.bos_token_id
    assert generated.shape[1] <= 1 + MAX_NEW_TOKENS
    # forward() needs decoder_input_ids (or labels) and returns no answer logits, only image embeddings.
    out = model(**inputs, decoder_input_ids=generated[:, :1])
    assert out.image_embeds.shape == (1, NUM_PATCHES + 1, 32)


@torch.no_grad()
def test_blip_itm(checkpoints: dict[str, Path], image: Image.Image) -> None:
    processor, model = load(checkpoints, "blip_itm")
    inputs = processor(
        images=[image, image], text=["a cat", "a dog on a red car"], padding=True, return_tensors="pt"
    )
    assert model(**inputs).itm_score.shape == (2, 2)  # (pairs, [no match, match])
    assert model(**inputs, use_itm_head=False).itm_score.shape == (2, 2)  # cosine, images x texts


@torch.no_grad()
@pytest.mark.parametrize("name", ["blip2_opt", "blip2_t5"])
def test_blip2_generation(checkpoints: dict[str, Path], image: Image.Image, name: str) -> None:
    processor, model = load(checkpoints, name)
    decoder_only = model.config.use_decoder_only_language_model
    inputs = processor(images=image, text="Question: what is it? Answer:", return_tensors="pt")
    ids = inputs["input_ids"]
    assert (ids[0, :NUM_QUERY_TOKENS] == model.config.image_token_id).all()
    assert (ids == model.config.image_token_id).sum() == NUM_QUERY_TOKENS

    generated = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS)
    if decoder_only:  # the prompt (image tokens included) is echoed back
        assert torch.equal(generated[:, : ids.shape[1]], ids)
        assert generated.shape[1] <= ids.shape[1] + MAX_NEW_TOKENS
    else:  # T5: decoder output only, starting with decoder_start_token_id
        assert generated[0, 0].item() == model.config.text_config.decoder_start_token_id
        assert generated.shape[1] <= 1 + MAX_NEW_TOKENS

    # Unconditional captioning: image only, generate() builds "<image>"*n + BOS itself.
    captions = model.generate(
        **processor(images=[image, image], return_tensors="pt"), max_new_tokens=MAX_NEW_TOKENS
    )
    assert captions.shape[0] == 2

    extra = {} if decoder_only else {"decoder_input_ids": torch.zeros((1, 1), dtype=torch.long)}
    out = model(**inputs, **extra)
    assert out.logits.shape == (1, ids.shape[1] if decoder_only else 1, model.config.text_config.vocab_size)
    features = model.get_image_features(pixel_values=inputs["pixel_values"])
    assert features.pooler_output.shape == (1, NUM_QUERY_TOKENS, 32)  # projected into the LM's hidden size


@torch.no_grad()
def test_blip2_itm(checkpoints: dict[str, Path], image: Image.Image) -> None:
    processor, model = load(checkpoints, "blip2_itm")
    inputs = processor(
        images=[image, image], text=["a photo of a cat", "a dog"], padding=True, return_tensors="pt"
    )
    itm = model(**inputs, use_image_text_matching_head=True)
    assert itm.logits_per_image.shape == (2, 2)  # (pairs, [no match, match])
    itc = model(**inputs, use_image_text_matching_head=False)
    assert itc.logits_per_image.shape == (2, 2)  # images x texts
    assert itc.image_embeds.shape == (2, NUM_QUERY_TOKENS, 16) and itc.text_embeds.shape == (2, 16)


@torch.no_grad()
def test_instructblip(checkpoints: dict[str, Path], image: Image.Image) -> None:
    processor, model = load(checkpoints, "instructblip")
    inputs = processor(images=image, text="What is in the image?", return_tensors="pt")
    assert {"qformer_input_ids", "qformer_attention_mask", "input_ids", "pixel_values"} <= set(inputs)
    ids = inputs["input_ids"]
    assert (ids == model.config.image_token_id).sum() == NUM_QUERY_TOKENS
    generated = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS)
    assert torch.equal(generated[:, : ids.shape[1]], ids)
    assert generated.shape[1] <= ids.shape[1] + MAX_NEW_TOKENS
    assert model(**inputs).logits.shape == (1, ids.shape[1], model.config.text_config.vocab_size)


@torch.no_grad()
def test_llava(checkpoints: dict[str, Path], image: Image.Image) -> None:
    processor, model = load(checkpoints, "llava")
    assert processor.chat_template == LLAVA_CHAT_TEMPLATE
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]}]
    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
    assert prompt == "USER: <image>\nWhat is it? ASSISTANT:"
    follow_up = [
        *conversation,
        {"role": "assistant", "content": [{"type": "text", "text": "A cat."}]},
        {"role": "user", "content": [{"type": "text", "text": "What color?"}]},
    ]
    assert (
        processor.apply_chat_template(follow_up, add_generation_prompt=True)
        == "USER: <image>\nWhat is it? ASSISTANT: A cat.</s>USER: What color? ASSISTANT:"
    )

    inputs = processor(images=image, text=prompt, return_tensors="pt")
    ids = inputs["input_ids"]
    assert ids[0, 0].item() == processor.tokenizer.bos_token_id
    assert (ids == model.config.image_token_id).sum() == model.config.image_seq_length == NUM_PATCHES
    generated = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS)
    assert torch.equal(generated[:, : ids.shape[1]], ids)
    assert generated.shape[1] <= ids.shape[1] + MAX_NEW_TOKENS
    assert model(**inputs).logits.shape == (1, ids.shape[1], model.config.text_config.vocab_size)

    # Tokenising through the template needs the image itself in the message.
    with_image = [
        {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "Hi"}]}
    ]
    batch = processor.apply_chat_template(
        with_image, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    assert batch["pixel_values"].shape == (1, 3, 32, 32)
    assert (batch["input_ids"] == model.config.image_token_id).sum() == NUM_PATCHES
