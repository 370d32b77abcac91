"""The BLIP-2 Querying Transformer (Q-Former) of Li et al., 2023, "BLIP-2: Bootstrapping Language-Image
Pre-training with Frozen Image Encoders and Large Language Models".

The Q-Former bridges a frozen image encoder and text. It is a BERT whose input starts with ``Q``
learned query embeddings, followed by the text tokens:

* self-attention is shared by queries and text; what may see what is set by a mask (the paper's
  Figure 2, built by :func:`attention_mask`): ITC keeps them apart, ITM lets all see all, ITG lets
  text see the queries and earlier text while the queries never see text;
* in every ``cross_attention_frequency``-th layer (from layer 0) the *query* positions, and only they,
  cross-attend to the frozen image features;
* queries and text run through separate feed-forward blocks (LAVIS's ``intermediate_query`` /
  ``output_query`` beside BERT's ``intermediate`` / ``output``), both initialised from BERT.

InstructBLIP (Dai et al., 2023, "InstructBLIP: Towards General-purpose Vision-Language Models with
Instruction Tuning") makes the query outputs depend on the instruction: the instruction's tokens join
the queries in the ITM-style pass (all positions see each other; the queries alone cross-attend to
the image) and only the query positions leave the Q-Former (:meth:`QFormer.encode_instructed`).

A learned LayerNorm over the image features (BLIP-2's ``ln_vision``) is optional
(``image_layer_norm``): transformers' vision towers apply one already.

On top sit the stage-1 heads: ``vision_proj`` and ``text_proj`` for image-text contrastive learning
(ITC, with the learned temperature ``temp``), ``itm_head`` for image-text matching (ITM), and a BERT
LM head for image-grounded text generation (ITG). The module computes no losses: the pure functions
in ``vlmkit.losses`` take what it returns (:meth:`QFormer.image_features`,
:meth:`QFormer.text_features`, ``temp``, :meth:`QFormer.itm_logits`, :meth:`QFormer.forward_itg`).

Weights come from a BERT checkpoint (:meth:`QFormer.from_bert`, as BLIP-2 starts stage 1), from a
transformers ``Blip2ForImageTextRetrieval`` checkpoint (:meth:`QFormer.from_blip2_retrieval`), or from
our own safetensors files (:meth:`QFormer.save_pretrained` / :meth:`QFormer.from_pretrained`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import Tensor, nn

from ..errors import InputError, ModelNotFoundError
from .checkpoint import load_weights, read_config, save_weights, write_config

__all__ = [
    "QFormerConfig",
    "QFormer",
    "QFormerOutput",
    "QFormerLMOutput",
    "MaskMode",
    "attention_mask",
    "INITIAL_TEMPERATURE",
]

MODEL_TYPE = "vlmkit-qformer"

#: ITC temperature at initialisation, as in BLIP and BLIP-2.
INITIAL_TEMPERATURE = 0.07

MaskMode = Literal["unimodal", "bidirectional", "causal"]

_ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}


@dataclass(frozen=True)
class QFormerConfig:
    """Sizes of a Q-Former. Defaults are BLIP-2's: BERT-base, 32 queries, cross-attention in every
    other layer, ViT-g image features (1408 wide), a 256-d ITC space, and BERT's uncased vocabulary
    plus the ``[DEC]`` token that starts ITG text (id 30522, so 30523 rows)."""

    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    vocab_size: int = 30523
    max_position_embeddings: int = 512
    layer_norm_eps: float = 1e-12
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    hidden_act: str = "gelu"
    initializer_range: float = 0.02
    num_query_tokens: int = 32
    #: Layer ``i`` cross-attends to the image when ``i % cross_attention_frequency == 0``.
    cross_attention_frequency: int = 2
    #: Width of the frozen image features that the queries cross-attend to.
    encoder_hidden_size: int = 1408
    #: A learned LayerNorm over the frozen image features before cross-attention (BLIP-2's
    #: ``ln_vision``). Off for transformers checkpoints, whose vision tower applies it already
    #: (``post_layernorm``); on for features read from inside an encoder (layer -2, a CNN map).
    image_layer_norm: bool = False
    #: Size of the ITC space (``vision_proj`` and ``text_proj`` outputs).
    embed_dim: int = 256
    pad_token_id: int = 0
    #: ``[DEC]``: replaces the first token ([CLS]) of ITG text, telling the model to decode (BLIP-2
    #: adds it to BERT's tokenizer as ``bos_token``). ``None`` leaves ITG input ids untouched.
    dec_token_id: int | None = 30522

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise InputError(
                f"hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads}"
            )
        if self.cross_attention_frequency < 1:
            raise InputError("cross_attention_frequency must be at least 1")
        if self.hidden_act not in _ACTIVATIONS:
            raise InputError(f"hidden_act {self.hidden_act!r} is not one of {sorted(_ACTIVATIONS)}")
        for name in ("pad_token_id", "dec_token_id"):
            token = getattr(self, name)
            if token is not None and not 0 <= token < self.vocab_size:
                raise InputError(f"{name} {token} is outside the vocabulary of {self.vocab_size}")

    def has_cross_attention(self, layer_index: int) -> bool:
        return layer_index % self.cross_attention_frequency == 0


@dataclass(frozen=True)
class QFormerOutput:
    """Final hidden states of one pass: the ``num_queries`` query positions first, then the text."""

    last_hidden_state: Tensor  # (B, Q + T, D)
    num_queries: int

    @property
    def query_states(self) -> Tensor:
        return self.last_hidden_state[:, : self.num_queries]  # (B, Q, D)

    @property
    def text_states(self) -> Tensor:
        return self.last_hidden_state[:, self.num_queries :]  # (B, T, D)


@dataclass(frozen=True)
class QFormerLMOutput(QFormerOutput):
    """An ITG pass: next-token ``logits`` at every text position, the hidden states they came from.

    ``logits[:, t]`` predicts text token ``t + 1``; the shift belongs to the loss."""

    logits: Tensor  # (B, T, V)


def attention_mask(num_queries: int, text_mask: Tensor, mode: MaskMode) -> Tensor:
    """Self-attention mask over ``num_queries`` queries followed by ``T`` text tokens.

    Returns a **boolean** ``(B, Q + T, Q + T)`` tensor where ``[b, i, j]`` is True when position ``i``
    may attend to position ``j``. ``text_mask`` is ``(B, T)``, nonzero for real tokens and zero for
    padding. The modes are the paper's Figure 2:

    * ``"unimodal"`` (ITC): queries see queries, text sees text;
    * ``"bidirectional"`` (ITM): every position sees every position;
    * ``"causal"`` (ITG): queries see queries only, text sees all queries and text up to itself.

    Padding is masked as a key only (no one attends to a pad token), as BERT does; the rows of pad
    positions are left as their mode says, so no row is ever empty as long as it can see a query
    or a real token.
    """
    batch, text_length = text_mask.shape
    length = num_queries + text_length
    index = torch.arange(length, device=text_mask.device)
    is_query = index < num_queries  # (L,)
    if mode == "unimodal":
        allowed = is_query[:, None] == is_query[None, :]  # (L, L)
    elif mode == "bidirectional":
        allowed = torch.ones(length, length, dtype=torch.bool, device=text_mask.device)
    elif mode == "causal":
        earlier_text = ~is_query[:, None] & (index[None, :] <= index[:, None])
        allowed = is_query[None, :] | earlier_text
    else:
        raise InputError(f"unknown attention mask mode {mode!r}; use unimodal, bidirectional or causal")
    queries = torch.ones(batch, num_queries, dtype=torch.bool, device=text_mask.device)
    keys = torch.cat([queries, text_mask.bool()], dim=1)  # (B, L)
    return allowed[None, :, :] & keys[:, None, :]  # (B, L, L)


# The methods below take an ``attention_mask`` argument (the tokenizer's name), which hides the function.
_build_attention_mask = attention_mask


def _additive(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """Boolean "may attend" mask -> additive scores mask. The most negative finite value (not -inf)
    keeps a fully masked row finite, as BERT does."""
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)


class QFormerAttention(nn.Module):
    """Multi-head attention plus BERT's post-norm residual: ``LayerNorm(x + dropout(dense(attn)))``.

    Self-attention when keys come from the same sequence; cross-attention (keys and values projected
    from ``key_width``-wide image features) otherwise."""

    def __init__(self, config: QFormerConfig, key_width: int) -> None:
        super().__init__()
        self.num_heads = config.num_heads
        self.attention_dropout = config.attention_dropout
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(key_width, config.hidden_size)
        self.value = nn.Linear(key_width, config.hidden_size)
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def _heads(self, x: Tensor) -> Tensor:
        batch, length, width = x.shape
        return x.view(batch, length, self.num_heads, width // self.num_heads).transpose(1, 2)  # (B, H, L, d)

    def forward(self, hidden: Tensor, keys: Tensor, mask: Tensor) -> Tensor:
        """``hidden`` (B, L, D) attends to ``keys`` (B, S, K) where the boolean ``mask`` (B, L | 1, S) allows."""
        q = self._heads(self.query(hidden))  # (B, H, L, d)
        k = self._heads(self.key(keys))  # (B, H, S, d)
        v = self._heads(self.value(keys))  # (B, H, S, d)
        bias = _additive(mask, q.dtype)[:, None]  # (B, 1, L | 1, S)
        dropout = self.attention_dropout if self.training else 0.0
        context = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout)  # (B, H, L, d)
        context = context.transpose(1, 2).flatten(2)  # (B, L, D)
        return self.layer_norm(hidden + self.dropout(self.dense(context)))


class QFormerFeedForward(nn.Module):
    """BERT's feed-forward block with its post-norm residual: ``LayerNorm(x + W2 act(W1 x))``."""

    def __init__(self, config: QFormerConfig) -> None:
        super().__init__()
        self.dense_in = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = _ACTIVATIONS[config.hidden_act]
        self.dense_out = nn.Linear(config.intermediate_size, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden: Tensor) -> Tensor:
        return self.layer_norm(hidden + self.dropout(self.dense_out(self.act(self.dense_in(hidden)))))


