"""``vlmkit train simvlm``: SimVLM's prefix language modelling (:mod:`vlmkit.models.simvlm`).

One decoder-only transformer, trained from scratch, reads the frozen encoder's image tokens and a
text prefix bidirectionally and predicts the rest of the text; only the suffix carries the loss
(:func:`vlmkit.losses.prefix_lm.prefix_lm_loss`). Each sample is, with probability ``qa_fraction``,
a question-answer pair (prefix ``"question: {q} answer:"``, suffix the answer, as SimVLM fine-tunes
for VQA), otherwise one of the image's captions split at a random token: with probability
``empty_prefix`` the whole caption is the suffix (captioning from the image alone), otherwise the
split point is uniform over the caption's inner token boundaries. Image features come from the same
float16 cache as the BLIP-2 recipes.

The run goes through the shared driver (:func:`vlmkit_train.driver.train`). Outputs in ``out_dir``:
``model/`` (a ``vlmkit-simvlm`` checkpoint that ``vlmkit.load`` answers
caption / ask / generate with), ``metrics.jsonl``, ``loss.png`` (with matplotlib), ``state/`` for
exact resume, ``tokenizer/``, ``features/`` (unless ``features_dir`` is set) and ``config.json``.
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
from vlmkit.losses.prefix_lm import IGNORE_INDEX, prefix_lm_loss
from vlmkit.models.simvlm import VQA_PROMPT, SimVLM, SimVLMConfig

from .config import DataConfig, RunConfig, check_at_least, data_seed
from .data import frozen_features, text_tokenizer, training_examples
from .driver import MODEL_DIR, Plan, Recipe, Run
from .loop import batch_rows

__all__ = ["SimVLMTrainConfig", "PRESETS", "RECIPE", "simvlm_config", "train_simvlm", "make_batch"]

#: The recipe's own optimisation defaults: lr 1e-3, 700 steps.
RUN = RunConfig(lr=1e-3, max_steps=700)


@dataclass(frozen=True)
class SimVLMTrainConfig:
    run: RunConfig = RUN
    data: DataConfig = DataConfig()
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
    #: As in the BLIP-2 recipes: "" is ``out/features``; runs on the same images can share one.
    features_dir: str = ""

    def __post_init__(self) -> None:
        check_at_least(self, ("hidden_size", "num_layers", "num_heads", "intermediate_size"))
        if self.hidden_size % self.num_heads:
            raise InputError(f"hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads}")
        if self.max_text_length < 8:
            raise InputError(f"max_text_length must be at least 8, got {self.max_text_length}")
        for name in ("qa_fraction", "empty_prefix"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise InputError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise InputError(f"dropout must be in [0, 1), got {self.dropout}")


PRESETS: dict[str, SimVLMTrainConfig] = {
    # The offline recipe (see bench/simvlm_offline.py).
    "shapes": SimVLMTrainConfig(),
    "tiny": SimVLMTrainConfig(
        run=dataclasses.replace(RUN, batch_size=4, max_steps=6, warmup_steps=2, log_every=1),
        data=DataConfig(train_size=16),
        hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, max_text_length=48,
    ),
}
#: What each preset is for and roughly what it costs (``vlmkit train --help``).
PRESET_NOTES: dict[str, str] = {
    "shapes": "the offline recipe: a 4-layer, 192-wide prefix LM from scratch on 2,000 shapes scenes, 700 steps of batch 32: 0.22 s a step, about 3 min (1.5 min with run.mixed_precision=bf16) (bench/recipe_costs.py on a 2-core CPU)",
    "tiny": "smoke test: 6 steps of batch 4 on 16 scenes, seconds",
}


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


def build(config: SimVLMTrainConfig, run: Run) -> Plan:
    """A SimVLM from scratch learning the prefix-LM loss on the cached frozen features."""
    seed = config.run.seed
    examples = training_examples(config.data, data_seed(config))
    features = frozen_features(config, examples, run, features_dir=config.features_dir)
    tokenizer = text_tokenizer(config.tokenizer, examples, run)
    tokens = int(features.rows(np.arange(1)).shape[1])  # the encoder's image tokens per image
    model_config = SimVLMConfig(
        vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id, hidden_size=config.hidden_size, num_layers=config.num_layers,
        num_heads=config.num_heads, intermediate_size=config.intermediate_size, dropout=config.dropout,
        max_text_length=config.max_text_length, image_encoder=config.encoder, encoder_layer=config.encoder_layer,
        image_hidden_size=features.width, num_image_tokens=tokens,
    )
    objective = PrefixLMObjective(SimVLM(model_config))

    def tokenize(text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    def micro_step(model: nn.Module, index: int) -> dict[str, torch.Tensor]:
        rows = batch_rows(seed, index, dataset_size=len(examples), batch_size=config.run.batch_size, world=run.world, rank=run.rank)
        rng = np.random.default_rng([seed, index, run.rank])
        pairs = [_split(examples[i], rng, config, tokenize) for i in rows]
        batch = make_batch(pairs, bos=model_config.bos_token_id, eos=model_config.eos_token_id,
                           pad=model_config.pad_token_id, max_length=config.max_text_length)
        device = run.device
        loss = model(features.rows(rows).to(device), batch.input_ids.to(device), batch.attention_mask.to(device),
                     batch.prefix_lengths.to(device))
        return {"loss": loss}

    def export(model: nn.Module, out: Path) -> Path:
        assert isinstance(model, PrefixLMObjective)
        model.model.save_pretrained(out / MODEL_DIR, tokenizer)
        return out / MODEL_DIR

    return Plan(objective, micro_step, export)


RECIPE = Recipe(
    name="simvlm", summary="SimVLM: prefix-LM over image and text", title="SimVLM prefix LM", presets=PRESETS,
    preset_notes=PRESET_NOTES, build=build, next_step=lambda model_dir: f"vlmkit caption IMAGE --model {model_dir}",
)


simvlm_config = RECIPE.config  # (preset="shapes", overrides) -> the checked config
train_simvlm = RECIPE.train  # (config, out_dir, *, resume, progress, stop_after) -> TrainResult
