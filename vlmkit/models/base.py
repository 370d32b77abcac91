"""The task interface every loaded model offers, and the generic pieces the families share.

A model implements the tasks its kind lists in :mod:`vlmkit.models.kinds`; the others raise
:class:`~vlmkit.errors.UnsupportedTaskError` naming the kinds that can. Inputs are batches (lists);
a single image or string is accepted where one is meant and treated as a batch of one.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image

from ..errors import ImageError, InputError, UnsupportedTaskError
from ..images import ImageInput, iter_loaded
from .kinds import ModelKind, supported_by

__all__ = [
    "LabelScore",
    "MatchResult",
    "GenerationOptions",
    "DEFAULT_NEW_TOKENS",
    "decoding",
    "VisionLanguageModel",
    "PromptedTasks",
    "DEFAULT_TEMPLATES",
    "as_list",
    "pair_up",
]

DEFAULT_TEMPLATES: tuple[str, ...] = ("a photo of a {}.",)


@dataclass(frozen=True)
class LabelScore:
    label: str
    score: float


@dataclass(frozen=True)
class MatchResult:
    """Image-text match scores, one per pair. ``kind`` says what the number is: an ITM-head
    probability that the pair matches (``"itm"``) or the cosine of the two embeddings (``"cosine"``)."""

    scores: np.ndarray  # (N,)
    kind: Literal["itm", "cosine"]


#: max_new_tokens when the options leave it unset, by task.
DEFAULT_NEW_TOKENS: dict[str, int] = {"caption": 30, "ask": 10, "generate": 30, "chat": 256}


@dataclass(frozen=True)
class GenerationOptions:
    """How to decode text: one value that caption, ask, generate and chat take as ``options=``.

    A field left at ``None`` takes the task's default: ``max_new_tokens`` from
    :data:`DEFAULT_NEW_TOKENS`, and ``length_penalty`` the family's for answers (BLIP-2 and
    InstructBLIP use -1 with beam search, for short answers) and 1 otherwise. Sampling ignores
    ``num_beams``; ``length_penalty`` matters only to beam search.
    """

    max_new_tokens: int | None = None
    num_beams: int = 1
    do_sample: bool = False
    top_p: float = 1.0
    temperature: float = 1.0
    length_penalty: float | None = None

    def __post_init__(self) -> None:
        checks = (
            ("max_new_tokens", self.max_new_tokens, (int, type(None))),
            ("num_beams", self.num_beams, int),
            ("do_sample", self.do_sample, bool),
            ("top_p", self.top_p, (int, float)),
            ("temperature", self.temperature, (int, float)),
            ("length_penalty", self.length_penalty, (int, float, type(None))),
        )
        for name, value, kinds in checks:
            if not isinstance(value, kinds) or (isinstance(value, bool) and kinds is not bool):
                raise InputError(f"{name}: wrong type {type(value).__name__}")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.num_beams < 1:
            raise InputError(f"num_beams must be >= 1, got {self.num_beams}")
        if not 0.0 < self.top_p <= 1.0:
            raise InputError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.temperature <= 0.0:
            raise InputError(f"temperature must be > 0, got {self.temperature}")

    def for_task(self, task: str, length_penalty: float = 1.0) -> GenerationOptions:
        """These options with every unset field filled in for ``task`` (``length_penalty`` is the
        family's default for it)."""
        return replace(
            self,
            max_new_tokens=DEFAULT_NEW_TOKENS[task] if self.max_new_tokens is None else self.max_new_tokens,
            length_penalty=length_penalty if self.length_penalty is None else self.length_penalty,
        )

    def to_hf(self) -> dict[str, Any]:
        """Keyword arguments for transformers' ``generate`` (unset fields at their generic defaults)."""
        kwargs: dict[str, Any] = {"max_new_tokens": self.max_new_tokens or DEFAULT_NEW_TOKENS["generate"]}
        if self.do_sample:
            kwargs.update(do_sample=True, top_p=self.top_p, temperature=self.temperature, num_beams=1)
        else:
            kwargs.update(do_sample=False, num_beams=self.num_beams)
            if self.num_beams > 1:
                kwargs["length_penalty"] = 1.0 if self.length_penalty is None else self.length_penalty
        return kwargs


def decoding(options: GenerationOptions | None, task: str, length_penalty: float = 1.0) -> GenerationOptions:
    """The options a task runs with: the caller's (checked to be :class:`GenerationOptions`) or the
    defaults, completed for ``task``."""
    if options is None:
        options = GenerationOptions()
    elif not isinstance(options, GenerationOptions):
        raise InputError(f"{task}: options must be a vlmkit.GenerationOptions, got {type(options).__name__}")
    return options.for_task(task, length_penalty)


def as_list(value: Any, what: str) -> list[Any]:
    """Accept one item or a sequence of items; strings, paths, bytes and images count as one item."""
    if isinstance(value, (str, bytes, os.PathLike, Image.Image)) or (
        isinstance(value, np.ndarray) and value.ndim in (2, 3) and value.dtype != object
    ):
        return [value]
    if isinstance(value, Sequence) or isinstance(value, np.ndarray):
        items = list(value)
        if not items:
            raise InputError(f"{what}: got an empty list")
        return items
    raise InputError(f"{what}: expected one item or a list, got {type(value).__name__}")


def pair_up(images: list[Any], texts: list[str], what: str) -> tuple[list[Any], list[str]]:
    """Pair images with texts: equal lengths pair one to one; a single one on either side is repeated."""
    if len(images) == len(texts):
        return images, texts
    if len(images) == 1:
        return images * len(texts), texts
    if len(texts) == 1:
        return images, texts * len(images)
    raise InputError(f"{what}: {len(images)} images and {len(texts)} texts; give equal numbers or one of either")


def check_texts(texts: list[Any], what: str) -> list[str]:
    for text in texts:
        if not isinstance(text, str):
            raise InputError(f"{what}: expected strings, got {type(text).__name__}")
    return texts


class VisionLanguageModel:
    """A loaded model and the tasks it can do. Subclasses override the tasks of their kind."""

    #: Side length the model's image processor produces; JPEGs decode at reduced scale down to it.
    image_size: int | None = None

    def __init__(self, name: str, kind: ModelKind, device: torch.device, dtype: torch.dtype) -> None:
        self.name = name
        self.kind = kind
        self.device = device
        self.dtype = dtype
        self.max_pixels: int | None = None
        self.decode_workers = 2

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} {self.kind.label} on {self.device}>"

    @property
    def family(self) -> str:
        return self.kind.family

    @property
    def tasks(self) -> frozenset[str]:
        return self.kind.tasks

    def supports(self, task: str) -> bool:
        return task in self.kind.tasks

    def _unsupported(self, task: str) -> UnsupportedTaskError:
        return UnsupportedTaskError(task, self.name, self.kind.label, supported_by(task))

    def require(self, task: str) -> None:
        """Raise :class:`UnsupportedTaskError` (naming the kinds that can) unless the model can do ``task``."""
        if task not in self.kind.tasks:
            raise self._unsupported(task)

    def num_parameters(self) -> int:
        return 0

    # -- images -----------------------------------------------------------------------------

    def _load_batches(
        self,
        images: Sequence[ImageInput],
        batch_size: int,
        transform: Callable[[Image.Image], Any] | None = None,
    ) -> Iterator[list[Any]]:
        """Decode (and transform) images on worker threads, yielding lists of ``batch_size``."""
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        batch: list[Any] = []
        for _, item in iter_loaded(
            images,
            max_pixels=self.max_pixels,
            draft_size=self.image_size,
            transform=transform,
            workers=self.decode_workers,
            prefetch=max(2 * batch_size, 8),
        ):
            if isinstance(item, ImageError):
                raise item
            batch.append(item)
            if len(batch) == batch_size:
                yield batch
                batch = []
        if batch:
            yield batch

    def _load_all(self, images: Sequence[ImageInput]) -> list[Image.Image]:
        return [image for batch in self._load_batches(images, max(1, len(images))) for image in batch]

    # -- tasks --------------------------------------------------------------------------------

    def embed_images(self, images: Any, *, batch_size: int = 32) -> np.ndarray:
        """L2-normalised image embeddings, float32, shape (N, D)."""
        raise self._unsupported("embed")

    def embed_texts(self, texts: Any, *, batch_size: int = 64) -> np.ndarray:
        """L2-normalised text embeddings, float32, shape (N, D)."""
        raise self._unsupported("embed")

    def embed_images_with_tags(self, images: Any, *, batch_size: int = 32) -> tuple[np.ndarray, list[str] | None]:
        """Image embeddings and, for models that tag in the same pass (the built-in), their tags."""
        return self.embed_images(images, batch_size=batch_size), None

    def logit_scale(self) -> float:
        """Multiplier that turns cosine similarities into classification logits."""
        return 100.0

    def similarity(self, images: Any, texts: Any) -> np.ndarray:
        """Cosine similarity of every image with every text, shape (N_images, N_texts)."""
        self.require("similarity")
        return self.embed_images(images) @ self.embed_texts(texts).T

    def classify(
        self,
        images: Any,
        labels: Sequence[str],
        *,
        templates: Sequence[str] | None = None,
        top_k: int | None = None,
    ) -> list[list[LabelScore]]:
        """Zero-shot classification: each label is embedded through every template, the embeddings
        averaged (a prompt ensemble, as in CLIP), and scored by a softmax over the labels."""
        labels = list(labels) if not isinstance(labels, str) else labels
        probs = self.label_probabilities(images, self.label_embeddings(labels, templates))
        results = []
        for row in probs:
            order = np.argsort(-row, kind="stable")[: top_k or len(labels)]
            results.append([LabelScore(labels[i], float(row[i])) for i in order])
        return results

    def label_embeddings(self, labels: Sequence[str], templates: Sequence[str] | None = None) -> np.ndarray:
        """One L2-normalised text embedding per label, (N_labels, D): the mean over the prompt
        templates (the model's defaults when none are given). Compute once, score many images."""
        self.require("classify")
        if isinstance(labels, str):
            raise InputError("classify: labels must be a list of strings, not one string")
        labels = check_texts(list(labels), "labels")
        if not labels:
            raise InputError("classify: give at least one label")
        if len(set(labels)) != len(labels):
            raise InputError("classify: labels must be distinct")
        chosen = tuple(templates) if templates else self.default_templates()
        for template in chosen:
            if not isinstance(template, str) or "{}" not in template:
                raise InputError(f"classify: template {template!r} has no '{{}}' for the label")
        texts = [template.format(label) for label in labels for template in chosen]
        text_emb = self.embed_texts(texts).reshape(len(labels), len(chosen), -1).mean(axis=1)
        return text_emb / np.linalg.norm(text_emb, axis=1, keepdims=True)

    def label_probabilities(self, images: Any, label_emb: np.ndarray) -> np.ndarray:
        """Softmax over the labels of :meth:`label_embeddings`, (N_images, N_labels)."""
        self.require("classify")
        logits = self.logit_scale() * self._class_similarity(images, label_emb)
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        return probs / probs.sum(axis=1, keepdims=True)

    def _class_similarity(self, images: Any, text_emb: np.ndarray) -> np.ndarray:
        return self.embed_images(images) @ text_emb.T

    def default_templates(self) -> tuple[str, ...]:
        return DEFAULT_TEMPLATES

    def match(self, images: Any, texts: Any) -> MatchResult:
        """Score image-text pairs (one to one, or one image against many texts and vice versa)."""
        self.require("match")
        image_list, text_list = pair_up(as_list(images, "images"), check_texts(as_list(texts, "texts"), "texts"), "match")
        image_emb = self.embed_images(image_list)
        text_emb = self.embed_texts(text_list)
        return MatchResult(scores=np.sum(image_emb * text_emb, axis=1).astype(np.float32), kind="cosine")

    def caption(
        self, images: Any, prompt: str | None = None, *, options: GenerationOptions | None = None, batch_size: int = 8
    ) -> list[str]:
        """One caption per image; ``prompt`` (where the model takes one) starts the caption."""
        raise self._unsupported("caption")

    def ask(self, images: Any, questions: Any, *, options: GenerationOptions | None = None, batch_size: int = 8) -> list[str]:
        """Answer questions about images (paired one to one, or one image with many questions)."""
        raise self._unsupported("ask")

    def generate(self, images: Any, prompts: Any, *, options: GenerationOptions | None = None, batch_size: int = 8) -> list[str]:
        """Free-form generation from an image and a prompt used verbatim."""
        raise self._unsupported("generate")

    def chat(
        self, messages: list[dict[str, Any]], *, stream: bool = False, options: GenerationOptions | None = None
    ) -> str | Iterator[str]:
        """Reply to OpenAI-style messages (text and image parts); a token iterator when streaming."""
        raise self._unsupported("chat")

    def prompt_tokens(self, messages: list[dict[str, Any]]) -> int:
        """How many positions of the language model ``messages`` take as :meth:`chat` builds them,
        each image's tokens included (to check a conversation against the context length)."""
        raise self._unsupported("chat")