class QFormerLayer(nn.Module):
    """Shared self-attention, cross-attention for the queries (in some layers), separate FFNs."""

    def __init__(self, config: QFormerConfig, layer_index: int) -> None:
        super().__init__()
        self.self_attention = QFormerAttention(config, config.hidden_size)
        self.cross_attention = (
            QFormerAttention(config, config.encoder_hidden_size)
            if config.has_cross_attention(layer_index)
            else None
        )
        self.query_ffn = QFormerFeedForward(config)
        self.text_ffn = QFormerFeedForward(config)

    def forward(
        self,
        hidden: Tensor,
        mask: Tensor,
        num_queries: int,
        image_embeds: Tensor | None,
        image_mask: Tensor | None,
    ) -> Tensor:
        """``hidden`` (B, Q + T, D) under the self-attention ``mask`` (B, Q + T, Q + T); the queries
        cross-attend to ``image_embeds`` (B, P, E) where ``image_mask`` (B, 1, P) allows."""
        hidden = self.self_attention(hidden, hidden, mask)  # (B, Q + T, D)
        queries, text = hidden[:, :num_queries], hidden[:, num_queries:]  # (B, Q, D), (B, T, D)
        if self.cross_attention is not None and num_queries > 0:
            if image_embeds is None or image_mask is None:
                raise InputError("the queries need image features to cross-attend to")
            queries = self.cross_attention(queries, image_embeds, image_mask)  # (B, Q, D)
        return torch.cat([self.query_ffn(queries), self.text_ffn(text)], dim=1)  # (B, Q + T, D)


