"""ClipCap (Mokady, Hertz and Bermano, 2021, "ClipCap: CLIP Prefix for Image Captioning"): one
embedding per image, mapped by a small network to a prefix of K embeddings of a language model,
which then writes the caption.

The image side is a frozen embedder giving one vector per image: the paper's CLIP image encoder,
or, offline, the ImageNet-pretrained EfficientNet-Lite0's pooled 1280-d feature
(``"efficientnet-lite0"``), or any vlmkit model with ``embed_images`` (a name or a directory: the
built-in ``"default"``, a CLIP checkpoint). The mapping network is one of the paper's two:

- ``"mlp"``: LayerNorm, Linear(E, H), tanh, Linear(H, K * D_lm), reshaped to the K prefix
  embeddings (the paper's H is K * D_lm / 2);
- ``"transformer"``: the embedding is projected to ``clip_length`` tokens, K learned constant tokens
  are appended, a transformer encoder mixes them, and the constants' outputs are the prefix.

Both mappers start with a LayerNorm over the embedding (so CLIP's unit vectors and a CNN's pooled
activations train alike) and end at the frozen LM's embedding scale (a final LayerNorm and linear map
for the transformer, whose width may differ from the LM's; a scaled initialisation of the last layer
for both), as BLIP-2's projection does here; neither is in the paper, whose mapper works at GPT-2's
own width and scale.

Only the mapper learns; the LM stays frozen (the paper's transformer variant; its MLP variant
fine-tunes GPT-2, which ``train_lm=True`` allows). The sequence is ``[bos] prefix prompt target
[eos]``: the prefix stands where the offline LM of ``vlmkit train lm`` saw a scene's description,
and the loss is the LM loss on the target tokens and eos only. Prompts are BLIP-2's ("a photo of",
"Question: {} Answer:"), the texts that LM was trained on.

A checkpoint is a directory: ``config.json`` (``model_type: vlmkit-clipcap``, the embedder, the
mapper's sizes, the prompts), ``mapper.safetensors`` and ``lm/`` (the LM and its tokenizer in
transformers format). ``vlmkit.load(dir)`` recreates the embedder it names and answers caption / ask
/ generate.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from ..errors import InputError
from .base import GenerationOptions, PromptedTasks
from .blip2_native import CAPTION_PROMPT, IGNORE_INDEX, VQA_PROMPT
from .checkpoint import load_weights, read_config, save_weights, write_config
from .kinds import KINDS

__all__ = [
    "ClipCapConfig",
    "MLPMapper",
    "TransformerMapper",
    "build_mapper",
    "ClipCap",
    "ClipCapTasks",
    "ImageEmbedder",
    "PooledEfficientNet",
    "ModelEmbedder",
    "load_embedder",
    "load_native",
    "MODEL_TYPE",
    "EFFICIENTNET_EMBEDDER",
]

MODEL_TYPE = "vlmkit-clipcap"
ARCHITECTURE = "VlmkitClipCap"
#: The offline default: EfficientNet-Lite0's globally average-pooled head features.
EFFICIENTNET_EMBEDDER = "efficientnet-lite0"


@dataclass(frozen=True)
class ClipCapConfig:
    #: "efficientnet-lite0", or a vlmkit model name / directory whose ``embed_images`` gives the vectors.
    embedder: str = EFFICIENTNET_EMBEDDER
    embed_dim: int = 1280
    prefix_length: int = 10  # K
    mapper: Literal["mlp", "transformer"] = "transformer"
    #: MLP mapper: hidden width; 0 is the paper's K * D_lm / 2.
    mlp_hidden: int = 0
    #: Transformer mapper: tokens the embedding is projected to (the paper's "prefix_length_clip").
    clip_length: int = 10
    mapper_layers: int = 8
    mapper_heads: int = 8
    #: Transformer mapper: its width; 0 is the LM's width (the paper's).
    mapper_width: int = 0
    #: A hub id or a directory; "lm" means the ``lm/`` folder inside the checkpoint.
    language_model: str = "lm"
    caption_prompt: str = CAPTION_PROMPT
    vqa_prompt: str = VQA_PROMPT

    def __post_init__(self) -> None:
        for name in ("embed_dim", "prefix_length", "clip_length", "mapper_layers", "mapper_heads"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("mlp_hidden", "mapper_width"):
            if getattr(self, name) < 0:
                raise InputError(f"{name} must be 0 (the default size) or positive, got {getattr(self, name)}")
        if self.mapper not in ("mlp", "transformer"):
            raise InputError(f"mapper must be 'mlp' or 'transformer', got {self.mapper!r}")
        if self.mapper_width and self.mapper_width % self.mapper_heads:
            raise InputError(f"mapper_width ({self.mapper_width}) must be a multiple of mapper_heads ({self.mapper_heads})")
        if "{}" not in self.vqa_prompt:
            raise InputError(f"vqa_prompt {self.vqa_prompt!r} has no '{{}}' for the question")


@torch.no_grad()
def _init_at_scale(linear: nn.Linear, target: float) -> None:
    """Initialise ``linear`` so that an input of norm sqrt(fan_in) (a LayerNorm-ed or tanh vector at
    most) maps to an output of norm about ``target``."""
    fan_in, fan_out = linear.in_features, linear.out_features
    nn.init.normal_(linear.weight, std=target / (fan_in * fan_out) ** 0.5)
    nn.init.zeros_(linear.bias)


class MLPMapper(nn.Module):
    """The paper's MLP mapper: (B, E) -> (B, K, D_lm)."""

    def __init__(self, embed_dim: int, lm_width: int, prefix_length: int, hidden: int) -> None:
        super().__init__()
        self.prefix_length, self.lm_width = prefix_length, lm_width
        self.norm = nn.LayerNorm(embed_dim)
        self.hidden = nn.Linear(embed_dim, hidden)
        self.out = nn.Linear(hidden, prefix_length * lm_width)

    def init_output_scale(self, target: float) -> None:
        _init_at_scale(self.out, target * self.prefix_length**0.5)  # per prefix embedding: about target

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        hidden = torch.tanh(self.hidden(self.norm(embeddings)))  # (B, H)
        return self.out(hidden).view(embeddings.shape[0], self.prefix_length, self.lm_width)  # (B, K, D_lm)


