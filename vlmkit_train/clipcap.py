"""``vlmkit train clipcap``: ClipCap (Mokady et al., 2021), a mapping network from one image
embedding to a prefix of a FROZEN language model, trained with the LM loss.

Every training image is embedded once by the frozen embedder (EfficientNet-Lite0's pooled feature
offline, or any vlmkit model's ``embed_images``) and the vectors are cached on disk in safetensors
(``embeddings/``, shared between runs through ``embeddings_dir``). The mapper then learns to make
the LM write each image's captions after "a photo of" and, for a ``qa_fraction`` of the samples,
answer one of its questions after "Question: {} Answer:". The LM is a directory from ``vlmkit train
lm`` (or any hub causal LM); ``train_lm=true`` fine-tunes it too (the paper's MLP variant).

Outputs in ``out_dir``: ``model/`` (loads with ``vlmkit.load``: caption / ask / generate),
``metrics.jsonl``, ``loss.png`` (with matplotlib), ``state/`` for exact resume, ``embeddings/`` and
``config.json``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from vlmkit.errors import InputError
from vlmkit.models.clipcap import EFFICIENTNET_EMBEDDER, ClipCap, ClipCapConfig, ImageEmbedder, load_embedder

from .config import check_at_least, preset_config
from .loop import StepLoop, batch_rows, open_metrics, plot_losses, run_steps, start_run
from .stage1 import _examples
from .state import load_training_state

__all__ = ["ClipCapTrainConfig", "PRESETS", "ClipCapResult", "clipcap_config", "train_clipcap", "embedding_cache", "images_key"]


@dataclass(frozen=True)
class ClipCapTrainConfig:
    data: Literal["shapes", "easy-vqa"] = "shapes"
    train_size: int = 2000
    image_size: int = 64
    seed: int = 0
    #: The frozen LM: a directory (e.g. from ``vlmkit train lm``) or a hub id. Required.
    language_model: str = ""
    #: "efficientnet-lite0", or a vlmkit model name / directory with ``embed_images`` (a CLIP checkpoint).
    embedder: str = EFFICIENTNET_EMBEDDER
    # The model (see vlmkit.models.clipcap.ClipCapConfig).
    prefix_length: int = 10
    mapper: Literal["mlp", "transformer"] = "transformer"
    mlp_hidden: int = 0
    clip_length: int = 10
    mapper_layers: int = 8
    mapper_heads: int = 8
    mapper_width: int = 0
    #: Fine-tune the LM with the mapper (the paper's MLP variant); the default keeps it frozen.
    train_lm: bool = False
    #: Share of training samples that are question-answer pairs (the rest are captions).
    qa_fraction: float = 0.5
    batch_size: int = 32
    grad_accum: int = 1
    lr: float = 2e-5
    weight_decay: float = 0.01
    warmup_steps: int = 50
    max_steps: int = 1000
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    #: Where the embedding cache lives; "" is ``out/embeddings``. Runs on the same images and
    #: embedder can share one (it is rebuilt when either differs).
    embeddings_dir: str = ""
    save_every: int = 0
    log_every: int = 10

    def __post_init__(self) -> None:
        check_at_least(self, ("train_size", "batch_size", "grad_accum", "max_steps", "log_every"))
        if not 0.0 <= self.qa_fraction <= 1.0:
            raise InputError(f"qa_fraction must be in [0, 1], got {self.qa_fraction}")
        if self.lr <= 0:
            raise InputError(f"lr must be positive, got {self.lr}")
        if self.warmup_steps < 0 or self.save_every < 0:
            raise InputError("warmup_steps and save_every must not be negative")
        self.model_config(1)  # the model's own checks (sizes, mapper)

    def model_config(self, embed_dim: int) -> ClipCapConfig:
        fields = {f.name for f in dataclasses.fields(ClipCapConfig)} & {f.name for f in dataclasses.fields(self)}
        return ClipCapConfig(embed_dim=embed_dim, **{name: getattr(self, name) for name in fields})


PRESETS: dict[str, ClipCapTrainConfig] = {
    # The offline recipe (see bench/clipcap_offline.py): a 4-layer transformer mapper.
    "shapes": ClipCapTrainConfig(mapper_layers=4, lr=1e-3, max_steps=1000),
    # A few seconds on a laptop CPU: for tests and for trying the pipeline.
    "tiny": ClipCapTrainConfig(
        train_size=16, batch_size=4, max_steps=6, prefix_length=4, clip_length=4, mapper_layers=1, mapper_heads=4,
        mapper_width=32, warmup_steps=2, log_every=1, lr=1e-3,
    ),
}


def clipcap_config(preset: str = "shapes", overrides: list[str] | None = None) -> ClipCapTrainConfig:
    return preset_config(PRESETS, preset, overrides)


@dataclass(frozen=True)
class ClipCapResult:
    out_dir: Path
    steps: int
    final_loss: float


_FILE = "embeddings.safetensors"


def embedding_cache(embedder: ImageEmbedder, images: list[Any], directory: Path, key: str, *, progress: bool = False) -> torch.Tensor:
    """(N, E) float32: the embeddings of ``images``, computed once and kept in ``directory`` (with the
    embedder's identity and ``key``, the image set's name, so a cache of other images is rebuilt)."""
    path = directory / _FILE
    if path.is_file():
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("identity") == embedder.identity and meta.get("images") == key:
                return f.get_tensor("embeddings")
    from tqdm import tqdm

    chunks = []
    with tqdm(total=len(images), desc="image embeddings", unit="img", disable=not progress) as bar:
        for start in range(0, len(images), 64):
            chunks.append(embedder.embed(images[start : start + 64]))
            bar.update(len(chunks[-1]))
    vectors = torch.cat(chunks).contiguous()  # (N, E)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / (_FILE + ".tmp")
    save_file({"embeddings": vectors}, str(tmp), metadata={"identity": embedder.identity, "images": key})
    tmp.replace(path)
    return vectors


def images_key(config: ClipCapTrainConfig, count: int) -> str:
    """The name of a run's training image set in its embedding cache."""
    return f"{config.data}:seed={config.seed}:n={count}:size={config.image_size}"


