"""Frozen image encoders: the "eyes" that BLIP-2 bridges to a language model.

BLIP-2 keeps its image encoder frozen and reads the output of its second-last layer (the paper's
choice for ViT-g); any transformers vision tower works the same way here. For offline runs the
ImageNet-pretrained EfficientNet-Lite0 gives its final feature map as a grid of tokens.

Every encoder maps a list of PIL images to ``(B, P, E)`` token features and says how many tokens
and channels it produces, so the Q-Former can size its cross-attention.
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

from .. import hub
from ..errors import ModelNotFoundError

__all__ = ["FrozenImageEncoder", "HFVisionEncoder", "EfficientNetEncoder", "load_image_encoder", "EFFICIENTNET_LITE0"]

EFFICIENTNET_LITE0 = "efficientnet-lite0"
EFFICIENTNET_LITE0_BLOCKS = "efficientnet-lite0-blocks"


class FrozenImageEncoder(nn.Module):
    """Base: frozen weights, eval mode, and a stable identity for feature caches."""

    #: Width of each token, the Q-Former's cross-attention input size.
    hidden_size: int
    #: A string that changes whenever the features would (checkpoint, layer, input size).
    identity: str

    def freeze(self) -> FrozenImageEncoder:
        for parameter in self.parameters():
            parameter.requires_grad_(False)
        return self.eval()

    def train(self, mode: bool = True) -> FrozenImageEncoder:
        # Frozen means frozen: dropout and batch-norm statistics never switch to training.
        return super().train(False)

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def encode(self, images: list[Image.Image]) -> torch.Tensor:
        """PIL images -> ``(B, P, E)`` features on the encoder's device."""
        device = next(self.parameters()).device
        dtype = next(self.parameters()).dtype
        return self(self.preprocess(images).to(device, dtype))


class HFVisionEncoder(FrozenImageEncoder):
    """Any transformers vision tower (CLIP ViT, SigLIP, ...), reading hidden states of ``layer``
    (default -2, the second-last layer, as BLIP-2 does)."""

    def __init__(self, path: str | os.PathLike, *, layer: int = -2, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        import transformers

        config = transformers.AutoConfig.from_pretrained(path)
        vision_config = getattr(config, "vision_config", config)
        self.model = _vision_tower(path, config, dtype)
        self.processor = transformers.AutoImageProcessor.from_pretrained(path)
        self.layer = layer
        self.hidden_size = int(vision_config.hidden_size)
        self._identity_prefix = f"hf:{Path(path).name}:{config.model_type}:layer{layer}"
        self.freeze()

    @functools.cached_property
    def identity(self) -> str:  # type: ignore[override]
        """Name, layer and a digest of the tower's weights: two checkpoints saved under the same
        folder name (every training run's ``model/``) must not share a feature cache."""
        digest = hashlib.blake2b(digest_size=8)
        for name, tensor in sorted(self.model.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().contiguous().cpu().view(torch.uint8).numpy().tobytes())
        return f"{self._identity_prefix}:{digest.hexdigest()}"

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        return self.processor(images=images, return_tensors="pt")["pixel_values"]

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        out = self.model(pixel_values=pixels, output_hidden_states=True)
        return out.hidden_states[self.layer]  # (B, P, E)


def _vision_tower(path: str | os.PathLike, config: Any, dtype: torch.dtype) -> nn.Module:
    """The vision tower alone: from a dual encoder (CLIP, SigLIP) or a vision-only checkpoint."""
    import transformers

    if getattr(config, "vision_config", None) is not None:
        full = transformers.AutoModel.from_pretrained(path, dtype=dtype, use_safetensors=True)
        tower = getattr(full, "vision_model", None)
        if tower is None:
            raise ModelNotFoundError(f"{path}: {config.model_type} has no vision tower vlmkit can use")
        return tower
    return transformers.AutoModel.from_pretrained(path, dtype=dtype, use_safetensors=True)


class EfficientNetEncoder(FrozenImageEncoder):
    """ImageNet-pretrained EfficientNet-Lite0: its 7x7x1280 head feature map as 49 tokens, or, with
    ``before_head``, the last block's 7x7x320 map that the 1x1 head convolution reads (a linear
    probe reads the colour of colour-shape pairs it never saw far better there:
    ``bench/shapes_probe.py``)."""

    def __init__(self, *, dtype: torch.dtype = torch.float32, before_head: bool = False) -> None:
        super().__init__()
        from ..layers.efficientnet_lite import LITE0_STAGES, NUM_FEATURES, load_pretrained_lite0

        self.net = load_pretrained_lite0().to(dtype)
        self.before_head = before_head
        self.hidden_size = LITE0_STAGES[-1].out_channels if before_head else NUM_FEATURES
        # ":uncropped-small": images up to 224 pixels are no longer centre-cropped (feature caches
        # built with the crop are rebuilt, not reused).
        self.identity = f"efficientnet-lite0:{'blocks' if before_head else 'head'}:uncropped-small"
        self.freeze()

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        from ..layers.efficientnet_lite import preprocess

        return preprocess(images)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        grid = self.net.forward_blocks(pixels) if self.before_head else self.net.forward_features(pixels)  # (B, E, H, W)
        return grid.flatten(2).transpose(1, 2)  # (B, H*W, E)


def load_image_encoder(
    name_or_path: str | os.PathLike, *, layer: int = -2, dtype: torch.dtype = torch.float32
) -> FrozenImageEncoder:
    """``"efficientnet-lite0"`` (built in, offline; ``"efficientnet-lite0-blocks"`` its map before the
    head convolution) or a transformers checkpoint directory / hub id."""
    if os.fspath(name_or_path) == EFFICIENTNET_LITE0:
        return EfficientNetEncoder(dtype=dtype)
    if os.fspath(name_or_path) == EFFICIENTNET_LITE0_BLOCKS:
        return EfficientNetEncoder(dtype=dtype, before_head=True)
    return HFVisionEncoder(hub.checkpoint_dir(os.fspath(name_or_path)), layer=layer, dtype=dtype)