class TransformerMapper(nn.Module):
    """The paper's transformer mapper: the embedding as ``clip_length`` tokens plus K learned
    constants through a pre-norm transformer encoder; the constants' outputs are the prefix."""

    def __init__(
        self, embed_dim: int, lm_width: int, prefix_length: int, clip_length: int, width: int, layers: int, heads: int
    ) -> None:
        super().__init__()
        self.clip_length, self.width = clip_length, width
        self.norm = nn.LayerNorm(embed_dim)
        self.project = nn.Linear(embed_dim, clip_length * width)
        self.constants = nn.Parameter(torch.randn(prefix_length, width))  # (K, W)
        layer = nn.TransformerEncoderLayer(
            width, heads, dim_feedforward=2 * width, dropout=0.0, activation="relu", batch_first=True, norm_first=True
        )  # the paper's mlp ratio 2
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.out_norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, lm_width)

    def init_output_scale(self, target: float) -> None:
        _init_at_scale(self.out, target)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        batch = embeddings.shape[0]
        tokens = self.project(self.norm(embeddings)).view(batch, self.clip_length, self.width)  # (B, C, W)
        sequence = torch.cat([tokens, self.constants.unsqueeze(0).expand(batch, -1, -1)], dim=1)  # (B, C+K, W)
        mixed = self.encoder(sequence)[:, self.clip_length :]  # (B, K, W)
        return self.out(self.out_norm(mixed))  # (B, K, D_lm)


