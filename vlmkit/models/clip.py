"""CLIP (Radford et al., 2021, "Learning Transferable Visual Models From Natural Language
Supervision") and SigLIP (Zhai et al., 2023, "Sigmoid Loss for Language Image Pre-Training").

Both are dual encoders with the same interface: embed images and texts into one space, compare
them by cosine, and classify zero-shot by prompting the text encoder with label names.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ._hf import HFModel, features, normalise
from .base import as_list, check_texts

__all__ = ["DualEncoder"]


class DualEncoder(HFModel):
    """CLIPModel / SiglipModel behind the vlmkit task interface."""

    def embed_images(self, images: Any, *, batch_size: int = 32) -> np.ndarray:
        chunks = []
        with torch.inference_mode():
            for pixels in self._pixel_batches(as_list(images, "images"), batch_size):  # (B, 3, H, W)
                chunks.append(normalise(features(self.model.get_image_features(pixel_values=pixels))))
        return np.concatenate(chunks)

    def _text_inputs(self, texts: list[str]) -> dict[str, Any]:
        if self.kind.family == "siglip":
            # SigLIP was trained on texts padded to a fixed length; shorter padding changes its output.
            length = self.model.config.text_config.max_position_embeddings  # 64 in released models
            batch = self.tokenizer(texts, padding="max_length", max_length=length, truncation=True, return_tensors="pt")
        else:
            batch = self.tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
        return self._to_device(batch)

    def embed_texts(self, texts: Any, *, batch_size: int = 64) -> np.ndarray:
        text_list = check_texts(as_list(texts, "texts"), "texts")
        chunks = []
        with torch.inference_mode():
            for start in range(0, len(text_list), batch_size):
                inputs = self._text_inputs(text_list[start : start + batch_size])
                chunks.append(normalise(features(self.model.get_text_features(**inputs))))
        return np.concatenate(chunks)

    def logit_scale(self) -> float:
        return float(self.model.logit_scale.detach().float().exp().item())
