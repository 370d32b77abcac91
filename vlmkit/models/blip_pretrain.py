"""BLIP pre-training: the multimodal mixture of encoder-decoder (MED) of Li et al., 2022, "BLIP:
Bootstrapping Language-Image Pre-training for Unified Vision-Language Understanding and Generation".

A ViT image encoder and one BERT-style text transformer used in three modes (paper, section 3.1):

- unimodal text encoder: [CLS] first, bidirectional self-attention, no cross-attention; its [CLS]
  output, projected and L2-normalised, is the text side of image-text contrastive learning (ITC);
- image-grounded text encoder: the same layers with cross-attention to the image tokens in every
  block; a linear head on its first output says match / no match (ITM);
- image-grounded text decoder: causal self-attention, cross-attention to the image, [DEC] as the
  first token; predicts the caption (LM).

Encoder and decoder share every parameter except the self-attention layers (``sharing``
``"all_but_self_attention"``, the paper's best setting, Table 3); ``"none"`` and ``"all"`` are the
paper's other rows. Sharing is real: the decoder holds the encoder's module objects.

The model is built from transformers' own BLIP modules (``BlipVisionModel``, ``BlipTextModel``,
``BlipTextLMHeadModel``) and computes exactly what ``BlipForImageTextRetrieval`` and
``BlipForConditionalGeneration`` compute, so :func:`export` writes checkpoints that transformers
loads and runs with the same results. Two consequences of following transformers:

- ``BlipForImageTextRetrieval`` and ``BlipForQuestionAnswering`` feed the image-grounded encoder the
  tokenizer's ids as they are, [CLS] first; they do not swap [CLS] for [ENC] as the paper (and
  LAVIS) do. ``itm_first_token="cls"`` (the default) matches them; ``"enc"`` is the paper's layout,
  and :func:`export` refuses it for the retrieval and VQA heads, whose transformers classes would
  then compute something else.
- The tokenizer is BERT's WordPiece (``BertTokenizer``) with [DEC] as ``bos_token`` and [ENC]
  added, as ``BlipProcessor`` expects: from a BERT checkpoint (:func:`bert_tokenizer`) or counted
  from a corpus (:func:`corpus_tokenizer`).

For momentum distillation (ALBEF, which BLIP follows) the model keeps exponential-moving-average
copies of the image encoder, the text encoder and both projections, updated by the explicit
:func:`momentum_update`; they produce the soft ITC targets. There is no feature queue: ITC's
negatives are the (gathered) batch, so the momentum features of the current batch are the only
columns (see :func:`vlmkit.losses.blip.itc_distill_loss`).

A training-state checkpoint is a directory: ``config.json`` (``model_type: vlmkit-blip-pretrain``,
:class:`BlipPretrainConfig`), ``model.safetensors`` (online and momentum weights, each shared tensor
once) and the tokenizer's files. The transformers exports are what ``vlmkit.load`` reads.
"""

from __future__ import annotations

import copy
import json
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InputError, ModelNotFoundError
from .checkpoint import load_tokenizer as load_saved_tokenizer
from .checkpoint import load_weights, read_config, save_weights, write_config
from .wordpiece import wordpiece_vocab

__all__ = [
    "MODEL_TYPE", "Sharing", "ExportHead", "BlipPretrainConfig", "BlipPretrainOutput", "BlipPretrainModel", "BertInitReport",
    "blip_config", "share_text_layers", "momentum_update", "bert_tokenizer", "corpus_tokenizer", "load_tokenizer",
    "tokenizer_fields", "bert_text_fields", "init_text_from_bert", "export",
]

MODEL_TYPE = "vlmkit-blip-pretrain"
ARCHITECTURE = "VlmkitBlipPretrain"
WEIGHTS = "model.safetensors"
Sharing = Literal["all_but_self_attention", "none", "all"]
FirstToken = Literal["cls", "enc"]
ExportHead = Literal["caption", "retrieval", "vqa"]

