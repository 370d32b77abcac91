"""``vlmkit train coca``: CoCa, contrastive captioners (Yu et al., 2022).

One forward pass gives both of CoCa's objectives: the symmetric InfoNCE between the contrastive
pooler's image embedding and the unimodal decoder's [CLS] text embedding, and the multimodal
decoder's captioning loss, weighted by ``caption_weight`` (:func:`vlmkit.losses.coca.coca_loss`).
The learnable logit scale is clamped at 100 before every step, as CLIP does. The frozen
EfficientNet-Lite0 grid in front of the trainable image layers is computed once and cached on disk;
each step draws one of each scene's captions.

The run goes through the shared driver (:func:`vlmkit_train.driver.train`). Outputs in ``out_dir``: ``model/`` (``vlmkit.load``-able: config, safetensors, tokenizer),
``metrics.jsonl``, ``loss.png``, ``state/`` for exact resume, ``tokenizer/``, ``features/`` (the
cache, unless ``features_dir`` puts it elsewhere) and ``config.json``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from vlmkit.errors import InputError
from vlmkit.losses.coca import coca_loss
from vlmkit.losses.contrastive import clamp_logit_scale
from vlmkit.models.coca import CoCa, CoCaConfig, caption_labels, tokenize, tokenizer_config

from .config import DataConfig, RunConfig, check_at_least, data_seed
from .data import frozen_features, text_tokenizer, training_examples
from .driver import MODEL_DIR, Plan, Recipe, Run
from .loop import batch_rows, caption_batch

__all__ = ["CoCaTrainConfig", "PRESETS", "RECIPE", "coca_config", "train_coca"]

#: CoCa's optimisation where a preset does not say otherwise: a larger batch, learning rate and
#: budget than :class:`RunConfig`'s.
_RUN = RunConfig(batch_size=64, lr=1e-3, max_steps=1000)


@dataclass(frozen=True)
class CoCaTrainConfig:
    run: RunConfig = _RUN
    data: DataConfig = DataConfig(train_size=4000)
    encoder: str = "efficientnet-lite0"
    encoder_layer: int = -2
    #: "corpus" (a WordPiece of the training texts' words) or "minilm" (BERT's uncased vocabulary).
    tokenizer: Literal["corpus", "minilm"] = "corpus"
    hidden_size: int = 128
    num_heads: int = 4
    image_layers: int = 1
    unimodal_layers: int = 2
    multimodal_layers: int = 2
    caption_queries: int = 16
    embed_dim: int = 128
    max_text_length: int = 32
    #: lambda of ``L_con + lambda * L_cap`` (the paper's 2); 0 trains the contrastive part alone.
    caption_weight: float = 2.0
    gather: Literal["full", "local"] = "full"
    #: Pairs with an identical caption or the same content (``Example.group``) are not negatives:
    #: contrastive targets spread over them. False: one-hot (the papers').
    group_negatives: bool = True
    cache_features: bool = True
    #: Where the feature cache lives; "" is ``out/features`` (shared by runs on the same images).
    features_dir: str = ""

    def __post_init__(self) -> None:
        check_at_least(self, ("hidden_size", "num_heads", "caption_queries", "embed_dim"))
        check_at_least(self, ("image_layers", "unimodal_layers", "multimodal_layers"), 0)
        if self.hidden_size % self.num_heads:
            raise InputError(f"hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads}")
        if self.max_text_length < 3:
            raise InputError(f"max_text_length must be at least 3, got {self.max_text_length}")
        if self.caption_weight < 0:
            raise InputError(f"caption_weight must not be negative, got {self.caption_weight}")


PRESETS: dict[str, CoCaTrainConfig] = {
    # The offline recipe (see bench/coca_offline.py).
    "shapes": CoCaTrainConfig(run=dataclasses.replace(_RUN, mixed_precision="bf16")),
    # A few seconds on a laptop CPU: for tests and for trying the pipeline.
    "tiny": CoCaTrainConfig(
        run=dataclasses.replace(_RUN, batch_size=4, max_steps=6, warmup_steps=2, log_every=1),
        data=DataConfig(train_size=16),
        hidden_size=32, num_heads=2, image_layers=1, unimodal_layers=1, multimodal_layers=1, caption_queries=4, embed_dim=16,
        max_text_length=24,
    ),
}
#: What each preset is for and roughly what it costs (``vlmkit train --help``).
PRESET_NOTES: dict[str, str] = {
    "shapes": "the offline recipe (bench/coca_offline.py): 1 image layer, 2 + 2 decoder layers, 128 wide, bfloat16; 1,000 steps of batch 64: 0.085 s a step, about 1.5 min (bench/recipe_costs.py on a 2-core CPU)",
    "tiny": "smoke test: 6 steps on 16 scenes, seconds",
}


class CoCaObjective(nn.Module):
    """The model with CoCa's loss as its forward, so DDP/FSDP see one module call."""

    def __init__(self, model: CoCa, caption_weight: float, gather: Literal["full", "local"]) -> None:
        super().__init__()
        self.model = model
        self.caption_weight = caption_weight
        self.gather: Literal["full", "local"] = gather

    def forward(
        self, image_features: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor, groups: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        clamp_logit_scale(self.model.log_logit_scale)  # CLIP clamps after each step; before each is the same
        out = self.model(image_features, input_ids, attention_mask)
        losses = coca_loss(
            out.image_emb, out.text_emb, out.logit_scale, out.caption_logits, caption_labels(input_ids, attention_mask),
            caption_weight=self.caption_weight, gather=self.gather, groups=groups,
        )
        return {"contrastive": losses.contrastive, "caption": losses.caption, "total": losses.total,
                "logit_scale": out.logit_scale.detach()}


def build(config: CoCaTrainConfig, run: Run) -> Plan:
    """A fresh CoCa learning both objectives from the frozen encoder's features (cached once)."""
    seed = config.run.seed
    examples = training_examples(config.data, data_seed(config))
    features = frozen_features(config, examples, run, cache=config.cache_features, features_dir=config.features_dir)
    tokenizer = text_tokenizer(config.tokenizer, examples, run)
    probe = features.rows(np.arange(1))  # (1, P, E)
    model = CoCa(CoCaConfig(
        **tokenizer_config(tokenizer), image_encoder=config.encoder, encoder_layer=config.encoder_layer,
        image_feature_size=int(probe.shape[2]), image_tokens=int(probe.shape[1]), hidden_size=config.hidden_size,
        num_heads=config.num_heads, image_layers=config.image_layers, unimodal_layers=config.unimodal_layers,
        multimodal_layers=config.multimodal_layers, caption_queries=config.caption_queries, embed_dim=config.embed_dim,
        max_text_length=config.max_text_length,
    ))

    def micro_step(objective: nn.Module, index: int) -> dict[str, torch.Tensor]:
        rows = batch_rows(seed, index, dataset_size=len(examples), batch_size=config.run.batch_size, world=run.world, rank=run.rank)
        captions, groups = caption_batch(examples, rows, seed, index, run.rank, groups=config.group_negatives)
        ids, mask = tokenize(tokenizer, captions, config.max_text_length, run.device)
        return objective(  # type: ignore[no-any-return]
            features.rows(rows).to(run.device), ids, mask, None if groups is None else groups.to(run.device)
        )

    def export(objective: Any, out: Path) -> Path:  # a CoCaObjective
        clamp_logit_scale(objective.model.log_logit_scale)
        objective.model.save_pretrained(out / MODEL_DIR, tokenizer)
        return out / MODEL_DIR

    return Plan(
        CoCaObjective(model, config.caption_weight, config.gather), micro_step, export,
        losses=("total", "contrastive", "caption"), no_decay=("queries", "positions", "cls_embedding", "log_logit_scale"),
    )


RECIPE = Recipe(
    name="coca", summary="CoCa: contrastive + captioning", title="CoCa", presets=PRESETS, preset_notes=PRESET_NOTES,
    build=build, next_step=lambda model_dir: f"vlmkit caption IMAGE --model {model_dir}",
)


coca_config = RECIPE.config  # (preset="shapes", overrides) -> the checked config
train_coca = RECIPE.train  # (config, out_dir, *, resume, progress, stop_after) -> TrainResult
