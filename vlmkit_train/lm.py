"""``vlmkit train lm``: a small GPT-2-architecture language model, to be frozen for BLIP-2 stage 2.

BLIP-2 stage 2 feeds the Q-Former's outputs to a FROZEN pretrained LM (OPT or FlanT5 in the paper).
Where no pretrained LM can be downloaded, this recipe makes one at small scale: a byte-level BPE
tokenizer (GPT-2 style, ``<|endoftext|>`` as bos/eos/pad) and a randomly initialised
``GPT2LMHeadModel`` trained with the next-token loss on the texts stage 2 will ask it to produce
(:func:`corpus_texts`). With network access any hub LM id can be given to stage 2 instead.

Outputs in ``out_dir``: ``lm/`` (weights, config and tokenizer; loads with
``AutoModelForCausalLM.from_pretrained`` and ``AutoTokenizer.from_pretrained`` like a hub LM, and is
what ``vlmkit train blip2-stage2 --set language_model=OUT/lm`` takes), ``metrics.jsonl`` (the last
row adds the held-out loss and perplexity), ``loss.png`` (with matplotlib), ``tokenizer/`` (fixed at
the start so a resumed run uses the same one), ``state/`` for exact resume, ``data.json`` (a
fingerprint of the texts) and ``config.json``.
"""

from __future__ import annotations

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

from .config import check_at_least, dumps, preset_config
from .loop import StepLoop, batch_rows, check_resume, make_accelerator, open_metrics, plot_losses, run_steps
from .state import load_training_state

__all__ = [
    "LMConfig",
    "PRESETS",
    "LMResult",
    "lm_config",
    "train_lm",
    "train_tokenizer",
    "corpus_texts",
    "lm_texts",
    "context_lead",
    "answer_from_descriptions",
    "description_prompt_ids",
    "training_texts",
    "split_heldout",
    "CAPTION_TEMPLATE",
    "QA_TEMPLATE",
    "SPECIAL_TOKEN",
]

#: GPT-2's one special token, used as bos, eos and pad.
SPECIAL_TOKEN = "<|endoftext|>"
# The texts are exactly what stage 2 (:mod:`vlmkit_train.stage2`, through
# :class:`vlmkit.models.blip2_native.NativeBlip2`) has the frozen LM produce: its prompt, a space,
# the target. Both prompts come from the model module so the two recipes cannot drift apart.
#: "a photo of {caption}"
CAPTION_TEMPLATE = CAPTION_PROMPT + " {caption}"
#: "Question: {question} Answer: {answer}" (BLIP-2's OPT prompt, then the answer)
QA_TEMPLATE = VQA_PROMPT.format("{question}") + " {answer}"


@dataclass(frozen=True)
class LMConfig:
    data: Literal["shapes", "easy-vqa"] = "shapes"
    train_size: int = 2000  # examples whose texts make the corpus
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
    seed: int = 0
    #: Upper bound for the BPE vocabulary; a small templated corpus saturates below it.
    vocab_size: int = 2000
    n_layer: int = 4
    n_embd: int = 256
    n_head: int = 4
    n_positions: int = 128  # longer texts are truncated
    dropout: float = 0.0
    #: Share of the distinct texts held out (every copy of them) for the final perplexity.
    heldout_fraction: float = 0.05
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 50
    max_steps: int = 500
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    save_every: int = 0  # steps between resumable checkpoints; 0 saves only at the end
    log_every: int = 10

    def __post_init__(self) -> None:
        check_at_least(self, ("train_size", "segments_per_text", "n_layer", "n_embd", "n_head", "n_positions", "batch_size", "max_steps", "log_every"))
        if self.n_embd % self.n_head:
            raise InputError(f"n_embd ({self.n_embd}) must be a multiple of n_head ({self.n_head})")
        if self.vocab_size < 257:
            raise InputError(f"vocab_size must be at least 257 (256 bytes and {SPECIAL_TOKEN}), got {self.vocab_size}")
        if not 0.0 < self.heldout_fraction < 1.0:
            raise InputError(f"heldout_fraction must be in (0, 1), got {self.heldout_fraction}")
        if not 0.0 <= self.dropout < 1.0:
            raise InputError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.lr <= 0:
            raise InputError(f"lr must be positive, got {self.lr}")


