"""Data preparation every recipe shares: the built-in training examples a :class:`DataConfig`
names, the frozen image encoder's features (cached on disk once, or computed per batch), the texts
of a corpus and the tokenizers made from them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vlmkit.data.records import Example
from vlmkit.errors import InputError
from vlmkit.models.blip2_native import CAPTION_PROMPT, VQA_PROMPT

from .config import DataConfig, data_seed
from .driver import Run
from .vocab import qformer_tokenizer

__all__ = [
    "training_examples", "FrozenFeatures", "frozen_features", "text_tokenizer", "corpus_texts", "context_lead",
    "CAPTION_TEMPLATE", "QA_TEMPLATE", "SPECIAL_TOKEN",
]

#: GPT-2's one special token, used as bos, eos and pad by ``vlmkit train lm``'s LMs.
SPECIAL_TOKEN = "<|endoftext|>"
# The corpus texts are exactly what stage 2 (:mod:`vlmkit_train.stage2`, through
# :class:`vlmkit.models.blip2_native.NativeBlip2`) has the frozen LM produce: its prompt, a space,
# the target. Both prompts come from the model module so the recipes cannot drift apart.
#: "a photo of {caption}"
CAPTION_TEMPLATE = CAPTION_PROMPT + " {caption}"
#: "Question: {question} Answer: {answer}" (BLIP-2's OPT prompt, then the answer)
QA_TEMPLATE = VQA_PROMPT.format("{question}") + " {answer}"


def training_examples(data: DataConfig, seed: int, *, captioned: bool = True) -> list[Example]:
    """The first ``data.train_size`` training examples: of ``data.spec`` when set (only those with
    captions when ``captioned``, else those with question-answer pairs), else of ``data.name``:
    shapes scenes drawn with ``seed``, or easy-VQA's train split (only images with captions when
    ``captioned``)."""
    if data.spec:
        return _spec_examples(data, captioned)
    if data.name == "shapes":
        from vlmkit.data import make_split

        return make_split(data.train_size, seed, "train", data.image_size)
    from vlmkit.data import load_easy_vqa

    examples = [e for e in load_easy_vqa("train") if e.captions or not captioned]
    if not examples:
        raise InputError(f"{data.name}: no training examples")
    return examples[: data.train_size]


def _spec_examples(data: DataConfig, captioned: bool) -> list[Example]:
    from vlmkit.data import read_dataset

    need = "captions" if captioned else "question-answer pairs"
    examples = []
    for example in read_dataset(data.spec):
        if example.captions if captioned else example.qa:
            examples.append(example)
            if len(examples) == data.train_size:
                break
    if not examples:
        raise InputError(f"data.spec={data.spec}: no examples with {need}")
    return examples


def images_key(config: Any, count: int) -> str:
    """What names a run's image set in a feature cache, so that runs on the same images share one."""
    if config.data.spec:
        return f"{config.data.spec}:n={count}"
    return f"{config.data.name}:seed={data_seed(config)}:n={count}:size={config.data.image_size}"


@dataclass(frozen=True)
class FrozenFeatures:
    """A frozen encoder's features of a run's training images: ``rows(indices)`` is (B, P, E) float32."""

    encoder: Any
    rows: Callable[[np.ndarray], torch.Tensor]

    @property
    def width(self) -> int:
        return int(self.encoder.hidden_size)


def frozen_features(
    config: Any, examples: Sequence[Example], run: Run, *, encoder: Any = None, cache: bool = True, features_dir: str = ""
) -> FrozenFeatures:
    """The frozen image encoder's features of ``examples``. ``encoder`` defaults to the one the config
    names (``encoder``, ``encoder_layer``). With ``cache`` the main process computes them once into
    ``features_dir`` (default ``OUT/features``; runs on the same images may share one) and every
    process reads them memory-mapped; without it, each batch is encoded as it comes."""
    from vlmkit.feature_cache import FeatureCache
    from vlmkit.models.image_encoders import load_image_encoder

    if encoder is None:
        encoder = load_image_encoder(config.encoder, layer=config.encoder_layer)
    encoder = encoder.to(run.device)
    images = [e.image for e in examples]
    if not cache:
        from vlmkit.images import load_image

        return FrozenFeatures(encoder, lambda rows: encoder.encode([load_image(images[i]) for i in rows]).float().cpu())
    directory = Path(features_dir) if features_dir else run.out / "features"
    if run.is_main:
        FeatureCache.build(encoder, images, directory, progress=run.progress, images_key=images_key(config, len(images)))
    run.wait()
    opened = FeatureCache.open(directory, identity=encoder.identity)
    return FrozenFeatures(encoder, opened.batch)


def text_tokenizer(kind: str, examples: Sequence[Example], run: Run) -> Any:
    """The text tokenizer a config's ``tokenizer`` names: "minilm" (BERT's uncased vocabulary) or
    "corpus" (a WordPiece of every text of ``examples``, made once in ``OUT/tokenizer`` and read back
    by a resumed run)."""
    texts = corpus_texts(examples) if kind == "corpus" else []
    return qformer_tokenizer(kind, run.out / "tokenizer", texts, is_main=run.is_main, wait=run.wait, resume=run.resume)


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