class PromptedTasks(VisionLanguageModel):
    """caption / ask / generate for every model that turns (image, prompt) pairs into text, the
    transformers-backed ones (BLIP-2, InstructBLIP, LLaVA) and vlmkit's own (BLIP-2, InstructBLIP,
    ClipCap, SimVLM). A family implements ``_generate``; the tasks differ only in their prompts:
    ``caption_prompt`` starts a caption, ``vqa_prompt`` wraps a question ("{}"), and
    ``vqa_length_penalty`` is the beam-search length penalty for answers."""

    caption_prompt = ""
    vqa_prompt = "{}"
    vqa_length_penalty = 1.0

    def _generate(self, images: list[Any], prompts: list[str], options: GenerationOptions, batch_size: int) -> list[str]:
        """Text for each (image, prompt) pair, ``options`` complete for the task."""
        raise NotImplementedError

    def caption(
        self, images: Any, prompt: str | None = None, *, options: GenerationOptions | None = None, batch_size: int = 8
    ) -> list[str]:
        self.require("caption")
        image_list = as_list(images, "images")
        return self._generate(image_list, [prompt or self.caption_prompt] * len(image_list), decoding(options, "caption"), batch_size)

    def ask(self, images: Any, questions: Any, *, options: GenerationOptions | None = None, batch_size: int = 8) -> list[str]:
        self.require("ask")
        image_list, question_list = pair_up(
            as_list(images, "images"), check_texts(as_list(questions, "questions"), "questions"), "ask"
        )
        prompts = [self.vqa_prompt.format(q) for q in question_list]
        return self._generate(image_list, prompts, decoding(options, "ask", self.vqa_length_penalty), batch_size)

    def generate(self, images: Any, prompts: Any, *, options: GenerationOptions | None = None, batch_size: int = 8) -> list[str]:
        self.require("generate")
        image_list, prompt_list = pair_up(
            as_list(images, "images"), check_texts(as_list(prompts, "prompts"), "prompts"), "generate"
        )
        return self._generate(image_list, prompt_list, decoding(options, "generate"), batch_size)