PRESETS: dict[str, LMConfig] = {
    # Every word of the corpus ends up a single token; a complete shapes description with six
    # segments runs to about 240 tokens, hence 256 positions. bench/lm_ceiling.py measures what
    # the LM answers from the true description (README): with packed segments and the loss on the
    # targets alone, easy-VQA went from 93% to 99.99%; held-out shapes stayed near 60%.
    "shapes": LMConfig(n_positions=256, segments_per_text=6, loss_on="targets", max_steps=1000),
    # A few seconds on a laptop CPU: for tests and for trying the pipeline.
    "tiny": LMConfig(
        train_size=16, vocab_size=300, n_layer=2, n_embd=32, n_head=4, n_positions=64, heldout_fraction=0.1,
        batch_size=8, lr=3e-3, warmup_steps=2, max_steps=8, log_every=1,
    ),
}


def lm_config(preset: str = "shapes", overrides: list[str] | None = None) -> LMConfig:
    return preset_config(PRESETS, preset, overrides)


@dataclass(frozen=True)
class LMResult:
    out_dir: Path
    steps: int
    final_loss: float
    #: On the held-out texts after the last step; None when the run stopped early (``stop_after``).
    heldout_loss: float | None
    heldout_ppl: float | None


# -- data ------------------------------------------------------------------------------------------


def context_lead(example: Example) -> str:
    """The text that stands for the image at the start of a corpus text: the example's complete
    description when its source has one (``Example.description``), else all its captions; each
    sentence ends with a full stop, and a space follows."""
    sentences = [example.description] if example.description else list(example.captions)
    return " ".join(s.strip() if s.strip().endswith(".") else f"{s.strip()}." for s in sentences) + " " if sentences else ""


def corpus_texts(examples: Sequence[Example], *, context: bool = False, segments: int = 1, seed: int = 0) -> list[str]:
    """Every caption (after stage 2's caption prompt) and every question-answer pair (in BLIP-2's OPT
    prompt) of ``examples``, in order and with repeats: the texts stage 2 uses, see the templates.

    ``segments`` > 1 packs up to that many of one example's segments into a text, in a seeded
    order, separated by ``<|endoftext|>``, after one description: the LM learns several answers
    from one pass over a description. Each text's first segment follows the description directly,
    as stage 2's single prompt does.

    ``context=True`` starts each text with the scene in words (:func:`context_lead`: its complete
    description, or its captions): the LM then learns, from text alone, to answer a question and to
    caption from a description in its context, the reading skill a large pretrained LM brings to
    BLIP-2. Stage 2 teaches the Q-Former to give that description as soft visual prompts, in the
    same place (``visual_position="after_bos"``). Without it, a small LM only learns each answer's
    prior."""
    if not isinstance(segments, int) or segments < 1:
        raise InputError(f"segments must be a positive integer, not {segments!r}")
    texts: list[str] = []
    for index, example in enumerate(examples):
        lead = context_lead(example) if context else ""
        parts = [CAPTION_TEMPLATE.format(caption=caption.strip()) for caption in example.captions]
        parts += [QA_TEMPLATE.format(question=q, answer=a.strip()) for q, a in example.qa]
        if segments > 1:
            order = np.random.default_rng([seed, index, 2]).permutation(len(parts))
            parts = [parts[i] for i in order]
        texts += [lead + SPECIAL_TOKEN.join(parts[start : start + segments]) for start in range(0, len(parts), segments)]
    return texts


def lm_texts(config: LMConfig, examples: Sequence[Example]) -> list[str]:
    """The corpus ``config`` trains on from ``examples`` (its ``context`` and ``segments_per_text``)."""
    return corpus_texts(examples, context=config.context, segments=config.segments_per_text, seed=config.seed)


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
    """The corpus a config names: the texts of the first ``train_size`` training examples of ``data``
    (the same examples stage 1 and stage 2 train on with the same ``seed``)."""
    if config.data == "shapes":
        from vlmkit.data import make_split

        return lm_texts(config, make_split(config.train_size, config.seed, "train"))
    from vlmkit.data import load_easy_vqa

    return lm_texts(config, load_easy_vqa("train")[: config.train_size])


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


