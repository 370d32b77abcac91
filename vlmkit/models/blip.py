"""BLIP (Li et al., 2022, "BLIP: Bootstrapping Language-Image Pre-training for Unified
Vision-Language Understanding and Generation").

A released BLIP checkpoint carries one head, so the tasks depend on it: captioning
(``BlipForConditionalGeneration``), VQA (``BlipForQuestionAnswering``), or retrieval with the
ITC projections and the ITM head (``BlipForImageTextRetrieval``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..errors import InputError
from ._hf import HFModel, equal_length_groups, normalise
from .base import GenerationOptions, MatchResult, as_list, check_texts, decoding, pair_up

__all__ = ["Blip"]


class Blip(HFModel):
    """BLIP behind the vlmkit task interface; ``self.kind`` says which head is loaded."""

    # -- captioning head -------------------------------------------------------------------

    def caption(
        self, images: Any, prompt: str | None = None, *, options: GenerationOptions | None = None, batch_size: int = 8
    ) -> list[str]:
        self.require("caption")
        options = decoding(options, "caption")
        captions: list[str] = []
        for batch in self._load_batches(as_list(images, "images"), batch_size):
            if prompt:
                inputs = self.processor(images=batch, text=[prompt] * len(batch), return_tensors="pt")
            else:
                inputs = self.processor(images=batch, return_tensors="pt")
            with torch.inference_mode():
                out = self.model.generate(**self._to_device(inputs), **options.to_hf())
            texts = self._decode(out)
            if prompt:
                # A conditional caption starts with the prompt; like LAVIS, return what follows it.
                start = prompt.strip().lower()
                texts = [t[len(start) :].strip() if t.lower().startswith(start) else t for t in texts]
            captions.extend(texts)
        return captions

    # -- VQA head ---------------------------------------------------------------------------

    def ask(self, images: Any, questions: Any, *, options: GenerationOptions | None = None, batch_size: int = 8) -> list[str]:
        self.require("ask")
        image_list, question_list = pair_up(
            as_list(images, "images"), check_texts(as_list(questions, "questions"), "questions"), "ask"
        )
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        options = decoding(options, "ask")
        answers: list[str] = [""] * len(question_list)
        # Questions of equal token length share a batch: padding the question encoder changes the
        # answers of some, so the answers would depend on the batch size.
        # Questions longer than the text encoder's positions are cut to fit, as a tokenizer would.
        limit = int(getattr(self.model.config.text_config, "max_position_embeddings", 512))
        lengths = [len(self.tokenizer(q, truncation=True, max_length=limit)["input_ids"]) for q in question_list]
        for group in equal_length_groups(lengths, batch_size):
            batch = self._load_all([image_list[i] for i in group])
            text = [question_list[i] for i in group]
            inputs = self.processor(images=batch, text=text, padding=True, truncation=True, max_length=limit, return_tensors="pt")
            with torch.inference_mode():
                out = self.model.generate(**self._to_device(inputs), **options.to_hf())
            for i, answer in zip(group, self._decode(out), strict=True):
                answers[i] = answer
        return answers

    # -- retrieval head ---------------------------------------------------------------------

    def embed_images(self, images: Any, *, batch_size: int = 32) -> np.ndarray:
        self.require("embed")
        chunks = []
        with torch.inference_mode():
            for pixels in self._pixel_batches(as_list(images, "images"), batch_size):
                hidden = self.model.vision_model(pixel_values=pixels).last_hidden_state  # (B, P+1, D)
                chunks.append(normalise(self.model.vision_proj(hidden[:, 0, :])))
        return np.concatenate(chunks)

    def embed_texts(self, texts: Any, *, batch_size: int = 64) -> np.ndarray:
        self.require("embed")
        text_list = check_texts(as_list(texts, "texts"), "texts")
        chunks = []
        with torch.inference_mode():
            for start in range(0, len(text_list), batch_size):
                batch = self.tokenizer(text_list[start : start + batch_size], padding=True, truncation=True, return_tensors="pt")
                batch = self._to_device(batch)
                hidden = self.model.text_encoder(
                    input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
                ).last_hidden_state  # (B, T, D)
                chunks.append(normalise(self.model.text_proj(hidden[:, 0, :])))
        return np.concatenate(chunks)

    def match(self, images: Any, texts: Any, *, batch_size: int = 16) -> MatchResult:
        """ITM head: the probability that each image and text belong together."""
        self.require("match")
        image_list, text_list = pair_up(
            as_list(images, "images"), check_texts(as_list(texts, "texts"), "texts"), "match"
        )
        scores = []
        # Texts longer than the text encoder's positions are cut to fit (a long web alt-text), as in ask().
        limit = int(getattr(self.model.config.text_config, "max_position_embeddings", 512))
        for start in range(0, len(image_list), batch_size):
            batch = self._load_all(image_list[start : start + batch_size])
            inputs = self.processor(
                images=batch, text=text_list[start : start + batch_size], padding=True, truncation=True, max_length=limit,
                return_tensors="pt",
            )
            with torch.inference_mode():
                logits = self.model(**self._to_device(inputs), use_itm_head=True).itm_score  # (B, 2)
            scores.append(logits.float().softmax(dim=-1)[:, 1].cpu().numpy())
        return MatchResult(scores=np.concatenate(scores).astype(np.float32), kind="itm")

    def logit_scale(self) -> float:
        temp = getattr(self.model.config, "logit_scale_init_value", None)
        return 1.0 / 0.07 if temp is None else float(np.exp(temp))
