"""``vlmkit train vllavo``: LoRA fine-tuning of a language model to classify images from their
descriptions (VLLaVO, Chen et al., 2024; :mod:`vlmkit.models.vllavo`).

Domain generalisation: the labelled source images (``data.spec``, any dataset whose examples carry a
``label``, e.g. ``shapes-domains:photo,cartoon,sketch`` or ``domains:PACS_DIR:photo,art_painting``)
are described once by the describer (``describer.*``), and the LM learns to answer the VLLaVO
question with their class, the loss on the answer tokens only. peft's LoRA (rank 8, alpha 16,
dropout 0.05, on the attention projections peft knows for the architecture) is the only thing
trained; the base LM stays as it was.

Unsupervised adaptation (``target=SPEC source_model=DIR``): the target images are read WITHOUT their
labels, described by the source model's own describer and pseudo-labelled by the source-trained
checkpoint; those whose probability reaches ``threshold`` (0: all, as the paper keeps them) join the
source rows, and a fresh adapter trains on both with the same budget.

Outputs in ``out_dir``: ``model/`` (a ``vlmkit-vllavo`` checkpoint: ``vlmkit classify IMG --labels ...
--model OUT/model``), ``descriptions.jsonl`` (every training image's description and label, the
target's with its pseudo-label and confidence), ``metrics.jsonl``, ``loss.png``, ``state/`` and
``config.json``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from vlmkit.data.records import Example
from vlmkit.errors import InputError
from vlmkit.models.vllavo import (
    MODEL_TYPE,
    DescriberConfig,
    PromptEncoder,
    VLLaVOConfig,
    check_classes,
    context_length,
    load_lm,
    mask_class_words,
    save_checkpoint,
)

from .config import DataConfig, RunConfig, data_seed
from .driver import MODEL_DIR, Plan, Recipe, Run, TrainResult, train
from .lm import loss_batch
from .loop import batch_rows

__all__ = ["VLLaVOTrainConfig", "PRESETS", "RECIPE", "Described", "vllavo_config", "train_vllavo", "describe_examples",
           "pseudo_label", "DESCRIPTIONS"]

DESCRIPTIONS = "descriptions.jsonl"
_DESCRIBE_BATCH = 64


@dataclass(frozen=True)
class VLLaVOTrainConfig:
    run: RunConfig = RunConfig(batch_size=16, lr=3e-4, weight_decay=0.0, warmup_steps=20, max_steps=300)
    #: The labelled source images: ``data.spec`` (``data.train_size`` is the most read).
    data: DataConfig = DataConfig(spec="shapes-domains:photo,cartoon,sketch", train_size=100_000)
    #: The causal LM to adapt: a hub id or a directory (offline: ``vlmkit train lm``'s ``OUT/lm``).
    language_model: str = ""
    describer: DescriberConfig = DescriberConfig()
    #: The options, comma-separated; empty: the source labels, sorted.
    classes: str = ""
    #: Share of the class words in a training description replaced by "object" (the paper's option).
    mask_rate: float = 0.0
    lora_rank: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    #: Module names LoRA adapts, comma-separated; empty: peft's default for the architecture (the
    #: attention projections: GPT-2's ``c_attn``, Llama's ``q_proj,v_proj``, ...).
    lora_targets: str = ""
    max_length: int = 0  # the LM's context in tokens; 0: its own
    predict: Literal["likelihood", "generate"] = "likelihood"  # how the exported model answers
    #: UDA: the unlabelled target images (a dataset spec; their labels are never read), the
    #: source-trained checkpoint that pseudo-labels them, how many to read (0: all), and the
    #: probability a pseudo-label needs to be kept (0: every one).
    target: str = ""
    source_model: str = ""
    target_size: int = 0
    threshold: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.mask_rate <= 1.0:
            raise InputError(f"mask_rate must be in [0, 1], got {self.mask_rate}")
        if not 0.0 <= self.threshold < 1.0:
            raise InputError(f"threshold must be in [0, 1), got {self.threshold}")
        if self.lora_rank < 1 or self.lora_alpha < 1 or not 0.0 <= self.lora_dropout < 1.0:
            raise InputError("lora_rank and lora_alpha must be >= 1 and lora_dropout in [0, 1)")
        if self.target_size < 0 or self.max_length < 0:
            raise InputError("target_size and max_length must not be negative")


PRESETS: dict[str, VLLaVOTrainConfig] = {
    "shapes": VLLaVOTrainConfig(),
    "tiny": VLLaVOTrainConfig(
        run=RunConfig(batch_size=4, lr=3e-3, weight_decay=0.0, warmup_steps=1, max_steps=4, log_every=1),
        data=DataConfig(spec="shapes-domains:photo,cartoon:2", train_size=100_000),
        describer=DescriberConfig(sampled_captions=1),
    ),
}
PRESET_NOTES: dict[str, str] = {
    "shapes": "DG on the shapes domains (photo, cartoon, sketch; painting held out): 300 steps of 16, LoRA rank 8",
    "tiny": "smoke test: 4 steps on 2 images a class of two domains, seconds",
}


def _check_settings(config: VLLaVOTrainConfig) -> None:
    if not config.language_model:
        raise InputError("set language_model=LM (a causal LM's hub id or directory; offline, `vlmkit train lm` makes one)")
    if not config.data.spec:
        raise InputError("set data.spec=SPEC: the labelled source images (e.g. shapes-domains:photo,cartoon,sketch)")
    if bool(config.target) != bool(config.source_model):
        raise InputError("adaptation needs both target=SPEC (the unlabelled target images) and source_model=DIR (the source-trained model)")


def _check(config: VLLaVOTrainConfig) -> None:
    """The settings, then the source data's labels against the classes, before the run directory is made."""
    _check_settings(config)
    _classes(config, [e.label for e in source_examples(config)])


