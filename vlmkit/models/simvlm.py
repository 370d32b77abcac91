"""vlmkit's SimVLM (Wang et al., 2022, "SimVLM: Simple Visual Language Model Pretraining with Weak
Supervision"): one transformer trained end to end with a single prefix language-modelling objective.

The image's patch tokens and the first words of the text form the prefix, which every prefix position
reads in both directions; the rest of the text (the suffix) is predicted one token at a time, and
only suffix tokens carry the loss (:func:`vlmkit.losses.prefix_lm.prefix_lm_loss`). For captions the
split point is random, and an empty text prefix teaches captioning from the image alone; for VQA the
prefix is the question (``"question: {} answer:"``) and the suffix the answer, as SimVLM fine-tunes.

Formulation: the paper runs image + prefix through an encoder and the suffix through a decoder. This
is the equivalent *decoder-only* form: one stack of pre-norm transformer blocks over
``[image tokens, [CLS], prefix, suffix, [SEP]]`` with the prefix-LM attention mask
(:func:`prefix_lm_mask`: bidirectional over image + prefix, causal after). Generation caches keys
and values: a prefix position never sees the suffix, so its keys and values do not change as the
suffix grows, and decoding with the cache gives the tokens decoding without it gives.

Image side at CPU scale: SimVLM trains a ResNet conv stem and a ViT from scratch; here a frozen
ImageNet-pretrained EfficientNet-Lite0 stands in for the stem. Its 7x7 feature grid (49 tokens of
1,280 channels, cacheable with :mod:`vlmkit.feature_cache`) is layer-normed, projected to the model
width and given learned positions; everything after it trains from scratch.

A checkpoint is a directory: ``config.json`` (``model_type: vlmkit-simvlm``), ``model.safetensors``
and the text tokenizer's files; the frozen encoder is named in the config and loaded by name.
``vlmkit.load(dir)`` wraps it for caption / ask / generate.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from ..layers.masks import prefix_lm_mask
from .base import GenerationOptions, PromptedTasks
from .checkpoint import load_weights, read_config, save_weights, write_config
from .image_encoders import FrozenImageEncoder, load_image_encoder
from .kinds import KINDS

__all__ = ["SimVLMConfig", "SimVLMOutput", "SimVLM", "SimVLMTasks", "prefix_lm_mask", "load_native", "MODEL_TYPE", "VQA_PROMPT"]

MODEL_TYPE = "vlmkit-simvlm"
ARCHITECTURE = "VlmkitSimVLM"
#: SimVLM's VQA fine-tuning: the question is the prefix, the answer the suffix.
VQA_PROMPT = "question: {} answer:"


@dataclass(frozen=True)
class SimVLMConfig:
    vocab_size: int
    pad_token_id: int = 0
    bos_token_id: int = 2  # starts every text: [CLS] in a BERT-layout vocabulary
    eos_token_id: int = 3  # ends every suffix: [SEP]
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 1024
    dropout: float = 0.1
    #: Text positions (bos, prefix, suffix and eos together).
    max_text_length: int = 64
    image_encoder: str = "efficientnet-lite0"
    encoder_layer: int = -2
    image_hidden_size: int = 1280  # E: width of the frozen encoder's tokens
    num_image_tokens: int = 49  # P: how many it gives
    #: Captioning's text prefix: "" captions from the image alone.
    caption_prompt: str = ""
    vqa_prompt: str = VQA_PROMPT

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size", "max_text_length",
                     "image_hidden_size", "num_image_tokens"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.hidden_size % self.num_heads:
            raise InputError(f"hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads}")
        if self.max_text_length < 3:
            raise InputError(f"max_text_length must be at least 3 (bos, one token, eos), got {self.max_text_length}")
        if not 0.0 <= self.dropout < 1.0:
            raise InputError(f"dropout must be in [0, 1), got {self.dropout}")
        if "{}" not in self.vqa_prompt:
            raise InputError(f"vqa_prompt {self.vqa_prompt!r} has no '{{}}' for the question")


@dataclass(frozen=True)
class SimVLMOutput:
    logits: torch.Tensor  # (B, T, V): at text position t, the next token's scores
    hidden_states: torch.Tensor  # (B, P+T, D): the last block's output, image then text


KVCache = list[tuple[torch.Tensor, torch.Tensor]]  # per block: keys, values (B, H, L, Dh)


# -- blocks, in the order the data flows ------------------------------------------------------------


class ImageEmbedding(nn.Module):
    """Frozen encoder tokens (B, P, E) -> model tokens (B, P, D) with learned positions."""

    def __init__(self, config: SimVLMConfig) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(config.image_hidden_size)
        self.proj = nn.Linear(config.image_hidden_size, config.hidden_size)
        self.position = nn.Parameter(torch.zeros(1, config.num_image_tokens, config.hidden_size))
        nn.init.normal_(self.position, std=0.02)

    def forward(self, image_embeds: torch.Tensor) -> torch.Tensor:
        if image_embeds.shape[1] != self.position.shape[1]:
            raise InputError(f"expected {self.position.shape[1]} image tokens, got {image_embeds.shape[1]}")
        return self.proj(self.norm(image_embeds)) + self.position  # (B, P, D)


class TextEmbedding(nn.Module):
    """Token ids (B, T) -> (B, T, D): word plus learned position embeddings from ``start``."""

    def __init__(self, config: SimVLMConfig) -> None:
        super().__init__()
        self.token = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position = nn.Embedding(config.max_text_length, config.hidden_size)
        nn.init.normal_(self.token.weight, std=0.02)
        nn.init.normal_(self.position.weight, std=0.02)

    def forward(self, input_ids: torch.Tensor, start: int = 0) -> torch.Tensor:
        positions = torch.arange(start, start + input_ids.shape[1], device=input_ids.device)
        return self.token(input_ids) + self.position(positions)[None]


class SelfAttention(nn.Module):
    def __init__(self, config: SimVLMConfig) -> None:
        super().__init__()
        self.heads = config.num_heads
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.out = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout = config.dropout

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None, past: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)  # 3 x (B, H, T, Dh)
        if past is not None:  # new queries see every cached key: they come after the whole prefix
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        attn_mask = mask[:, None] if mask is not None else None  # (B, 1, T, L)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).reshape(b, t, d)), (k, v)


class MLP(nn.Module):
    def __init__(self, config: SimVLMConfig) -> None:
        super().__init__()
        self.up = nn.Linear(config.hidden_size, config.intermediate_size)
        self.down = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.gelu(self.up(x)))


class Block(nn.Module):
    """Pre-norm transformer block: attention under the prefix-LM mask, then the MLP."""

    def __init__(self, config: SimVLMConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(config.hidden_size)
        self.attention = SelfAttention(config)
        self.norm2 = nn.LayerNorm(config.hidden_size)
        self.mlp = MLP(config)
        self.drop = nn.Dropout(config.dropout)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None, past: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        attended, cache = self.attention(self.norm1(x), mask, past)
        x = x + self.drop(attended)
        return x + self.drop(self.mlp(self.norm2(x))), cache


# -- the model ----------------------------------------------------------------------------------------


class SimVLM(nn.Module):
    """Image tokens and text in one decoder-only transformer under the prefix-LM mask. ``forward``
    gives logits for the text positions; the loss is :func:`vlmkit.losses.prefix_lm.prefix_lm_loss`."""

    def __init__(self, config: SimVLMConfig) -> None:
        super().__init__()
        self.config = config
        self.image = ImageEmbedding(config)
        self.text = TextEmbedding(config)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.num_layers))
        self.norm = nn.LayerNorm(config.hidden_size)
        # The output layer reuses the word embeddings (tied), with its own bias.
        self.output_bias = nn.Parameter(torch.zeros(config.vocab_size))

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.linear(self.norm(hidden), self.text.token.weight, self.output_bias)  # (B, T, V)

    def forward(
        self,
        image_embeds: torch.Tensor,
        input_ids: torch.Tensor,
        prefix_lengths: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
    ) -> SimVLMOutput:
        """``image_embeds`` (B, P, E) frozen encoder tokens; ``input_ids`` (B, T) text, right-padded,
        starting with bos; ``prefix_lengths`` (B,) how many text tokens (bos included) belong to the
        prefix; ``attention_mask`` (B, T) 1 for real tokens."""
        if input_ids.shape[1] > self.config.max_text_length:
            raise InputError(f"text of {input_ids.shape[1]} tokens is longer than max_text_length {self.config.max_text_length}")
        image = self.image(image_embeds)  # (B, P, D)
        x = torch.cat([image, self.text(input_ids).to(image.dtype)], dim=1)  # (B, P+T, D)
        p = image.shape[1]
        padding = None
        if attention_mask is not None:
            padding = torch.cat([torch.ones(image.shape[:2], dtype=torch.bool, device=x.device), attention_mask.bool()], dim=1)
        mask = prefix_lm_mask(prefix_lengths.to(x.device) + p, x.shape[1], padding)  # (B, P+T, P+T)
        for block in self.blocks:
            x, _ = block(x, mask)
        return SimVLMOutput(logits=self._logits(x[:, p:]), hidden_states=x)

    # -- generation ------------------------------------------------------------------------------------

    @torch.no_grad()
    def generate(
        self, image_embeds: torch.Tensor, prefixes: list[list[int]], *, max_new_tokens: int = 30, use_cache: bool = True
    ) -> list[list[int]]:
        """Greedy continuations (token ids, eos excluded) of each text prefix (bos included) after its
        image. Rows are decoded in groups of one prefix length, so no padding enters and a row's
        result does not depend on what else is in the batch."""
        if len(prefixes) != image_embeds.shape[0]:
            raise InputError(f"{image_embeds.shape[0]} images and {len(prefixes)} prefixes")
        out: list[list[int]] = [[] for _ in prefixes]
        groups: dict[int, list[int]] = {}
        for index, prefix in enumerate(prefixes):
            if not 1 <= len(prefix) < self.config.max_text_length:
                raise InputError(f"a prefix of {len(prefix)} tokens does not fit max_text_length {self.config.max_text_length}")
            groups.setdefault(len(prefix), []).append(index)
        for length, rows in groups.items():
            ids = torch.tensor([prefixes[i] for i in rows], dtype=torch.long, device=image_embeds.device)  # (b, Tp)
            steps = min(max_new_tokens, self.config.max_text_length - length)
            decode = self._decode_cached if use_cache else self._decode_uncached
            for i, tokens in zip(rows, decode(image_embeds[rows], ids, steps), strict=True):
                out[i] = tokens
        return out

    def _finish(self, generated: torch.Tensor) -> list[list[int]]:
        rows = []
        for row in generated.tolist():
            rows.append(row[: row.index(self.config.eos_token_id)] if self.config.eos_token_id in row else row)
        return rows

    def _decode_cached(self, image_embeds: torch.Tensor, prefix: torch.Tensor, steps: int) -> list[list[int]]:
        image = self.image(image_embeds)  # (b, P, D)
        x = torch.cat([image, self.text(prefix).to(image.dtype)], dim=1)  # (b, P+Tp, D): all prefix, no mask
        cache: KVCache = []
        for block in self.blocks:
            x, kv = block(x, None)
            cache.append(kv)
        token = self._logits(x[:, -1:]).argmax(dim=-1)  # (b, 1)
        generated, done = [token], token[:, 0] == self.config.eos_token_id
        position = prefix.shape[1]
        for _ in range(steps - 1):
            if bool(done.all()):
                break
            x = self.text(token, start=position).to(image.dtype)  # (b, 1, D)
            for index, block in enumerate(self.blocks):
                x, cache[index] = block(x, None, cache[index])
            token = self._logits(x).argmax(dim=-1)
            generated.append(token)
            done = done | (token[:, 0] == self.config.eos_token_id)
            position += 1
        return self._finish(torch.cat(generated, dim=1))

    def _decode_uncached(self, image_embeds: torch.Tensor, prefix: torch.Tensor, steps: int) -> list[list[int]]:
        lengths = torch.full((prefix.shape[0],), prefix.shape[1], device=prefix.device)
        ids = prefix
        for _ in range(steps):
            token = self(image_embeds, ids, lengths).logits[:, -1:].argmax(dim=-1)  # (b, 1)
            ids = torch.cat([ids, token], dim=1)
            if bool((ids[:, prefix.shape[1] :] == self.config.eos_token_id).any(dim=1).all()):
                break
        return self._finish(ids[:, prefix.shape[1] :])

    # -- checkpoints -----------------------------------------------------------------------------------

    def save_pretrained(self, directory: str | os.PathLike, tokenizer: Any | None = None) -> None:
        """``config.json`` + ``model.safetensors`` (+ the tokenizer's files when given)."""
        path = write_config(directory, self.config, model_type=MODEL_TYPE, architecture=ARCHITECTURE)
        save_weights(self.state_dict(), path / "model.safetensors")
        if tokenizer is not None:
            tokenizer.save_pretrained(path)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> SimVLM:
        path = Path(directory)
        config, _ = read_config(path, SimVLMConfig, model_types=MODEL_TYPE)
        model = cls(config)
        load_weights(model, path / "model.safetensors")
        return model.eval()


# -- the task interface -------------------------------------------------------------------------------


def _image_key(image: Any) -> Any:
    """Identical inputs within one call are encoded once: files by path, bytes by value, objects by id."""
    if isinstance(image, (str, os.PathLike)):
        return ("path", os.fspath(image))
    if isinstance(image, bytes):
        return ("bytes", image)
    return ("object", id(image))


class SimVLMTasks(PromptedTasks):
    """A :class:`SimVLM` checkpoint behind the vlmkit task interface (caption, ask, generate).
    Decoding is greedy; answers and captions are the continuation of the text prefix."""

    def __init__(self, name: str, net: SimVLM, tokenizer: Any, encoder: FrozenImageEncoder, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__(name, KINDS[ARCHITECTURE], device, dtype)
        if encoder.hidden_size != net.config.image_hidden_size:
            raise InputError(f"{net.config.image_encoder} gives {encoder.hidden_size}-wide tokens, the model reads {net.config.image_hidden_size}")
        self.net = net.to(device, dtype).eval()
        self.caption_prompt = net.config.caption_prompt
        self.vqa_prompt = net.config.vqa_prompt
        self.encoder = encoder.to(device, dtype).eval()
        self.tokenizer = tokenizer

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.net.parameters())

    def prefix_ids(self, text: str) -> list[int]:
        """bos + the prefix's tokens; a prefix too long for the model keeps its end."""
        ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text.strip() else []
        room = self.net.config.max_text_length - 2  # bos, and at least one token to generate
        return [self.net.config.bos_token_id] + ids[-room:] if len(ids) > room else [self.net.config.bos_token_id] + ids

    def _features(self, images: list[Any], batch_size: int) -> tuple[torch.Tensor, list[int]]:
        """Encoder tokens of the distinct images (U, P, E), and each input's row in them."""
        keys: dict[Any, int] = {}
        rows: list[int] = []
        unique: list[Any] = []
        for image in images:
            key = _image_key(image)
            if key not in keys:
                keys[key] = len(unique)
                unique.append(image)
            rows.append(keys[key])
        encoder = self.encoder
        chunks = [
            encoder(torch.stack(batch).to(self.device, self.dtype))
            for batch in self._load_batches(unique, batch_size, transform=lambda im: encoder.preprocess([im])[0])
        ]
        return torch.cat(chunks), rows

    def _generate(self, images: list[Any], prefixes: list[str], options: GenerationOptions, batch_size: int) -> list[str]:
        if options.do_sample or options.num_beams > 1:
            raise InputError("SimVLM checkpoints decode greedily: use do_sample=False and num_beams=1")
        ids = [self.prefix_ids(p) for p in prefixes]
        limit = options.to_hf()["max_new_tokens"]
        texts = [""] * len(ids)
        with torch.inference_mode():
            features, rows = self._features(images, batch_size)
            groups: dict[int, list[int]] = {}
            for index, seq in enumerate(ids):
                groups.setdefault(len(seq), []).append(index)
            for members in groups.values():  # one prefix length per batch: no padding, batch-invariant
                for start in range(0, len(members), batch_size):
                    chunk = members[start : start + batch_size]
                    image_embeds = features[[rows[i] for i in chunk]]  # (b, P, E)
                    generated = self.net.generate(image_embeds, [ids[i] for i in chunk], max_new_tokens=limit)
                    for i, tokens in zip(chunk, generated, strict=True):
                        texts[i] = self.tokenizer.decode(tokens, skip_special_tokens=True).strip()
        return texts



def load_native(path: str | os.PathLike, *, name: str, device: torch.device, dtype: torch.dtype, load: Any = None) -> SimVLMTasks:
    """Load a ``vlmkit-simvlm`` checkpoint directory for the task interface."""
    import transformers

    net = SimVLM.from_pretrained(path)
    # The fast tokenizer class directly: AutoTokenizer would read config.json, which is not a transformers one.
    tokenizer = transformers.PreTrainedTokenizerFast.from_pretrained(path)
    encoder = load_image_encoder(net.config.image_encoder, layer=net.config.encoder_layer, dtype=dtype)
    return SimVLMTasks(name, net, tokenizer, encoder, device, dtype)