def _batch(rows: list[tuple[list[int], list[bool]]], pad: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
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
        ids, mask, labels = (t.to(device) for t in _batch(rows[start : start + batch_size], pad))
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


def new_lm(config: LMConfig, tokenizer: Any) -> tuple[Any, torch.optim.Optimizer, Any]:
    """A freshly initialised GPT-2 LM for ``config`` (seeded by ``config.seed``), its AdamW (no decay
    on norms and biases) and its warm-up + cosine schedule: what ``train_lm`` trains."""
    from transformers import GPT2Config, GPT2LMHeadModel, get_cosine_schedule_with_warmup

    special = tokenizer.eos_token_id
    torch.manual_seed(config.seed)
    model = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=len(tokenizer), n_positions=config.n_positions, n_embd=config.n_embd, n_layer=config.n_layer,
            n_head=config.n_head, resid_pdrop=config.dropout, embd_pdrop=config.dropout, attn_pdrop=config.dropout,
            bos_token_id=special, eos_token_id=special, pad_token_id=special,
        )
    )
    model.generation_config.pad_token_id = special
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=config.lr
    )
    return model, optimizer, get_cosine_schedule_with_warmup(optimizer, config.warmup_steps, config.max_steps)


def train_lm(
    config: LMConfig,
    texts: Sequence[str],
    out_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = False,
    stop_after: int | None = None,
) -> LMResult:
    """Train a tokenizer and a GPT-2-architecture LM from scratch on ``texts``. ``resume`` continues
    from ``out_dir/state`` (same config and texts); ``stop_after`` ends the run early after that many
    steps (with a resumable state saved and no ``lm/``)."""
    from transformers import AutoTokenizer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state_dir, config_path, data_path, tokenizer_dir = out / "state", out / "config.json", out / "data.json", out / "tokenizer"
    train_texts, heldout_texts = split_heldout(list(texts), config.heldout_fraction, config.seed)
    fingerprint = _fingerprint(train_texts, heldout_texts)
    check_resume(out, dumps(config), resume, required=("state", "tokenizer"))
    if resume and data_path.is_file() and json.loads(data_path.read_text()) != fingerprint:
        raise InputError(f"{out}: the run was started on different texts; resume with the same ones")
    accelerator = make_accelerator(mixed_precision=config.mixed_precision)
    if accelerator.is_main_process:
        config_path.write_text(dumps(config))
        data_path.write_text(json.dumps(fingerprint, indent=1))
        if not resume:
            train_tokenizer(train_texts, config.vocab_size).save_pretrained(tokenizer_dir)
    accelerator.wait_for_everyone()
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    special = tokenizer.eos_token_id
    train_rows = _encode(tokenizer, train_texts, config.n_positions, loss_on=config.loss_on)
    heldout_rows = _encode(tokenizer, heldout_texts, config.n_positions, loss_on=config.loss_on)

    model, optimizer, scheduler = accelerator.prepare(*new_lm(config, tokenizer))

    start = 0
    if resume:
        start = load_training_state(state_dir, model=_StateView(accelerator.unwrap_model(model)), optimizer=optimizer, scheduler=scheduler)
    world, rank = accelerator.num_processes, accelerator.process_index
    metrics_path, end = open_metrics(out, accelerator, resume=resume, max_steps=config.max_steps, stop_after=stop_after)
    heldout: float | None = None

    def micro_step(index: int) -> dict[str, torch.Tensor]:
        rows = batch_rows(config.seed, index, dataset_size=len(train_rows), batch_size=config.batch_size, world=world, rank=rank)
        ids, mask, labels = (t.to(accelerator.device) for t in _batch([train_rows[i] for i in rows], special))
        return {"loss": model(input_ids=ids, attention_mask=mask, labels=labels).loss}

    def final_record() -> dict[str, Any]:
        nonlocal heldout
        heldout = _heldout_loss(accelerator.unwrap_model(model), heldout_rows, special, config.batch_size, accelerator.device)
        return {"heldout_loss": heldout, "heldout_ppl": math.exp(heldout)}

    losses = run_steps(
        StepLoop(config.max_steps, 1, config.log_every, config.save_every, "lm", loss_key="loss"),
        accelerator=accelerator, model=model, optimizer=optimizer, scheduler=scheduler,
        state_model=lambda: _StateView(accelerator.unwrap_model(model)), micro_step=micro_step,
        out=out, start=start, end=end, progress=progress, final_record=final_record,
    )
    loss_value = losses.get("loss", float("nan"))
    if accelerator.is_main_process and end == config.max_steps:
        final = accelerator.unwrap_model(model)
        final.save_pretrained(out / "lm")
        tokenizer.save_pretrained(out / "lm")
        plot_losses(metrics_path, out / "loss.png", ("loss",), "GPT-2 LM")
    return LMResult(
        out_dir=out, steps=end, final_loss=loss_value, heldout_loss=heldout,
        heldout_ppl=None if heldout is None else math.exp(heldout),
    )
