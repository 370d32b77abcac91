"""LLaVA-1.5 (Liu et al., 2023, "Improved Baselines with Visual Instruction Tuning") assembled from
parts: transformers' own ``LlavaForConditionalGeneration`` made of a vision tower, a fresh projector and
a causal LM, and its ``LlavaProcessor``.

The tower (CLIP, or SigLIP; a vision-model directory or a dual encoder's) is read at
``vision_feature_layer`` (-2 by default) with LLaVA's "default" strategy (CLS dropped) where it has a
CLS token; the projector is LLaVA-1.5's "mlp2x_gelu" or LLaVA-1's "linear" (the second layer kept as
the identity); ``<image>`` (and a pad token where missing) is added to the LM's tokenizer and LLaVA-1.5's
chat template (:data:`vlmkit.models.llava.LLAVA_CHAT_TEMPLATE`) is stored in the processor. The result
is the llava-hf layout that :class:`vlmkit.models.llava.Llava` and ``from_pretrained`` read once saved.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from ..errors import InputError
from ..prompts import LLAVA_IMAGE_TOKEN
from .llava import LLAVA_CHAT_TEMPLATE

__all__ = ["build_llava"]

# Vision towers LLaVA's "default" strategy knows: does the tower put a CLS token in front of its patches?
_TOWERS: dict[str, tuple[Literal["default", "full"], int]] = {"clip_vision_model": ("default", 1), "siglip_vision_model": ("full", 0)}


def _load_tower(path: str) -> tuple[nn.Module, Any, Any]:
    """(vision tower, its config, its image processor) from a vision-model or dual-encoder directory."""
    from transformers import AutoConfig, AutoImageProcessor, AutoModel

    if not (Path(path) / "config.json").is_file():
        raise InputError(f"vision_tower={path!r}: not a model directory (no config.json)")
    config = AutoConfig.from_pretrained(path)
    model = AutoModel.from_pretrained(path, use_safetensors=True)
    if getattr(config, "vision_config", None) is not None:
        tower, config = getattr(model, "vision_model", None), config.vision_config
        if tower is None:
            raise InputError(f"vision_tower={path!r}: {type(model).__name__} has no vision_model")
    else:
        tower = model
    if config.model_type not in _TOWERS:
        raise InputError(f"vision_tower={path!r}: a {config.model_type} tower; LLaVA here takes {', '.join(_TOWERS)}")
    try:
        image_processor = AutoImageProcessor.from_pretrained(path)
    except (OSError, ValueError):
        raise InputError(f"vision_tower={path!r}: no image processor saved there (preprocessor_config.json)") from None
    return tower, config, image_processor


def build_llava(
    vision_tower: str, language_model: str, *, projector: str = "mlp2x_gelu", vision_feature_layer: int = -2, seed: int = 0
) -> tuple[Any, Any]:
    """A ``LlavaForConditionalGeneration`` assembled from a vision tower and a causal LM directory, with
    a fresh projector, and its ``LlavaProcessor`` (the tower's image processor, the LM's tokenizer
    with ``<image>`` and a pad token, LLaVA-1.5's chat template)."""
    from PIL import Image
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    tower, vision_config, image_processor = _load_tower(vision_tower)
    strategy, extra_tokens = _TOWERS[vision_config.model_type]
    if not (Path(language_model) / "config.json").is_file():
        raise InputError(f"language_model={language_model!r}: not a model directory (no config.json)")
    lm = AutoModelForCausalLM.from_pretrained(language_model, use_safetensors=True)
    tokenizer = AutoTokenizer.from_pretrained(language_model)
    if LLAVA_IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_tokens([LLAVA_IMAGE_TOKEN], special_tokens=True)
    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": "<pad>"})
    if tokenizer.eos_token is None:
        raise InputError(f"language_model={language_model!r}: the tokenizer has no end-of-sequence token")

    pixels = image_processor(images=[Image.new("RGB", (vision_config.image_size,) * 2)], return_tensors="pt")["pixel_values"]
    height, width = pixels.shape[-2:]
    if (height, width) != (vision_config.image_size, vision_config.image_size):
        raise InputError(
            f"vision_tower={vision_tower!r}: its image processor gives {height}x{width}, the tower takes {vision_config.image_size}"
        )
    patch = vision_config.patch_size
    image_seq_length = (height // patch) * (width // patch) + extra_tokens - (1 if strategy == "default" else 0)

    image_token = tokenizer.convert_tokens_to_ids(LLAVA_IMAGE_TOKEN)
    assert isinstance(image_token, int)
    text_config = type(lm.config).from_dict(lm.config.to_dict())
    text_config.tie_word_embeddings = False  # the head is copied (LLaVA's tying expects Llama's names)
    config = LlavaConfig(
        vision_config=vision_config.to_dict(),
        text_config=text_config.to_dict(),
        image_token_index=image_token,
        image_seq_length=image_seq_length,
        vision_feature_layer=vision_feature_layer,
        vision_feature_select_strategy=strategy,
        projector_hidden_act="gelu" if projector == "mlp2x_gelu" else "linear",
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    target = model.model.vision_tower
    if type(tower) is not type(target):  # a dual encoder's bare transformer
        target = target.vision_model
    target.load_state_dict(tower.state_dict())
    model.model.language_model.load_state_dict(lm.base_model.state_dict())
    with torch.no_grad():
        model.lm_head.weight.copy_(lm.get_output_embeddings().weight)
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    if projector == "linear":  # LLaVA-1's single linear layer: the second layer stays the identity
        with torch.no_grad():
            second = model.model.multi_modal_projector.linear_2
            second.weight.copy_(torch.eye(second.weight.shape[0]))
            second.bias.zero_()
    for key in ("pad_token_id", "eos_token_id", "bos_token_id"):
        value = getattr(tokenizer, key)
        setattr(model.config.text_config, key, value)
        setattr(model.generation_config, key, value)
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch,
        vision_feature_select_strategy=strategy,
        chat_template=LLAVA_CHAT_TEMPLATE,
        image_token=LLAVA_IMAGE_TOKEN,
        num_additional_image_tokens=extra_tokens,
    )
    expanded = processor(images=[Image.new("RGB", (width, height))], text=[LLAVA_IMAGE_TOKEN])["input_ids"][0]
    if expanded.count(config.image_token_index) != image_seq_length:
        count = expanded.count(config.image_token_index)
        raise InputError(f"vision_tower={vision_tower!r}: the processor gives {count} image tokens, the model {image_seq_length}")
    return model.eval(), processor
