"""``vlmkit train blip2-stage2``: BLIP-2 vision-to-language generative learning.

The Q-Former (from a stage-1 run, or fresh for the paper's Figure 5 ablation) and a new linear
projection learn to feed a FROZEN language model soft visual prompts, with the LM loss on captions
(prompt "a photo of") and answers (prompt "Question: {} Answer:"). Image features come from the same
float16 cache as stage 1. The result in ``out_dir/model`` loads with ``vlmkit.load`` and answers
``vlmkit caption / ask / embed / match``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from vlmkit.errors import InputError
from vlmkit.models.blip2_native import CAPTION_PROMPT, RETRIEVAL_QFORMER, VQA_PROMPT, Blip2Config, NativeBlip2
from vlmkit.models.image_encoders import load_image_encoder
from vlmkit.models.qformer import QFormer

from .config import check_at_least, preset_config
from .loop import StepLoop, adamw, batch_rows, open_metrics, plot_losses, run_steps, start_run
from .stage1 import _examples, _qformer, _tokenizer, check_vocabulary, feature_cache
from .state import load_training_state
from .vocab import minilm_tokenizer

__all__ = ["Stage2Config", "PRESETS", "Stage2Result", "train_stage2", "stage2_config"]


@dataclass(frozen=True)
class Stage2Config:
    data: Literal["shapes", "easy-vqa"] = "shapes"
    train_size: int = 2000
    image_size: int = 64
    #: Which shapes-world scenes to train on (their stream's seed); ``seed`` sets the
    #: initialisation, the batch order and the sampling, so runs that differ only in ``seed`` see
    #: the same data.
    data_seed: int = 0
    seed: int = 0
    #: A stage-1 run directory (its ``qformer/``) or a Q-Former directory; "" starts from a fresh one.
    stage1: str = ""
    #: The frozen LM: a directory (e.g. from ``vlmkit train lm``) or a hub id. Required.
    language_model: str = ""
    encoder: str = "efficientnet-lite0"
    encoder_layer: int = -2
    #: Where the LM reads the visual prompts: "after_bos" is where an LM from ``vlmkit train lm``
    #: learned to read a scene description; "before_bos" is the released BLIP-2 layout.
    visual_position: Literal["before_bos", "after_bos"] = "after_bos"
    # Used only when stage1 is "" (a fresh Q-Former, as in stage 1's options).
    qformer_init: str = "minilm"
    tokenizer: Literal["minilm", "corpus"] = "minilm"
    scratch_layers: int = 2
    scratch_hidden: int = 128
    num_query_tokens: int = 8
    cross_attention_frequency: int = 2
    #: Share of training samples that are question-answer pairs (the rest are captions).
    qa_fraction: float = 0.5
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
        check_at_least(self, ("train_size", "batch_size", "grad_accum", "max_steps"))
        if not 0.0 <= self.qa_fraction <= 1.0:
            raise InputError(f"qa_fraction must be in [0, 1], got {self.qa_fraction}")
        check_vocabulary(self)


PRESETS: dict[str, Stage2Config] = {
    "shapes": Stage2Config(
        qformer_init="scratch", tokenizer="corpus", lr=1e-3, max_steps=1000, num_query_tokens=16, cross_attention_frequency=1,
    ),
    # The capacity a bigger budget allows: 4 layers, 256 wide, 32 queries, batch 64 (about 7x a
    # `shapes` step on a 2-core CPU; see the README).
    "shapes-large": Stage2Config(
        qformer_init="scratch", tokenizer="corpus", lr=1e-3, max_steps=1000, scratch_layers=4, scratch_hidden=256,
        num_query_tokens=32, cross_attention_frequency=1, batch_size=64,
    ),
    "tiny": Stage2Config(
        train_size=16, batch_size=4, max_steps=6, qformer_init="scratch", tokenizer="corpus", scratch_layers=2, scratch_hidden=32,
        num_query_tokens=4, warmup_steps=2, log_every=1, lr=1e-3,
    ),
}


def stage2_config(preset: str = "shapes", overrides: list[str] | None = None) -> Stage2Config:
    return preset_config(PRESETS, preset, overrides)


@dataclass(frozen=True)
class Stage2Result:
    out_dir: Path
    steps: int
    final_loss: float


def _stage1_qformer(path: str) -> tuple[QFormer, Any]:
    """The Q-Former of a stage-1 run (or a Q-Former directory) and the tokenizer saved beside it;
    a bare Q-Former directory gets BERT's vocabulary (MiniLM's) when its size fits."""
    from transformers import AutoTokenizer

    root = Path(path)
    for candidate in (root / "qformer", root):
        if (candidate / "model.safetensors").is_file():
            qformer = QFormer.from_pretrained(candidate)
            if (candidate / "tokenizer_config.json").is_file():
                return qformer, AutoTokenizer.from_pretrained(candidate)
            tokenizer = minilm_tokenizer()
            if len(tokenizer) != qformer.config.vocab_size:
                raise InputError(f"stage1={path!r}: no tokenizer beside the Q-Former, and BERT's does not fit its vocabulary")
            return qformer, tokenizer
    raise InputError(f"stage1={path!r}: no Q-Former there (expected a stage-1 run or a qformer/ directory)")


def _sample(example: Any, rng: np.random.Generator, qa_fraction: float) -> tuple[str, str]:
    """One (prompt, target) pair: an answer to one of the image's questions, or one of its captions."""
    use_qa = bool(example.qa) and (not example.captions or rng.random() < qa_fraction)
    if use_qa:
        question, answer = example.qa[rng.integers(len(example.qa))]
        return VQA_PROMPT.format(question), answer
    return CAPTION_PROMPT, example.captions[rng.integers(len(example.captions))]


