"""InstructBLIP (Dai et al., 2023, "InstructBLIP: Towards General-purpose Vision-Language Models
with Instruction Tuning"): BLIP-2 whose Q-Former also reads the instruction, so the visual
features it extracts depend on what is asked.
"""

from __future__ import annotations

from typing import Any

from ._hf import PromptedGenerator
from .base import GenerationOptions, as_list, check_texts, pair_up

__all__ = ["InstructBlip", "CAPTION_INSTRUCTION", "VQA_INSTRUCTION"]

CAPTION_INSTRUCTION = "A short image caption:"
VQA_INSTRUCTION = "Question: {} Short answer:"


class InstructBlip(PromptedGenerator):
    """InstructBLIP behind the vlmkit task interface."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if getattr(self.model.config, "use_decoder_only_language_model", False):
            self.tokenizer.padding_side = "left"

    def _length_key(self, prompt: str) -> tuple[int, ...]:
        # The instruction goes to the Q-Former too, through its own tokenizer.
        return (len(self.tokenizer(prompt)["input_ids"]), len(self.processor.qformer_tokenizer(prompt)["input_ids"]))

    def caption(
        self,
        images: Any,
        prompt: str | None = None,
        *,
        max_new_tokens: int = 30,
        num_beams: int = 1,
        do_sample: bool = False,
        top_p: float = 1.0,
        temperature: float = 1.0,
        batch_size: int = 8,
    ) -> list[str]:
        image_list = as_list(images, "images")
        options = GenerationOptions(max_new_tokens, num_beams, do_sample, top_p, temperature)
        return self._prompted(image_list, [prompt or CAPTION_INSTRUCTION] * len(image_list), options, batch_size)

    def ask(
        self,
        images: Any,
        questions: Any,
        *,
        max_new_tokens: int = 10,
        num_beams: int = 1,
        batch_size: int = 8,
    ) -> list[str]:
        image_list, question_list = pair_up(
            as_list(images, "images"), check_texts(as_list(questions, "questions"), "questions"), "ask"
        )
        options = GenerationOptions(max_new_tokens, num_beams, length_penalty=-1.0)
        return self._prompted(image_list, [VQA_INSTRUCTION.format(q) for q in question_list], options, batch_size)

    def generate(
        self,
        images: Any,
        prompts: Any,
        *,
        max_new_tokens: int = 30,
        num_beams: int = 1,
        do_sample: bool = False,
        top_p: float = 1.0,
        temperature: float = 1.0,
        batch_size: int = 8,
    ) -> list[str]:
        image_list, prompt_list = pair_up(
            as_list(images, "images"), check_texts(as_list(prompts, "prompts"), "prompts"), "generate"
        )
        options = GenerationOptions(max_new_tokens, num_beams, do_sample, top_p, temperature)
        return self._prompted(image_list, prompt_list, options, batch_size)
