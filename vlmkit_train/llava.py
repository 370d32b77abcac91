"""``vlmkit train llava-stage1`` / ``llava-stage2``: LLaVA-1.5 (Liu et al., 2023, "Improved
Baselines with Visual Instruction Tuning"), built from parts and trained in its two stages.

The model is transformers' own ``LlavaForConditionalGeneration``: a FROZEN CLIP (or SigLIP) vision
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
are labelled. A validation pass first checks every sample for truncation, masking mismatches,
placeholder/image count mismatches and samples with nothing to learn; it writes
``out/validation.json`` and refuses to train (``on_invalid=error``) or trains without the offending
samples (``on_invalid=skip``), never dropping one silently (the last metrics row and the result's
``final_record`` give ``samples`` trained on and ``skipped``). The frozen tower's features are cached.

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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from vlmkit.data.conversations import (
    IMAGE_PLACEHOLDER,
    Conversation,
    read_conversations,
    stage1_records,
    stage2_records,
    write_conversations,
)
from vlmkit.errors import InputError
from vlmkit.feature_cache import FeatureCache
from vlmkit.models.image_encoders import FrozenImageEncoder
from vlmkit.models.llava import LLAVA_CHAT_TEMPLATE

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
    "LLAVA_CHAT_TEMPLATE",
    "PROBLEMS",
    "Problem",
    "EncodedSample",
    "stage1_config",
    "stage2_config",
    "train_stage1",
    "train_stage2",
    "build_llava",
    "encode_conversation",
    "validate_conversations",
    "IGNORE",
    "LlavaObjective",
    "run_model",
]

IGNORE = -100
#: What the validation pass looks for, in its report's order.
PROBLEMS = {
    "truncated": "longer than max_length (image tokens included)",
    "masking": "assistant spans do not line up with the template's tokens",
    "placeholders": "<image> placeholders differ from the images",
    "unsupervised": "no supervised tokens",
}


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

# -- the model from parts --------------------------------------------------------------------------

# Vision towers LLaVA's "default" strategy knows: does the tower put a CLS token in front of its patches?
_TOWERS: dict[str, tuple[Literal["default", "full"], int]] = {"clip_vision_model": ("default", 1), "siglip_vision_model": ("full", 0)}


def _load_tower(path: str) -> tuple[nn.Module, Any, Any]:
    """(vision tower, its config, its image processor) from a vision-model or dual-encoder directory."""
    from transformers import AutoConfig, AutoImageProcessor, AutoModel

    if not (Path(path) / "config.json").is_file():
        raise InputError(f"vision_tower={path!r}: not a model directory (no config.json)")
    config = AutoConfig.from_pretrained(path)
    model = AutoModel.from_pretrained(path, use_safetensors=True)
    if getattr(config, "vision_config", None) is not None:
        tower, config = getattr(model, "vision_model", None), config.vision_config
        if tower is None:
            raise InputError(f"vision_tower={path!r}: {type(model).__name__} has no vision_model")
    else:
        tower = model
    if config.model_type not in _TOWERS:
        raise InputError(f"vision_tower={path!r}: a {config.model_type} tower; LLaVA here takes {', '.join(_TOWERS)}")
    try:
        image_processor = AutoImageProcessor.from_pretrained(path)
    except (OSError, ValueError):
        raise InputError(f"vision_tower={path!r}: no image processor saved there (preprocessor_config.json)") from None
    return tower, config, image_processor


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


def build_llava(
    vision_tower: str, language_model: str, *, projector: str = "mlp2x_gelu", vision_feature_layer: int = -2, seed: int = 0
) -> tuple[Any, Any]:
    """A ``LlavaForConditionalGeneration`` assembled from a vision tower and a causal LM directory, with
    a fresh projector, and its ``LlavaProcessor`` (the tower's image processor, the LM's tokenizer
    with ``<image>`` and a pad token, LLaVA-1.5's chat template)."""
    from PIL import Image
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    tower, vision_config, image_processor = _load_tower(vision_tower)
    strategy, extra_tokens = _TOWERS[vision_config.model_type]
    if not (Path(language_model) / "config.json").is_file():
        raise InputError(f"language_model={language_model!r}: not a model directory (no config.json)")
    lm = AutoModelForCausalLM.from_pretrained(language_model, use_safetensors=True)
    tokenizer = AutoTokenizer.from_pretrained(language_model)
    if IMAGE_PLACEHOLDER not in tokenizer.get_vocab():
        tokenizer.add_tokens([IMAGE_PLACEHOLDER], special_tokens=True)
    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": "<pad>"})
    if tokenizer.eos_token is None:
        raise InputError(f"language_model={language_model!r}: the tokenizer has no end-of-sequence token")

    pixels = image_processor(images=[Image.new("RGB", (vision_config.image_size,) * 2)], return_tensors="pt")["pixel_values"]
    height, width = pixels.shape[-2:]
    if (height, width) != (vision_config.image_size, vision_config.image_size):
        raise InputError(
            f"vision_tower={vision_tower!r}: its image processor gives {height}x{width}, the tower takes {vision_config.image_size}"
        )
    patch = vision_config.patch_size
    image_seq_length = (height // patch) * (width // patch) + extra_tokens - (1 if strategy == "default" else 0)

    image_token = tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER)
    assert isinstance(image_token, int)
    text_config = type(lm.config).from_dict(lm.config.to_dict())
    text_config.tie_word_embeddings = False  # the head is copied (LLaVA's tying expects Llama's names)
    config = LlavaConfig(
        vision_config=vision_config.to_dict(),
        text_config=text_config.to_dict(),
        image_token_index=image_token,
        image_seq_length=image_seq_length,
        vision_feature_layer=vision_feature_layer,
        vision_feature_select_strategy=strategy,
        projector_hidden_act="gelu" if projector == "mlp2x_gelu" else "linear",
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    target = model.model.vision_tower
    if type(tower) is not type(target):  # a dual encoder's bare transformer
        target = target.vision_model
    target.load_state_dict(tower.state_dict())
    model.model.language_model.load_state_dict(lm.base_model.state_dict())
    with torch.no_grad():
        model.lm_head.weight.copy_(lm.get_output_embeddings().weight)
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    if projector == "linear":  # LLaVA-1's single linear layer: the second layer stays the identity
        with torch.no_grad():
            second = model.model.multi_modal_projector.linear_2
            second.weight.copy_(torch.eye(second.weight.shape[0]))
            second.bias.zero_()
    for key in ("pad_token_id", "eos_token_id", "bos_token_id"):
        value = getattr(tokenizer, key)
        setattr(model.config.text_config, key, value)
        setattr(model.generation_config, key, value)
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch,
        vision_feature_select_strategy=strategy,
        chat_template=LLAVA_CHAT_TEMPLATE,
        image_token=IMAGE_PLACEHOLDER,
        num_additional_image_tokens=extra_tokens,
    )
    expanded = processor(images=[Image.new("RGB", (width, height))], text=[IMAGE_PLACEHOLDER])["input_ids"][0]
    if expanded.count(config.image_token_index) != image_seq_length:
        count = expanded.count(config.image_token_index)
        raise InputError(f"vision_tower={vision_tower!r}: the processor gives {count} image tokens, the model {image_seq_length}")
    return model.eval(), processor


def _load_stage1(path: str) -> tuple[Any, Any]:
    from transformers import LlavaForConditionalGeneration, LlavaProcessor

    root = Path(path)
    for candidate in (root / "model", root):
        config = candidate / "config.json"
        if config.is_file() and json.loads(config.read_text()).get("model_type") == "llava":
            return LlavaForConditionalGeneration.from_pretrained(candidate).eval(), LlavaProcessor.from_pretrained(candidate)
    raise InputError(f"stage1={path!r}: no LLaVA model there (expected a stage-1 run or a llava checkpoint directory)")


# -- tokenisation, labels and the validation pass --------------------------------------------------


@dataclass(frozen=True)
class Problem:
    kind: str  # a key of PROBLEMS
    reason: str


@dataclass(frozen=True)
class EncodedSample:
    """A conversation as training sees it: token ids (images expanded), labels (-100 except on the
    assistant turns' tokens) and whatever the validation pass found wrong with it."""

    id: str
    input_ids: list[int]
    labels: list[int]
    problems: list[Problem] = field(default_factory=list)


def _render(processor: Any, messages: list[dict[str, Any]], generation: bool) -> str:
    return processor.apply_chat_template(messages, add_generation_prompt=generation, tokenize=False)


def _tokenize(processor: Any, text: str, image_seq_length: int) -> list[int]:
    """Token ids of a rendered prompt exactly as ``processor(images=..., text=...)`` gives them."""
    expanded = text.replace(processor.image_token, processor.image_token * image_seq_length)
    return list(processor.tokenizer(expanded)["input_ids"])


def encode_conversation(conversation: Conversation, processor: Any, image_seq_length: int, max_length: int) -> EncodedSample:
    """Render with the processor's chat template, tokenise, label the assistant turns, and check.

    An assistant turn's span starts where the inference prompt (the conversation so far, rendered
    with ``add_generation_prompt=True``) ends and ends where the conversation up to and including
    the turn ends; both prefixes must tokenise to the leading tokens of the whole sequence, or the
    labels would not be what generation at inference continues from (a masking mismatch)."""
    problems: list[Problem] = []
    if conversation.placeholders != len(conversation.images):
        found = f"{conversation.placeholders} {IMAGE_PLACEHOLDER} placeholder(s) for {len(conversation.images)} image(s)"
        problems.append(Problem("placeholders", found))
    elif any(IMAGE_PLACEHOLDER in answer for answer in conversation.answers()):
        problems.append(Problem("placeholders", f"an answer holds {IMAGE_PLACEHOLDER}"))
    messages = conversation.messages()
    full = _render(processor, messages, False)
    ids = _tokenize(processor, full, image_seq_length)
    labels = [IGNORE] * len(ids)
    specials = [t for t in processor.tokenizer.all_special_tokens if t]
    first_answer = len(_tokenize(processor, _render(processor, messages[:1], True), image_seq_length))
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        answer = message["content"][0]["text"]
        turn = index // 2
        prompt = _render(processor, messages[:index], True)
        upto = _render(processor, messages[: index + 1], False)
        if not upto.startswith(prompt) or not full.startswith(upto) or answer not in upto[len(prompt) :]:
            problems.append(Problem("masking", f"answer {turn}: the template does not render it after the inference prompt"))
            continue
        held = [t for t in specials if t in answer]
        if held:
            why = f"answer {turn}: holds the special token {held[0]!r}, which the tokenizer reads as a control token"
            problems.append(Problem("masking", why))
            continue
        prompt_ids, upto_ids = _tokenize(processor, prompt, image_seq_length), _tokenize(processor, upto, image_seq_length)
        start, end = len(prompt_ids), len(upto_ids)
        if ids[:start] != prompt_ids or ids[:end] != upto_ids:
            problems.append(Problem("masking", f"answer {turn}: its tokens do not start or end on the template's token boundary"))
            continue
        labels[start:end] = ids[start:end]
    if len(ids) > max_length:
        problems.append(Problem("truncated", f"{len(ids)} tokens > max_length {max_length}"))
    if not any(answer.strip() for answer in conversation.answers()):
        problems.append(Problem("unsupervised", "every answer is empty"))
    elif first_answer >= max_length:
        problems.append(Problem("unsupervised", f"the first answer starts at token {first_answer}, past max_length"))
    return EncodedSample(conversation.id, ids, labels, problems)


def validate_conversations(
    conversations: list[Conversation], processor: Any, image_seq_length: int, max_length: int, report: Path | None = None
) -> tuple[list[EncodedSample], dict[str, Any]]:
    """Encode every conversation and report the problems: counts per kind, and every offending id
    with its reasons (written to ``report`` as JSON when given)."""
    samples = [encode_conversation(c, processor, image_seq_length, max_length) for c in conversations]
    counts = {kind: sum(any(p.kind == kind for p in s.problems) for s in samples) for kind in PROBLEMS}
    invalid = [{"id": s.id, "problems": [{"kind": p.kind, "reason": p.reason} for p in s.problems]} for s in samples if s.problems]
    summary = {
        "samples": len(samples), "invalid": len(invalid), "max_length": max_length, "image_seq_length": image_seq_length,
        "counts": counts, "problems": PROBLEMS, "offending": invalid,
    }
    if report is not None:
        report.write_text(json.dumps(summary, indent=1, ensure_ascii=False))
    return samples, summary


def _counts_line(summary: dict[str, Any]) -> str:
    return ", ".join(f"{kind}: {count}" for kind, count in summary["counts"].items())


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


# -- the training objective ------------------------------------------------------------------------


class LlavaObjective(nn.Module):
    """The LLaVA model with the next-token loss on labelled tokens as its forward (one module call
    for DDP): frozen-tower hidden states -> projector -> image-token positions of the embeddings."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor, image_states: torch.Tensor
    ) -> torch.Tensor:
        config = self.model.config
        if config.vision_feature_select_strategy == "default":
            image_states = image_states[:, 1:]  # (N, T, E): CLS dropped
        image_embeds = self.model.model.multi_modal_projector(image_states)  # (N, T, D)
        embeds = self.model.get_input_embeddings()(input_ids)  # (B, L, D)
        mask = (input_ids == config.image_token_index).unsqueeze(-1)  # (B, L, 1)
        embeds = embeds.masked_scatter(mask, image_embeds.to(embeds.dtype))
        return self.model(inputs_embeds=embeds, attention_mask=attention_mask, labels=labels).loss


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
