"""Prompts shared by the model families that use them and the data that teaches them, below both."""

from __future__ import annotations

__all__ = ["LLAVA_CAPTION_INSTRUCTION", "LLAVA_VQA_SUFFIX"]

# The prompts LLaVA-1.5 was evaluated with: COCO captions, and short-answer VQA (VQAv2, GQA).
LLAVA_CAPTION_INSTRUCTION = "Provide a one-sentence caption for the provided image."
LLAVA_VQA_SUFFIX = "\nAnswer the question using a single word or phrase."