# OpenAI CLIP's normalisation, which BLIP's image processors use.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class BlipPretrainConfig:
    """Sizes default to BLIP's base model (ViT-B/16 at 224 pixels, BERT-base); the special-token ids
    come from the tokenizer (:func:`tokenizer_fields`)."""

    vocab_size: int
    pad_token_id: int = 0
    cls_token_id: int = 101
    sep_token_id: int = 102
    #: The decoder's first token ([DEC]), the tokenizer's ``bos_token``.
    dec_token_id: int = 30522
    #: The paper's first token of the image-grounded encoder ([ENC]); used when ``itm_first_token`` is "enc".
    enc_token_id: int = 30523
    image_size: int = 224
    patch_size: int = 16
    vision_width: int = 768
    vision_layers: int = 12
    vision_heads: int = 12
    vision_mlp: int = 3072
    text_width: int = 768
    text_layers: int = 12
    text_heads: int = 12
    text_mlp: int = 3072
    text_layer_norm_eps: float = 1e-12
    #: Text positions (position embeddings), the special tokens included.
    max_text_length: int = 512
    #: Width of the ITC projections (BLIP: 256).
    embed_dim: int = 256
    sharing: Sharing = "all_but_self_attention"
    itm_first_token: FirstToken = "cls"
    #: The momentum encoders' EMA coefficient (BLIP: 0.995).
    momentum: float = 0.995
    #: ITC's learned temperature starts here (BLIP: 0.07).
    temperature_init: float = 0.07
    image_mean: tuple[float, ...] = CLIP_MEAN
    image_std: tuple[float, ...] = CLIP_STD

    def __post_init__(self) -> None:
        # JSON gives lists; keep the config hashable and equal to the one saved.
        object.__setattr__(self, "image_mean", tuple(float(x) for x in self.image_mean))
        object.__setattr__(self, "image_std", tuple(float(x) for x in self.image_std))
        for name in ("vocab_size", "image_size", "patch_size", "vision_width", "vision_layers", "vision_heads", "vision_mlp",
                     "text_width", "text_layers", "text_heads", "text_mlp", "max_text_length", "embed_dim"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise InputError(f"BLIP: {name} must be a positive integer, got {getattr(self, name)!r}")
        for name in ("pad_token_id", "cls_token_id", "sep_token_id", "dec_token_id", "enc_token_id"):
            if not 0 <= getattr(self, name) < self.vocab_size:
                raise InputError(f"BLIP: {name} {getattr(self, name)} is outside the vocabulary of {self.vocab_size}")
        if self.image_size % self.patch_size:
            raise InputError(f"BLIP: image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        for width, heads, side in ((self.vision_width, self.vision_heads, "vision"), (self.text_width, self.text_heads, "text")):
            if width % heads:
                raise InputError(f"BLIP: {side} width {width} is not a multiple of its {heads} heads")
        if self.sharing not in get_args(Sharing):
            raise InputError(f"BLIP: sharing must be one of {', '.join(get_args(Sharing))}, got {self.sharing!r}")
        if self.itm_first_token not in get_args(FirstToken):
            raise InputError(f"BLIP: itm_first_token must be cls or enc, got {self.itm_first_token!r}")
        if not 0.0 <= self.momentum <= 1.0:
            raise InputError(f"BLIP: momentum must be in [0, 1], got {self.momentum}")
        if not self.temperature_init > 0:
            raise InputError(f"BLIP: temperature_init must be positive, got {self.temperature_init}")
        if len(self.image_mean) != 3 or len(self.image_std) != 3:
            raise InputError("BLIP: image_mean and image_std take one value per RGB channel")


def blip_config(config: BlipPretrainConfig, temperature: float | None = None) -> Any:
    """The transformers ``BlipConfig`` of the same network. ``logit_scale_init_value`` carries the
    log of 1 / ``temperature`` (ITC's learned one when given), which vlmkit's BLIP wrapper reports
    as the similarity scale."""
    from transformers import BlipConfig, BlipTextConfig, BlipVisionConfig

    vision = BlipVisionConfig(
        hidden_size=config.vision_width, intermediate_size=config.vision_mlp, num_hidden_layers=config.vision_layers,
        num_attention_heads=config.vision_heads, image_size=config.image_size, patch_size=config.patch_size,
        projection_dim=config.embed_dim,
        initializer_range=0.02,  # transformers' default (1e-10) assumes released weights are loaded over it
    )
    text = BlipTextConfig(
        vocab_size=config.vocab_size, hidden_size=config.text_width, encoder_hidden_size=config.vision_width,
        intermediate_size=config.text_mlp, projection_dim=config.embed_dim, num_hidden_layers=config.text_layers,
        num_attention_heads=config.text_heads, max_position_embeddings=config.max_text_length,
        layer_norm_eps=config.text_layer_norm_eps,
        bos_token_id=config.dec_token_id,  # [DEC]: generation starts with it
        sep_token_id=config.sep_token_id,  # [SEP]: BLIP's generate() stops on it
        eos_token_id=config.sep_token_id,
        pad_token_id=config.pad_token_id,
        is_decoder=True,  # every layer has cross-attention; causal or not is chosen per call
    )
    temp = config.temperature_init if temperature is None else temperature
    return BlipConfig(
        text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=config.embed_dim,
        image_text_hidden_size=config.embed_dim, logit_scale_init_value=math.log(1.0 / temp),
    )


# -- sharing and momentum ---------------------------------------------------------------------------


def share_text_layers(encoder: Any, decoder: Any, sharing: Sharing) -> None:
    """Make ``decoder`` (a ``BlipTextLMHeadModel``) use ``encoder``'s (a ``BlipTextModel``'s)
    modules: the embeddings, and in every layer the cross-attention and the feed-forward part, and
    with ``"all"`` the self-attention too (its projections and its output LayerNorm, which the
    paper counts as the self-attention layer). The LM head stays the decoder's, its output weight
    tied to the (shared) word embeddings."""
    if sharing == "none":
        return
    bert = decoder.bert
    bert.embeddings = encoder.embeddings
    for source, target in zip(encoder.encoder.layer, bert.encoder.layer, strict=True):
        target.crossattention = source.crossattention
        target.intermediate = source.intermediate
        target.output = source.output
        if sharing == "all":
            target.attention = source.attention
    decoder.cls.predictions.decoder.weight = encoder.embeddings.word_embeddings.weight


#: (online, momentum) module attribute pairs of :class:`BlipPretrainModel`.
MOMENTUM_PAIRS = (
    ("vision_model", "vision_model_m"),
    ("vision_proj", "vision_proj_m"),
    ("text_encoder", "text_encoder_m"),
    ("text_proj", "text_proj_m"),
)


@torch.no_grad()
def momentum_update(model: BlipPretrainModel, momentum: float | None = None) -> None:
    """One EMA step of the momentum encoders: ``p_m <- m * p_m + (1 - m) * p`` for every parameter
    of the image encoder, the text encoder and both projections (``m`` defaults to the config's).
    BLIP calls it once per training step, before the forward pass."""
    m = model.config.momentum if momentum is None else momentum
    if not 0.0 <= m <= 1.0:
        raise InputError(f"momentum must be in [0, 1], got {m}")
    for online, ema in MOMENTUM_PAIRS:
        for p, p_m in zip(getattr(model, online).parameters(), getattr(model, ema).parameters(), strict=True):
            p_m.mul_(m).add_(p.detach(), alpha=1.0 - m)


# -- the model --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BlipPretrainOutput:
    """One pass of the image encoder and the unimodal text encoder, online and momentum."""

    image_embeds: Tensor  # (B, 1 + P, Dv) the ViT's outputs, [CLS] first
    image_feats: Tensor  # (B, E) L2-normalised projection of the image [CLS]
    text_feats: Tensor  # (B, E) L2-normalised projection of the unimodal text [CLS]
    image_feats_m: Tensor  # (B, E) the same from the momentum encoders, no grad
    text_feats_m: Tensor  # (B, E)


class BlipPretrainModel(nn.Module):
    """ViT + the MED text transformer, their ITC projections, the ITM head, the LM head, the learned
    ITC temperature and the momentum copies."""

    def __init__(self, config: BlipPretrainConfig) -> None:
        super().__init__()
        from transformers import BlipVisionModel
        from transformers.models.blip.modeling_blip_text import BlipTextLMHeadModel, BlipTextModel

        self.config = config
        hf = blip_config(config)
        self.vision_model = BlipVisionModel(hf.vision_config)
        self.text_encoder = BlipTextModel(hf.text_config, add_pooling_layer=False)
        self.text_decoder = BlipTextLMHeadModel(hf.text_config)
        share_text_layers(self.text_encoder, self.text_decoder, config.sharing)
        self.vision_proj = nn.Linear(config.vision_width, config.embed_dim)
        self.text_proj = nn.Linear(config.text_width, config.embed_dim)
        self.itm_head = nn.Linear(config.text_width, 2)
        self.temp = nn.Parameter(torch.tensor(float(config.temperature_init)))
        # Momentum copies (MOMENTUM_PAIRS): start equal to the online modules, never trained by gradients.
        self.vision_model_m = _frozen_copy(self.vision_model)
        self.vision_proj_m = _frozen_copy(self.vision_proj)
        self.text_encoder_m = _frozen_copy(self.text_encoder)
        self.text_proj_m = _frozen_copy(self.text_proj)

    # -- the three modes ----------------------------------------------------------------------

    def image_embeds(self, pixel_values: Tensor) -> Tensor:
        """Pixels (B, 3, H, W), normalised as :meth:`image_processor` does -> ViT outputs (B, 1 + P, Dv)."""
        size = self.config.image_size
        if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != (3, size, size):
            raise InputError(f"BLIP expects pixel_values of shape (B, 3, {size}, {size}), got {tuple(pixel_values.shape)}")
        return self.vision_model(pixel_values=pixel_values).last_hidden_state  # type: ignore[no-any-return]

    def image_features(self, image_embeds: Tensor) -> Tensor:
        """ITC image features: the projected [CLS] output, L2-normalised. (B, E)"""
        return F.normalize(self.vision_proj(image_embeds[:, 0]), dim=-1)

    def text_features(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """The unimodal text encoder ([CLS] first, bidirectional, no image): ITC text features. (B, E)"""
        self._check_text(input_ids, attention_mask)
        hidden = self.text_encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, T, Dt)
        return F.normalize(self.text_proj(hidden[:, 0]), dim=-1)

    def grounded_states(self, image_embeds: Tensor, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """The image-grounded text encoder's outputs (B, T, Dt): bidirectional self-attention and
        cross-attention to every image token. The first token is [CLS], or [ENC] with
        ``itm_first_token="enc"``."""
        self._check_text(input_ids, attention_mask)
        self._check_pairs(image_embeds, input_ids)
        if self.config.itm_first_token == "enc":
            input_ids = _with_first_token(input_ids, self.config.enc_token_id)
        image_mask = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device)  # (B, 1 + P)
        return self.text_encoder(  # type: ignore[no-any-return]
            input_ids=input_ids, attention_mask=attention_mask, encoder_hidden_states=image_embeds, encoder_attention_mask=image_mask
        ).last_hidden_state

    def itm_logits(self, image_embeds: Tensor, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """ITM: the head on the image-grounded encoder's first output, (B, 2) [no match, match]."""
        return self.itm_head(self.grounded_states(image_embeds, input_ids, attention_mask)[:, 0])  # type: ignore[no-any-return]

    def lm_logits(self, image_embeds: Tensor, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """The image-grounded decoder over ``input_ids`` with its first token replaced by [DEC]
        (tokenised texts start with [CLS]): (B, T, V), position t predicting token t + 1."""
        self._check_text(input_ids, attention_mask)
        self._check_pairs(image_embeds, input_ids)
        ids = _with_first_token(input_ids, self.config.dec_token_id)
        return self.text_decoder(  # type: ignore[no-any-return]
            input_ids=ids, attention_mask=attention_mask, encoder_hidden_states=image_embeds, use_cache=False
        ).logits

    @torch.no_grad()
    def momentum_features(self, pixel_values: Tensor, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
        """ITC features of the momentum encoders, (B, E) each, without gradients."""
        image = self.vision_model_m(pixel_values=pixel_values).last_hidden_state  # (B, 1 + P, Dv)
        text = self.text_encoder_m(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, T, Dt)
        return F.normalize(self.vision_proj_m(image[:, 0]), dim=-1), F.normalize(self.text_proj_m(text[:, 0]), dim=-1)

    def forward(self, pixel_values: Tensor, input_ids: Tensor, attention_mask: Tensor) -> BlipPretrainOutput:
        """The image encoder and the unimodal text encoder on a batch of pairs (image ``i`` with text
        ``i``), online and momentum; ITM and LM run on the returned ``image_embeds``."""
        self._check_text(input_ids, attention_mask)
        if pixel_values.shape[0] != input_ids.shape[0]:
            raise InputError(f"BLIP: {pixel_values.shape[0]} images but {input_ids.shape[0]} texts")
        image_embeds = self.image_embeds(pixel_values)
        image_feats_m, text_feats_m = self.momentum_features(pixel_values, input_ids, attention_mask)
        return BlipPretrainOutput(
            image_embeds=image_embeds,
            image_feats=self.image_features(image_embeds),
            text_feats=self.text_features(input_ids, attention_mask),
            image_feats_m=image_feats_m,
            text_feats_m=text_feats_m,
        )

    # -- generation ---------------------------------------------------------------------------

    @torch.no_grad()
    def generate(self, pixel_values: Tensor, *, prompt: Iterable[int] = (), **generate_kwargs: Any) -> Tensor:
        """Captions (B, T): [DEC], the ``prompt`` token ids (no [CLS] / [SEP]), then what the decoder
        generates until [SEP], padded with [PAD]. ``generate_kwargs`` go to transformers' ``generate``
        (``max_new_tokens``, ``num_beams``, ``do_sample``, ``top_p``, ...), as in
        ``BlipForConditionalGeneration.generate``, which this follows step for step."""
        image_embeds = self.image_embeds(pixel_values)  # (B, 1 + P, Dv)
        start = torch.tensor([self.config.dec_token_id, *prompt], dtype=torch.long, device=image_embeds.device)
        image_mask = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device)
        return self.text_decoder.generate(  # type: ignore[no-any-return]
            input_ids=start.repeat(image_embeds.shape[0], 1), eos_token_id=self.config.sep_token_id,
            pad_token_id=self.config.pad_token_id, encoder_hidden_states=image_embeds, encoder_attention_mask=image_mask,
            **generate_kwargs,
        )

    def answer_logits(
        self, image_embeds: Tensor, input_ids: Tensor, attention_mask: Tensor, answer_ids: Tensor, answer_mask: Tensor
    ) -> Tensor:
        """VQA fine-tuning's pass (BLIP's answer decoder): the image-grounded encoder encodes the
        question (``input_ids`` / ``attention_mask``, (B, Tq)), and the decoder reads the answer
        (``answer_ids`` / ``answer_mask``, (B, Ta), tokenised with [CLS] first, which becomes [DEC])
        cross-attending to the question's outputs, padded positions masked out as :meth:`answer`
        does: (B, Ta, V), position t predicting answer token t + 1."""
        self._check_vqa_widths()
        question = self.grounded_states(image_embeds, input_ids, attention_mask)  # (B, Tq, Dt)
        self._check_text(answer_ids, answer_mask)
        self._check_pairs(image_embeds, answer_ids)
        return self.text_decoder(  # type: ignore[no-any-return]
            input_ids=_with_first_token(answer_ids, self.config.dec_token_id), attention_mask=answer_mask,
            encoder_hidden_states=question, encoder_attention_mask=attention_mask, use_cache=False,
        ).logits

    @torch.no_grad()
    def answer(self, pixel_values: Tensor, input_ids: Tensor, attention_mask: Tensor, **generate_kwargs: Any) -> Tensor:
        """VQA as BLIP answers (and ``BlipForQuestionAnswering``): the image-grounded encoder encodes
        the question, and the decoder, cross-attending to the question's outputs, generates the
        answer after [DEC]. Returns (B, T) ids, [DEC] first. Padded question positions are masked
        out; transformers' ``generate`` attends to them, so the two agree on unpadded questions
        (vlmkit's BLIP wrapper batches questions of equal length)."""
        self._check_vqa_widths()
        question = self.grounded_states(self.image_embeds(pixel_values), input_ids, attention_mask)  # (B, T, Dt)
        start = torch.full((question.shape[0], 1), self.config.dec_token_id, dtype=torch.long, device=question.device)
        return self.text_decoder.generate(  # type: ignore[no-any-return]
            input_ids=start, eos_token_id=self.config.sep_token_id, pad_token_id=self.config.pad_token_id,
            encoder_hidden_states=question, encoder_attention_mask=attention_mask, **generate_kwargs,
        )

    def image_processor(self) -> Any:
        """transformers' ``BlipImageProcessor`` for this model's image size and normalisation (the
        exports ship it): resize to ``image_size`` (bicubic), scale to [0, 1], normalise."""
        from transformers import BlipImageProcessor

        size = self.config.image_size
        return BlipImageProcessor(
            size={"height": size, "width": size}, image_mean=list(self.config.image_mean), image_std=list(self.config.image_std)
        )

    def unshared(self) -> BlipPretrainModel:
        """A copy with ``sharing="none"`` and the same values everywhere: the decoder's own copies
        of the layers it shared. BLIP fine-tunes VQA this way (the answer decoder starts from the
        pre-trained decoder and is then trained apart from the question encoder)."""
        model = BlipPretrainModel(replace(self.config, sharing="none")).to(self.temp.device)
        model.load_state_dict(self.state_dict())  # every name of every shared tensor: each copy gets its value
        return model

    # -- checkpoints --------------------------------------------------------------------------

    def _unique_keys(self) -> list[str]:
        """State-dict names with each shared tensor once (its first name); buffers are not saved."""
        return [name for name, _ in self.named_parameters()]

    def save_pretrained(self, directory: str | os.PathLike, tokenizer: Any | None = None) -> None:
        """``config.json`` + ``model.safetensors`` (+ the tokenizer's files when given)."""
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        state = self.state_dict()
        save_weights({name: state[name] for name in self._unique_keys()}, path / WEIGHTS)
        if tokenizer is not None:
            tokenizer.save_pretrained(path)
        write_config(path, self.config, model_type=MODEL_TYPE, architecture=ARCHITECTURE)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> BlipPretrainModel:
        """Strict: another family's checkpoint, an unknown config key or weights that do not fit
        raise :class:`~vlmkit.errors.ModelNotFoundError`."""
        path = Path(directory)
        config, _ = read_config(path, BlipPretrainConfig, model_types=MODEL_TYPE)
        model = cls(config)
        load_weights(model, path / WEIGHTS, keys=model._unique_keys())
        return model

    # -- checks -------------------------------------------------------------------------------

    def _check_text(self, input_ids: Tensor, attention_mask: Tensor) -> None:
        if input_ids.ndim != 2 or attention_mask.shape != input_ids.shape:
            raise InputError(f"BLIP expects input_ids and attention_mask of one shape (B, T), got "
                             f"{tuple(input_ids.shape)} and {tuple(attention_mask.shape)}")
        if input_ids.shape[1] > self.config.max_text_length:
            raise InputError(f"BLIP: {input_ids.shape[1]} text tokens, more than max_text_length={self.config.max_text_length}")

    def _check_vqa_widths(self) -> None:
        if self.config.text_width != self.config.vision_width:
            raise InputError(
                f"BLIP VQA needs equal text and vision widths (the decoder's cross-attention reads the question encoder), "
                f"got {self.config.text_width} and {self.config.vision_width}"
            )

    @staticmethod
    def _check_pairs(image_embeds: Tensor, input_ids: Tensor) -> None:
        if image_embeds.shape[0] != input_ids.shape[0]:
            raise InputError(f"BLIP: {image_embeds.shape[0]} images but {input_ids.shape[0]} texts")


M = TypeVar("M", bound=nn.Module)


def _frozen_copy(module: M) -> M:
    return copy.deepcopy(module).requires_grad_(False)


def _with_first_token(input_ids: Tensor, token: int) -> Tensor:
    ids = input_ids.clone()
    ids[:, 0] = token
    return ids


# -- tokenizers -------------------------------------------------------------------------------------


def _add_blip_tokens(tokenizer: Any) -> Any:
    tokenizer.add_special_tokens({"bos_token": "[DEC]", "extra_special_tokens": ["[ENC]"]})
    return tokenizer


def bert_tokenizer(directory: str | os.PathLike) -> Any:
    """The BERT checkpoint's WordPiece tokenizer with [DEC] (as ``bos_token``) and [ENC] added after
    its vocabulary, as BLIP's (BERT-base: ids 30522 and 30523)."""
    from transformers import BertTokenizer

    try:
        tokenizer = BertTokenizer.from_pretrained(os.fspath(directory))
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(f"{directory}: no BERT tokenizer ({exc})") from None
    return _add_blip_tokens(tokenizer)


def corpus_tokenizer(texts: Iterable[str], vocab_size: int = 1000) -> Any:
    """An uncased BERT WordPiece tokenizer over ``texts``' words
    (:func:`~vlmkit.models.wordpiece.wordpiece_vocab`: [PAD] 0, [UNK], [CLS], [SEP], [MASK], [DEC]),
    with [ENC] added at the end."""
    from transformers import BertTokenizer

    vocab = wordpiece_vocab(texts, vocab_size)
    tokenizer = BertTokenizer(vocab={token: i for i, token in enumerate(vocab)}, do_lower_case=True, bos_token="[DEC]")
    return _add_blip_tokens(tokenizer)


def load_tokenizer(directory: str | os.PathLike) -> Any:
    """The tokenizer saved beside a checkpoint (by :meth:`BlipPretrainModel.save_pretrained` or an export)."""
    return load_saved_tokenizer(directory)


def tokenizer_fields(tokenizer: Any) -> dict[str, int]:
    """The :class:`BlipPretrainConfig` fields a tokenizer decides: the vocabulary size and the ids of
    [PAD], [CLS], [SEP], [DEC] (its ``bos_token``) and [ENC]."""
    enc = tokenizer.convert_tokens_to_ids("[ENC]")
    if tokenizer.bos_token_id is None or enc is None or enc == tokenizer.unk_token_id:
        raise InputError("BLIP needs a tokenizer with [DEC] as bos_token and [ENC] (see bert_tokenizer / corpus_tokenizer)")
    return {
        "vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id, "cls_token_id": tokenizer.cls_token_id,
        "sep_token_id": tokenizer.sep_token_id, "dec_token_id": tokenizer.bos_token_id, "enc_token_id": enc,
    }


# -- initialisation from BERT -----------------------------------------------------------------------


def bert_text_fields(directory: str | os.PathLike) -> dict[str, Any]:
    """The text-side :class:`BlipPretrainConfig` fields of a BERT checkpoint's ``config.json``."""
    path = Path(directory) / "config.json"
    try:
        bert = json.loads(path.read_text())
        return {
            "text_width": bert["hidden_size"], "text_layers": bert["num_hidden_layers"], "text_heads": bert["num_attention_heads"],
            "text_mlp": bert["intermediate_size"], "max_text_length": bert["max_position_embeddings"],
            "text_layer_norm_eps": bert.get("layer_norm_eps", 1e-12),
        }
    except (OSError, ValueError, KeyError) as exc:
        raise ModelNotFoundError(f"{path}: not a BERT config ({exc!r})") from None


@dataclass(frozen=True)
class BertInitReport:
    """What :func:`init_text_from_bert` did."""

    #: Checkpoint tensors copied into the text encoder (and the decoder's own self-attention).
    loaded: tuple[str, ...]
    #: Checkpoint tensors with no place in BLIP (token types, the pooler, ...).
    unused: tuple[str, ...]
    #: Text-side parameters that kept their fresh initialisation (cross-attention, the LM head's transform).
    new: tuple[str, ...]


@torch.no_grad()
def init_text_from_bert(model: BlipPretrainModel, directory: str | os.PathLike) -> BertInitReport:
    """Initialise the text transformer from a BERT checkpoint's ``model.safetensors`` (``BertModel``
    weights, or ``BertForMaskedLM``'s with their ``bert.`` prefix and MLM head), as BLIP initialises
    both its text encoder and its decoder from BERT-base. The word embeddings take the checkpoint's
    rows; the rows after them ([DEC], [ENC]) keep their fresh values. The momentum text encoder is
    then reset to the online one. A tensor whose shape does not fit is an :class:`InputError`."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    file = Path(directory) / "model.safetensors"
    try:
        state = load_file(os.fspath(file))
    except (OSError, SafetensorError) as exc:
        raise ModelNotFoundError(f"{file}: cannot read BERT weights ({exc})") from None
    # Where each checkpoint name goes: the encoder, the decoder's own layers (its self-attention;
    # the shared ones are the encoder's objects), and the LM head for an MLM checkpoint.
    modules = (("", model.text_encoder), ("", model.text_decoder.bert), ("cls.", model.text_decoder.cls))
    tables = [(prefix, dict(module.named_parameters())) for prefix, module in modules]
    loaded, unused, touched = [], [], set()
    for key, value in state.items():
        name = key.removeprefix("bert.")
        params = [table[name[len(prefix) :]] for prefix, table in tables if name.startswith(prefix) and name[len(prefix) :] in table]
        if not params:
            unused.append(key)
            continue
        for param in params:
            _copy_rows(param, value, key)
            touched.add(id(param))
        loaded.append(key)
    text_side = [("text_encoder.", model.text_encoder), ("text_decoder.", model.text_decoder)]
    new = sorted({prefix + name for prefix, module in text_side for name, p in module.named_parameters() if id(p) not in touched})
    model.text_encoder_m.load_state_dict(model.text_encoder.state_dict())
    return BertInitReport(tuple(loaded), tuple(unused), tuple(new))


def _copy_rows(param: Tensor, value: Tensor, key: str) -> None:
    """Copy a checkpoint tensor into a parameter; embedding-like tensors may be shorter along dim 0
    (the vocabulary grew by BLIP's tokens)."""
    if value.shape == param.shape:
        param.copy_(value)
    elif value.ndim == param.ndim and value.shape[1:] == param.shape[1:] and value.shape[0] < param.shape[0]:
        param[: value.shape[0]].copy_(value)
    else:
        raise InputError(f"BERT tensor {key} has shape {tuple(value.shape)}, the BLIP text model {tuple(param.shape)}: "
                         "take the text sizes from bert_text_fields() and the tokenizer from bert_tokenizer()")


# -- export to transformers -------------------------------------------------------------------------

#: The transformers class and the parts of the model each exported head holds (same names there).
EXPORTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "caption": ("BlipForConditionalGeneration", ("vision_model", "text_decoder")),
    "retrieval": ("BlipForImageTextRetrieval", ("vision_model", "text_encoder", "vision_proj", "text_proj", "itm_head")),
    "vqa": ("BlipForQuestionAnswering", ("vision_model", "text_encoder", "text_decoder")),
}


def export(model: BlipPretrainModel, tokenizer: Any, out: str | os.PathLike, *, head: ExportHead) -> Path:
    """Write ``model`` as a transformers BLIP checkpoint with its ``BlipProcessor``, loadable by
    ``BlipForX.from_pretrained(out)`` / ``BlipProcessor.from_pretrained(out)`` and ``vlmkit.load(out)``:

    - ``caption``: ``BlipForConditionalGeneration`` (the image encoder and the LM decoder);
    - ``retrieval``: ``BlipForImageTextRetrieval`` (the image encoder, the text encoder, both ITC
      projections and the ITM head);
    - ``vqa``: ``BlipForQuestionAnswering``, whose question encoder is the image-grounded encoder and
      whose answer decoder is the LM decoder (BLIP's initialisation for VQA fine-tuning; after it,
      the decoder as fine-tuned).

    Shared layers are written as separate copies, as the transformers classes hold them. The
    retrieval and VQA heads need ``itm_first_token="cls"`` (transformers does not insert [ENC])."""
    import transformers
    from transformers import BlipProcessor

    if head not in EXPORTS:
        raise InputError(f"export head must be one of {', '.join(EXPORTS)}, got {head!r}")
    config = model.config
    if head != "caption" and config.itm_first_token != "cls":
        raise InputError(
            f"cannot export a model trained with [ENC] first as {EXPORTS[head][0]}: transformers feeds its "
            "text encoder [CLS] first, so the export would compute something else"
        )
    if head == "vqa" and config.text_width != config.vision_width:
        raise InputError(f"BLIP VQA needs equal text and vision widths, got {config.text_width} and {config.vision_width}")
    if len(tokenizer) != config.vocab_size or tokenizer.bos_token_id != config.dec_token_id:
        raise InputError(f"the tokenizer ({len(tokenizer)} tokens, bos {tokenizer.bos_token_id}) is not the model's "
                         f"({config.vocab_size} tokens, [DEC] {config.dec_token_id})")
    class_name, parts = EXPORTS[head]
    hf_config = blip_config(config, temperature=float(model.temp.detach()))
    hf_model = getattr(transformers, class_name)(hf_config)
    state = {f"{part}.{name}": tensor for part in parts for name, tensor in getattr(model, part).state_dict().items()}
    hf_model.load_state_dict(state, strict=True)
    path = Path(out)
    hf_model.save_pretrained(path)
    BlipProcessor(image_processor=model.image_processor(), tokenizer=tokenizer).save_pretrained(path)
    return path