def train_stage2(
    config: Stage2Config,
    out_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = False,
    stop_after: int | None = None,
) -> Stage2Result:
    """Train the Q-Former and projection through the frozen LM; ``out_dir/model`` is the result."""
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
    else:
        tokenizer = _tokenizer(config, examples, out, accelerator, resume)
        qformer = _qformer(config, encoder.hidden_size, tokenizer)
    model = NativeBlip2.from_parts(
        Blip2Config(
            image_encoder=config.encoder, encoder_layer=config.encoder_layer, language_model=config.language_model,
            visual_position=config.visual_position,
        ),
        qformer,
        lm_path=config.language_model,
    )
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
        pairs = [_sample(examples[i], rng, config.qa_fraction) for i in rows]
        loss = model(cache.batch(rows).to(accelerator.device), [p for p, _ in pairs], [t for _, t in pairs])
        return {"loss": loss}

    losses = run_steps(
        StepLoop(config.max_steps, config.grad_accum, config.log_every, config.save_every, "stage 2", loss_key="loss"),
        accelerator=accelerator, model=model, optimizer=optimizer, scheduler=scheduler,
        state_model=lambda: _trainable_view(accelerator.unwrap_model(model)), micro_step=micro_step,
        out=out, start=start, end=end, progress=progress,
    )
    loss_value = losses.get("loss", float("nan"))
    if accelerator.is_main_process and end == config.max_steps:
        final = accelerator.unwrap_model(model)
        final.save_pretrained(out / "model")
        tokenizer.save_pretrained(out / "model" / "qformer")
        if config.stage1:  # retrieval keeps the stage-1 Q-Former, as BLIP-2 does
            _stage1_qformer(config.stage1)[0].save_pretrained(out / "model" / RETRIEVAL_QFORMER)
        plot_losses(metrics_path, out / "loss.png", ("loss",), "BLIP-2 stage 2")
    return Stage2Result(out_dir=out, steps=end, final_loss=loss_value)


class _TrainableView(torch.nn.Module):
    """The parts of the model that learn (Q-Former, projection): what a resumable state stores;
    the frozen encoder and LM are reloaded from where they came from."""

    def __init__(self, model: NativeBlip2) -> None:
        super().__init__()
        self.qformer = model.qformer
        self.projection = model.projection


def _trainable_view(model: NativeBlip2) -> torch.nn.Module:
    return _TrainableView(model)
