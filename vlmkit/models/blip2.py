"""BLIP-2 (Li et al., 2023, "BLIP-2: Bootstrapping Language-Image Pre-training with Frozen Image
Encoders and Large Language Models").

Two released kinds: the full model with a frozen LM (``Blip2ForConditionalGeneration``: caption, ask,
prompted generation) and the stage-1 Q-Former (``Blip2ForImageTextRetrieval``: ITC embeddings and the
ITM head). Prompts follow the paper: OPT "Question: {} Answer:", FlanT5 "Question: {} Short answer:",
captions start from "a photo of".
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ._hf import PromptedGenerator, normalise
from .base import MatchResult, as_list, check_texts, pair_up

__all__ = ["Blip2", "CAPTION_PROMPT", "VQA_PROMPTS"]

CAPTION_PROMPT = "a photo of"
# Keyed by the language model's config ``model_type``.
VQA_PROMPTS = {"t5": "Question: {} Short answer:", "mt5": "Question: {} Short answer:"}
VQA_PROMPT_DEFAULT = "Question: {} Answer:"


class Blip2(PromptedGenerator):
    """BLIP-2 behind the vlmkit task interface."""

    caption_prompt = CAPTION_PROMPT
    # The paper's VQA decoding: beam search with a length penalty of -1 (short answers).
    vqa_length_penalty = -1.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        config = self.model.config
        if "generate" in self.kind.tasks and getattr(config, "use_decoder_only_language_model", False):
            self.tokenizer.padding_side = "left"  # generation continues from the right edge
        text_config = getattr(config, "text_config", None)
        self.vqa_prompt = VQA_PROMPTS.get(getattr(text_config, "model_type", ""), VQA_PROMPT_DEFAULT)

    # -- stage-1 retrieval (Blip2ForImageTextRetrieval) ---------------------------------------

    def embed_image_queries(self, images: Any, *, batch_size: int = 32) -> np.ndarray:
        """Normalised ITC features of every query token, shape (N, Q, D)."""
        self.require("embed")
        chunks = []
        with torch.inference_mode():
            for pixels in self._pixel_batches(as_list(images, "images"), batch_size):
                image_embeds = self.model.vision_model(pixel_values=pixels).last_hidden_state  # (B, P, Dv)
                queries = self.model.query_tokens.expand(image_embeds.shape[0], -1, -1)  # (B, Q, D)
                mask = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device)
                out = self.model.qformer(
                    query_embeds=queries, encoder_hidden_states=image_embeds, encoder_attention_mask=mask
                ).last_hidden_state  # (B, Q, D)
                chunks.append(normalise(self.model.vision_projection(out.to(self.model.vision_projection.weight.dtype))))
        return np.concatenate(chunks)

    def embed_images(self, images: Any, *, batch_size: int = 32) -> np.ndarray:
        """One vector per image: the normalised mean of its query features (for indexes that need
        one vector). ``similarity`` and ``classify`` use the paper's maximum over queries instead."""
        queries = self.embed_image_queries(images, batch_size=batch_size)  # (N, Q, D)
        mean = queries.mean(axis=1)
        return (mean / np.linalg.norm(mean, axis=1, keepdims=True)).astype(np.float32)

    def embed_texts(self, texts: Any, *, batch_size: int = 64) -> np.ndarray:
        self.require("embed")
        text_list = check_texts(as_list(texts, "texts"), "texts")
        chunks = []
        with torch.inference_mode():
            for start in range(0, len(text_list), batch_size):
                batch = self.tokenizer(
                    text_list[start : start + batch_size], padding=True, truncation=True, return_tensors="pt"
                )
                batch = self._to_device(batch)
                embeds = self.model.embeddings(input_ids=batch["input_ids"])
                hidden = self.model.qformer(
                    query_embeds=embeds, query_length=0, attention_mask=batch["attention_mask"]
                ).last_hidden_state  # (B, T, D)
                cls = hidden[:, 0, :].to(self.model.text_projection.weight.dtype)
                chunks.append(normalise(self.model.text_projection(cls)))
        return np.concatenate(chunks)

    def similarity(self, images: Any, texts: Any) -> np.ndarray:
        """ITC similarity as in the paper: the maximum over query features of the cosine with the text."""
        self.require("similarity")
        queries = self.embed_image_queries(images)  # (N, Q, D)
        text = self.embed_texts(texts)  # (M, D)
        return np.einsum("nqd,md->nqm", queries, text).max(axis=1)

    def _class_similarity(self, images: Any, text_emb: np.ndarray) -> np.ndarray:
        queries = self.embed_image_queries(images)
        return np.einsum("nqd,md->nqm", queries, text_emb).max(axis=1)

    def match(self, images: Any, texts: Any, *, batch_size: int = 16) -> MatchResult:
        """ITM head averaged over the query outputs: the probability that image and text match."""
        self.require("match")
        image_list, text_list = pair_up(
            as_list(images, "images"), check_texts(as_list(texts, "texts"), "texts"), "match"
        )
        scores = []
        for start in range(0, len(image_list), batch_size):
            batch = self._load_all(image_list[start : start + batch_size])
            inputs = self.processor(
                images=batch, text=text_list[start : start + batch_size], padding=True, return_tensors="pt"
            )
            with torch.inference_mode():
                out = self.model(**self._to_device(inputs), use_image_text_matching_head=True)
            scores.append(out.logits_per_image.float().softmax(dim=-1)[:, 1].cpu().numpy())
        return MatchResult(scores=np.concatenate(scores).astype(np.float32), kind="itm")

    def logit_scale(self) -> float:
        temp = getattr(self.model, "temp", None)
        return 1.0 / float(temp) if temp is not None else 1.0 / 0.07
