"""CoCa: Contrastive Captioners are Image-Text Foundation Models (Yu et al., 2022).

One image encoder and one text decoder trained with two losses at once. The decoder's first half is
a unimodal causal text decoder without cross-attention; a learned [CLS] token appended after the
text gives, at its output, the text embedding. The decoder's second half is a multimodal decoder:
causal self-attention over the unimodal outputs plus cross-attention to image tokens, predicting the
caption. Task-specific attentional poolers (learned queries cross-attending to the encoder's tokens)
sit on the image side: one query gives the image embedding for the contrastive loss, N queries give
the tokens the multimodal decoder attends to. The loss is the symmetric InfoNCE on the unimodal
embeddings plus lambda times the captioning loss (:func:`vlmkit.losses.coca.coca_loss`); one forward
pass serves both.

The paper trains its ViT image encoder from scratch. At the scale this toolkit trains on a CPU the
frozen ImageNet-pretrained EfficientNet-Lite0 stands in for the encoder's lower layers: its 7x7 grid
of features (cacheable on disk) feeds ``image_layers`` trainable transformer layers, which play the
encoder's upper layers. The model itself takes those frozen features; :class:`CoCaTasks` adds the
frozen encoder for images.

A checkpoint is a directory: ``config.json`` (``model_type: vlmkit-coca``, :class:`CoCaConfig`),
``model.safetensors`` and the text tokenizer's files. ``vlmkit.load(dir)`` wraps it for embed /
similarity / classify / match (cosine of the unimodal embeddings) and caption (greedy or beam search
through the multimodal decoder).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InputError
from ..layers.logit_scale import logit_scale as clamped_logit_scale
from .base import GenerationOptions, VisionLanguageModel, as_list, check_texts, decoding
from .checkpoint import load_weights, read_config, save_weights, write_config
from .image_encoders import FrozenImageEncoder, load_image_encoder
from .kinds import KINDS

__all__ = [
    "CoCaConfig", "AttentionalPooler", "Block", "CoCa", "CoCaOutput", "CoCaTasks", "load_native", "tokenize",
    "caption_labels", "tokenizer_config", "MODEL_TYPE", "IGNORE_INDEX",
]

MODEL_TYPE = "vlmkit-coca"
ARCHITECTURE = "VlmkitCoCa"
IGNORE_INDEX = -100
WEIGHTS = "model.safetensors"


@dataclass(frozen=True)
class CoCaConfig:
    vocab_size: int
    pad_token_id: int = 0
    #: Starts every caption (the tokenizer's ``bos_token``, [DEC] in vlmkit's WordPiece vocabularies).
    bos_token_id: int = 5
    #: Ends every caption (the tokenizer's ``sep_token`` in a BERT layout).
    eos_token_id: int = 3
    #: The frozen encoder in front of the trainable image layers, and its feature grid.
    image_encoder: str = "efficientnet-lite0"
    encoder_layer: int = -2
    image_feature_size: int = 1280
    image_tokens: int = 49
    hidden_size: int = 256
    num_heads: int = 4
    mlp_ratio: int = 4
    image_layers: int = 1
    unimodal_layers: int = 2
    multimodal_layers: int = 2
    #: Queries of the captioning pooler (the contrastive pooler has one).
    caption_queries: int = 16
    embed_dim: int = 128
    #: Text positions, the [BOS] and [EOS] included.
    max_text_length: int = 32
    logit_scale_init: float = math.log(1 / 0.07)

    def __post_init__(self) -> None:
        for name in ("vocab_size", "image_feature_size", "image_tokens", "hidden_size", "num_heads", "mlp_ratio",
                     "caption_queries", "embed_dim"):
            if getattr(self, name) < 1:
                raise InputError(f"CoCa: {name} must be at least 1, got {getattr(self, name)}")
        for name in ("image_layers", "unimodal_layers", "multimodal_layers"):
            if getattr(self, name) < 0:
                raise InputError(f"CoCa: {name} must not be negative, got {getattr(self, name)}")
        if self.max_text_length < 2:
            raise InputError(f"CoCa: max_text_length must be at least 2 ([BOS] and [EOS]), got {self.max_text_length}")
        if self.hidden_size % self.num_heads:
            raise InputError(f"CoCa: hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads}")
        for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
            if not 0 <= getattr(self, name) < self.vocab_size:
                raise InputError(f"CoCa: {name} {getattr(self, name)} is outside the vocabulary of {self.vocab_size}")


# -- blocks -----------------------------------------------------------------------------------------


class Attention(nn.Module):
    """Multi-head attention of ``x`` over itself or over ``context``; ``mask`` is True where a query
    may attend to a key, (T, S) or (B, T, S)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def _split(self, x: Tensor) -> Tensor:
        B, T, D = x.shape
        return x.view(B, T, self.heads, D // self.heads).transpose(1, 2)  # (B, H, T, D/H)

    def forward(self, x: Tensor, context: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        context = x if context is None else context
        if mask is not None and mask.dim() == 3:
            mask = mask[:, None]  # (B, 1, T, S): the same for every head
        q, k, v = self._split(self.query(x)), self._split(self.key(context)), self._split(self.value(context))
        # In float32 even under bf16 autocast: PyTorch's CPU attention kernel is several times slower
        # in bfloat16 than in float32 at these sizes, and the attention itself is a small cost.
        with torch.autocast(q.device.type, enabled=False):
            attended = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask)  # (B, H, T, D/H)
        return self.out(attended.to(q.dtype).transpose(1, 2).flatten(2))  # (B, T, D)


class Mlp(nn.Sequential):
    def __init__(self, dim: int, ratio: int) -> None:
        super().__init__(nn.Linear(dim, ratio * dim), nn.GELU(), nn.Linear(ratio * dim, dim))


class Block(nn.Module):
    """A pre-LayerNorm transformer layer: self-attention (masked or not), cross-attention to
    ``context`` when built with ``cross_attention``, then an MLP. The image layers and the unimodal
    decoder use it without cross-attention, the multimodal decoder with."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int, *, cross_attention: bool) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attention = Attention(dim, heads)
        self.cross_norm = nn.LayerNorm(dim) if cross_attention else None
        self.cross_attention = Attention(dim, heads) if cross_attention else None
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, mlp_ratio)

    def forward(self, x: Tensor, mask: Tensor | None = None, context: Tensor | None = None) -> Tensor:
        x = x + self.attention(self.norm1(x), mask=mask)
        if self.cross_attention is not None and self.cross_norm is not None:
            if context is None:
                raise ValueError("a cross-attention block needs a context")
            x = x + self.cross_attention(self.cross_norm(x), context=context)
        return x + self.mlp(self.norm2(x))


class AttentionalPooler(nn.Module):
    """``num_queries`` learned queries cross-attending to the image tokens: (B, P, D) -> (B, Q, D)."""

    def __init__(self, dim: int, heads: int, num_queries: int) -> None:
        super().__init__()
        self.queries = nn.Parameter(torch.randn(num_queries, dim) * 0.02)
        self.context_norm = nn.LayerNorm(dim)
        self.attention = Attention(dim, heads)
        self.norm = nn.LayerNorm(dim)

    def forward(self, tokens: Tensor) -> Tensor:
        queries = self.queries.expand(tokens.shape[0], -1, -1)  # (B, Q, D)
        return self.norm(self.attention(queries, context=self.context_norm(tokens)))


def causal_mask(length: int, device: torch.device) -> Tensor:
    return torch.ones(length, length, dtype=torch.bool, device=device).tril()  # (T, T)


# -- the model --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CoCaOutput:
    image_emb: Tensor  # (B, E) L2-normalised, the contrastive pooler's
    text_emb: Tensor  # (B, E) L2-normalised, the unimodal decoder's [CLS]
    caption_logits: Tensor  # (B, T, V): position t predicts token t + 1
    logit_scale: Tensor  # () the multiplier of the contrastive logits


class CoCa(nn.Module):
    """Frozen-encoder features -> image tower + poolers; text -> unimodal then multimodal decoder."""

    def __init__(self, config: CoCaConfig) -> None:
        super().__init__()
        self.config = config
        D, heads, ratio = config.hidden_size, config.num_heads, config.mlp_ratio
        # Image side: the frozen grid, projected, then the trainable upper encoder layers.
        self.feature_norm = nn.LayerNorm(config.image_feature_size)
        self.feature_proj = nn.Linear(config.image_feature_size, D)
        self.image_positions = nn.Parameter(torch.randn(config.image_tokens, D) * 0.02)
        self.image_layers = nn.ModuleList(Block(D, heads, ratio, cross_attention=False) for _ in range(config.image_layers))
        self.image_norm = nn.LayerNorm(D)
        self.contrastive_pooler = AttentionalPooler(D, heads, 1)
        self.caption_pooler = AttentionalPooler(D, heads, config.caption_queries)
        self.image_projection = nn.Linear(D, config.embed_dim, bias=False)
        # Text side: token + position embeddings, the unimodal decoder ending in [CLS], the multimodal decoder.
        self.token_embedding = nn.Embedding(config.vocab_size, D)
        self.text_positions = nn.Parameter(torch.randn(config.max_text_length, D) * 0.02)
        self.cls_embedding = nn.Parameter(torch.randn(D) * 0.02)
        self.unimodal_layers = nn.ModuleList(Block(D, heads, ratio, cross_attention=False) for _ in range(config.unimodal_layers))
        self.text_norm = nn.LayerNorm(D)
        self.text_projection = nn.Linear(D, config.embed_dim, bias=False)
        self.multimodal_layers = nn.ModuleList(Block(D, heads, ratio, cross_attention=True) for _ in range(config.multimodal_layers))
        self.decoder_norm = nn.LayerNorm(D)
        self.lm_head = nn.Linear(D, config.vocab_size, bias=False)
        self.log_logit_scale = nn.Parameter(torch.tensor(float(config.logit_scale_init)))
        nn.init.normal_(self.token_embedding.weight, std=0.02)

    # -- image side -----------------------------------------------------------------------------

    def image_tokens(self, features: Tensor) -> Tensor:
        """Frozen encoder features (B, P, E_in) -> image tokens (B, P, D)."""
        if features.shape[1:] != (self.config.image_tokens, self.config.image_feature_size):
            raise InputError(
                f"CoCa expects ({self.config.image_tokens}, {self.config.image_feature_size}) features per image, "
                f"got {tuple(features.shape[1:])}"
            )
        x = self.feature_proj(self.feature_norm(features)) + self.image_positions  # (B, P, D)
        for layer in self.image_layers:
            x = layer(x)
        return self.image_norm(x)

    def image_embedding(self, tokens: Tensor) -> Tensor:
        """Image tokens (B, P, D) -> L2-normalised contrastive embedding (B, E)."""
        pooled = self.contrastive_pooler(tokens)[:, 0]  # (B, D)
        return F.normalize(self.image_projection(pooled), dim=-1)

    # -- text side ------------------------------------------------------------------------------

    def _embed_text(self, input_ids: Tensor) -> Tensor:
        if input_ids.shape[1] > self.config.max_text_length:
            raise InputError(f"CoCa: {input_ids.shape[1]} text tokens, more than max_text_length={self.config.max_text_length}")
        return self.token_embedding(input_ids) + self.text_positions[: input_ids.shape[1]]  # (B, T, D)

    def unimodal(self, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
        """The unimodal decoder over right-padded text and the [CLS] appended after it: the text
        tokens' outputs (B, T, D), which the multimodal decoder reads, and the L2-normalised text
        embedding (B, E). Text tokens attend causally; [CLS] attends to every real token."""
        B, T = input_ids.shape
        x = torch.cat([self._embed_text(input_ids), self.cls_embedding.expand(B, 1, -1)], dim=1)  # (B, T+1, D)
        keys = torch.cat([attention_mask.bool(), attention_mask.new_ones(B, 1, dtype=torch.bool)], dim=1)  # (B, T+1)
        mask = causal_mask(T + 1, x.device)[None] & keys[:, None, :]  # (B, T+1, T+1)
        for layer in self.unimodal_layers:
            x = layer(x, mask=mask)
        text_emb = F.normalize(self.text_projection(self.text_norm(x[:, T])), dim=-1)  # (B, E)
        return x[:, :T], text_emb

    def _unimodal_tokens(self, input_ids: Tensor) -> Tensor:
        """The text tokens' unimodal outputs without [CLS] (for decoding: [CLS] comes after every
        token, so under the causal mask no token ever sees it and the outputs are the same)."""
        x = self._embed_text(input_ids)  # (B, T, D)
        mask = causal_mask(x.shape[1], x.device)
        for layer in self.unimodal_layers:
            x = layer(x, mask=mask)
        return x

    def multimodal(self, text: Tensor, caption_tokens: Tensor) -> Tensor:
        """Unimodal outputs (B, T, D) and pooled image tokens (B, N, D) -> caption logits (B, T, V)."""
        mask = causal_mask(text.shape[1], text.device)
        x = text
        for layer in self.multimodal_layers:
            x = layer(x, mask=mask, context=caption_tokens)
        return self.lm_head(self.decoder_norm(x))

    def logit_scale(self) -> Tensor:
        """The contrastive logits' multiplier, ``exp`` of the learned log scale clamped to [1, 100]."""
        return clamped_logit_scale(self.log_logit_scale)

    # -- both -----------------------------------------------------------------------------------

    def forward(self, image_features: Tensor, input_ids: Tensor, attention_mask: Tensor) -> CoCaOutput:
        """One pass for both objectives: ``input_ids`` (B, T) are right-padded [BOS] caption [EOS]."""
        tokens = self.image_tokens(image_features)  # (B, P, D)
        text, text_emb = self.unimodal(input_ids, attention_mask)
        logits = self.multimodal(text, self.caption_pooler(tokens))  # (B, T, V)
        return CoCaOutput(self.image_embedding(tokens), text_emb, logits, self.logit_scale())

    @torch.no_grad()
    def generate(
        self, image_features: Tensor, *, prefix: list[int] | None = None, max_new_tokens: int = 30, num_beams: int = 1,
        length_penalty: float = 1.0,
    ) -> list[list[int]]:
        """Caption token ids per image (after [BOS] and ``prefix``, without [EOS]): greedy, or beam
        search scoring finished captions by total log-probability / length ** ``length_penalty``.
        No padding enters, so a caption does not depend on the other images of the batch."""
        cfg = self.config
        tokens = self.caption_pooler(self.image_tokens(image_features))  # (B, N, D)
        start = [cfg.bos_token_id, *(prefix or [])]
        steps = min(max_new_tokens, cfg.max_text_length - len(start))
        if steps < 1:
            raise InputError(f"CoCa: the prompt leaves no room in max_text_length={cfg.max_text_length}")
        banned = [cfg.pad_token_id, cfg.bos_token_id]
        if num_beams == 1:
            return self._greedy(tokens, start, steps, banned)
        return self._beam(tokens, start, steps, banned, num_beams, length_penalty)

    def _next_logprobs(self, ids: Tensor, caption_tokens: Tensor, banned: list[int]) -> Tensor:
        logits = self.multimodal(self._unimodal_tokens(ids), caption_tokens)[:, -1].float()  # (B, V)
        logits[:, banned] = float("-inf")
        return logits.log_softmax(dim=-1)

    def _greedy(self, caption_tokens: Tensor, start: list[int], steps: int, banned: list[int]) -> list[list[int]]:
        B, eos = caption_tokens.shape[0], self.config.eos_token_id
        ids = torch.tensor([start] * B, dtype=torch.long, device=caption_tokens.device)  # (B, T)
        done = torch.zeros(B, dtype=torch.bool, device=ids.device)
        for _ in range(steps):
            token = self._next_logprobs(ids, caption_tokens, banned).argmax(dim=-1)  # (B,)
            token = token.masked_fill(done, eos)
            ids = torch.cat([ids, token[:, None]], dim=1)
            done |= token == eos
            if bool(done.all()):
                break
        return [_until(row[len(start) :], eos) for row in ids.tolist()]

    def _beam(
        self, caption_tokens: Tensor, start: list[int], steps: int, banned: list[int], beams: int, length_penalty: float
    ) -> list[list[int]]:
        """Beam search over ``beams`` live captions per image. Each image keeps its ``beams`` best
        finished captions; it is done when its best live caption's score, normalised at the current
        length, cannot beat the worst of them (transformers' default stopping rule, exact when
        ``length_penalty`` is 0). Captions still live after the last step compete as they are."""
        B, eos, device = caption_tokens.shape[0], self.config.eos_token_id, caption_tokens.device
        context = caption_tokens.repeat_interleave(beams, dim=0)  # (B*K, N, D)
        ids = torch.tensor([start] * (B * beams), dtype=torch.long, device=device)  # (B*K, T)
        scores = torch.full((B, beams), float("-inf"), device=device)
        scores[:, 0] = 0.0  # one live beam at first: the others would only repeat it
        finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(B)]
        done = [False] * B

        def keep(b: int, score: float, length: int, text: list[int]) -> None:
            finished[b].append((score / length**length_penalty, text))
            finished[b].sort(key=lambda hypothesis: -hypothesis[0])
            del finished[b][beams:]

        for step in range(steps):
            logprobs = self._next_logprobs(ids, context, banned)  # (B*K, V)
            V = logprobs.shape[-1]
            candidates = (scores[:, :, None] + logprobs.view(B, beams, V)).view(B, beams * V)
            top_scores, top_index = candidates.topk(min(2 * beams, beams * V), dim=1)  # (B, 2K)
            rows: list[int] = []
            new_scores = torch.full((B, beams), float("-inf"), device=device)
            next_tokens = torch.full((B, beams), eos, dtype=torch.long, device=device)
            for b in range(B):
                kept = 0
                for score, index in zip(top_scores[b].tolist(), top_index[b].tolist(), strict=True):
                    if done[b] or score == float("-inf") or kept == beams:
                        break
                    beam, token = divmod(index, V)
                    if token == eos:
                        keep(b, score, step + 1, ids[b * beams + beam, len(start) :].tolist())
                        continue
                    rows.append(b * beams + beam)
                    new_scores[b, kept], next_tokens[b, kept] = score, token
                    kept += 1
                rows += [b * beams] * (beams - kept)  # dead slots (score -inf) copy any row
                best_live = float(new_scores[b].max())
                if len(finished[b]) == beams and best_live / (step + 1) ** length_penalty <= finished[b][-1][0]:
                    done[b] = True
                    new_scores[b] = float("-inf")
            ids = torch.cat([ids[rows], next_tokens.view(-1, 1)], dim=1)
            scores = new_scores
            if all(done):
                break
        length = ids.shape[1] - len(start)
        for b in range(B):
            for k in range(beams):
                if scores[b, k] > float("-inf"):
                    keep(b, float(scores[b, k]), length, ids[b * beams + k, len(start) :].tolist())
        return [f[0][1] for f in finished]

    # -- checkpoints ----------------------------------------------------------------------------

    def save_pretrained(self, directory: str | os.PathLike, tokenizer: Any | None = None) -> None:
        """``config.json`` + ``model.safetensors`` (+ the tokenizer's files when given)."""
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        save_weights(self.state_dict(), path / WEIGHTS)
        if tokenizer is not None:
            tokenizer.save_pretrained(path)
        write_config(path, self.config, model_type=MODEL_TYPE, architecture=ARCHITECTURE)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> CoCa:
        path = Path(directory)
        config, _ = read_config(path, CoCaConfig, model_types=MODEL_TYPE)
        model = cls(config)
        load_weights(model, path / WEIGHTS)
        return model.eval()