def build_mapper(config: ClipCapConfig, lm_width: int) -> MLPMapper | TransformerMapper:
    if config.mapper == "mlp":
        hidden = config.mlp_hidden or max(1, config.prefix_length * lm_width // 2)
        return MLPMapper(config.embed_dim, lm_width, config.prefix_length, hidden)
    width = config.mapper_width or lm_width
    if width % config.mapper_heads:
        raise InputError(f"the mapper's width ({width}, the LM's) must be a multiple of mapper_heads ({config.mapper_heads})")
    return TransformerMapper(
        config.embed_dim, lm_width, config.prefix_length, config.clip_length, width, config.mapper_layers, config.mapper_heads
    )


class ClipCap(nn.Module):
    """Mapper + language model. ``forward`` is the training loss; the image embeddings come in
    precomputed, (B, E), so a training run embeds every image once."""

    def __init__(self, config: ClipCapConfig, lm: Any, lm_tokenizer: Any, *, train_lm: bool = False) -> None:
        super().__init__()
        if getattr(lm.config, "is_encoder_decoder", False):
            raise InputError("ClipCap needs a decoder-only language model (GPT-2 style), not an encoder-decoder")
        self.config = config
        self.lm = lm
        self.lm_tokenizer = lm_tokenizer
        self.train_lm = train_lm
        self.mapper = build_mapper(config, lm.config.hidden_size)
        embeddings = lm.get_input_embeddings().weight.detach().float()  # (V, D_lm)
        self.mapper.init_output_scale(float(embeddings.norm(dim=-1).mean()))
        for parameter in self.lm.parameters():
            parameter.requires_grad_(train_lm)
        self.lm.train(False)

    def train(self, mode: bool = True) -> ClipCap:
        super().train(mode)
        if not self.train_lm:
            self.lm.eval()  # frozen: no dropout in the LM
        return self

    # -- pieces ---------------------------------------------------------------------------------

    def prefix(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Image embeddings (B, E) -> prefix embeddings (B, K, D_lm)."""
        if embeddings.ndim != 2 or embeddings.shape[1] != self.config.embed_dim:
            raise InputError(f"expected image embeddings of shape (B, {self.config.embed_dim}), got {tuple(embeddings.shape)}")
        weight = self.mapper.norm.weight
        return self.mapper(embeddings.to(weight.device, weight.dtype)).to(self.lm.dtype)

    def _ids(self, text: str) -> list[int]:
        return list(self.lm_tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []

    def _bos(self) -> list[int]:
        bos = self.lm_tokenizer.bos_token_id
        return [] if bos is None else [bos]

    def _embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.lm.get_input_embeddings()(ids)

    def inputs(self, embeddings: torch.Tensor, prompts: list[str], targets: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``[bos] prefix prompt target eos`` right-padded: (inputs_embeds (B, T, D_lm), attention
        mask (B, T), labels (B, T)); the labels are the target's tokens and eos, ``-100`` elsewhere."""
        if len(prompts) != embeddings.shape[0] or len(targets) != len(prompts):
            raise InputError("clipcap: one prompt and one target per image")
        prefix = self.prefix(embeddings)  # (B, K, D_lm)
        device, tok = prefix.device, self.lm_tokenizer
        eos = tok.eos_token_id
        pad = tok.pad_token_id if tok.pad_token_id is not None else eos
        bos, k = self._bos(), prefix.shape[1]
        prompt_ids = [self._ids(p) for p in prompts]
        target_ids = [self._ids(" " + t.strip()) + [eos] for t in targets]
        texts = [p + t for p, t in zip(prompt_ids, target_ids, strict=True)]
        width = max(len(t) for t in texts)
        ids = torch.full((len(texts), width), pad, dtype=torch.long, device=device)  # (B, T_text)
        labels = torch.full((len(texts), len(bos) + k + width), IGNORE_INDEX, dtype=torch.long, device=device)
        mask = torch.zeros(labels.shape, dtype=torch.long, device=device)  # (B, T)
        for row, (prompt, target) in enumerate(zip(prompt_ids, target_ids, strict=True)):
            ids[row, : len(prompt) + len(target)] = torch.tensor(prompt + target, dtype=torch.long)
            start = len(bos) + k + len(prompt)
            labels[row, start : start + len(target)] = torch.tensor(target, dtype=torch.long)
            mask[row, : start + len(target)] = 1
        parts = [prefix, self._embed(ids)]
        if bos:
            parts.insert(0, self._embed(torch.tensor(bos, device=device)).expand(len(texts), -1, -1))
        return torch.cat(parts, dim=1), mask, labels

    def forward(self, embeddings: torch.Tensor, prompts: list[str], targets: list[str]) -> torch.Tensor:
        """LM loss of ``targets`` (and eos) given each image's prefix and its prompt."""
        inputs, mask, labels = self.inputs(embeddings, prompts, targets)
        return self.lm(inputs_embeds=inputs, attention_mask=mask, labels=labels).loss

    # -- generation ------------------------------------------------------------------------------

    @torch.no_grad()
    def generate(self, embeddings: torch.Tensor, prompts: list[str], **generate_kwargs: Any) -> list[str]:
        """Continue each prompt after its image's prefix. Batches hold prompts of one token length,
        so no padding enters (results do not depend on the batch)."""
        if len(prompts) != embeddings.shape[0]:
            raise InputError("clipcap: one prompt per image")
        prefix = self.prefix(embeddings)  # (B, K, D_lm)
        device, tok = prefix.device, self.lm_tokenizer
        ids = [self._bos() + self._ids(p) for p in prompts]
        groups: dict[int, list[int]] = {}
        for index, seq in enumerate(ids):
            groups.setdefault(len(seq), []).append(index)
        out: list[str] = [""] * len(prompts)
        n_bos = len(self._bos())
        kwargs = {"pad_token_id": tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id, **generate_kwargs}
        for rows in groups.values():
            text = self._embed(torch.tensor([ids[i] for i in rows], dtype=torch.long, device=device))  # (b, T, D_lm)
            inputs = torch.cat([text[:, :n_bos], prefix[rows], text[:, n_bos:]], dim=1)  # [bos] prefix prompt
            mask = torch.ones(inputs.shape[:2], dtype=torch.long, device=device)
            generated = self.lm.generate(inputs_embeds=inputs, attention_mask=mask, **kwargs)
            for i, answer in zip(rows, tok.batch_decode(generated, skip_special_tokens=True), strict=True):
                out[i] = answer.strip()
        return out

    # -- checkpoints -----------------------------------------------------------------------------

    def save_pretrained(self, directory: str | os.PathLike, *, copy_lm: bool = True) -> None:
        if self.train_lm and not copy_lm:
            raise InputError("the LM was fine-tuned: save it with the mapper (copy_lm=True)")
        path = Path(directory)
        config = self.config
        if copy_lm:
            self.lm.save_pretrained(path / "lm")
            self.lm_tokenizer.save_pretrained(path / "lm")
            config = ClipCapConfig(**{**asdict(config), "language_model": "lm"})
        write_config(path, config, model_type=MODEL_TYPE, architecture=ARCHITECTURE)
        save_weights(self.mapper.state_dict(), path / "mapper.safetensors")

    @classmethod
    def from_parts(
        cls, config: ClipCapConfig, *, lm_path: str | os.PathLike, dtype: torch.dtype = torch.float32, train_lm: bool = False
    ) -> ClipCap:
        """A fresh mapper in front of the LM at ``lm_path`` (a directory or a hub id)."""
        import transformers

        lm = transformers.AutoModelForCausalLM.from_pretrained(lm_path, dtype=dtype, use_safetensors=True)
        tokenizer = transformers.AutoTokenizer.from_pretrained(lm_path)
        return cls(config, lm, tokenizer, train_lm=train_lm)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, *, dtype: torch.dtype = torch.float32) -> ClipCap:
        path = Path(directory)
        config, _ = read_config(path, ClipCapConfig, model_types=MODEL_TYPE)
        lm_path = path / "lm" if config.language_model == "lm" else config.language_model
        model = cls.from_parts(config, lm_path=lm_path, dtype=dtype)
        load_weights(model.mapper, path / "mapper.safetensors")
        model.mapper.to(dtype)
        return model.eval()


# -- image embedders ------------------------------------------------------------------------------


class ImageEmbedder:
    """A frozen image -> vector map: ``embed(images)`` gives (N, E) float32 on the CPU."""

    #: A string that changes whenever the vectors would (for embedding caches).
    identity: str

    def embed(self, images: Sequence[Any], *, batch_size: int = 32) -> torch.Tensor:
        raise NotImplementedError


class PooledEfficientNet(ImageEmbedder):
    """EfficientNet-Lite0 (ImageNet-pretrained, from PyPI): its head features averaged over the grid."""

    identity = "efficientnet-lite0:pooled"

    def __init__(self, device: torch.device | str = "cpu") -> None:
        from .image_encoders import load_image_encoder

        # channels-last convolutions: the same features (to float32 rounding), 1.6x faster on a CPU
        self.encoder = load_image_encoder(EFFICIENTNET_EMBEDDER).to(device)
        self.encoder.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.device = torch.device(device)

    @torch.no_grad()
    def embed(self, images: Sequence[Any], *, batch_size: int = 32) -> torch.Tensor:
        from ..images import load_image

        chunks = []
        for start in range(0, len(images), batch_size):
            pixels = self.encoder.preprocess([load_image(image) for image in images[start : start + batch_size]])  # (b, 3, H, W)
            pixels = pixels.to(self.device, memory_format=torch.channels_last)
            chunks.append(self.encoder(pixels).mean(dim=1).float().cpu())  # (b, P, 1280) -> (b, 1280)
        return torch.cat(chunks)


class ModelEmbedder(ImageEmbedder):
    """Any vlmkit model's ``embed_images`` (L2-normalised vectors); ``name`` is what it was loaded as."""

    def __init__(self, model: Any, name: str) -> None:
        self.model = model
        self.model.require("embed")
        self.identity = f"vlmkit:{name}"

    def embed(self, images: Sequence[Any], *, batch_size: int = 32) -> torch.Tensor:
        return torch.from_numpy(self.model.embed_images(list(images), batch_size=batch_size)).float()


def load_embedder(name: str, *, device: torch.device | str = "cpu", load: Any = None) -> ImageEmbedder:
    """``"efficientnet-lite0"`` (built in, offline) or a vlmkit model name / directory that embeds
    images, loaded with ``load`` (:func:`vlmkit.load`; the loader hands itself to the families it
    loads, so that this module does not import the loader above it)."""
    if name == EFFICIENTNET_EMBEDDER:
        return PooledEfficientNet(device)
    if load is None:
        raise InputError(f"embedder {name!r} is a vlmkit model: pass load=vlmkit.load to load it")
    return ModelEmbedder(load(name, device=device), name)


# -- the task interface ---------------------------------------------------------------------------


class ClipCapTasks(PromptedTasks):
    """A :class:`ClipCap` checkpoint behind the vlmkit task interface: caption, ask, generate."""

    vqa_length_penalty = -1.0  # short answers under beam search, as BLIP-2

    def __init__(self, name: str, net: ClipCap, embedder: ImageEmbedder, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__(name, KINDS[ARCHITECTURE], device, dtype)
        self.net = net.to(device).eval()
        self.caption_prompt = net.config.caption_prompt
        self.vqa_prompt = net.config.vqa_prompt
        self.embedder = embedder

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.net.parameters())

    def _embeddings(self, images: list[Any], batch_size: int) -> torch.Tensor:
        """(N, E): an image given several times in one call (one image, many questions) is embedded once."""
        keys = [os.fspath(im) if isinstance(im, (str, os.PathLike)) else id(im) for im in images]
        first: dict[Any, int] = {}
        for index, key in enumerate(keys):
            first.setdefault(key, index)
        unique = list(first.values())
        vectors = self.embedder.embed([images[i] for i in unique], batch_size=batch_size)  # (U, E)
        position = {key: row for row, key in enumerate(first)}
        if vectors.shape[1] != self.net.config.embed_dim:
            raise InputError(f"{self.embedder.identity} gives {vectors.shape[1]}-d vectors, the mapper takes {self.net.config.embed_dim}")
        return vectors[[position[k] for k in keys]]

    def _generate(self, images: list[Any], prompts: list[str], options: GenerationOptions, batch_size: int) -> list[str]:
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        texts: list[str] = []
        with torch.inference_mode():
            vectors = self._embeddings(images, batch_size)
            for start in range(0, len(images), batch_size):
                chunk = vectors[start : start + batch_size].to(self.device)
                texts += self.net.generate(chunk, prompts[start : start + batch_size], **options.to_hf())
        return texts



def load_native(path: str | os.PathLike, *, name: str, device: torch.device, dtype: torch.dtype, load: Any = None) -> ClipCapTasks:
    """Load a ``vlmkit-clipcap`` checkpoint directory for the task interface, with the embedder it
    names (a vlmkit model is loaded with ``load``, the loader that called this)."""
    net = ClipCap.from_pretrained(path, dtype=dtype)
    return ClipCapTasks(name, net, load_embedder(net.config.embedder, device=device, load=load), device, dtype)
