"""``vlmkit train instructblip``: InstructBLIP instruction tuning (Dai et al., 2023).

BLIP-2 with an instruction-aware Q-Former: the instruction's tokens enter the Q-Former beside the
learned queries, so the visual prompts it gives the frozen LM depend on what is asked; the LM reads
the same instruction as its text prompt. Starting from a BLIP-2 stage-1 run (``stage1=DIR``, as the
paper starts from BLIP-2) or a fresh Q-Former, the Q-Former and a new projection learn with the LM
loss through the FROZEN LM on a mixture of instruction templates over the data's task types: the
held-in templates and task types of :mod:`vlmkit.data.instructions` only, so the held-out ones
measure zero-shot generalisation. ``instruction_aware=false`` trains the same mixture with a plain
BLIP-2 Q-Former (the paper's ablation).

Outputs in ``out_dir``: ``model/`` (``vlmkit.load`` answers caption / ask / generate; its default
prompts are the first held-in templates), ``metrics.jsonl``, ``loss.png``, ``state/``, ``features/``
(unless ``features_dir``) and ``config.json``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from vlmkit.data.instructions import HELD_IN_TASKS, HELD_IN_TEMPLATES, sample_instruction
from vlmkit.errors import InputError
from vlmkit.models.blip2_native import Blip2Config, NativeBlip2
from vlmkit.models.image_encoders import load_image_encoder

from .config import check_at_least, preset_config
from .loop import StepLoop, adamw, batch_rows, open_metrics, plot_losses, run_steps, start_run
from .stage1 import _examples, _qformer, _tokenizer, check_vocabulary, feature_cache
from .stage2 import _stage1_qformer, _trainable_view
from .state import load_training_state

__all__ = ["InstructConfig", "PRESETS", "InstructResult", "train_instruct", "instruct_config"]


@dataclass(frozen=True)
class InstructConfig:
    data: Literal["shapes", "easy-vqa"] = "shapes"
    train_size: int = 2000
    image_size: int = 64
    seed: int = 0
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
    # Used only when stage1 is "" (a fresh Q-Former, as in stage 1's options).
    qformer_init: str = "minilm"
    tokenizer: Literal["minilm", "corpus"] = "minilm"
    scratch_layers: int = 2
    scratch_hidden: int = 128
    num_query_tokens: int = 8
    cross_attention_frequency: int = 2
    #: Share of samples that are questions (of the held-in task types); the rest are captions.
    qa_fraction: float = 0.6
    batch_size: int = 32
    grad_accum: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.05
    warmup_steps: int = 50
    max_steps: int = 500
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    #: As in stage 1: "" is ``out/features``; a stage-1 run's ``features/`` can be shared.
    features_dir: str = ""
    save_every: int = 0
    log_every: int = 10

    def __post_init__(self) -> None:
        check_at_least(self, ("train_size", "batch_size", "grad_accum", "max_steps", "max_instruction_length", "num_query_tokens"))
        if self.lr <= 0:
            raise InputError(f"lr must be positive, got {self.lr}")
        if not 0.0 <= self.qa_fraction <= 1.0:
            raise InputError(f"qa_fraction must be in [0, 1], got {self.qa_fraction}")
        check_vocabulary(self)


PRESETS: dict[str, InstructConfig] = {
    # The offline recipe (see bench/instructblip_offline.py): from a stage-1 run of the shapes preset.
    "shapes": InstructConfig(qformer_init="scratch", tokenizer="corpus", lr=1e-3, max_steps=1200),
    # A few seconds on a laptop CPU: for tests and for trying the pipeline.
    "tiny": InstructConfig(
        train_size=16, batch_size=4, max_steps=6, qformer_init="scratch", tokenizer="corpus", scratch_layers=2, scratch_hidden=32,
        num_query_tokens=4, warmup_steps=2, log_every=1, lr=1e-3, max_instruction_length=24,
    ),
}


def instruct_config(preset: str = "shapes", overrides: list[str] | None = None) -> InstructConfig:
    return preset_config(PRESETS, preset, overrides)


@dataclass(frozen=True)
class InstructResult:
    out_dir: Path
    steps: int
    final_loss: float


def train_instruct(
    config: InstructConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = False,
    stop_after: int | None = None,
) -> InstructResult:
    """Instruction-tune the Q-Former and projection through the frozen LM; ``out_dir/model`` is the
    result. ``resume`` continues from ``out_dir/state``; ``stop_after`` ends early (resumable)."""
    from transformers import get_cosine_schedule_with_warmup

    if not config.language_model:
        raise InputError("language_model is required: a directory (see `vlmkit train lm`) or a hub id")
    out, accelerator = start_run(config, out_dir, resume)
    state_dir = out / "state"

    examples = _examples(config)
    encoder = load_image_encoder(config.encoder, layer=config.encoder_layer)
    cache = feature_cache(config, encoder, [e.image for e in examples], out, accelerator, progress)

    if config.stage1:
        qformer, tokenizer = _stage1_qformer(config.stage1)
        if qformer.config.encoder_hidden_size != encoder.hidden_size:
            raise InputError(f"stage1={config.stage1!r}: its Q-Former reads {qformer.config.encoder_hidden_size}-wide features, "
                             f"{config.encoder} gives {encoder.hidden_size}")
    else:
        tokenizer = _tokenizer(config, examples, out, accelerator, resume)
        qformer = _qformer(config, encoder.hidden_size, tokenizer)
    blip2 = Blip2Config(
        image_encoder=config.encoder, encoder_layer=config.encoder_layer, language_model=config.language_model,
        # The defaults that caption / ask use: the first held-in template of each family.
        caption_prompt=HELD_IN_TEMPLATES.caption[0], vqa_prompt=HELD_IN_TEMPLATES.vqa[0],
        instruction_aware=config.instruction_aware, max_instruction_length=config.max_instruction_length,
        visual_position=config.visual_position,
    )
    model = NativeBlip2.from_parts(blip2, qformer, lm_path=config.language_model, qformer_tokenizer=tokenizer)
    # As in stage 1: no decay on norms, biases and the learned queries.
    optimizer = adamw(model, lr=config.lr, weight_decay=config.weight_decay, no_decay=("query_tokens",))
    scheduler = get_cosine_schedule_with_warmup(optimizer, config.warmup_steps, config.max_steps)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)

    start = 0
    if resume:
        start = load_training_state(state_dir, model=_trainable_view(accelerator.unwrap_model(model)), optimizer=optimizer, scheduler=scheduler)
    world, rank = accelerator.num_processes, accelerator.process_index
    metrics_path, end = open_metrics(out, accelerator, resume=resume, max_steps=config.max_steps, stop_after=stop_after)

    def micro_step(index: int) -> dict[str, torch.Tensor]:
        rows = batch_rows(config.seed, index, dataset_size=len(examples), batch_size=config.batch_size, world=world, rank=rank)
        rng = np.random.default_rng([config.seed, index, rank])
        pairs = [sample_instruction(examples[i], rng, HELD_IN_TEMPLATES, HELD_IN_TASKS, config.qa_fraction) for i in rows]
        loss = model(cache.batch(rows).to(accelerator.device), [p.instruction for p in pairs], [p.target for p in pairs])
        return {"loss": loss}

    losses = run_steps(
        StepLoop(config.max_steps, config.grad_accum, config.log_every, config.save_every, "instructblip", loss_key="loss"),
        accelerator=accelerator, model=model, optimizer=optimizer, scheduler=scheduler,
        state_model=lambda: _trainable_view(accelerator.unwrap_model(model)), micro_step=micro_step,
        out=out, start=start, end=end, progress=progress,
    )
    if accelerator.is_main_process and end == config.max_steps:
        final: Any = accelerator.unwrap_model(model)
        final.save_pretrained(out / "model")  # with the Q-Former's tokenizer in model/qformer
        plot_losses(metrics_path, out / "loss.png", ("loss",), "InstructBLIP instruction tuning")
    return InstructResult(out_dir=out, steps=end, final_loss=losses.get("loss", float("nan")))