def _until(ids: list[int], eos: int) -> list[int]:
    return ids[: ids.index(eos)] if eos in ids else ids


def tokenize(tokenizer: Any, texts: list[str], max_length: int, device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
    """Texts -> right-padded ``[BOS] tokens [EOS]`` ids and attention mask, (B, T) each, at most
    ``max_length`` long; training and inference share it so that both see the same layout."""
    rows = []
    for text in texts:
        words = list(tokenizer(text, add_special_tokens=False)["input_ids"])[: max_length - 2]
        rows.append([tokenizer.bos_token_id, *words, tokenizer.sep_token_id])
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    return ids.to(device), mask.to(device)


def caption_labels(input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """Next-token targets aligned with the caption logits: position t's label is token t + 1;
    padding and the last position are ``IGNORE_INDEX``. (B, T)."""
    labels = input_ids.masked_fill(attention_mask == 0, IGNORE_INDEX)[:, 1:]
    return torch.cat([labels, labels.new_full((labels.shape[0], 1), IGNORE_INDEX)], dim=1)


def tokenizer_config(tokenizer: Any) -> dict[str, int]:
    """The special-token ids a :class:`CoCaConfig` takes from its tokenizer."""
    for name in ("pad_token_id", "bos_token_id", "sep_token_id"):
        if getattr(tokenizer, name, None) is None:
            raise InputError(f"CoCa needs a tokenizer with a {name.removesuffix('_id')}")
    return {
        "vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.sep_token_id,
    }


# -- the task interface -----------------------------------------------------------------------------


class CoCaTasks(VisionLanguageModel):
    """A :class:`CoCa` checkpoint behind the vlmkit task interface: embeddings, similarity, zero-shot
    classification and match from the unimodal embeddings; captions from the multimodal decoder."""

    def __init__(self, name: str, net: CoCa, tokenizer: Any, encoder: FrozenImageEncoder, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__(name, KINDS[ARCHITECTURE], device, dtype)
        self.net = net.to(device, dtype).eval()
        self.encoder = encoder.to(device, dtype).eval()
        self.tokenizer = tokenizer

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.net.parameters())

    def logit_scale(self) -> float:
        return float(self.net.logit_scale().detach())

    def _features(self, images: list[Any], batch_size: int) -> Tensor:
        encoder = self.encoder
        chunks = [
            encoder(torch.stack(batch).to(self.device, self.dtype))
            for batch in self._load_batches(images, batch_size, transform=lambda im: encoder.preprocess([im])[0])
        ]
        return torch.cat(chunks)  # (N, P, E_in)

    def embed_images(self, images: Any, *, batch_size: int = 32) -> np.ndarray:
        image_list = as_list(images, "images")
        chunks = []
        with torch.inference_mode():
            for start in range(0, len(image_list), batch_size):
                features = self._features(image_list[start : start + batch_size], batch_size)
                chunks.append(self.net.image_embedding(self.net.image_tokens(features)).float().cpu().numpy())
        return np.concatenate(chunks).astype(np.float32)

    def embed_texts(self, texts: Any, *, batch_size: int = 64) -> np.ndarray:
        text_list = check_texts(as_list(texts, "texts"), "texts")
        chunks = []
        with torch.inference_mode():
            for start in range(0, len(text_list), batch_size):
                ids, mask = tokenize(self.tokenizer, text_list[start : start + batch_size], self.net.config.max_text_length, self.device)
                chunks.append(self.net.unimodal(ids, mask)[1].float().cpu().numpy())
        return np.concatenate(chunks).astype(np.float32)

    def caption(
        self, images: Any, prompt: str | None = None, *, options: GenerationOptions | None = None, batch_size: int = 8
    ) -> list[str]:
        """Greedy (``num_beams=1``) or beam-search captions; ``prompt`` starts the caption and is kept."""
        options = decoding(options, "caption")
        if options.do_sample:
            raise InputError("CoCa captions are decoded greedily or by beam search; sampling is not offered")
        image_list = as_list(images, "images")
        prefix = list(self.tokenizer(prompt, add_special_tokens=False)["input_ids"]) if prompt else []
        beams = options.to_hf()
        captions: list[str] = []
        with torch.inference_mode():
            for start in range(0, len(image_list), batch_size):
                features = self._features(image_list[start : start + batch_size], batch_size)
                ids = self.net.generate(features, prefix=prefix, max_new_tokens=beams["max_new_tokens"], num_beams=beams["num_beams"],
                                        length_penalty=beams.get("length_penalty", 1.0))
                captions += self.tokenizer.batch_decode([prefix + row for row in ids], skip_special_tokens=True)
        return [c.strip() for c in captions]


def load_native(path: str | os.PathLike, *, name: str, device: torch.device, dtype: torch.dtype, load: Any = None) -> CoCaTasks:
    """Load a ``vlmkit-coca`` checkpoint directory for the task interface."""
    from transformers import PreTrainedTokenizerFast

    net = CoCa.from_pretrained(path)
    # The fast tokenizer's own class reads tokenizer.json directly; AutoTokenizer would first try to
    # read config.json as a transformers model config.
    tokenizer = PreTrainedTokenizerFast.from_pretrained(path)
    encoder = load_image_encoder(net.config.image_encoder, layer=net.config.encoder_layer)
    if encoder.hidden_size != net.config.image_feature_size:
        raise InputError(f"{path}: CoCa reads {net.config.image_feature_size}-wide features but {net.config.image_encoder} gives {encoder.hidden_size}")
    return CoCaTasks(name, net, tokenizer, encoder, device, dtype)
