"""``vlmkit train llava-stage1`` / ``llava-stage2``: LLaVA-1.5 (Liu et al., 2023, "Improved
Baselines with Visual Instruction Tuning"), built from parts and trained in its two stages.

The model is transformers' own ``LlavaForConditionalGeneration``
(:func:`vlmkit.models.llava_build.build_llava` assembles it): a FROZEN CLIP (or SigLIP) vision
tower read at its second-last layer (``vision_feature_layer=-2``, CLS dropped: the "default"
strategy), a projector ("mlp2x_gelu", LLaVA-1.5's two-layer MLP, or LLaVA-1's "linear") and a causal
LM, with ``<image>`` (and a pad token where missing) added to the LM's tokenizer and LLaVA-1.5's chat
template ("USER: <image>\\n... ASSISTANT: ...</s>") stored in the processor.

- Stage 1 (feature alignment): only the projector learns, on one-image caption conversations.
- Stage 2 (visual instruction tuning, ``stage1=DIR``): projector and LM learn, fully or through LoRA
  adapters (``lora_r``; merged into the LM before export), on multi-turn conversations.

Training sequences are the processor's own rendering of each conversation, tokenised as the
processor tokenises a prompt at inference (each ``<image>`` expanded to ``image_seq_length`` tokens,
which count towards ``max_length``); only the assistant turns' tokens, their end token included,
are labelled (:mod:`vlmkit.data.conversation_encoding`), and the loss is the model's own on them
(:class:`vlmkit.objectives.LlavaObjective`). A validation pass first checks every sample for
truncation, masking mismatches, placeholder/image count mismatches and samples with nothing to
learn; it writes ``out/validation.json`` and refuses to train (``on_invalid=error``) or trains
without the offending samples (``on_invalid=skip``), never dropping one silently (the last metrics
row and the result's ``final_record`` give ``samples`` trained on and ``skipped``). The frozen
tower's features are cached.

Both stages run on the shared driver (:func:`vlmkit_train.driver.train`), with the recipes' own
defaults: no weight decay, a short warm-up, stage 1's learning rate 1e-3 and stage 2's 2e-4.

Outputs in ``out_dir``: ``model/`` (llava-hf layout: ``LlavaForConditionalGeneration`` +
``LlavaProcessor``; ``vlmkit.load`` and ``from_pretrained`` read it), ``data/`` (the conversations
built from ``data`` and their images), ``validation.json``, ``metrics.jsonl``, ``loss.png``,
``features/``, ``state/`` and ``config.json``.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from vlmkit.data.conversation_encoding import IGNORE, EncodedSample, validate_conversations
from vlmkit.data.conversations import (
    Conversation,
    read_conversations,
    stage1_records,
    stage2_records,
    write_conversations,
)
from vlmkit.errors import InputError
from vlmkit.feature_cache import FeatureCache
from vlmkit.models.image_encoders import FrozenImageEncoder
from vlmkit.models.llava_build import build_llava
from vlmkit.objectives.llava import LlavaObjective

from .config import DataConfig, RunConfig, check_at_least, config_from_dict, data_seed
from .data import training_examples
from .driver import MODEL_DIR, Plan, Recipe, Run
from .loop import batch_rows

__all__ = [
    "LlavaStage1Config",
    "LlavaStage2Config",
    "PRESETS1",
    "PRESETS2",
    "RECIPE_STAGE1",
    "RECIPE_STAGE2",
    "stage1_config",
    "stage2_config",
    "train_stage1",
    "train_stage2",
    "run_model",
]


# -- configs ---------------------------------------------------------------------------------------

# The recipes' own defaults: LLaVA's projector learns fast (stage 1's 1e-3, stage 2's 2e-4) and
# trains without weight decay, as in LLaVA-1.5, with a short warm-up.
_RUN1 = RunConfig(lr=1e-3, weight_decay=0.0, warmup_steps=20, max_steps=300)
_RUN2 = RunConfig(batch_size=16, lr=2e-4, weight_decay=0.0, warmup_steps=20, max_steps=500)
_DATA = DataConfig(train_size=4000)
_TINY_RUN = RunConfig(batch_size=2, max_steps=4, warmup_steps=1, log_every=1, lr=1e-2, weight_decay=0.0)
_TINY_DATA = DataConfig(train_size=8, image_size=32)


@dataclass(frozen=True)
class LlavaStage1Config:
    run: RunConfig = _RUN1
    #: Built-in data turned into caption conversations; ignored when ``conversations`` is given.
    data: DataConfig = _DATA
    #: A conversation JSON in LLaVA's format; "" builds one from ``data`` in ``out/data``.
    conversations: str = ""
    #: Where the JSON's image paths point; "" is the JSON's own folder.
    image_folder: str = ""
    #: A CLIPVisionModel directory, or a dual encoder's (CLIP, VisionTextDualEncoderModel) whose vision
    #: model is taken. Required. Its image processor must be saved beside it.
    vision_tower: str = ""
    #: A causal LM directory (e.g. ``vlmkit train lm``'s ``lm/``) with its tokenizer. Required.
    language_model: str = ""
    projector: Literal["linear", "mlp2x_gelu"] = "mlp2x_gelu"
    vision_feature_layer: int = -2
    max_length: int = 128
    on_invalid: Literal["error", "skip"] = "error"
    cache_features: bool = True
    #: "" is ``out/features``; runs on the same images and tower may share one.
    features_dir: str = ""

    def __post_init__(self) -> None:
        _check_common(self)


@dataclass(frozen=True)
class LlavaStage2Config:
    run: RunConfig = _RUN2
    data: DataConfig = _DATA
    conversations: str = ""
    image_folder: str = ""
    #: A stage-1 run directory (its ``model/``) or a LLaVA checkpoint directory. When "", the model is
    #: built fresh from ``vision_tower``, ``language_model`` and ``projector`` (no stage 1).
    stage1: str = ""
    vision_tower: str = ""
    language_model: str = ""
    projector: Literal["linear", "mlp2x_gelu"] = "mlp2x_gelu"
    vision_feature_layer: int = -2
    #: 0 fine-tunes the whole LM; r > 0 trains LoRA adapters of rank r on its linear layers instead.
    lora_r: int = 0
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    # Built-in conversations (see ``vlmkit.data.conversations.stage2_records``).
    max_questions: int = 3
    caption_share: float = 0.3
    two_image_share: float = 0.05
    #: May exceed an LM's learned position table (GPT-2's): the new positions start as copies of its
    #: last one and learn in this stage.
    max_length: int = 256
    on_invalid: Literal["error", "skip"] = "error"
    cache_features: bool = True
    features_dir: str = ""

    def __post_init__(self) -> None:
        _check_common(self)
        if self.lora_r < 0:
            raise InputError(f"lora_r must be 0 (full fine-tuning) or positive, got {self.lora_r}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise InputError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        for name in ("caption_share", "two_image_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise InputError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.max_questions < 1:
            raise InputError(f"max_questions must be at least 1, got {self.max_questions}")


def _check_common(config: Any) -> None:
    check_at_least(config, ("max_length",))
    if config.image_folder and not config.conversations:
        raise InputError("image_folder needs conversations=FILE (the built-in data makes its own folder)")


PRESETS1: dict[str, LlavaStage1Config] = {
    # The offline recipe on the shapes world (see bench/llava_offline.py): give vision_tower and
    # language_model with --set.
    # Measured in bench/llava_offline.py (4,000 scenes, 64 image tokens, the shared GPT-2 LM).
    "shapes": LlavaStage1Config(run=replace(_RUN1, lr=3e-3, max_steps=100)),
    # A few seconds: for tests and for trying the pipeline.
    "tiny": LlavaStage1Config(run=_TINY_RUN, data=_TINY_DATA),
}
#: What each preset is for and roughly what it costs (``vlmkit train --help``).
PRESET_NOTES1: dict[str, str] = {
    "shapes": "the offline recipe (bench/llava_offline.py; give vision_tower= and language_model=): the MLP projector alone,"
    " 100 steps of batch 32 on 4,000 caption conversations: 0.45 s a step, under a minute (bench/recipe_costs.py on a 2-core CPU)",
    "tiny": "smoke test: 4 steps of batch 2 on 8 scenes, seconds",
}
PRESETS2: dict[str, LlavaStage2Config] = {
    "shapes": LlavaStage2Config(run=replace(_RUN2, lr=5e-4, max_steps=160), max_questions=2),
    "tiny": LlavaStage2Config(run=_TINY_RUN, data=_TINY_DATA, two_image_share=0.25),
}
#: What each preset is for and roughly what it costs (``vlmkit train --help``).
PRESET_NOTES2: dict[str, str] = {
    "shapes": "the offline recipe (bench/llava_offline.py; give stage1=): projector and the whole LM (or lora_r=),"
    " 160 steps of batch 16 on 4,000 multi-turn conversations: 0.66 s a step, about 2 min (1 min with run.mixed_precision=bf16) (bench/recipe_costs.py on a 2-core CPU)",
    "tiny": "smoke test: 4 steps of batch 2 on 8 scenes, seconds",
}


def _check_parts(config: Any) -> None:
    """Refuse a run without the parts it starts from, before anything is written."""
    if getattr(config, "stage1", ""):
        return
    if not config.vision_tower or not config.language_model:
        need = "vision_tower and language_model" + (" (or stage1=DIR)" if isinstance(config, LlavaStage2Config) else "")
        raise InputError(f"{need} are required: directories of a vision tower and of a causal LM")


# -- the model a stage starts from -----------------------------------------------------------------


def _positions(text_config: Any) -> int | None:
    for name in ("n_positions", "max_position_embeddings"):
        value = getattr(text_config, name, None)
        if isinstance(value, int):
            return value
    return None


def _fit_positions(model: Any, max_length: int, *, learnable: bool) -> bool:
    """Make the LM take ``max_length`` positions. Rotary LMs only need their config raised; a learned
    table (GPT-2's ``wpe``) grows with rows copied from its last one, which only a stage that trains
    the LM (``learnable``) can then tell apart. True when a learned table grew."""
    text_config = model.config.text_config
    limit = _positions(text_config)
    if limit is None or max_length <= limit:
        return False
    lm = model.model.language_model
    if hasattr(lm, "rotary_emb"):
        text_config.max_position_embeddings = max_length
        return False
    if not hasattr(lm, "wpe") or not learnable:
        raise InputError(
            f"max_length={max_length} exceeds the LM's {limit} learned positions; lower max_length"
            + (" (stage 1 keeps the LM frozen)" if hasattr(lm, "wpe") else "")
        )
    old = lm.wpe.weight.data  # (limit, D)
    table = nn.Embedding(max_length, old.shape[1]).to(old.device, old.dtype)
    table.weight.data[:limit] = old
    table.weight.data[limit:] = old[-1]
    lm.wpe = table
    text_config.n_positions = max_length
    return True


def _load_stage1(path: str) -> tuple[Any, Any]:
    from transformers import LlavaForConditionalGeneration, LlavaProcessor

    root = Path(path)
    for candidate in (root / "model", root):
        config = candidate / "config.json"
        if config.is_file() and json.loads(config.read_text()).get("model_type") == "llava":
            return LlavaForConditionalGeneration.from_pretrained(candidate).eval(), LlavaProcessor.from_pretrained(candidate)
    raise InputError(f"stage1={path!r}: no LLaVA model there (expected a stage-1 run or a llava checkpoint directory)")


# -- data and features -----------------------------------------------------------------------------


def _conversations(config: Any, run: Run, stage: int) -> tuple[list[Conversation], Path]:
    """The run's conversations and the folder their images are in: the given JSON, or records built
    from ``data`` into ``out/data`` (the same JSON a user could give)."""
    if config.conversations:
        path = Path(config.conversations)
        folder = Path(config.image_folder) if config.image_folder else path.parent
        return read_conversations(path, folder, check_placeholders=False), folder
    folder = run.out / "data"
    if run.is_main:
        seed = data_seed(config)
        examples = training_examples(config.data, seed)
        if stage == 1:
            records = stage1_records(examples, folder / "images", seed=seed)
        else:
            records = stage2_records(
                examples, folder / "images", seed=seed, max_questions=config.max_questions,
                caption_share=config.caption_share, two_image_share=config.two_image_share,
            )
        write_conversations(records, folder / "conversations.json")
    run.wait()
    return read_conversations(folder / "conversations.json", folder / "images", check_placeholders=False), folder / "images"


class _TowerEncoder(FrozenImageEncoder):
    """The LLaVA model's frozen tower as a feature-cache encoder: hidden states of the feature layer,
    every token (the "default" strategy drops CLS later, as the model does)."""

    def __init__(self, model: Any, image_processor: Any) -> None:
        super().__init__()
        self.tower = model.model.vision_tower
        self.image_processor = image_processor
        self.layer = model.config.vision_feature_layer
        self.hidden_size = int(model.config.vision_config.hidden_size)
        digest = hashlib.sha256()
        for name, tensor in sorted(self.tower.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().float().cpu().numpy().tobytes())
        self.identity = f"llava-tower:{digest.hexdigest()[:16]}:layer{self.layer}"
        self.freeze()

    def preprocess(self, images: list[Any]) -> torch.Tensor:
        return self.image_processor(images=images, return_tensors="pt")["pixel_values"]

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.tower(pixel_values=pixels, output_hidden_states=True).hidden_states[self.layer]  # (B, P, E)


def _files_key(files: list[Path]) -> str:
    digest = hashlib.sha256()
    for file in files:
        digest.update(hashlib.sha256(file.read_bytes()).digest())
    return f"llava-images:{len(files)}:{digest.hexdigest()[:16]}"


# -- batches, the parts that learn, the export -----------------------------------------------------


def _collate(samples: list[EncodedSample], pad_id: int, max_length: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded (ids, attention mask, labels), each (B, L); the mask comes from the lengths, as
    the pad token may also be the end token."""
    rows = [(s.input_ids[:max_length], s.labels[:max_length]) for s in samples]
    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    for i, (row_ids, row_labels) in enumerate(rows):
        ids[i, : len(row_ids)] = torch.tensor(row_ids)
        mask[i, : len(row_ids)] = 1
        labels[i, : len(row_labels)] = torch.tensor(row_labels)
    return ids, mask, labels


def _lora_targets(language_model: nn.Module) -> list[tuple[str, bool]]:
    """(name, is GPT-2's Conv1D) of the LM's linear layers: LoRA's targets, as in LLaVA-1.5."""
    from transformers.pytorch_utils import Conv1D

    modules = language_model.named_modules()
    return [(name, isinstance(module, Conv1D)) for name, module in modules if isinstance(module, (nn.Linear, Conv1D))]


class _TrainableView(nn.Module):
    """What a resumable state stores: the parts that learn (the frozen tower is rebuilt)."""

    def __init__(self, model: Any, stage: int) -> None:
        super().__init__()
        self.projector = model.model.multi_modal_projector
        if stage == 2:
            self.language_model = model.model.language_model
            self.lm_head = model.lm_head


def _prepare(config: Any, stage: int) -> tuple[Any, Any]:
    """The model (with LoRA adapters when asked) and processor a config starts from, with only the
    parts its stage trains left trainable; deterministic, so a resumed run rebuilds the same."""
    if stage == 2 and config.stage1:
        model, processor = _load_stage1(config.stage1)
    else:
        model, processor = build_llava(
            config.vision_tower, config.language_model, projector=config.projector,
            vision_feature_layer=config.vision_feature_layer, seed=config.run.seed,
        )
    grown = _fit_positions(model, config.max_length, learnable=stage == 2)
    tokenizer = processor.tokenizer
    tokenizer.model_max_length = max(int(min(tokenizer.model_max_length, 1 << 30)), config.max_length)
    model.requires_grad_(False)
    projector = model.model.multi_modal_projector
    projector.requires_grad_(True)
    if model.config.projector_hidden_act == "linear":
        projector.linear_2.requires_grad_(False)
    if stage == 2:
        if config.lora_r:
            from peft import LoraConfig
            from peft.tuners.lora import LoraModel

            lm = model.model.language_model
            torch.manual_seed(config.run.seed)
            targets = _lora_targets(lm)
            lora = LoraConfig(
                r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout, target_modules=[n for n, _ in targets],
                fan_in_fan_out=all(conv for _, conv in targets),  # GPT-2's Conv1D stores weights transposed
            )
            model.model.language_model = LoraModel(lm, lora, "default")
            if grown:
                lm.wpe.requires_grad_(True)  # the positions past the LM's own table must learn
        else:
            model.model.language_model.requires_grad_(True)
            model.lm_head.requires_grad_(True)
    return model, processor


def _merged(model: Any) -> Any:
    """The model with LoRA adapters (if any) merged into the LM, as exported."""
    from peft.tuners.lora import LoraModel

    lm = model.model.language_model
    if isinstance(lm, LoraModel):
        model.model.language_model = lm.merge_and_unload()
    return model


def run_model(out_dir: str | Path) -> tuple[Any, Any]:
    """The model of a run as its last saved state has it (with LoRA adapters unmerged), and its
    processor: the model training ended with, for checking the export against."""
    out = Path(out_dir)
    data = json.loads((out / "config.json").read_text())
    stage = 2 if "lora_r" in data else 1
    config = config_from_dict(LlavaStage2Config if stage == 2 else LlavaStage1Config, data)
    model, processor = _prepare(config, stage)
    from safetensors.torch import load_file

    _TrainableView(model, stage).load_state_dict(load_file(str(out / "state" / "model.safetensors")))
    return model.eval(), processor


# -- training --------------------------------------------------------------------------------------


def _tower_features(config: Any, run: Run, encoder: _TowerEncoder, files: list[Path]) -> Callable[[list[int]], torch.Tensor]:
    """The frozen tower's states of ``files`` by row, (N, P, E) float32: from a feature cache keyed by
    the files' contents (a conversation JSON names any images), built once by the main process, or
    encoded per batch."""
    if not config.cache_features:
        from vlmkit.images import load_image

        return lambda rows: encoder.encode([load_image(files[r]) for r in rows]).float().cpu()
    directory = Path(config.features_dir) if config.features_dir else run.out / "features"
    if run.is_main:
        FeatureCache.build(encoder, files, directory, progress=run.progress, images_key=_files_key(files))
    run.wait()
    return FeatureCache.open(directory, identity=encoder.identity).batch  # type: ignore[no-any-return]


def _counts_line(summary: dict[str, Any]) -> str:
    """The validation pass's counts per problem, for messages."""
    return ", ".join(f"{kind}: {count}" for kind, count in summary["counts"].items())


def _build(config: Any, run: Run, stage: int) -> Plan:
    """The conversations, checked; the model with only its stage's parts trainable; the tower's
    features; one micro-batch of labelled conversations per step."""
    out = run.out
    conversations, folder = _conversations(config, run, stage)
    model, processor = _prepare(config, stage)
    image_seq_length = int(model.config.image_seq_length)
    samples, summary = validate_conversations(
        conversations, processor, image_seq_length, config.max_length, out / "validation.json" if run.is_main else None
    )
    invalid = summary["invalid"]
    if run.is_main:
        counts = _counts_line(summary)
        print(f"validation: {len(samples)} samples, {invalid} with problems ({counts}); see {out / 'validation.json'}", file=sys.stderr)
    if invalid and config.on_invalid == "error":
        raise InputError(
            f"{invalid} of {len(samples)} samples would train wrongly ({_counts_line(summary)}); "
            f"see {out / 'validation.json'}, fix them or set on_invalid=skip"
        )
    kept = [(s, c) for s, c in zip(samples, conversations, strict=True) if not s.problems]
    if invalid and run.is_main:
        print(f"validation: skipping {invalid} samples, training on {len(kept)}", file=sys.stderr)
    if not kept:
        raise InputError("no valid samples left to train on; see validation.json")

    # Every image of the data (skipped samples' too), so both stages share one cache of the same images.
    files = sorted({folder / name for c in conversations for name in c.images})
    row_of = {file: row for row, file in enumerate(files)}
    image_rows = [[row_of[folder / name] for name in c.images] for _, c in kept]
    train_samples = [s for s, _ in kept]
    features = _tower_features(config, run, _TowerEncoder(model, processor.image_processor), files)
    pad_id = processor.tokenizer.pad_token_id
    seed = config.run.seed

    def micro_step(objective: nn.Module, index: int) -> dict[str, torch.Tensor]:
        rows = batch_rows(seed, index, dataset_size=len(train_samples), batch_size=config.run.batch_size, world=run.world, rank=run.rank)
        ids, mask, labels = (t.to(run.device) for t in _collate([train_samples[i] for i in rows], pad_id, config.max_length))
        states = features([r for i in rows for r in image_rows[i]]).to(run.device)  # (N, P, E)
        return {"loss": objective(ids, mask, labels, states)}

    def export(objective: nn.Module, out: Path) -> Path:
        _merged(objective.model).eval().save_pretrained(out / MODEL_DIR)
        processor.save_pretrained(out / MODEL_DIR)
        return out / MODEL_DIR

    # The objective's trainable parameters are exactly the ones _prepare left trainable: the
    # projector, and in stage 2 the LM (or its LoRA adapters). Without weight decay (the default)
    # the driver's two AdamW groups update them as one group would.
    return Plan(
        LlavaObjective(model),
        micro_step,
        export,
        state=lambda objective: _TrainableView(objective.model, stage),
        # Conversations trained on, and those left out by on_invalid=skip (see validation.json).
        final_record=lambda _: {"samples": len(train_samples), "skipped": invalid},
    )


def build_stage1(config: LlavaStage1Config, run: Run) -> Plan:
    return _build(config, run, 1)


def build_stage2(config: LlavaStage2Config, run: Run) -> Plan:
    return _build(config, run, 2)


RECIPE_STAGE1 = Recipe(
    name="llava-stage1", summary="LLaVA stage 1: projector on image-caption pairs", title="LLaVA stage 1", presets=PRESETS1,
    preset_notes=PRESET_NOTES1, build=build_stage1,
    next_step=lambda model_dir: f"vlmkit train llava-stage2 --set stage1={model_dir.parent}", check=_check_parts,
)

RECIPE_STAGE2 = Recipe(
    name="llava-stage2", summary="LLaVA stage 2: projector + LM on conversations", title="LLaVA stage 2", presets=PRESETS2,
    preset_notes=PRESET_NOTES2, build=build_stage2,
    next_step=lambda model_dir: f"vlmkit chat --model {model_dir} --image IMAGE", check=_check_parts,
)


stage1_config = RECIPE_STAGE1.config  # (preset="shapes", overrides) -> the checked config

stage2_config = RECIPE_STAGE2.config  # (preset="shapes", overrides) -> the checked config
train_stage1 = RECIPE_STAGE1.train  # (config, out_dir, *, resume, progress, stop_after) -> TrainResult


train_stage2 = RECIPE_STAGE2.train  # (config, out_dir, *, resume, progress, stop_after) -> TrainResult
