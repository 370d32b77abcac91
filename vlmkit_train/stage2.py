"""``vlmkit train blip2-stage2``: BLIP-2 vision-to-language generative learning.

The Q-Former (from a stage-1 run, or fresh for the paper's Figure 5 ablation) and a new linear
projection learn to feed a FROZEN language model soft visual prompts, with the LM loss on captions
(prompt "a photo of") and answers (prompt "Question: {} Answer:"). Image features come from the same
float16 cache as stage 1.

The run goes through the shared driver (:func:`vlmkit_train.driver.train`). The result in
``out_dir/model`` loads with ``vlmkit.load`` and answers ``vlmkit caption / ask / embed / match``;
beside it ``metrics.jsonl``, ``loss.png``, ``state/`` (the Q-Former and projection, for exact
resume), ``features/`` (unless ``features_dir``) and ``config.json``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import torch
from torch import nn

from vlmkit.errors import InputError
from vlmkit.models.blip2_native import CAPTION_PROMPT, RETRIEVAL_QFORMER, VQA_PROMPT, Blip2Config, NativeBlip2

from .config import DataConfig, RunConfig, data_seed
from .data import frozen_features, text_tokenizer, training_examples
from .driver import MODEL_DIR, Plan, Recipe, Run
from .loop import batch_rows
from .qformer_setup import QFormerSetup, TrainableParts, new_qformer, stage1_qformer

__all__ = ["Stage2Config", "PRESETS", "RECIPE", "train_stage2", "stage2_config"]


@dataclass(frozen=True)
class Stage2Config:
    run: RunConfig = RunConfig()
    #: The scenes stay fixed (data.seed=0) while run.seed varies, so seeds compare on the same data
    #: and share one feature cache.
    data: DataConfig = DataConfig(seed=0)
    #: A stage-1 run directory (its ``qformer/``) or a Q-Former directory; "" starts from a fresh one.
    stage1: str = ""
    #: The frozen LM: a directory (e.g. from ``vlmkit train lm``) or a hub id. Required.
    language_model: str = ""
    encoder: str = "efficientnet-lite0"
    encoder_layer: int = -2
    #: Where the LM reads the visual prompts: "after_bos" is where an LM from ``vlmkit train lm``
    #: learned to read a scene description; "before_bos" is the released BLIP-2 layout.
    visual_position: Literal["before_bos", "after_bos"] = "after_bos"
    #: Used only when stage1 is "" (a fresh Q-Former, as in stage 1).
    qformer: QFormerSetup = QFormerSetup()
    #: Share of training samples that are question-answer pairs (the rest are captions).
    qa_fraction: float = 0.5
    #: As in stage 1: "" is ``out/features``; a stage-1 run's ``features/`` can be shared.
    features_dir: str = ""

    def __post_init__(self) -> None:
        if not 0.0 <= self.qa_fraction <= 1.0:
            raise InputError(f"qa_fraction must be in [0, 1], got {self.qa_fraction}")


# The offline recipe: the stage-1 presets' Q-Former sizes, for a fresh Q-Former (stage1="").
PRESETS: dict[str, Stage2Config] = {
    "shapes": Stage2Config(
        run=RunConfig(lr=1e-3, max_steps=1000),
        qformer=QFormerSetup(init="scratch", tokenizer="corpus", num_query_tokens=16, cross_attention_frequency=1),
    ),
    "shapes-large": Stage2Config(
        run=RunConfig(lr=1e-3, max_steps=1000, batch_size=64),
        qformer=QFormerSetup(init="scratch", tokenizer="corpus", layers=4, hidden=256, num_query_tokens=32, cross_attention_frequency=1),
    ),
    "tiny": Stage2Config(
        run=RunConfig(batch_size=4, max_steps=6, warmup_steps=2, log_every=1, lr=1e-3),
        data=DataConfig(train_size=16, seed=0),
        qformer=QFormerSetup(init="scratch", tokenizer="corpus", layers=2, hidden=32, num_query_tokens=4),
    ),
}
#: What each preset is for and roughly what it costs (``vlmkit train --help``).
PRESET_NOTES: dict[str, str] = {
    "shapes": "the offline recipe: from a stage-1 run (or a fresh scratch Q-Former, 2 layers, 16 queries), 1,000 steps of batch 32 through the offline LM: 0.21 s a step, about 4 min (2 min with run.mixed_precision=bf16) (bench/recipe_costs.py on a 2-core CPU)",
    "shapes-large": "a fresh Q-Former of 4 layers, 256 wide, 32 queries, batch 64; cost not measured for stage 2",
    "tiny": "smoke test: 6 steps on 16 scenes, seconds",
}


def _sample(example: Any, rng: np.random.Generator, qa_fraction: float) -> tuple[str, str]:
    """One (prompt, target) pair: an answer to one of the image's questions, or one of its captions."""
    use_qa = bool(example.qa) and (not example.captions or rng.random() < qa_fraction)
    if use_qa:
        question, answer = example.qa[rng.integers(len(example.qa))]
        return VQA_PROMPT.format(question), answer
    return CAPTION_PROMPT, example.captions[rng.integers(len(example.captions))]


