"""``vlmkit train coca``: CoCa, contrastive captioners (Yu et al., 2022).

One forward pass gives both of CoCa's objectives: the symmetric InfoNCE between the contrastive
pooler's image embedding and the unimodal decoder's [CLS] text embedding, and the multimodal
decoder's captioning loss, weighted by ``caption_weight`` (:func:`vlmkit.losses.coca.coca_loss`).
The learnable logit scale is clamped at 100 before every step, as CLIP does. The frozen
EfficientNet-Lite0 grid in front of the trainable image layers is computed once and cached on disk;
each step draws one of each scene's captions.

Outputs in ``out_dir``: ``model/`` (``vlmkit.load``-able: config, safetensors, tokenizer),
``metrics.jsonl``, ``loss.png``, ``state/`` for exact resume, ``tokenizer/``, ``features/`` (the
cache, unless ``features_dir`` puts it elsewhere) and ``config.json``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from vlmkit.errors import InputError
from vlmkit.losses.coca import coca_loss
from vlmkit.losses.contrastive import clamp_logit_scale
from vlmkit.models.coca import CoCa, CoCaConfig, caption_labels, tokenize, tokenizer_config
from vlmkit.models.image_encoders import load_image_encoder

from .config import check_at_least, preset_config
from .loop import StepLoop, batch_rows, caption_batch, open_metrics, plot_losses, run_steps, start_run
from .stage1 import _examples, feature_cache
from .state import load_training_state
from .vocab import qformer_tokenizer

__all__ = ["CoCaTrainConfig", "PRESETS", "CoCaResult", "coca_config", "train_coca"]


@dataclass(frozen=True)
class CoCaTrainConfig:
    data: Literal["shapes", "easy-vqa"] = "shapes"
    train_size: int = 4000
    image_size: int = 64
    seed: int = 0
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
    batch_size: int = 64
    grad_accum: int = 1
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 50
    max_steps: int = 1000
    cache_features: bool = True
    #: Where the feature cache lives; "" is ``out/features`` (shared by runs on the same images).
    features_dir: str = ""
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    save_every: int = 0
    log_every: int = 10

    def __post_init__(self) -> None:
        check_at_least(self, ("train_size", "batch_size", "grad_accum", "max_steps", "hidden_size", "num_heads", "caption_queries",
                     "embed_dim", "log_every"))
        for name in ("image_layers", "unimodal_layers", "multimodal_layers", "warmup_steps", "save_every"):
            if getattr(self, name) < 0:
                raise InputError(f"{name} must not be negative, got {getattr(self, name)}")
        if self.hidden_size % self.num_heads:
            raise InputError(f"hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads}")
        if self.max_text_length < 3:
            raise InputError(f"max_text_length must be at least 3, got {self.max_text_length}")
        if self.caption_weight < 0:
            raise InputError(f"caption_weight must not be negative, got {self.caption_weight}")
        if self.lr <= 0:
            raise InputError(f"lr must be positive, got {self.lr}")


PRESETS: dict[str, CoCaTrainConfig] = {
    # The offline recipe (see bench/coca_offline.py).
    "shapes": CoCaTrainConfig(mixed_precision="bf16"),
    # A few seconds on a laptop CPU: for tests and for trying the pipeline.
    "tiny": CoCaTrainConfig(
        train_size=16, batch_size=4, max_steps=6, hidden_size=32, num_heads=2, image_layers=1, unimodal_layers=1,
        multimodal_layers=1, caption_queries=4, embed_dim=16, max_text_length=24, warmup_steps=2, log_every=1, lr=1e-3,
    ),
}


def coca_config(preset: str = "shapes", overrides: list[str] | None = None) -> CoCaTrainConfig:
    return preset_config(PRESETS, preset, overrides)


@dataclass(frozen=True)
class CoCaResult:
    out_dir: Path
    steps: int
    final_losses: dict[str, float]


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


def train_coca(
    config: CoCaTrainConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = False,
    stop_after: int | None = None,
) -> CoCaResult:
    """Train CoCa on cached frozen features. ``resume`` continues from ``out_dir/state``;
    ``stop_after`` ends the run early after that many steps (with a resumable state saved)."""
    from transformers import get_cosine_schedule_with_warmup

    from .lm import corpus_texts

    out, accelerator = start_run(config, out_dir, resume)

    examples = _examples(config)
    if not examples:
        raise InputError(f"{config.data}: no training examples with captions")
    encoder = load_image_encoder(config.encoder, layer=config.encoder_layer).to(accelerator.device)
    images = [e.image for e in examples]
    if config.cache_features:
        cache = feature_cache(config, encoder, images, out, accelerator, progress)

        def features(rows: np.ndarray) -> torch.Tensor:
            return cache.batch(rows)
    else:
        from vlmkit.images import load_image

        def features(rows: np.ndarray) -> torch.Tensor:
            return encoder.encode([load_image(images[i]) for i in rows]).float().cpu()

    texts = corpus_texts(examples) if config.tokenizer == "corpus" else []
    tokenizer = qformer_tokenizer(config.tokenizer, out / "tokenizer", texts, is_main=accelerator.is_main_process,
                                  wait=accelerator.wait_for_everyone, resume=resume)
    probe = features(np.arange(1))  # (1, P, E)
    model = CoCa(CoCaConfig(
        **tokenizer_config(tokenizer), image_encoder=config.encoder, encoder_layer=config.encoder_layer,
        image_feature_size=int(probe.shape[2]), image_tokens=int(probe.shape[1]), hidden_size=config.hidden_size,
        num_heads=config.num_heads, image_layers=config.image_layers, unimodal_layers=config.unimodal_layers,
        multimodal_layers=config.multimodal_layers, caption_queries=config.caption_queries, embed_dim=config.embed_dim,
        max_text_length=config.max_text_length,
    ))
    objective = CoCaObjective(model, config.caption_weight, config.gather)
    no_decay_names = ("queries", "positions", "cls_embedding", "log_logit_scale")
    decay = [p for n, p in objective.named_parameters() if p.ndim >= 2 and not any(k in n for k in no_decay_names)]
    no_decay = [p for n, p in objective.named_parameters() if p.ndim < 2 or any(k in n for k in no_decay_names)]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=config.lr
    )
    scheduler = get_cosine_schedule_with_warmup(optimizer, config.warmup_steps, config.max_steps)
    objective, optimizer, scheduler = accelerator.prepare(objective, optimizer, scheduler)

    start = 0
    if resume:
        start = load_training_state(out / "state", model=accelerator.unwrap_model(objective), optimizer=optimizer, scheduler=scheduler)
    world, rank = accelerator.num_processes, accelerator.process_index
    metrics_path, end = open_metrics(out, accelerator, resume=resume, max_steps=config.max_steps, stop_after=stop_after)

    def micro_step(index: int) -> dict[str, torch.Tensor]:
        rows = batch_rows(config.seed, index, dataset_size=len(examples), batch_size=config.batch_size, world=world, rank=rank)
        captions, groups = caption_batch(examples, rows, config.seed, index, rank, groups=config.group_negatives)
        ids, mask = tokenize(tokenizer, captions, config.max_text_length, accelerator.device)
        return objective(features(rows).to(accelerator.device), ids, mask, None if groups is None else groups.to(accelerator.device))

    losses = run_steps(
        StepLoop(config.max_steps, config.grad_accum, config.log_every, config.save_every, "coca"),
        accelerator=accelerator, model=objective, optimizer=optimizer, scheduler=scheduler,
        state_model=lambda: accelerator.unwrap_model(objective), micro_step=micro_step,
        out=out, start=start, end=end, progress=progress,
    )
    if accelerator.is_main_process and end == config.max_steps:
        final = accelerator.unwrap_model(objective).model
        clamp_logit_scale(final.log_logit_scale)
        final.save_pretrained(out / "model", tokenizer)
        plot_losses(metrics_path, out / "loss.png", ("total", "contrastive", "caption"), "CoCa")
    return CoCaResult(out_dir=out, steps=end, final_losses=losses)
