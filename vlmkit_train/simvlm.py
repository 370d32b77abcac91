"""``vlmkit train simvlm``: SimVLM's prefix language modelling (:mod:`vlmkit.models.simvlm`).

One decoder-only transformer, trained from scratch, reads the frozen encoder's image tokens and a
text prefix bidirectionally and predicts the rest of the text; only the suffix carries the loss
(:func:`vlmkit.losses.prefix_lm.prefix_lm_loss`). Each sample is, with probability ``qa_fraction``,
a question-answer pair (prefix ``"question: {q} answer:"``, suffix the answer, as SimVLM fine-tunes
for VQA), otherwise one of the image's captions split at a random token: with probability
``empty_prefix`` the whole caption is the suffix (captioning from the image alone), otherwise the
split point is uniform over the caption's inner token boundaries. Image features come from the same
float16 cache as the BLIP-2 recipes.

Outputs in ``out_dir``: ``model/`` (a ``vlmkit-simvlm`` checkpoint that ``vlmkit.load`` answers
caption / ask / generate with), ``metrics.jsonl``, ``loss.png`` (with matplotlib), ``state/`` for
exact resume, ``tokenizer/``, ``features/`` (unless ``features_dir`` is set) and ``config.json``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from vlmkit.errors import InputError
from vlmkit.losses.prefix_lm import IGNORE_INDEX, prefix_lm_loss
from vlmkit.models.image_encoders import load_image_encoder
from vlmkit.models.simvlm import VQA_PROMPT, SimVLM, SimVLMConfig

from .config import check_at_least, preset_config
from .loop import StepLoop, batch_rows, open_metrics, plot_losses, run_steps, start_run
from .stage1 import _examples, _tokenizer, feature_cache
from .state import load_training_state

__all__ = ["SimVLMTrainConfig", "PRESETS", "SimVLMResult", "simvlm_config", "train_simvlm", "make_batch"]


@dataclass(frozen=True)
class SimVLMTrainConfig:
    data: Literal["shapes", "easy-vqa"] = "shapes"
    train_size: int = 2000
    image_size: int = 64
    seed: int = 0
    encoder: str = "efficientnet-lite0"
    encoder_layer: int = -2
    #: Text vocabulary: "corpus" (a WordPiece of the training texts' words) or "minilm" (BERT's).
    tokenizer: Literal["minilm", "corpus"] = "corpus"
    hidden_size: int = 192
    num_layers: int = 4
    num_heads: int = 3
    intermediate_size: int = 768
    dropout: float = 0.1
    max_text_length: int = 64
    #: Share of samples that are question-answer pairs (the rest are captions with a random split).
    qa_fraction: float = 0.5
    #: Share of caption samples whose text prefix is empty: the model learns to caption from the image.
    empty_prefix: float = 0.25
    batch_size: int = 32
    grad_accum: int = 1
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 50
    max_steps: int = 700
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    #: As in the BLIP-2 recipes: "" is ``out/features``; runs on the same images can share one.
    features_dir: str = ""
    save_every: int = 0
    log_every: int = 10

    def __post_init__(self) -> None:
        check_at_least(self, ("train_size", "batch_size", "grad_accum", "max_steps", "hidden_size", "num_layers", "num_heads",
                     "intermediate_size", "image_size"))
        if self.hidden_size % self.num_heads:
            raise InputError(f"hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads}")
        if self.max_text_length < 8:
            raise InputError(f"max_text_length must be at least 8, got {self.max_text_length}")
        for name in ("qa_fraction", "empty_prefix"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise InputError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise InputError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.lr <= 0:
            raise InputError(f"lr must be positive, got {self.lr}")
        if self.warmup_steps < 0:
            raise InputError(f"warmup_steps must be at least 0, got {self.warmup_steps}")


PRESETS: dict[str, SimVLMTrainConfig] = {
    # The offline recipe (see bench/simvlm_offline.py).
    "shapes": SimVLMTrainConfig(),
    # A few seconds on a laptop CPU: for tests and for trying the pipeline.
    "tiny": SimVLMTrainConfig(
        train_size=16, batch_size=4, max_steps=6, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
        warmup_steps=2, log_every=1, lr=1e-3, max_text_length=48,
    ),
}


def simvlm_config(preset: str = "shapes", overrides: list[str] | None = None) -> SimVLMTrainConfig:
    return preset_config(PRESETS, preset, overrides)


@dataclass(frozen=True)
class SimVLMResult:
    out_dir: Path
    steps: int
    final_loss: float


@dataclass(frozen=True)
class Batch:
    input_ids: torch.Tensor  # (B, T): bos, prefix, suffix, eos, right-padded
    attention_mask: torch.Tensor  # (B, T)
    prefix_lengths: torch.Tensor  # (B,): bos + prefix tokens


def _split(example: Any, rng: np.random.Generator, config: SimVLMTrainConfig, tokenize: Any) -> tuple[list[int], list[int]]:
    """One (prefix, suffix) pair of token ids: a question and its answer, or a caption split at random."""
    use_qa = bool(example.qa) and (not example.captions or rng.random() < config.qa_fraction)
    if use_qa:
        question, answer = example.qa[rng.integers(len(example.qa))]
        return tokenize(VQA_PROMPT.format(question)), tokenize(answer.strip())
    tokens = tokenize(example.captions[rng.integers(len(example.captions))])
    empty = rng.random() < config.empty_prefix
    cut = 0 if empty or len(tokens) < 2 else int(rng.integers(1, len(tokens)))
    return tokens[:cut], tokens[cut:]


def make_batch(pairs: list[tuple[list[int], list[int]]], *, bos: int, eos: int, pad: int, max_length: int) -> Batch:
    """Sequences ``bos + prefix + suffix + eos`` (cut at ``max_length``), right-padded."""
    rows = [([bos] + prefix + suffix + [eos])[:max_length] for prefix, suffix in pairs]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    prefix_lengths = torch.tensor([min(1 + len(prefix), max_length) for prefix, _ in pairs], dtype=torch.long)
    return Batch(ids, mask, prefix_lengths)


class PrefixLMObjective(nn.Module):
    """The model with the prefix-LM loss as its forward, so DDP/FSDP see one module call."""

    def __init__(self, model: SimVLM) -> None:
        super().__init__()
        self.model = model

    def forward(self, image_embeds: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor, prefix_lengths: torch.Tensor) -> torch.Tensor:
        logits = self.model(image_embeds, input_ids, prefix_lengths, attention_mask).logits  # (B, T, V)
        labels = input_ids.masked_fill(attention_mask == 0, IGNORE_INDEX)
        return prefix_lm_loss(logits, labels, prefix_lengths)


def train_simvlm(
    config: SimVLMTrainConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = False,
    stop_after: int | None = None,
) -> SimVLMResult:
    """Train a SimVLM from scratch on cached image features; ``out_dir/model`` is the result.
    ``resume`` continues from ``out_dir/state``; ``stop_after`` ends early with a resumable state."""
    from transformers import get_cosine_schedule_with_warmup

    out, accelerator = start_run(config, out_dir, resume)

    examples = _examples(config)
    encoder = load_image_encoder(config.encoder, layer=config.encoder_layer)
    cache = feature_cache(config, encoder, [e.image for e in examples], out, accelerator, progress)
    tokenizer = _tokenizer(config, examples, out, accelerator, resume)
    model_config = SimVLMConfig(
        vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id, hidden_size=config.hidden_size, num_layers=config.num_layers,
        num_heads=config.num_heads, intermediate_size=config.intermediate_size, dropout=config.dropout,
        max_text_length=config.max_text_length, image_encoder=config.encoder, encoder_layer=config.encoder_layer,
        image_hidden_size=int(cache.data.shape[2]), num_image_tokens=int(cache.data.shape[1]),
    )
    objective = PrefixLMObjective(SimVLM(model_config))
    decay = [p for p in objective.parameters() if p.ndim >= 2]
    no_decay = [p for p in objective.parameters() if p.ndim < 2]
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

    def tokenize(text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    def micro_step(index: int) -> dict[str, torch.Tensor]:
        rows = batch_rows(config.seed, index, dataset_size=len(examples), batch_size=config.batch_size, world=world, rank=rank)
        rng = np.random.default_rng([config.seed, index, rank])
        pairs = [_split(examples[i], rng, config, tokenize) for i in rows]
        batch = make_batch(pairs, bos=model_config.bos_token_id, eos=model_config.eos_token_id,
                           pad=model_config.pad_token_id, max_length=config.max_text_length)
        device = accelerator.device
        loss = objective(cache.batch(rows).to(device), batch.input_ids.to(device), batch.attention_mask.to(device),
                         batch.prefix_lengths.to(device))
        return {"loss": loss}

    losses = run_steps(
        StepLoop(config.max_steps, config.grad_accum, config.log_every, config.save_every, "simvlm", loss_key="loss"),
        accelerator=accelerator, model=objective, optimizer=optimizer, scheduler=scheduler,
        state_model=lambda: accelerator.unwrap_model(objective), micro_step=micro_step,
        out=out, start=start, end=end, progress=progress,
    )
    if accelerator.is_main_process and end == config.max_steps:
        accelerator.unwrap_model(objective).model.save_pretrained(out / "model", tokenizer)
        plot_losses(metrics_path, out / "loss.png", ("loss",), "SimVLM prefix LM")
    return SimVLMResult(out_dir=out, steps=end, final_loss=losses.get("loss", float("nan")))
