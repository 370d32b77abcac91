"""A deterministic fake embedder for index tests, a fake captioner for dataset captioning, and
helpers that draw small test images.

Images embed as their mean colour (plus a little texture), texts as colour words: "red" is the
direction of a pure red image, so searches have known right answers and run in milliseconds.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vlmkit.models.kinds import ModelKind

DIM = 8
COLOURS = {
    "red": (255, 0, 0),
    "green": (0, 160, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 230, 0),
    "white": (255, 255, 255),
    "purple": (128, 0, 160),
}


def _unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v)).astype(np.float32)


def colour_vector(rgb: tuple[float, float, float]) -> np.ndarray:
    r, g, b = (c / 255.0 for c in rgb)
    return _unit(np.array([r, g, b, 0.05, 0.05, 0.05, 0.05, 0.05], np.float32))


class FakeEmbedder:
    """Mean-colour image embeddings; colour-word text embeddings; other words hash to random
    directions. ``delay`` seconds per batch slow it down (for kill-and-resume tests)."""

    image_size = None

    def __init__(self, name: str = "fake-colour", delay: float = 0.0, dim: int = DIM) -> None:
        self.name = name
        self.delay = delay
        self.dim = dim
        self.image_calls = 0

    def embed_images(self, images: Any, *, batch_size: int = 32) -> np.ndarray:
        from vlmkit.images import load_image

        self.image_calls += 1
        if self.delay:
            time.sleep(self.delay)
        rows = []
        for image in images:
            pixels = np.asarray(load_image(image).resize((16, 16)), np.float32)
            vector = colour_vector(tuple(pixels.reshape(-1, 3).mean(axis=0)))
            texture = float(pixels.reshape(-1, 3).std(axis=0).mean()) / 255.0
            vector[3] += texture
            rows.append(self._fit(_unit(vector)))
        return np.stack(rows)

    def embed_texts(self, texts: Any, *, batch_size: int = 64) -> np.ndarray:
        texts = [texts] if isinstance(texts, str) else list(texts)
        rows = []
        for text in texts:
            words = [w for w in text.lower().split() if w in COLOURS]
            if words:
                rows.append(self._fit(_unit(sum(colour_vector(COLOURS[w]) for w in words))))
            else:
                seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")
                rows.append(self._fit(_unit(np.random.default_rng(seed).standard_normal(DIM).astype(np.float32))))
        return np.stack(rows)

    def _fit(self, vector: np.ndarray) -> np.ndarray:
        if self.dim == DIM:
            return vector
        out = np.zeros(self.dim, np.float32)
        out[: min(DIM, self.dim)] = vector[: self.dim]
        return _unit(out)


def solid(path: Path, colour: str | tuple[int, int, int], size: tuple[int, int] = (32, 24), noise: int = 0, seed: int = 0) -> Path:
    """Write a solid-colour image (PNG or JPEG by suffix), optionally with uniform noise."""
    rgb = COLOURS[colour] if isinstance(colour, str) else colour
    array = np.empty((size[1], size[0], 3), np.int16)
    array[:] = rgb
    if noise:
        array += np.random.default_rng(seed).integers(-noise, noise + 1, array.shape, dtype=np.int16)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(array, 0, 255).astype(np.uint8)).save(path)
    return path


class FakeCaptioner:
    """Captions an image as its mean colour ("rgb 255 0 0"); ``stop_after`` calls, it raises
    KeyboardInterrupt (a user's Ctrl-C, or a kill, in the middle of a run)."""

    kind = ModelKind("fake", "FakeCaptioner", frozenset({"caption", "ask"}), "mean colour in words")
    name = "fake-captioner"
    image_size = None

    def __init__(self, stop_after: int | None = None) -> None:
        self.calls: list[int] = []
        self.stop_after = stop_after

    def require(self, task: str) -> None:
        assert task in self.kind.tasks

    def _words(self, image: Any) -> str:
        mean = np.asarray(image, np.float32).reshape(-1, 3).mean(axis=0)
        return "rgb " + " ".join(str(round(c)) for c in mean)

    def caption(self, images: list[Any], prompt: str | None = None, *, batch_size: int = 8, **options: Any) -> list[str]:
        if self.stop_after is not None and len(self.calls) >= self.stop_after:
            raise KeyboardInterrupt
        self.calls.append(len(images))
        return [(prompt or "") + self._words(image) for image in images]

    def ask(self, images: list[Any], questions: list[str], *, batch_size: int = 8, **options: Any) -> list[str]:
        self.calls.append(len(images))
        return [f"{q} {self._words(image)}" for image, q in zip(images, questions, strict=True)]


def tiny_blip_exports(root: Path) -> tuple[Path, Path]:
    """An untrained tiny BLIP exported as a captioner and as a retrieval model with the ITM head
    (``vlmkit.models.blip_pretrain.export``, as ``vlmkit train blip`` writes them): (captioner,
    filter). Its weights are drawn wider than a fresh initialisation (std 0.2), so captions and match
    probabilities differ from image to image and from text to text."""
    import torch

    from vlmkit.bootstrap import BLIP_PROMPT
    from vlmkit.models.blip_pretrain import (
        BlipPretrainConfig,
        BlipPretrainModel,
        corpus_tokenizer,
        export,
        tokenizer_fields,
    )
    from vlmkit.testing import corpus

    tokenizer = corpus_tokenizer([*corpus(), BLIP_PROMPT], vocab_size=200)
    sizes = {"image_size": 32, "patch_size": 16, "embed_dim": 16, "max_text_length": 64}
    for side in ("vision", "text"):
        sizes.update({f"{side}_width": 32, f"{side}_layers": 1, f"{side}_heads": 2, f"{side}_mlp": 64})
    torch.manual_seed(0)
    model = BlipPretrainModel(BlipPretrainConfig(**tokenizer_fields(tokenizer), **sizes)).eval()
    draw = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for weight in (p for p in model.parameters() if p.ndim >= 2):
            weight.copy_(torch.randn(weight.shape, generator=draw) * 0.2)
    return export(model, tokenizer, root / "captioner", head="caption"), export(model, tokenizer, root / "filter", head="retrieval")
