"""``vlmkit train lm``: a small GPT-2-architecture language model, to be frozen for BLIP-2 stage 2.

BLIP-2 stage 2 feeds the Q-Former's outputs to a FROZEN pretrained LM (OPT or FlanT5 in the paper).
Where no pretrained LM can be downloaded, this recipe makes one at small scale: a byte-level BPE
tokenizer (GPT-2 style, ``<|endoftext|>`` as bos/eos/pad) and a randomly initialised
``GPT2LMHeadModel`` trained with the next-token loss on the texts stage 2 will ask it to produce
(:func:`corpus_texts`). With network access any hub LM id can be given to stage 2 instead.

The run goes through the shared driver (:func:`vlmkit_train.driver.train`). Outputs in ``out_dir``: ``lm/`` (weights, config and tokenizer; loads with
``AutoModelForCausalLM.from_pretrained`` and ``AutoTokenizer.from_pretrained`` like a hub LM, and is
what ``vlmkit train blip2-stage2 --set language_model=OUT/lm`` takes), ``metrics.jsonl`` (the last
row adds the held-out loss and perplexity, as does the result's ``final_record``), ``loss.png`` (with matplotlib), ``tokenizer/`` (fixed at
the start so a resumed run uses the same one), ``state/`` for exact resume, ``data.json`` (a
fingerprint of the texts) and ``config.json``.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from vlmkit.data.records import Example
from vlmkit.errors import InputError
from vlmkit.models.blip2_native import CAPTION_PROMPT, VQA_PROMPT

from .config import DataConfig, RunConfig, check_at_least, data_seed
from .data import CAPTION_TEMPLATE, QA_TEMPLATE, SPECIAL_TOKEN, context_lead, corpus_texts, training_examples
from .driver import Plan, Recipe, Run, TrainResult, train
from .loop import batch_rows

__all__ = [
    "LMConfig",
    "PRESETS",
    "RECIPE",
    "lm_config",
    "train_lm",
    "new_lm",
    "train_tokenizer",
    "corpus_texts",
    "lm_texts",
    "context_lead",
    "answer_from_descriptions",
    "description_prompt_ids",
    "training_texts",
    "split_heldout",
    "loss_batch",
    "CAPTION_TEMPLATE",
    "QA_TEMPLATE",
    "SPECIAL_TOKEN",
]

#: The LM's optimisation where a preset does not say otherwise: a larger batch and learning rate
#: than :class:`RunConfig`'s, and lighter weight decay.
_RUN = RunConfig(batch_size=64, lr=1e-3, weight_decay=0.01)


@dataclass(frozen=True)
class LMConfig:
    run: RunConfig = _RUN
    #: The examples whose texts make the corpus (:func:`training_texts`).
    data: DataConfig = DataConfig()
    #: Start every text with its scene's description (see ``corpus_texts``), so the LM learns to read it.
    context: bool = True
    #: Which tokens carry the next-token loss. "all": every one after bos. "prompts": all but the
    #: leading description (the LM learns to read descriptions, not to write them; stage 2 never
    #: asks it to write one). "targets": only answers and captions, each with the eos after it (the
    #: way instruction tuning leaves prompts out of the loss): every gradient comes from reading.
    loss_on: Literal["all", "prompts", "targets"] = "all"
    #: Prompt-target segments (a caption after its prompt, or a question and its answer) per text,
    #: after one description and separated by ``<|endoftext|>``. 1 repeats the description for every
    #: segment; more lets one pass over a description teach several answers (the first segment is
    #: always in stage 2's exact layout, see ``corpus_texts``).
    segments_per_text: int = 1
    #: Upper bound for the BPE vocabulary; a small templated corpus saturates below it.
    vocab_size: int = 2000
    n_layer: int = 4
    n_embd: int = 256
    n_head: int = 4
    n_positions: int = 128  # longer texts are truncated
    dropout: float = 0.0
    #: Share of the distinct texts held out (every copy of them) for the final perplexity.
    heldout_fraction: float = 0.05

    def __post_init__(self) -> None:
        check_at_least(self, ("segments_per_text", "n_layer", "n_embd", "n_head", "n_positions"))
        if self.n_embd % self.n_head:
            raise InputError(f"n_embd ({self.n_embd}) must be a multiple of n_head ({self.n_head})")
        if self.vocab_size < 257:
            raise InputError(f"vocab_size must be at least 257 (256 bytes and {SPECIAL_TOKEN}), got {self.vocab_size}")
        if not 0.0 < self.heldout_fraction < 1.0:
            raise InputError(f"heldout_fraction must be in (0, 1), got {self.heldout_fraction}")
        if not 0.0 <= self.dropout < 1.0:
            raise InputError(f"dropout must be in [0, 1), got {self.dropout}")


PRESETS: dict[str, LMConfig] = {
    # Every word of the corpus ends up a single token; a complete shapes description with six
    # segments runs to about 240 tokens, hence 256 positions. bench/lm_ceiling.py measures what
    # the LM answers from the true description (README): with packed segments and the loss on the
    # targets alone, easy-VQA went from 93% to 99.99%; held-out shapes stayed near 60%.
    "shapes": LMConfig(run=dataclasses.replace(_RUN, max_steps=1000), n_positions=256, segments_per_text=6, loss_on="targets"),
    # A few seconds on a laptop CPU: for tests and for trying the pipeline.
    "tiny": LMConfig(
        run=dataclasses.replace(_RUN, batch_size=8, lr=3e-3, warmup_steps=2, max_steps=8, log_every=1),
        data=DataConfig(train_size=16),
        vocab_size=300, n_layer=2, n_embd=32, n_head=4, n_positions=64, heldout_fraction=0.1,
    ),
}
#: What each preset is for and roughly what it costs (``vlmkit train --help``).
PRESET_NOTES: dict[str, str] = {
    "shapes": "the offline LM stage 2 freezes: 4 layers, 256 wide, 6 segments a text, loss on the targets; 1,000 steps of batch 64: 3.8 s a step, about 64 min (23 min with run.mixed_precision=bf16) (bench/recipe_costs.py on a 2-core CPU)",
    "tiny": "smoke test: 8 steps on 16 scenes, seconds",
}


# -- data ------------------------------------------------------------------------------------------


def lm_texts(config: LMConfig, examples: Sequence[Example]) -> list[str]:
    """The corpus ``config`` trains on from ``examples`` (its ``context`` and ``segments_per_text``;
    the segments' order is drawn with the data seed)."""
    return corpus_texts(examples, context=config.context, segments=config.segments_per_text, seed=data_seed(config))


@torch.no_grad()
def answer_from_descriptions(
    lm_dir: str | Path, examples: Sequence[Example], *, max_new_tokens: int = 4, batch_size: int = 64
) -> list[tuple[str, str, str]]:
    """The frozen LM's text-only ceiling: each question of ``examples`` asked with the true
    description where stage 2 puts the visual prompts, ``[bos] description. Question: q Answer:``,
    answered greedily. Returns (question, answer, prediction) triples in order; no stage 2 can read
    more from the image than the LM reads from this text."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(lm_dir)
    model = AutoModelForCausalLM.from_pretrained(lm_dir, use_safetensors=True).eval()
    asked = [(e, q, a) for e in examples for q, a in e.qa]
    rows = [description_prompt_ids(tokenizer, e, q) for e, q, _ in asked]
    limit = getattr(model.config, "n_positions", None) or getattr(model.config, "max_position_embeddings", None)
    longest = max((len(r) for r in rows), default=0)
    if limit is not None and longest + max_new_tokens > limit:
        raise InputError(f"{lm_dir}: a description and question take {longest} tokens, plus {max_new_tokens} to answer; the LM has {limit} positions")
    by_length: dict[int, list[int]] = {}
    for index, row in enumerate(rows):
        by_length.setdefault(len(row), []).append(index)
    predictions = [""] * len(rows)
    for indices in by_length.values():  # one length a batch: no padding, results independent of the batch
        for start in range(0, len(indices), batch_size):
            chunk = indices[start : start + batch_size]
            ids = torch.tensor([rows[i] for i in chunk])  # (b, T)
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False)
            for i, text in zip(chunk, tokenizer.batch_decode(out[:, ids.shape[1] :], skip_special_tokens=True), strict=True):
                predictions[i] = text.strip()
    return [(q, a, p) for (_, q, a), p in zip(asked, predictions, strict=True)]


def description_prompt_ids(tokenizer: Any, example: Example, question: str) -> list[int]:
    """``[bos] description. Question: q Answer:`` as token ids: the corpus's layout, and stage 2's
    with the description where the visual prompts go (``visual_position="after_bos"``)."""
    return [tokenizer.bos_token_id, *tokenizer(context_lead(example) + VQA_PROMPT.format(question), add_special_tokens=False)["input_ids"]]


def training_texts(config: LMConfig) -> list[str]:
    """The corpus a config names: the texts of the first ``data.train_size`` training examples of
    ``data.name`` (the same examples stage 1 and stage 2 train on with the same ``data`` and seed)."""
    return lm_texts(config, training_examples(config.data, data_seed(config), captioned=False))


def split_heldout(texts: Sequence[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(train, held-out): a seeded ``fraction`` of the distinct texts, with all their copies, is held
    out, so held-out perplexity is measured on strings the model never saw."""
    distinct = sorted(set(texts))
    if len(distinct) < 2:
        raise InputError(f"need at least 2 distinct texts to hold some out, got {len(distinct)}")
    count = min(len(distinct) - 1, max(1, round(fraction * len(distinct))))
    rng = np.random.default_rng([seed, 1])
    held = {distinct[i] for i in rng.choice(len(distinct), size=count, replace=False)}
    return [t for t in texts if t not in held], [t for t in texts if t in held]


def train_tokenizer(texts: list[str], vocab_size: int) -> Any:
    """A GPT-2-style byte-level BPE learnt on ``texts`` (no unknown tokens, exact decoding), with
    ``<|endoftext|>`` as bos, eos and pad, as a transformers fast tokenizer that saves with
    ``save_pretrained`` and reloads with ``AutoTokenizer.from_pretrained``. Like GPT-2's, it adds no
    special tokens by itself."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[SPECIAL_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token=SPECIAL_TOKEN,
        eos_token=SPECIAL_TOKEN,
        pad_token=SPECIAL_TOKEN,
        clean_up_tokenization_spaces=False,  # decode(encode(text)) == text
    )


_ANSWER = " " + VQA_PROMPT.split("{}")[1].strip()  # " Answer:"


def _lead_text(text: str) -> str:
    """The description that leads a corpus text: what stands before its stage-2 prompt."""
    starts = [i for i in (text.find(CAPTION_PROMPT), text.find(VQA_PROMPT.split("{}")[0].strip())) if i >= 0]
    return text[: min(starts)].rstrip() if starts else ""


def _predicted_chars(text: str, loss_on: str) -> list[bool]:
    """Per character of a corpus text, whether the tokens that start there carry loss."""
    lead = len(_lead_text(text))
    if loss_on == "all":
        return [True] * len(text)
    if loss_on == "prompts":
        return [i >= lead for i in range(len(text))]
    predicted = [False] * len(text)
    start = lead
    for segment in text[lead:].split(SPECIAL_TOKEN):
        answer = segment.find(_ANSWER)
        caption = segment.find(CAPTION_PROMPT)
        target = answer + len(_ANSWER) if answer >= 0 else caption + len(CAPTION_PROMPT) if caption >= 0 else len(segment)
        end = start + len(segment)
        predicted[start + target : end + len(SPECIAL_TOKEN)] = [True] * (end + len(SPECIAL_TOKEN) - start - target)
        start = end + len(SPECIAL_TOKEN)
    return predicted[: len(text)]


def _encode(tokenizer: Any, texts: list[str], max_length: int, *, loss_on: str = "all") -> list[tuple[list[int], list[bool]]]:
    """(bos + text + eos, which of those tokens carry loss) per text, truncated to ``max_length``
    tokens; bos never does, the closing eos always does (see ``LMConfig.loss_on``)."""
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    encoded = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    rows = []
    for text, ids, offsets in zip(texts, encoded["input_ids"], encoded["offset_mapping"], strict=True):
        chars = _predicted_chars(text, loss_on)
        predicted = [False, *(chars[start] if start < len(chars) else True for start, _ in offsets), True]
        rows.append(([bos, *ids, eos][:max_length], predicted[:max_length]))
    return rows


def loss_batch(rows: list[tuple[list[int], list[bool]]], pad: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded (ids, attention mask, labels), each (B, T); padding and the tokens that carry
    no loss are -100 in the labels. The mask comes from the lengths, not the ids, because the pad
    token is also eos."""
    width = max(len(r) for r, _ in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, (row, predicted) in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
        keep = torch.tensor(predicted)
        labels[i, : len(row)] = torch.where(keep, ids[i, : len(row)], -100)  # position t is predicted from < t
    return ids, mask, labels


@torch.no_grad()
def _heldout_loss(model: Any, rows: list[tuple[list[int], list[bool]]], pad: int, batch_size: int, device: torch.device) -> float:
    """Mean next-token loss per predicted token (eos included, bos never predicted)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(rows), batch_size):
        ids, mask, labels = (t.to(device) for t in loss_batch(rows[start : start + batch_size], pad))
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()  # (B, T-1, V)
        targets = labels[:, 1:]
        total += nn.functional.cross_entropy(logits.transpose(1, 2), targets, ignore_index=-100, reduction="sum").item()
        count += int((targets != -100).sum())
    model.train(was_training)
    return total / count


class _StateView(nn.Module):
    """The GPT-2 body alone: its head is tied to the token embeddings, and safetensors refuses to
    store one tensor under two names."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.transformer = model.transformer


def _fingerprint(train: list[str], heldout: list[str]) -> dict[str, Any]:
    digest = hashlib.sha256(json.dumps([train, heldout]).encode()).hexdigest()
    return {"train_texts": len(train), "heldout_texts": len(heldout), "sha256": digest}


# -- training --------------------------------------------------------------------------------------


def new_lm(config: LMConfig, tokenizer: Any) -> Any:
    """A freshly initialised GPT-2 LM for ``config``, drawn from torch's generator (the driver seeds
    it with ``run.seed``): what ``vlmkit train lm`` trains, with :func:`vlmkit_train.loop.adamw`
    (decay on its matrices only) and the cosine schedule."""
    from transformers import GPT2Config, GPT2LMHeadModel

    special = tokenizer.eos_token_id
    model = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=len(tokenizer), n_positions=config.n_positions, n_embd=config.n_embd, n_layer=config.n_layer,
            n_head=config.n_head, resid_pdrop=config.dropout, embd_pdrop=config.dropout, attn_pdrop=config.dropout,
            bos_token_id=special, eos_token_id=special, pad_token_id=special,
        )
    )
    model.generation_config.pad_token_id = special
    return model