# -- data ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Described:
    """One training image's description and its label (a pseudo-label, with its probability, for a target image)."""

    id: str
    description: str
    label: str
    confidence: float | None = None
    domain: Literal["source", "target"] = "source"


def source_examples(config: VLLaVOTrainConfig) -> list[Example]:
    """The first ``data.train_size`` examples of ``data.spec``; every one must carry a label."""
    from vlmkit.data import read_dataset

    examples = list(islice(read_dataset(config.data.spec), config.data.train_size))
    if not examples:
        raise InputError(f"data.spec={config.data.spec}: no examples")
    unlabelled = sum(1 for e in examples if not e.label)
    if unlabelled:
        raise InputError(f"data.spec={config.data.spec}: {unlabelled} of {len(examples)} examples have no class label")
    return examples


def target_images(config: VLLaVOTrainConfig) -> list[Example]:
    """The target examples with their labels removed before anything sees them."""
    from vlmkit.data import read_dataset

    rows = read_dataset(config.target)
    examples = list(islice(rows, config.target_size) if config.target_size else rows)
    if not examples:
        raise InputError(f"target={config.target}: no examples")
    return [Example(id=e.id, image=e.image) for e in examples]


def describe_examples(describer: Any, examples: Sequence[Example], *, progress: bool = False, desc: str = "describe") -> list[str]:
    """Each example's description text, in order, described in batches (with a progress bar)."""
    from tqdm.auto import tqdm

    texts: list[str] = []
    with tqdm(total=len(examples), desc=desc, unit="img", disable=not progress) as bar:
        for start in range(0, len(examples), _DESCRIBE_BATCH):
            chunk = examples[start : start + _DESCRIBE_BATCH]
            texts += [d.text for d in describer.describe([e.image for e in chunk], batch_size=_DESCRIBE_BATCH)]
            bar.update(len(chunk))
    return texts


def pseudo_label(model: Any, descriptions: Sequence[str], classes: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """The source-trained model's label for each target description and its probability."""
    probs = model.option_probabilities(descriptions, classes)  # (N, C)
    best = probs.argmax(axis=1)
    return [classes[i] for i in best], probs[np.arange(len(best)), best]


def _write_described(path: Path, rows: Sequence[Described]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(dataclasses.asdict(r)) + "\n" for r in rows))
    tmp.replace(path)


def _read_described(path: Path) -> list[Described]:
    return [Described(**json.loads(line)) for line in path.read_text().splitlines() if line.strip()]


def _classes(config: VLLaVOTrainConfig, labels: Sequence[str]) -> list[str]:
    if not config.classes:
        return check_classes(sorted(set(labels)))
    classes = check_classes([c.strip() for c in config.classes.split(",")])
    unknown = sorted(set(labels) - set(classes))
    if unknown:
        raise InputError(f"the source data has labels that are not among classes= ({', '.join(unknown)})")
    return classes


def prepare(config: VLLaVOTrainConfig, run: Run) -> tuple[list[Described], list[str], dict[str, Any]]:
    """The training rows (source, then kept pseudo-labelled target), the classes, and the run's
    data figures; described once by the main process into ``descriptions.jsonl`` (reused on resume)."""
    path = run.out / DESCRIPTIONS
    source = source_examples(config)
    classes = _classes(config, [e.label for e in source])
    figures: dict[str, Any] = {"source_images": len(source)}
    if run.is_main and not (run.resume and path.is_file()):
        import vlmkit
        from vlmkit.models.vllavo import Describer

        rows: list[Described] = []
        if config.target:
            model = vlmkit.load(config.source_model, device=run.device)
            if model.kind.model_type != MODEL_TYPE:
                raise InputError(f"source_model={config.source_model} is not a VLLaVO checkpoint (a `vlmkit train vllavo` model/)")
            if model.describer.config != config.describer:  # type: ignore[attr-defined]
                raise InputError("the source model describes images with other settings; set describer.* as it was trained")
            describer = model.describer  # type: ignore[attr-defined]
        else:
            describer = Describer.from_config(config.describer, load=vlmkit.load, device=run.device)
        texts = describe_examples(describer, source, progress=run.progress, desc="describe source")
        rows += [Described(e.id, t, e.label) for e, t in zip(source, texts, strict=True)]
        if config.target:
            target = target_images(config)
            texts = describe_examples(describer, target, progress=run.progress, desc="describe target")
            labels, confidence = pseudo_label(model, texts, classes)
            rows += [Described(e.id, t, label, float(p), "target")
                     for e, t, label, p in zip(target, texts, labels, confidence, strict=True)]
        _write_described(path, rows)
    run.wait()
    rows = _read_described(path)
    if [r.id for r in rows if r.domain == "source"] != [e.id for e in source]:
        raise InputError(f"{path}: the run was started on other source images; resume with the same data")
    target_rows = [r for r in rows if r.domain == "target"]
    kept = [r for r in target_rows if r.confidence is not None and r.confidence >= config.threshold]
    if target_rows:
        figures.update(target_images=len(target_rows), pseudo_labelled=len(kept))
    return [r for r in rows if r.domain == "source"] + kept, classes, figures


