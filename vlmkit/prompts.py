"""Prompts shared by the model families that use them and the data that teaches them, below both."""

from __future__ import annotations

__all__ = ["LLAVA_CAPTION_INSTRUCTION", "LLAVA_VQA_SUFFIX", "LLAVA_IMAGE_TOKEN"]

# The prompts LLaVA-1.5 was evaluated with: COCO captions, and short-answer VQA (VQAv2, GQA).
LLAVA_CAPTION_INSTRUCTION = "Provide a one-sentence caption for the provided image."
LLAVA_VQA_SUFFIX = "\nAnswer the question using a single word or phrase."

# Where an image goes in LLaVA's data and prompts: one placeholder per image in a turn's text, and the
# token the model's image features replace (added to the LM's tokenizer when a LLaVA is built).
LLAVA_IMAGE_TOKEN = "<image>"