class QFormerEmbeddings(nn.Module):
    """Queries, then text as word + absolute position embeddings; one LayerNorm and dropout over both.

    Queries get no position embedding, and text positions count from 0 after them, as in BLIP-2."""

    def __init__(self, config: QFormerConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(
            config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id
        )
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, queries: Tensor, input_ids: Tensor) -> Tensor:
        """``queries`` (B, Q, D) and ``input_ids`` (B, T) -> (B, Q + T, D); Q or T may be 0."""
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)  # (T,)
        text = self.word_embeddings(input_ids) + self.position_embeddings(positions)  # (B, T, D)
        return self.dropout(self.layer_norm(torch.cat([queries.to(text.dtype), text], dim=1)))


class QFormerLMHead(nn.Module):
    """BERT's prediction head: dense + activation + LayerNorm, then the word embeddings (tied) + bias."""

    def __init__(self, config: QFormerConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.act = _ACTIVATIONS[config.hidden_act]
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, hidden: Tensor, word_embeddings: Tensor) -> Tensor:
        """``hidden`` (B, T, D) and the tied ``word_embeddings`` (V, D) -> logits (B, T, V)."""
        # The decoder weight is the embedding matrix itself, not a copy: nothing to keep in sync or to save twice.
        return F.linear(self.layer_norm(self.act(self.dense(hidden))), word_embeddings, self.bias)


