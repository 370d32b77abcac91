"""LLaVA-1.5 (Liu et al., 2023, "Improved Baselines with Visual Instruction Tuning"), in the
llava-hf layout: a CLIP vision tower, an MLP projector and a Llama-family LM, prompted through the
checkpoint's own chat template.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from ..chat import parse_messages
from ..prompts import LLAVA_CAPTION_INSTRUCTION, LLAVA_VQA_SUFFIX
from ._hf import PromptedGenerator, strip_prompt
from .base import GenerationOptions, decoding

__all__ = ["Llava", "CAPTION_INSTRUCTION", "VQA_SUFFIX", "LLAVA_CHAT_TEMPLATE"]

# The prompts LLaVA-1.5 was evaluated with: COCO captions, and short-answer VQA (VQAv2, GQA).
CAPTION_INSTRUCTION = LLAVA_CAPTION_INSTRUCTION
VQA_SUFFIX = LLAVA_VQA_SUFFIX

# LLaVA-1.5's "vicuna_v1" conversation layout: "USER: <image>\n{q} ASSISTANT: {a}</s>USER: {q2} ASSISTANT:".
# A turn's images come first, one "<image>\n" each; a system message is a plain prefix.
LLAVA_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['content'] is string -%}{%- set parts = [{'type': 'text', 'text': message['content']}] -%}"
    "{%- else -%}{%- set parts = message['content'] -%}{%- endif -%}"
    "{%- if message['role'] == 'system' -%}"
    "{%- for part in parts if part['type'] == 'text' -%}{{ part['text'] + ' ' }}{%- endfor -%}"
    "{%- else -%}"
    "{{ message['role'] | upper + ': ' }}"
    "{%- for part in parts if part['type'] == 'image' -%}{{ '<image>\n' }}{%- endfor -%}"
    "{%- for part in parts if part['type'] == 'text' -%}{{ part['text'] }}{%- endfor -%}"
    "{%- if message['role'] == 'assistant' -%}{{ eos_token }}{%- else -%}{{ ' ' }}{%- endif -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ 'ASSISTANT:' }}{%- endif -%}"
)


class Llava(PromptedGenerator):
    """LLaVA behind the vlmkit task interface."""

    caption_prompt = CAPTION_INSTRUCTION
    vqa_prompt = "{}" + VQA_SUFFIX

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tokenizer.padding_side = "left"

    def _prepare_prompts(self, prompts: list[str]) -> list[str]:
        """Wrap each instruction in the chat template as one user turn holding one image."""
        return [
            self.processor.apply_chat_template(
                [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": p}]}],
                add_generation_prompt=True,
            )
            for p in prompts
        ]

    def _chat_inputs(self, messages: list[dict[str, Any]]) -> dict[str, Any]:
        """The processor's inputs for a conversation: its template text with every image in order
        (several images, in one message or across turns, each expand to their image tokens)."""
        conversation, sources = parse_messages(messages)
        images = self._load_all(sources) if sources else None
        text = self.processor.apply_chat_template(conversation, add_generation_prompt=True)
        return dict(self.processor(images=images, text=[text], return_tensors="pt"))

    def prompt_tokens(self, messages: list[dict[str, Any]]) -> int:
        return int(self._chat_inputs(messages)["input_ids"].shape[1])

    def chat(
        self, messages: list[dict[str, Any]], *, stream: bool = False, options: GenerationOptions | None = None
    ) -> str | Iterator[str]:
        options = decoding(options, "chat")
        inputs = self._to_device(self._chat_inputs(messages))
        kwargs = {**inputs, **options.to_hf()}
        if stream:
            return self._stream(kwargs)
        with torch.inference_mode():
            out = self.model.generate(**kwargs)
        return self._decode(strip_prompt(out, inputs["input_ids"]))[0]