def check(config: Stage2Config) -> None:
    if not config.language_model:
        raise InputError("language_model is required: a directory (see `vlmkit train lm`) or a hub id")


def build(config: Stage2Config, run: Run) -> Plan:
    """The Q-Former (stage 1's or fresh) and a new projection, learning through the frozen LM."""
    seed = config.run.seed
    examples = training_examples(config.data, data_seed(config))
    features = frozen_features(config, examples, run, features_dir=config.features_dir)
    if config.stage1:
        qformer, tokenizer = stage1_qformer(config.stage1)
    else:
        tokenizer = text_tokenizer(config.qformer.tokenizer, examples, run)
        qformer = new_qformer(config.qformer, features.width, tokenizer)
    blip2 = Blip2Config(
        image_encoder=config.encoder, encoder_layer=config.encoder_layer, language_model=config.language_model,
        visual_position=config.visual_position,
    )
    model = NativeBlip2.from_parts(blip2, qformer, lm_path=config.language_model)

    def micro_step(model: nn.Module, index: int) -> dict[str, torch.Tensor]:
        rows = batch_rows(seed, index, dataset_size=len(examples), batch_size=config.run.batch_size, world=run.world, rank=run.rank)
        rng = np.random.default_rng([seed, index, run.rank])
        pairs = [_sample(examples[i], rng, config.qa_fraction) for i in rows]
        return {"loss": model(features.rows(rows).to(run.device), [p for p, _ in pairs], [t for _, t in pairs])}

    def export(model: nn.Module, out: Path) -> Path:
        cast(NativeBlip2, model).save_pretrained(out / MODEL_DIR)
        tokenizer.save_pretrained(out / MODEL_DIR / "qformer")
        if config.stage1:  # retrieval keeps the stage-1 Q-Former, as BLIP-2 does
            stage1_qformer(config.stage1)[0].save_pretrained(out / MODEL_DIR / RETRIEVAL_QFORMER)
        return out / MODEL_DIR

    # As in stage 1: no decay on norms, biases and the learned queries.
    return Plan(model, micro_step, export, no_decay=("query_tokens",), state=TrainableParts)


RECIPE = Recipe(
    name="blip2-stage2", summary="BLIP-2 stage 2: Q-Former into a frozen LM", title="BLIP-2 stage 2", presets=PRESETS,
    preset_notes=PRESET_NOTES, build=build,
    next_step=lambda model_dir: f'vlmkit ask IMAGE "what colour is the circle?" --model {model_dir}', check=check,
)


stage2_config = RECIPE.config  # (preset="shapes", overrides) -> the checked config
train_stage2 = RECIPE.train  # (config, out_dir, *, resume, progress, stop_after) -> TrainResult
