"""``vlmkit train clipcap``: ClipCap (Mokady et al., 2021), a mapping network from one image
embedding to a prefix of a FROZEN language model, trained with the LM loss.

Every training image is embedded once by the frozen embedder (EfficientNet-Lite0's pooled feature
offline, or any vlmkit model's ``embed_images``) and the vectors are cached on disk in safetensors
(``embeddings/``, shared between runs through ``embeddings_dir``). The mapper then learns to make
the LM write each image's captions after "a photo of" and, for a ``qa_fraction`` of the samples,
answer one of its questions after "Question: {} Answer:". The LM is a directory from ``vlmkit train
lm`` (or any hub causal LM); ``train_lm=true`` fine-tunes it too (the paper's MLP variant).

The run goes through the shared driver (:func:`vlmkit_train.driver.train`). Outputs in ``out_dir``:
``model/`` (loads with ``vlmkit.load``: caption / ask / generate),
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

import vlmkit
from vlmkit.errors import InputError
from vlmkit.models.clipcap import EFFICIENTNET_EMBEDDER, ClipCap, ClipCapConfig, ImageEmbedder, load_embedder

from .config import DataConfig, RunConfig, data_seed
from .data import images_key, training_examples
from .driver import MODEL_DIR, Plan, Recipe, Run
from .loop import batch_rows

__all__ = ["ClipCapTrainConfig", "PRESETS", "RECIPE", "clipcap_config", "train_clipcap", "embedding_cache"]

#: The recipe's own optimisation defaults: lr 2e-5, weight decay 0.01, 1,000 steps.
RUN = RunConfig(lr=2e-5, weight_decay=0.01, max_steps=1000)


@dataclass(frozen=True)
class ClipCapTrainConfig:
    run: RunConfig = RUN
    data: DataConfig = DataConfig()
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
    #: Where the embedding cache lives; "" is ``out/embeddings``. Runs on the same images and
    #: embedder can share one (it is rebuilt when either differs).
    embeddings_dir: str = ""

    def __post_init__(self) -> None:
        if not 0.0 <= self.qa_fraction <= 1.0:
            raise InputError(f"qa_fraction must be in [0, 1], got {self.qa_fraction}")
        self.model_config(1)  # the model's own checks (sizes, mapper)

    def model_config(self, embed_dim: int) -> ClipCapConfig:
        fields = {f.name for f in dataclasses.fields(ClipCapConfig)} & {f.name for f in dataclasses.fields(self)}
        return ClipCapConfig(embed_dim=embed_dim, **{name: getattr(self, name) for name in fields})


PRESETS: dict[str, ClipCapTrainConfig] = {
    # The offline recipe (see bench/clipcap_offline.py): a 4-layer transformer mapper.
    "shapes": ClipCapTrainConfig(run=dataclasses.replace(RUN, lr=1e-3), mapper_layers=4),
    "tiny": ClipCapTrainConfig(
        run=dataclasses.replace(RUN, batch_size=4, max_steps=6, warmup_steps=2, log_every=1, lr=1e-3),
        data=DataConfig(train_size=16),
        prefix_length=4, clip_length=4, mapper_layers=1, mapper_heads=4, mapper_width=32,
    ),
}
#: What each preset is for and roughly what it costs (``vlmkit train --help``).
PRESET_NOTES: dict[str, str] = {
    "shapes": "the offline recipe: a 4-layer transformer mapper into the frozen LM on 2,000 shapes scenes, 1,000 steps of batch 32: 0.17 s a step, about 3 min (2 min with run.mixed_precision=bf16) (bench/recipe_costs.py on a 2-core CPU)",
    "tiny": "smoke test: 6 steps of batch 4 on 16 scenes (a 1-layer mapper), seconds; needs --set language_model=DIR",
}


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


def _check(config: ClipCapTrainConfig) -> None:
    if not config.language_model:
        raise InputError("language_model is required: a directory (see `vlmkit train lm`) or a hub id")


def build(config: ClipCapTrainConfig, run: Run) -> Plan:
    """The mapper (and, with ``train_lm``, the LM) learning the LM loss from cached image embeddings."""
    seed = config.run.seed
    examples = training_examples(config.data, data_seed(config))
    embedder_name = _embedder_name(config.embedder)
    cache_dir = Path(config.embeddings_dir) if config.embeddings_dir else run.out / "embeddings"
    if run.is_main:
        embedding_cache(load_embedder(embedder_name, load=vlmkit.load), [e.image for e in examples], cache_dir, images_key(config, len(examples)),
                        progress=run.progress)
    run.wait()
    with safe_open(str(cache_dir / _FILE), framework="pt") as f:
        embeddings = f.get_tensor("embeddings")  # (N, E)

    # Seeded again: whatever loading the embedder drew, the mapper starts from the same weights.
    torch.manual_seed(seed)
    model_config = dataclasses.replace(config.model_config(int(embeddings.shape[1])), embedder=embedder_name)
    model = ClipCap.from_parts(model_config, lm_path=config.language_model, train_lm=config.train_lm)

    def micro_step(model: torch.nn.Module, index: int) -> dict[str, torch.Tensor]:
        rows = batch_rows(seed, index, dataset_size=len(examples), batch_size=config.run.batch_size, world=run.world, rank=run.rank)
        rng = np.random.default_rng([seed, index, run.rank])
        pairs = [_sample(examples[i], rng, config.qa_fraction, model_config) for i in rows]
        batch = embeddings[torch.from_numpy(rows)].to(run.device)  # (B, E)
        return {"loss": model(batch, [p for p, _ in pairs], [t for _, t in pairs])}

    def export(model: torch.nn.Module, out: Path) -> Path:
        assert isinstance(model, ClipCap)
        model.save_pretrained(out / MODEL_DIR)
        return out / MODEL_DIR

    return Plan(model, micro_step, export, state=_TrainableView)


class _TrainableView(torch.nn.Module):
    """What a resumable state stores: the mapper, and the LM's body when it learns too (its head is
    tied to the token embeddings, and safetensors refuses one tensor under two names)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        assert isinstance(model, ClipCap)
        self.mapper = model.mapper
        if model.train_lm:
            self.lm = model.lm.base_model
            if not getattr(model.lm.config, "tie_word_embeddings", False):
                self.lm_head = model.lm.get_output_embeddings()


RECIPE = Recipe(
    name="clipcap", summary="ClipCap: image embedding -> frozen LM prefix", title="ClipCap", presets=PRESETS,
    preset_notes=PRESET_NOTES, build=build, next_step=lambda model_dir: f"vlmkit caption IMAGE --model {model_dir}",
    check=_check,
)


clipcap_config = RECIPE.config  # (preset="shapes", overrides) -> the checked config
train_clipcap = RECIPE.train  # (config, out_dir, *, resume, progress, stop_after) -> TrainResult
