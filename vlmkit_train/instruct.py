"""``vlmkit train instructblip``: InstructBLIP instruction tuning (Dai et al., 2023).

BLIP-2 with an instruction-aware Q-Former: the instruction's tokens enter the Q-Former beside the
learned queries, so the visual prompts it gives the frozen LM depend on what is asked; the LM reads
the same instruction as its text prompt. Starting from a BLIP-2 stage-1 run (``stage1=DIR``, as the
paper starts from BLIP-2) or a fresh Q-Former, the Q-Former and a new projection learn with the LM
loss through the FROZEN LM on a mixture of instruction templates over the data's task types: the
held-in templates and task types of :mod:`vlmkit.data.instructions` only, so the held-out ones
measure zero-shot generalisation. ``instruction_aware=false`` trains the same mixture with a plain
BLIP-2 Q-Former (the paper's ablation).

The run goes through the shared driver (:func:`vlmkit_train.driver.train`). Outputs in ``out_dir``:
``model/`` (``vlmkit.load`` answers caption / ask / generate; its default prompts are the first
held-in templates), ``metrics.jsonl``, ``loss.png``, ``state/``, ``features/`` (unless
``features_dir``) and ``config.json``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast

import numpy as np
import torch
from torch import nn

from vlmkit.data.instructions import HELD_IN_TASKS, HELD_IN_TEMPLATES, sample_instruction
from vlmkit.errors import InputError
from vlmkit.models.blip2_native import Blip2Config, NativeBlip2

from .config import DataConfig, RunConfig, check_at_least, data_seed
from .data import frozen_features, text_tokenizer, training_examples
from .driver import MODEL_DIR, Plan, Recipe, Run
from .loop import batch_rows
from .qformer_setup import QFormerSetup, TrainableParts, new_qformer, stage1_qformer

__all__ = ["InstructConfig", "PRESETS", "RECIPE", "train_instruct", "instruct_config"]


@dataclass(frozen=True)
class InstructConfig:
    run: RunConfig = RunConfig()
    data: DataConfig = DataConfig()
    #: A BLIP-2 stage-1 run directory (its ``qformer/``) or a Q-Former directory; "" starts fresh.
    stage1: str = ""
    #: The frozen LM: a directory (e.g. from ``vlmkit train lm``) or a hub id. Required.
    language_model: str = ""
    encoder: str = "efficientnet-lite0"
    encoder_layer: int = -2
    #: Where the LM reads the visual prompts: "after_bos" is where an LM from ``vlmkit train lm``
    #: learned to read a scene description; "before_bos" is the released BLIP-2 layout.
    visual_position: Literal["before_bos", "after_bos"] = "after_bos"
    #: The Q-Former reads the instruction (InstructBLIP); false is BLIP-2's Q-Former on the same mixture.
    instruction_aware: bool = True
    #: Instructions are cut to this many Q-Former tokens.
    max_instruction_length: int = 48
    #: Used only when stage1 is "" (a fresh Q-Former, as in stage 1).
    qformer: QFormerSetup = QFormerSetup()
    #: Share of samples that are questions (of the held-in task types); the rest are captions.
    qa_fraction: float = 0.6
    #: As in stage 1: "" is ``out/features``; a stage-1 run's ``features/`` can be shared.
    features_dir: str = ""

    def __post_init__(self) -> None:
        check_at_least(self, ("max_instruction_length",))
        if not 0.0 <= self.qa_fraction <= 1.0:
            raise InputError(f"qa_fraction must be in [0, 1], got {self.qa_fraction}")


PRESETS: dict[str, InstructConfig] = {
    # The offline recipe (see bench/instructblip_offline.py): from a stage-1 run of the shapes preset.
    "shapes": InstructConfig(run=RunConfig(lr=1e-3, max_steps=1200), qformer=QFormerSetup(init="scratch", tokenizer="corpus")),
    "tiny": InstructConfig(
        run=RunConfig(batch_size=4, max_steps=6, warmup_steps=2, log_every=1, lr=1e-3),
        data=DataConfig(train_size=16),
        qformer=QFormerSetup(init="scratch", tokenizer="corpus", layers=2, hidden=32, num_query_tokens=4),
        max_instruction_length=24,
    ),
}
#: What each preset is for and roughly what it costs (``vlmkit train --help``).
PRESET_NOTES: dict[str, str] = {
    "shapes": "the offline recipe (bench/instructblip_offline.py): from a stage-1 run, 1,200 steps of batch 32 through the offline LM: 0.28 s a step, about 6 min (3 min with run.mixed_precision=bf16) (bench/recipe_costs.py on a 2-core CPU)",
    "tiny": "smoke test: 6 steps on 16 scenes, seconds",
}


def check(config: InstructConfig) -> None:
    if not config.language_model:
        raise InputError("language_model is required: a directory (see `vlmkit train lm`) or a hub id")


def build(config: InstructConfig, run: Run) -> Plan:
    """The Q-Former (stage 1's or fresh), reading the instruction, and a new projection, learning
    through the frozen LM on the held-in instruction mixture."""
    seed = config.run.seed
    examples = training_examples(config.data, data_seed(config))
    features = frozen_features(config, examples, run, features_dir=config.features_dir)
    if config.stage1:
        qformer, tokenizer = stage1_qformer(config.stage1)
        if qformer.config.encoder_hidden_size != features.width:
            raise InputError(f"stage1={config.stage1!r}: its Q-Former reads {qformer.config.encoder_hidden_size}-wide features, "
                             f"{config.encoder} gives {features.width}")
    else:
        tokenizer = text_tokenizer(config.qformer.tokenizer, examples, run)
        qformer = new_qformer(config.qformer, features.width, tokenizer)
    blip2 = Blip2Config(
        image_encoder=config.encoder, encoder_layer=config.encoder_layer, language_model=config.language_model,
        # The defaults that caption / ask use: the first held-in template of each family.
        caption_prompt=HELD_IN_TEMPLATES.caption[0], vqa_prompt=HELD_IN_TEMPLATES.vqa[0],
        instruction_aware=config.instruction_aware, max_instruction_length=config.max_instruction_length,
        visual_position=config.visual_position,
    )
    model = NativeBlip2.from_parts(blip2, qformer, lm_path=config.language_model, qformer_tokenizer=tokenizer)

    def micro_step(model: nn.Module, index: int) -> dict[str, torch.Tensor]:
        rows = batch_rows(seed, index, dataset_size=len(examples), batch_size=config.run.batch_size, world=run.world, rank=run.rank)
        rng = np.random.default_rng([seed, index, run.rank])
        pairs = [sample_instruction(examples[i], rng, HELD_IN_TEMPLATES, HELD_IN_TASKS, config.qa_fraction) for i in rows]
        return {"loss": model(features.rows(rows).to(run.device), [p.instruction for p in pairs], [p.target for p in pairs])}

    def export(model: nn.Module, out: Path) -> Path:
        cast(NativeBlip2, model).save_pretrained(out / MODEL_DIR)  # with the Q-Former's tokenizer in model/qformer
        return out / MODEL_DIR

    # As in stage 1: no decay on norms, biases and the learned queries.
    return Plan(model, micro_step, export, no_decay=("query_tokens",), state=TrainableParts)


RECIPE = Recipe(
    name="instructblip", summary="InstructBLIP instruction tuning", title="InstructBLIP instruction tuning",
    presets=PRESETS, preset_notes=PRESET_NOTES, build=build,
    next_step=lambda model_dir: f'vlmkit ask IMAGE "what colour is the circle?" --model {model_dir}', check=check,
)


instruct_config = RECIPE.config  # (preset="shapes", overrides) -> the checked config
train_instruct = RECIPE.train  # (config, out_dir, *, resume, progress, stop_after) -> TrainResult
