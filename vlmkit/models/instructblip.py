"""InstructBLIP (Dai et al., 2023, "InstructBLIP: Towards General-purpose Vision-Language Models
with Instruction Tuning"): BLIP-2 whose Q-Former also reads the instruction, so the visual
features it extracts depend on what is asked.
"""

from __future__ import annotations

from typing import Any

from ._hf import PromptedGenerator

__all__ = ["InstructBlip", "CAPTION_INSTRUCTION", "VQA_INSTRUCTION"]

CAPTION_INSTRUCTION = "A short image caption:"
VQA_INSTRUCTION = "Question: {} Short answer:"


class InstructBlip(PromptedGenerator):
    """InstructBLIP behind the vlmkit task interface."""

    caption_prompt = CAPTION_INSTRUCTION
    vqa_prompt = VQA_INSTRUCTION
    vqa_length_penalty = -1.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if getattr(self.model.config, "use_decoder_only_language_model", False):
            self.tokenizer.padding_side = "left"

    def _length_key(self, prompt: str) -> tuple[int, ...]:
        # The instruction goes to the Q-Former too, through its own tokenizer.
        return (len(self.tokenizer(prompt)["input_ids"]), len(self.processor.qformer_tokenizer(prompt)["input_ids"]))

