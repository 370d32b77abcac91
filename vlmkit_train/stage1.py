"""``vlmkit train blip2-stage1``: BLIP-2 vision-language representation learning.

The frozen image encoder's features are computed once and cached on disk (float16, memory-mapped);
the Q-Former learns from them with ITC + ITM + ITG (:func:`vlmkit.objectives.blip2_stage1_losses`).
HF accelerate provides the device, mixed precision, gradient accumulation and, when launched with
``accelerate launch``, DDP/FSDP/DeepSpeed over many GPUs or nodes. Each process takes its own slice
of every global batch; ITC and ITM negatives are gathered across processes.

The run goes through the shared driver (:func:`vlmkit_train.driver.train`). Outputs in
``out_dir``: ``model/`` (a ``vlmkit-blip2-retrieval`` checkpoint: ``vlmkit.load`` embeds, scores
and matches with it through the frozen encoder; its ``qformer/`` holds the safetensors, config and
tokenizer, loadable with ``QFormer.from_pretrained``, and is what stage 2's ``stage1=`` reads), ``metrics.jsonl``, ``loss.png`` (when matplotlib is installed),
``state/`` for exact resume, ``features/`` (the cache) and ``config.json``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from vlmkit.models.blip2_native import save_retrieval
from vlmkit.models.qformer import QFormer
from vlmkit.objectives import blip2_stage1_losses

from .config import DataConfig, RunConfig, check_at_least, data_seed
from .data import frozen_features, text_tokenizer, training_examples
from .driver import MODEL_DIR, Plan, Recipe, Run
from .loop import batch_rows, caption_batch
from .qformer_setup import QFormerSetup, new_qformer

__all__ = ["Stage1Config", "PRESETS", "RECIPE", "train_stage1", "stage1_config"]


@dataclass(frozen=True)
class Stage1Config:
    run: RunConfig = RunConfig()
    #: The scenes stay fixed (data.seed=0) while run.seed varies, so seeds compare on the same data
    #: and share one feature cache.
    data: DataConfig = DataConfig(seed=0)
    encoder: str = "efficientnet-lite0"
    encoder_layer: int = -2
    qformer: QFormerSetup = QFormerSetup()
    max_text_length: int = 32
    use_itg: bool = True
    #: Pairs with an identical caption or the same content (``Example.group``) are not negatives:
    #: contrastive targets spread over them and ITM never draws them. False: one-hot (the papers').
    group_negatives: bool = True
    cache_features: bool = True
    #: Where the feature cache lives; "" is ``out/features``. Runs on the same data and encoder can
    #: share one directory (the cache records which images it holds and is rebuilt for others).
    features_dir: str = ""

    def __post_init__(self) -> None:
        check_at_least(self, ("max_text_length",))


# The offline recipe: a small scratch Q-Former with a corpus vocabulary (see bench/blip2_offline.py);
# every layer cross-attends to the image, 16 queries.
PRESETS: dict[str, Stage1Config] = {
    "shapes": Stage1Config(
        run=RunConfig(lr=1e-3, max_steps=1500),
        qformer=QFormerSetup(init="scratch", tokenizer="corpus", num_query_tokens=16, cross_attention_frequency=1),
    ),
    "shapes-large": Stage1Config(
        run=RunConfig(lr=1e-3, max_steps=1500, batch_size=64),
        qformer=QFormerSetup(init="scratch", tokenizer="corpus", layers=4, hidden=256, num_query_tokens=32, cross_attention_frequency=1),
    ),
    "tiny": Stage1Config(
        run=RunConfig(batch_size=4, max_steps=6, warmup_steps=2, log_every=1, lr=1e-3),
        data=DataConfig(train_size=16, seed=0),
        qformer=QFormerSetup(init="scratch", tokenizer="corpus", layers=2, hidden=32, num_query_tokens=4),
        max_text_length=24,
    ),
}
#: What each preset is for and roughly what it costs (``vlmkit train --help``).
PRESET_NOTES: dict[str, str] = {
    "shapes": "the offline recipe: a scratch Q-Former (2 layers, 16 queries), 1,500 steps of batch 32: 0.47 s a step, about 12 min (6 min with run.mixed_precision=bf16) (bench/recipe_costs.py on a 2-core CPU)",
    "shapes-large": "4 layers, 256 wide, 32 queries, batch 64; about 7x a shapes step (2.2 s/step in bf16 measured, 55 min)",
    "tiny": "smoke test: 6 steps on 16 scenes, seconds",
}


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


def build(config: Stage1Config, run: Run) -> Plan:
    """A fresh Q-Former learning ITC + ITM + ITG from the cached frozen features."""
    seed = config.run.seed
    examples = training_examples(config.data, data_seed(config))
    features = frozen_features(config, examples, run, cache=config.cache_features, features_dir=config.features_dir)
    tokenizer = text_tokenizer(config.qformer.tokenizer, examples, run)
    objective = Stage1Objective(new_qformer(config.qformer, features.width, tokenizer), config.use_itg)

    def micro_step(model: nn.Module, index: int) -> dict[str, torch.Tensor]:
        rows = batch_rows(seed, index, dataset_size=len(examples), batch_size=config.run.batch_size, world=run.world, rank=run.rank)
        captions, groups = caption_batch(examples, rows, seed, index, run.rank, groups=config.group_negatives)
        # Under a process group ITM gathers token ids, which needs one length on every rank.
        padding = "max_length" if run.world > 1 else True
        text = tokenizer(captions, padding=padding, truncation=True, max_length=config.max_text_length, return_tensors="pt")
        return model(  # type: ignore[no-any-return]
            features.rows(rows).to(run.device),
            text["input_ids"].to(run.device),
            text["attention_mask"].to(run.device),
            seed=seed * 1_000_003 + index,
            groups=None if groups is None else groups.to(run.device),
        )

    def export(model: nn.Module, out: Path) -> Path:
        assert isinstance(model, Stage1Objective)
        save_retrieval(out / MODEL_DIR, model.qformer, tokenizer, image_encoder=config.encoder, encoder_layer=config.encoder_layer)
        return out / MODEL_DIR

    return Plan(objective, micro_step, export, losses=("total", "itc", "itm", "itg"), no_decay=("query_tokens",))


RECIPE = Recipe(
    name="blip2-stage1", summary="BLIP-2 stage 1: Q-Former with ITC + ITM + ITG", title="BLIP-2 stage 1", presets=PRESETS,
    preset_notes=PRESET_NOTES, build=build,
    next_step=lambda model_dir: f"vlmkit train blip2-stage2 --set stage1={model_dir.parent} --set language_model=LM_DIR"
    f' (or: vlmkit match IMAGE "a caption" --model {model_dir})',
)


stage1_config = RECIPE.config  # (preset="shapes", overrides) -> the checked config
train_stage1 = RECIPE.train  # (config, out_dir, *, resume, progress, stop_after) -> TrainResult