def _sample(example: Any, rng: np.random.Generator, qa_fraction: float, config: ClipCapConfig) -> tuple[str, str]:
    """One (prompt, target) pair: an answer to one of the image's questions, or one of its captions."""
    if example.qa and (not example.captions or rng.random() < qa_fraction):
        question, answer = example.qa[rng.integers(len(example.qa))]
        return config.vqa_prompt.format(question), answer
    return config.caption_prompt, example.captions[rng.integers(len(example.captions))]


def _embedder_name(name: str) -> str:
    """Directories are recorded absolute, so the checkpoint finds its embedder from anywhere."""
    path = Path(name).expanduser()
    return str(path.resolve()) if name != EFFICIENTNET_EMBEDDER and path.is_dir() else name


def train_clipcap(
    config: ClipCapTrainConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = False,
    stop_after: int | None = None,
) -> ClipCapResult:
    """Train the mapper (and, with ``train_lm``, the LM); ``out_dir/model`` is the result."""
    from transformers import get_cosine_schedule_with_warmup

    if not config.language_model:
        raise InputError("language_model is required: a directory (see `vlmkit train lm`) or a hub id")
    out, accelerator = start_run(config, out_dir, resume)

    examples = _examples(config)
    embedder_name = _embedder_name(config.embedder)
    cache_dir = Path(config.embeddings_dir) if config.embeddings_dir else out / "embeddings"
    key = images_key(config, len(examples))
    if accelerator.is_main_process:
        embedding_cache(load_embedder(embedder_name), [e.image for e in examples], cache_dir, key, progress=progress)
    accelerator.wait_for_everyone()
    with safe_open(str(cache_dir / _FILE), framework="pt") as f:
        embeddings = f.get_tensor("embeddings")  # (N, E)

    torch.manual_seed(config.seed)
    model_config = dataclasses.replace(config.model_config(int(embeddings.shape[1])), embedder=embedder_name)
    model = ClipCap.from_parts(model_config, lm_path=config.language_model, train_lm=config.train_lm)
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=config.lr
    )
    scheduler = get_cosine_schedule_with_warmup(optimizer, config.warmup_steps, config.max_steps)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)

    def state_model() -> torch.nn.Module:
        return _TrainableView(accelerator.unwrap_model(model))

    start = 0
    if resume:
        start = load_training_state(out / "state", model=state_model(), optimizer=optimizer, scheduler=scheduler)
    world, rank = accelerator.num_processes, accelerator.process_index
    metrics_path, end = open_metrics(out, accelerator, resume=resume, max_steps=config.max_steps, stop_after=stop_after)

    def micro_step(index: int) -> dict[str, torch.Tensor]:
        rows = batch_rows(config.seed, index, dataset_size=len(examples), batch_size=config.batch_size, world=world, rank=rank)
        rng = np.random.default_rng([config.seed, index, rank])
        pairs = [_sample(examples[i], rng, config.qa_fraction, model_config) for i in rows]
        batch = embeddings[torch.from_numpy(rows)].to(accelerator.device)  # (B, E)
        return {"loss": model(batch, [p for p, _ in pairs], [t for _, t in pairs])}

    losses = run_steps(
        StepLoop(config.max_steps, config.grad_accum, config.log_every, config.save_every, "clipcap", loss_key="loss"),
        accelerator=accelerator, model=model, optimizer=optimizer, scheduler=scheduler, state_model=state_model,
        micro_step=micro_step, out=out, start=start, end=end, progress=progress,
    )
    if accelerator.is_main_process and end == config.max_steps:
        accelerator.unwrap_model(model).save_pretrained(out / "model")
        plot_losses(metrics_path, out / "loss.png", ("loss",), f"ClipCap ({config.mapper} mapper)")
    return ClipCapResult(out_dir=out, steps=end, final_loss=losses.get("loss", float("nan")))


class _TrainableView(torch.nn.Module):
    """What a resumable state stores: the mapper, and the LM's body when it learns too (its head is
    tied to the token embeddings, and safetensors refuses one tensor under two names)."""

    def __init__(self, model: ClipCap) -> None:
        super().__init__()
        self.mapper = model.mapper
        if model.train_lm:
            self.lm = model.lm.base_model
            if not getattr(model.lm.config, "tie_word_embeddings", False):
                self.lm_head = model.lm.get_output_embeddings()