def build(config: LMConfig, run: Run, *, texts: Sequence[str] | None = None) -> Plan:
    """A byte-level BPE and a fresh GPT-2 LM learning the next token of ``texts`` (default: the
    corpus the config names, :func:`training_texts`), less a held-out share scored after the last step."""
    from transformers import AutoTokenizer

    seed = config.run.seed
    corpus = training_texts(config) if texts is None else list(texts)
    train_texts, heldout_texts = split_heldout(corpus, config.heldout_fraction, data_seed(config))
    fingerprint = _fingerprint(train_texts, heldout_texts)
    data_path, tokenizer_dir = run.out / "data.json", run.out / "tokenizer"
    if run.resume and data_path.is_file() and json.loads(data_path.read_text()) != fingerprint:
        raise InputError(f"{run.out}: the run was started on different texts; resume with the same ones")
    if run.is_main:
        data_path.write_text(json.dumps(fingerprint, indent=1))
        if not run.resume:
            train_tokenizer(train_texts, config.vocab_size).save_pretrained(tokenizer_dir)
    run.wait()
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    special = tokenizer.eos_token_id
    train_rows = _encode(tokenizer, train_texts, config.n_positions, loss_on=config.loss_on)
    heldout_rows = _encode(tokenizer, heldout_texts, config.n_positions, loss_on=config.loss_on)

    def micro_step(model: nn.Module, index: int) -> dict[str, torch.Tensor]:
        rows = batch_rows(seed, index, dataset_size=len(train_rows), batch_size=config.run.batch_size, world=run.world, rank=run.rank)
        ids, mask, labels = (t.to(run.device) for t in loss_batch([train_rows[i] for i in rows], special))
        return {"loss": model(input_ids=ids, attention_mask=mask, labels=labels).loss}

    def final_record(model: nn.Module) -> dict[str, Any]:
        heldout = _heldout_loss(model, heldout_rows, special, config.run.batch_size, run.device)
        return {"heldout_loss": heldout, "heldout_ppl": math.exp(heldout)}

    def export(model: Any, out: Path) -> Path:  # the GPT2LMHeadModel
        model.save_pretrained(out / "lm")
        tokenizer.save_pretrained(out / "lm")
        return out / "lm"

    # The model is transformers' own (its forward returns the loss, not a dict of losses), so that
    # the export and the held-out loss use it as any hub LM.
    return Plan(new_lm(config, tokenizer), micro_step, export, state=_StateView, final_record=final_record)