class QFormer(nn.Module):
    """The BLIP-2 Q-Former with its stage-1 heads. See the module docstring for the layout.

    Image features are ``(B, P, E)`` tokens of a frozen encoder (``E = config.encoder_hidden_size``);
    text is BERT input ids with their attention mask (1 = token, 0 = padding)."""

    def __init__(self, config: QFormerConfig) -> None:
        super().__init__()
        self.config = config
        # (1, Q, D), drawn from N(0, initializer_range) below
        self.query_tokens = nn.Parameter(torch.zeros(1, config.num_query_tokens, config.hidden_size))
        self.embeddings = QFormerEmbeddings(config)
        self.image_norm = (
            nn.LayerNorm(config.encoder_hidden_size, eps=1e-6) if config.image_layer_norm else nn.Identity()
        )
        self.layers = nn.ModuleList(QFormerLayer(config, index) for index in range(config.num_layers))
        self.vision_proj = nn.Linear(config.hidden_size, config.embed_dim)
        self.text_proj = nn.Linear(config.hidden_size, config.embed_dim)
        self.itm_head = nn.Linear(config.hidden_size, 2)
        self.lm_head = QFormerLMHead(config)
        # The ITC temperature is learned as its logarithm: an optimiser step then changes it by a
        # share of its value, not by an absolute amount that can drive a small temperature to zero.
        self.log_temp = nn.Parameter(torch.tensor(math.log(INITIAL_TEMPERATURE)))
        self._register_load_state_dict_pre_hook(_temp_to_log_temp)
        self.apply(self._init_weights)
        nn.init.normal_(self.query_tokens, std=config.initializer_range)

    @property
    def temp(self) -> Tensor:
        """The ITC temperature, ``exp(log_temp)`` (a 0-dim tensor that carries the gradient)."""
        return self.log_temp.exp()

    def _init_weights(self, module: nn.Module) -> None:
        """BERT's initialisation: N(0, initializer_range) weights, zero biases, unit LayerNorms."""
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=std)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=std)
            if module.padding_idx is not None:
                nn.init.zeros_(module.weight[module.padding_idx])
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    # ---- passes ---------------------------------------------------------------------------------

    def forward(
        self,
        image_embeds: Tensor | None = None,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        *,
        mode: MaskMode = "bidirectional",
        image_mask: Tensor | None = None,
    ) -> QFormerOutput:
        """One pass: the queries take part when ``image_embeds`` is given, the text when ``input_ids``
        is; ``mode`` picks the self-attention mask (see :func:`attention_mask`). ``image_mask``
        (B, P), nonzero for real image tokens, defaults to all of them."""
        if image_embeds is None and input_ids is None:
            raise InputError("give image features, text, or both")
        reference = image_embeds if image_embeds is not None else input_ids
        assert reference is not None  # for mypy; checked just above
        batch, device = reference.shape[0], reference.device
        if input_ids is None:
            input_ids = torch.zeros(batch, 0, dtype=torch.long, device=device)  # (B, 0)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)  # (B, T)
        if input_ids.shape[0] != batch or attention_mask.shape != input_ids.shape:
            raise InputError(
                f"image features, input ids and attention mask disagree: {tuple(reference.shape)}, "
                f"{tuple(input_ids.shape)}, {tuple(attention_mask.shape)}"
            )

        num_queries = self.config.num_query_tokens if image_embeds is not None else 0
        queries = self.query_tokens[:, :num_queries].expand(batch, -1, -1)  # (B, Q, D)
        hidden = self.embeddings(queries, input_ids)  # (B, Q + T, D)
        mask = _build_attention_mask(num_queries, attention_mask, mode)  # (B, Q + T, Q + T)

        cross_mask = None
        if image_embeds is not None:
            image_embeds = self.image_norm(image_embeds.to(hidden.dtype))  # features may be cached in float16
            if image_mask is None:
                image_mask = torch.ones(image_embeds.shape[:2], dtype=torch.bool, device=device)
            cross_mask = image_mask.bool()[:, None, :]  # (B, 1, P)
        for layer in self.layers:
            hidden = layer(hidden, mask, num_queries, image_embeds, cross_mask)  # (B, Q + T, D)
        return QFormerOutput(last_hidden_state=hidden, num_queries=num_queries)

    def encode_image(self, image_embeds: Tensor, image_mask: Tensor | None = None) -> QFormerOutput:
        """Queries alone over the image (B, P, E): ``last_hidden_state`` is (B, Q, D). ITC's image side."""
        return self(image_embeds, image_mask=image_mask)

    def encode_instructed(
        self,
        image_embeds: Tensor,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        image_mask: Tensor | None = None,
    ) -> QFormerOutput:
        """InstructBLIP's instruction-aware visual features: the queries and the instruction's tokens
        (``input_ids`` (B, T), as the tokenizer gives them) in one bidirectional pass, the queries
        cross-attending to the image (B, P, E), as in ITM. Only the query positions are returned,
        ``last_hidden_state`` (B, Q, D): what they extract from the image now depends on the instruction."""
        out = self.forward_multimodal(image_embeds, input_ids, attention_mask, image_mask)
        return QFormerOutput(last_hidden_state=out.query_states, num_queries=out.num_queries)

    def encode_text(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> QFormerOutput:
        """Text alone (unimodal), ``last_hidden_state`` (B, T, D); ``[:, 0]`` ([CLS]) is ITC's text side."""
        return self(None, input_ids, attention_mask)

    def forward_multimodal(
        self,
        image_embeds: Tensor,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        image_mask: Tensor | None = None,
    ) -> QFormerOutput:
        """Queries and text see each other fully, queries see the image: (B, Q + T, D). For ITM."""
        return self(image_embeds, input_ids, attention_mask, mode="bidirectional", image_mask=image_mask)

    def forward_itg(
        self,
        image_embeds: Tensor,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        image_mask: Tensor | None = None,
    ) -> QFormerLMOutput:
        """Image-grounded text generation under the multimodal causal mask: next-token logits (B, T, V).

        ``input_ids`` are as the tokenizer gives them; their first token ([CLS]) is replaced by
        ``config.dec_token_id`` when that is set, as BLIP-2 does, so one tokenised batch serves
        ITC, ITM and ITG (and ids that already start with [DEC] are unchanged)."""
        if self.config.dec_token_id is not None and input_ids.shape[1] > 0:
            input_ids = input_ids.clone()
            input_ids[:, 0] = self.config.dec_token_id
        out = self(image_embeds, input_ids, attention_mask, mode="causal", image_mask=image_mask)
        logits = self.lm_head(out.text_states, self.embeddings.word_embeddings.weight)  # (B, T, V)
        return QFormerLMOutput(
            last_hidden_state=out.last_hidden_state, num_queries=out.num_queries, logits=logits
        )

    # ---- stage-1 features --------------------------------------------------------------------------

    def image_features(self, image_embeds: Tensor, image_mask: Tensor | None = None) -> Tensor:
        """L2-normalised ITC features of every query: (B, Q, embed_dim)."""
        queries = self.encode_image(image_embeds, image_mask).last_hidden_state  # (B, Q, D)
        return F.normalize(self.vision_proj(queries), dim=-1)

    def text_features(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """L2-normalised ITC feature of the [CLS] token: (B, embed_dim)."""
        cls = self.encode_text(input_ids, attention_mask).last_hidden_state[:, 0]  # (B, D)
        return F.normalize(self.text_proj(cls), dim=-1)

    def itm_logits(
        self,
        image_embeds: Tensor,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        image_mask: Tensor | None = None,
    ) -> Tensor:
        """Match / no-match logits of each (image i, text i) pair, (B, 2) with class 1 = match: the
        ITM head averaged over the query outputs of the multimodal pass."""
        out = self.forward_multimodal(image_embeds, input_ids, attention_mask, image_mask)
        return self.itm_head(out.query_states).mean(dim=1)  # (B, 2)

    # ---- checkpoints ---------------------------------------------------------------------------

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write ``model.safetensors`` and ``config.json`` (the config fields plus the vlmkit version)."""
        path = write_config(directory, self.config, model_type=MODEL_TYPE)
        save_weights(self.state_dict(), path / "model.safetensors")

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> QFormer:
        """Load what :meth:`save_pretrained` wrote; an unknown config key is an error."""
        config, _ = read_config(directory, QFormerConfig, model_types=MODEL_TYPE)
        model = cls(config)
        load_weights(model, Path(directory) / "model.safetensors")
        return model.eval()

    @classmethod
    def from_bert(cls, path: str | os.PathLike, **overrides: Any) -> QFormer:
        """Start a Q-Former from a BERT checkpoint directory (``config.json`` + ``model.safetensors``).

        Sizes come from its config, then ``overrides`` (e.g. ``encoder_hidden_size``,
        ``num_query_tokens``). As in BLIP-2, embeddings, self-attention and the feed-forward blocks
        are BERT's, and the BERT FFN initialises both the text and the query FFN; cross-attention,
        queries and the ITC/ITM heads start fresh; the LM head transform is loaded when the
        checkpoint has one (``cls.predictions``). The vocabulary gets one fresh row for ``[DEC]``
        (``dec_token_id`` = BERT's vocabulary size) unless overridden.

        BERT adds a segment (token type) embedding that the Q-Former lacks; segment 0's is folded
        into the position embeddings, so that text encodes exactly as in BERT at the start.
        """
        bert = json.loads(_file(path, "config.json").read_text())
        if bert.get("position_embedding_type", "absolute") != "absolute":
            raise InputError(f"{path}: only absolute position embeddings are supported")
        fields: dict[str, Any] = {
            "hidden_size": bert["hidden_size"],
            "num_layers": bert["num_hidden_layers"],
            "num_heads": bert["num_attention_heads"],
            "intermediate_size": bert["intermediate_size"],
            "vocab_size": bert["vocab_size"] + 1,
            "dec_token_id": bert["vocab_size"],
            "max_position_embeddings": bert["max_position_embeddings"],
            "layer_norm_eps": bert.get("layer_norm_eps", 1e-12),
            "hidden_dropout": bert.get("hidden_dropout_prob", 0.1),
            "attention_dropout": bert.get("attention_probs_dropout_prob", 0.1),
            "hidden_act": bert.get("hidden_act", "gelu"),
            "initializer_range": bert.get("initializer_range", 0.02),
            "pad_token_id": bert.get("pad_token_id") or 0,
        }
        model = cls(QFormerConfig(**{**fields, **overrides}))
        weights = load_file(_file(path, "model.safetensors"))
        weights = {k.removeprefix("bert."): v for k, v in weights.items()}

        names = _bert_names(model.config, with_lm_head="cls.predictions.transform.dense.weight" in weights)
        _copy_weights(model, weights, names, source=str(path))
        with torch.no_grad():
            # Rows past BERT's vocabulary ([DEC]) keep their fresh values, as after LAVIS's resize.
            _copy_rows(model.embeddings.word_embeddings.weight, weights["embeddings.word_embeddings.weight"])
            if "cls.predictions.bias" in weights:
                _copy_rows(model.lm_head.bias, weights["cls.predictions.bias"])
            positions = model.embeddings.position_embeddings.weight  # (max_positions, D)
            _copy_rows(positions, weights["embeddings.position_embeddings.weight"])
            if "embeddings.token_type_embeddings.weight" in weights:
                positions += weights["embeddings.token_type_embeddings.weight"][0]  # segment 0, folded in
        return model.eval()

    @classmethod
    def from_blip2_retrieval(cls, state_dict: dict[str, Tensor], hf_config: Any, **overrides: Any) -> QFormer:
        """The Q-Former of a transformers ``Blip2ForImageTextRetrieval`` (e.g. Salesforce/blip2-itm-vit-g).

        ``hf_config`` is its ``Blip2Config`` (or the same as a plain dict, as in ``config.json``).
        Its Q-Former must encode text (``qformer_config.use_qformer_text_input``). ``dec_token_id``
        is the Q-Former config's ``bos_token_id`` when it has one, else ``None`` (pass it in
        ``overrides``). transformers keeps no LM head and no temperature: the LM head stays fresh,
        and ``temp`` is loaded only when the state dict has one (LAVIS checkpoints do).
        """
        top = _as_dict(hf_config)
        qformer = _as_dict(top["qformer_config"])
        if not qformer.get("use_qformer_text_input", False):
            raise InputError(
                "this BLIP-2 Q-Former has no text feed-forward layers (use_qformer_text_input=False)"
            )
        fields: dict[str, Any] = {
            "hidden_size": qformer["hidden_size"],
            "num_layers": qformer["num_hidden_layers"],
            "num_heads": qformer["num_attention_heads"],
            "intermediate_size": qformer["intermediate_size"],
            "vocab_size": qformer["vocab_size"],
            "max_position_embeddings": qformer["max_position_embeddings"],
            "layer_norm_eps": qformer["layer_norm_eps"],
            "hidden_dropout": qformer["hidden_dropout_prob"],
            "attention_dropout": qformer["attention_probs_dropout_prob"],
            "hidden_act": qformer["hidden_act"],
            "initializer_range": qformer["initializer_range"],
            "num_query_tokens": top["num_query_tokens"],
            "cross_attention_frequency": qformer["cross_attention_frequency"],
            "encoder_hidden_size": qformer["encoder_hidden_size"],
            "embed_dim": top["image_text_hidden_size"],
            "pad_token_id": qformer.get("pad_token_id") or 0,
            "dec_token_id": qformer.get("bos_token_id"),
        }
        model = cls(QFormerConfig(**{**fields, **overrides}))
        names = _blip2_names(model.config)
        _copy_weights(model, state_dict, names, source="Blip2ForImageTextRetrieval state dict")
        if "temp" in state_dict:  # LAVIS stores the temperature itself
            with torch.no_grad():
                model.log_temp.copy_(state_dict["temp"].float().log())
        return model.eval()

    @classmethod
    def from_blip2_retrieval_dir(cls, directory: str | os.PathLike, **overrides: Any) -> QFormer:
        """:meth:`from_blip2_retrieval` on a checkpoint directory (``config.json`` + ``model.safetensors``)."""
        hf_config = json.loads(_file(directory, "config.json").read_text())
        return cls.from_blip2_retrieval(
            load_file(_file(directory, "model.safetensors")), hf_config, **overrides
        )


# ---- weight name maps: ours -> theirs ------------------------------------------------------------


def _linear(ours: str, theirs: str) -> dict[str, str]:
    """Names of a weight and bias pair (Linear or LayerNorm)."""
    return {f"{ours}.weight": f"{theirs}.weight", f"{ours}.bias": f"{theirs}.bias"}


def _attention(ours: str, theirs_qkv: str, theirs_out: str) -> dict[str, str]:
    names: dict[str, str] = {}
    for proj in ("query", "key", "value"):
        names |= _linear(f"{ours}.{proj}", f"{theirs_qkv}.{proj}")
    return (
        names
        | _linear(f"{ours}.dense", f"{theirs_out}.dense")
        | _linear(f"{ours}.layer_norm", f"{theirs_out}.LayerNorm")
    )


def _ffn(ours: str, theirs_in: str, theirs_out: str) -> dict[str, str]:
    return (
        _linear(f"{ours}.dense_in", f"{theirs_in}.dense")
        | _linear(f"{ours}.dense_out", f"{theirs_out}.dense")
        | _linear(f"{ours}.layer_norm", f"{theirs_out}.LayerNorm")
    )


def _bert_names(config: QFormerConfig, with_lm_head: bool) -> dict[str, str]:
    """BERT (``BertModel``, or ``BertFor*`` with the ``bert.`` prefix stripped). Word and position
    embeddings are handled by the caller (extra [DEC] row, folded segment embedding)."""
    names = _linear("embeddings.layer_norm", "embeddings.LayerNorm")
    for i in range(config.num_layers):
        bert = f"encoder.layer.{i}"
        names |= _attention(
            f"layers.{i}.self_attention", f"{bert}.attention.self", f"{bert}.attention.output"
        )
        names |= _ffn(f"layers.{i}.text_ffn", f"{bert}.intermediate", f"{bert}.output")
        names |= _ffn(f"layers.{i}.query_ffn", f"{bert}.intermediate", f"{bert}.output")
    if with_lm_head:
        names |= _linear("lm_head.dense", "cls.predictions.transform.dense")
        names |= _linear("lm_head.layer_norm", "cls.predictions.transform.LayerNorm")
    return names


def _temp_to_log_temp(state_dict: dict[str, Tensor], prefix: str, *args: Any) -> None:
    """Load hook: a state dict that stores the temperature itself (``temp``: LAVIS, and vlmkit
    checkpoints before the temperature was learned as a logarithm) gives ``log_temp``."""
    if prefix + "temp" in state_dict and prefix + "log_temp" not in state_dict:
        state_dict[prefix + "log_temp"] = state_dict.pop(prefix + "temp").float().log()


def _blip2_names(config: QFormerConfig) -> dict[str, str]:
    """transformers' ``Blip2ForImageTextRetrieval``; everything but the LM head."""
    names = {
        "query_tokens": "query_tokens",
        "embeddings.word_embeddings.weight": "embeddings.word_embeddings.weight",
        "embeddings.position_embeddings.weight": "embeddings.position_embeddings.weight",
    }
    names |= _linear("embeddings.layer_norm", "qformer.layernorm")
    for i in range(config.num_layers):
        hf = f"qformer.encoder.layer.{i}"
        names |= _attention(
            f"layers.{i}.self_attention", f"{hf}.attention.attention", f"{hf}.attention.output"
        )
        if config.has_cross_attention(i):
            cross = f"{hf}.crossattention"
            names |= _attention(f"layers.{i}.cross_attention", f"{cross}.attention", f"{cross}.output")
        names |= _ffn(f"layers.{i}.text_ffn", f"{hf}.intermediate", f"{hf}.output")
        names |= _ffn(f"layers.{i}.query_ffn", f"{hf}.intermediate_query", f"{hf}.output_query")
    names |= _linear("vision_proj", "vision_projection") | _linear("text_proj", "text_projection")
    names |= _linear("itm_head", "itm_head")
    return names


@torch.no_grad()
def _copy_weights(model: nn.Module, weights: dict[str, Tensor], names: dict[str, str], source: str) -> None:
    """Copy ``weights[theirs]`` into each of our parameters ``ours``; every name must exist, shapes must match."""
    ours_all = model.state_dict()
    missing = sorted(theirs for theirs in names.values() if theirs not in weights)
    if missing:
        raise InputError(f"{source}: missing {len(missing)} weights, e.g. {missing[:3]}")
    for ours, theirs in names.items():
        target, value = ours_all[ours], weights[theirs]
        if target.shape != value.shape:
            raise InputError(
                f"{source}: {theirs} has shape {tuple(value.shape)}, expected {tuple(target.shape)}"
            )
        target.copy_(value)


def _copy_rows(target: Tensor, source: Tensor) -> None:
    """Copy ``source`` into the first rows of ``target``, which may have more (new tokens, longer text)."""
    if source.shape[0] > target.shape[0] or source.shape[1:] != target.shape[1:]:
        raise InputError(f"cannot fit a {tuple(source.shape)} tensor into {tuple(target.shape)}")
    target[: source.shape[0]].copy_(source)


def _as_dict(config: Any) -> dict[str, Any]:
    """A transformers config object or a plain dict (as read from ``config.json``) -> dict."""
    return config if isinstance(config, dict) else config.to_dict()


def _file(directory: str | os.PathLike, name: str) -> Path:
    path = Path(directory) / name
    if not path.is_file():
        raise ModelNotFoundError(f"{directory}: no {name}")
    return path