# -- training --------------------------------------------------------------------------------------


class _Adapters(nn.Module):
    """The trainable (LoRA) parameters alone, for the resumable state: the frozen LM is rebuilt."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.adapters = nn.ParameterDict({n.replace(".", "__"): p for n, p in model.named_parameters() if p.requires_grad})


def lora_model(config: VLLaVOTrainConfig, lm: Any) -> Any:
    """``lm`` with fresh LoRA adapters (drawn from torch's generator); only they require grad."""
    from peft import LoraConfig, get_peft_model

    targets = [t.strip() for t in config.lora_targets.split(",") if t.strip()] or None
    lora = LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=targets, task_type="CAUSAL_LM")
    try:
        return get_peft_model(lm, lora)
    except ValueError as exc:
        raise InputError(f"LoRA cannot adapt {config.language_model}: {exc} (set lora_targets=NAMES)") from None


def build(config: VLLaVOTrainConfig, run: Run, *, prepared: tuple[list[Described], list[str], dict[str, Any]] | None = None) -> Plan:
    """LoRA on the LM, learning each training row's answer from its description."""
    import warnings

    if prepared is None:
        rows, classes, figures = prepare(config, run)
    else:
        rows, classes, figures = prepared[0], prepared[1], dict(prepared[2])
        if run.is_main:
            _write_described(run.out / DESCRIPTIONS, rows)
    lm, tokenizer = load_lm(config.language_model)
    max_length = config.max_length or context_length(lm)
    encoder = PromptEncoder(tokenizer, classes, max_length)
    masking = np.random.default_rng([data_seed(config), 7])
    encoded = []  # (ids, which of them carry loss): the answer's tokens and the eos after it
    for r in rows:
        ids, labels = encoder.training_row(mask_class_words(r.description, classes, config.mask_rate, masking), r.label)
        encoded.append((ids, [t != -100 for t in labels]))
    figures["truncated_descriptions"] = encoder.truncated
    if encoder.truncated:
        warnings.warn(f"{encoder.truncated} of {len(rows)} descriptions were cut to fit the LM's {max_length} positions", stacklevel=2)
    model = lora_model(config, lm)
    seed, eos = config.run.seed, encoder.eos

    def micro_step(model: nn.Module, index: int) -> dict[str, torch.Tensor]:
        picked = batch_rows(seed, index, dataset_size=len(encoded), batch_size=config.run.batch_size, world=run.world, rank=run.rank)
        ids, mask, labels = (t.to(run.device) for t in loss_batch([encoded[i] for i in picked], eos))
        return {"loss": model(input_ids=ids, attention_mask=mask, labels=labels).loss}

    def export(model: Any, out: Path) -> Path:
        base = Path(config.language_model)
        checkpoint = VLLaVOConfig(
            language_model=str(base.resolve()) if base.is_dir() else config.language_model, classes=tuple(classes),
            describer=config.describer, predict=config.predict, max_length=config.max_length,
        )
        return save_checkpoint(out / MODEL_DIR, checkpoint, model, tokenizer)

    return Plan(model, micro_step, export, state=_Adapters, final_record=lambda _: dict(figures))


RECIPE = Recipe(
    name="vllavo", summary="VLLaVO: LoRA-tune an LM to classify images from their descriptions", title="VLLaVO",
    presets=PRESETS, preset_notes=PRESET_NOTES, build=build, check=_check,
    next_step=lambda model_dir: f"vlmkit classify IMAGE --labels CLASS,CLASS,... --model {model_dir}",
)


def vllavo_config(preset: str = "shapes", overrides: list[str] | None = None) -> VLLaVOTrainConfig:
    return RECIPE.config(preset, overrides)  # type: ignore[no-any-return]


def train_vllavo(
    config: VLLaVOTrainConfig,
    out_dir: str | Path,
    *,
    prepared: tuple[list[Described], list[str], dict[str, Any]] | None = None,
    resume: bool = False,
    progress: bool = False,
    stop_after: int | None = None,
) -> TrainResult:
    """Run the recipe (:func:`vlmkit_train.driver.train`); ``prepared`` gives the training rows and
    classes directly (a benchmark that describes its images once for many runs)."""
    # Given rows, the data spec is never read: only the settings are checked.
    recipe = RECIPE if prepared is None else dataclasses.replace(RECIPE, build=functools.partial(build, prepared=prepared), check=_check_settings)
    return train(recipe, config, out_dir, resume=resume, progress=progress, stop_after=stop_after)