RECIPE = Recipe(
    name="lm", summary="a small GPT-2-style LM to freeze for stage 2", title="GPT-2 LM", presets=PRESETS,
    preset_notes=PRESET_NOTES, build=build,
    next_step=lambda model_dir: f"vlmkit train blip2-stage2 --set stage1=STAGE1_DIR --set language_model={model_dir}",
    resume_needs=("tokenizer",),
)


def lm_config(preset: str = "shapes", overrides: list[str] | None = None) -> LMConfig:
    return RECIPE.config(preset, overrides)  # type: ignore[no-any-return]


def train_lm(
    config: LMConfig,
    texts: Sequence[str],
    out_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = False,
    stop_after: int | None = None,
) -> TrainResult:
    """Train a tokenizer and a GPT-2-architecture LM from scratch on ``texts``
    (:func:`vlmkit_train.driver.train`). ``resume`` continues from ``out_dir/state`` (same config and
    texts); ``stop_after`` ends the run early after that many steps (with a resumable state saved
    and no ``lm/``). The held-out loss and perplexity are in ``final_record`` once the run ends."""
    recipe = dataclasses.replace(RECIPE, build=functools.partial(build, texts=texts))
    return train(recipe, config, out_dir, resume=resume, progress=progress, stop_after=stop_after)
