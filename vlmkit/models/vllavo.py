"""VLLaVO: cross-domain image classification through words (Chen et al., 2024, "VLLaVO: Mitigating
Visual Gap through LLMs", arXiv 2401.03253).

An image's look shifts between domains (photos, sketches, paintings); what it shows, said in words,
shifts less. VLLaVO therefore classifies in three steps:

1. **Describe** the image (:class:`Describer`): the ``top_k`` tags and the ``top_k`` attributes of two
   word lists that an embedding model (CLIP, the built-in, any vlmkit dual encoder) ranks highest by
   image-text cosine, each at least ``min_similarity``, and captions from a captioning model: one by
   beam search and ``sampled_captions`` by nucleus sampling. :func:`format_description` writes them
   as the paper does, one "Tags:", "Attributes:" and "Captions:" section a line.
2. **Ask** a language model with one fixed question (:data:`TEMPLATE`), the options being the class
   names, and take its answer: the class whose answer tokens are most likely
   (:func:`class_log_likelihoods`, never unparseable), or, as the paper's code does, a generated
   answer snapped to the nearest class name by edit distance (:func:`generate_answers`,
   :func:`snap_to_class`).
3. **Fine-tune** that LM with LoRA on source-domain descriptions, the loss on the answer tokens only
   (``vlmkit train vllavo``); for unsupervised adaptation, the target domain's images join with
   pseudo-labels from the source-trained model.

A trained checkpoint (``model_type`` ``vlmkit-vllavo``) holds the LoRA adapter (peft's format), the
tokenizer and a ``config.json`` naming the base LM and the describer, so ``vlmkit.load`` rebuilds
the same describer and ``classify`` makes the same descriptions it was trained on.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from ..errors import InputError, ModelNotFoundError, VlmkitError
from .base import GenerationOptions, LabelScore, VisionLanguageModel, as_list, check_texts
from .checkpoint import load_tokenizer, read_config, write_config
from .kinds import KINDS, supported_by

__all__ = [
    "TEMPLATE",
    "MASK_WORD",
    "MODEL_TYPE",
    "DescriberConfig",
    "Description",
    "Describer",
    "VLLaVOConfig",
    "VLLaVO",
    "load_vocabulary",
    "format_description",
    "mask_class_words",
    "check_classes",
    "question",
    "PromptEncoder",
    "class_log_likelihoods",
    "generate_answers",
    "snap_to_class",
    "edit_distance",
    "context_length",
    "save_checkpoint",
    "load_lm",
    "load_native",
]

#: The question put to the LM; ``{description}`` and ``{options}`` (the class names, comma-separated)
#: are filled in, and the answer follows after one space.
TEMPLATE = (
    "Give the information about an image: {description} According to the information, choose the most similar "
    "category from the given options: {options}. ### Answer:"
)
#: What a masked class word becomes (``mask_class_words``), so the label does not leak into the text.
MASK_WORD = "object"
MODEL_TYPE = "vlmkit-vllavo"
_HEAD, _TAIL = TEMPLATE.split(" {description}")  # the description is tokenised apart, so it alone is cut


# -- describing ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DescriberConfig:
    """How images become descriptions. ``tagger`` and ``captioner`` are any names ``vlmkit.load``
    takes (the built-in ``default``, a hub id, a checkpoint directory)."""

    tagger: str = "default"  # embeds images and texts: ranks the tags and attributes
    captioner: str = "default"  # writes the captions
    #: A shipped word list (``tags`` or ``attributes``, in ``vlmkit/terms``) or a text file, one entry a line.
    tags: str = "tags"
    attributes: str = "attributes"
    top_k: int = 5
    min_similarity: float = 0.2  # image-text cosine a tag or attribute needs (the paper's 0.2)
    num_beams: int = 3  # the one beam-search caption
    sampled_captions: int = 3  # nucleus-sampled captions besides it (duplicates are dropped)
    top_p: float = 0.9
    max_caption_tokens: int = 30
    seed: int = 0  # the sampled captions' draws: the same images get the same descriptions

    def __post_init__(self) -> None:
        if self.top_k < 0 or self.sampled_captions < 0 or self.num_beams < 1 or self.max_caption_tokens < 1:
            raise InputError("describer: top_k and sampled_captions must be >= 0, num_beams and max_caption_tokens >= 1")
        if not -1.0 <= self.min_similarity <= 1.0:
            raise InputError(f"describer: min_similarity is a cosine in [-1, 1], got {self.min_similarity}")
        if not 0.0 < self.top_p <= 1.0:
            raise InputError(f"describer: top_p must be in (0, 1], got {self.top_p}")


def load_vocabulary(name: str) -> tuple[str, ...]:
    """A word list: a shipped one by name (``tags``, ``attributes``) or a text file, one entry a line
    (blank lines and ``#`` lines skipped, duplicates dropped)."""
    from importlib.resources import files

    shipped = files("vlmkit") / "terms" / f"{name}.txt"
    if "/" not in name and os.sep not in name and shipped.is_file():
        text = shipped.read_text(encoding="utf-8")
    else:
        try:
            text = Path(name).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"word list {name!r}: not a shipped list (tags, attributes) nor a readable text file ({exc})") from None
    entries = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not entries:
        raise InputError(f"word list {name!r} is empty")
    return tuple(dict.fromkeys(entries))


@dataclass(frozen=True)
class Description:
    """What the describer found in one image, each part best first."""

    tags: tuple[str, ...]
    attributes: tuple[str, ...]
    captions: tuple[str, ...]

    @property
    def text(self) -> str:
        return format_description(self.tags, self.attributes, self.captions)


def format_description(tags: Sequence[str], attributes: Sequence[str], captions: Sequence[str]) -> str:
    """The paper's layout, one section a line; an empty section reads "none"::

        Tags: star, starfish.
        Attributes: yellow, shaded.
        Captions: a photo of a starfish. a yellow star on a table.
    """

    def listed(items: Sequence[str]) -> str:
        return ", ".join(items) if items else "none"

    sentences = [c.strip().rstrip(".") for c in captions if c.strip().rstrip(".")]
    return f"Tags: {listed(tags)}.\nAttributes: {listed(attributes)}.\nCaptions: {'. '.join(sentences) or 'none'}."


class Describer:
    """Turns images into :class:`Description` s with a tagger (an embedding model) and a captioner."""

    def __init__(self, config: DescriberConfig, tagger: VisionLanguageModel, captioner: VisionLanguageModel) -> None:
        if not tagger.supports("embed"):
            raise InputError(
                f"describer: the tagger {tagger.name!r} ({tagger.kind.label}) cannot embed images and texts, which tags and "
                f"attributes need; models that can: {'; '.join(supported_by('embed'))}"
            )
        if not captioner.supports("caption"):
            raise InputError(
                f"describer: the captioner {captioner.name!r} ({captioner.kind.label}) cannot caption; models that can: "
                f"{'; '.join(supported_by('caption'))}"
            )
        self.config = config
        self.tagger = tagger
        self.captioner = captioner
        self.vocabularies = {"tags": load_vocabulary(config.tags), "attributes": load_vocabulary(config.attributes)}
        self._embeddings: dict[str, np.ndarray] = {}

    @classmethod
    def from_config(cls, config: DescriberConfig, *, load: Any, device: str | torch.device = "cpu") -> Describer:
        """Load the config's tagger and captioner with ``load`` (``vlmkit.load``; one model when
        they are the same name)."""
        tagger = load(config.tagger, device=device)
        captioner = tagger if config.captioner == config.tagger else load(config.captioner, device=device)
        return cls(config, tagger, captioner)

    def _ranked(self, image_emb: np.ndarray, vocabulary: str) -> list[tuple[str, ...]]:
        """Per image, the ``top_k`` entries of a vocabulary by cosine, each at least ``min_similarity``."""
        words = self.vocabularies[vocabulary]
        if vocabulary not in self._embeddings:  # (V, D), the tagger's own prompt templates averaged
            self._embeddings[vocabulary] = self.tagger.label_embeddings(list(words))
        cosines = image_emb @ self._embeddings[vocabulary].T  # (N, V)
        picked = []
        for row in cosines:
            order = np.argsort(-row, kind="stable")[: self.config.top_k]
            picked.append(tuple(words[i] for i in order if row[i] >= self.config.min_similarity))
        return picked

    def _captions(self, images: list[Any], batch_size: int) -> list[tuple[str, ...]]:
        c = self.config
        beam = GenerationOptions(max_new_tokens=c.max_caption_tokens, num_beams=c.num_beams)
        captions = [[text] for text in self.captioner.caption(images, options=beam, batch_size=batch_size)]
        if c.sampled_captions:
            nucleus = GenerationOptions(max_new_tokens=c.max_caption_tokens, do_sample=True, top_p=c.top_p)
            with torch.random.fork_rng(devices=[]):  # seeded draws that leave the caller's generator alone
                torch.manual_seed(c.seed)
                for _ in range(c.sampled_captions):
                    for row, text in zip(captions, self.captioner.caption(images, options=nucleus, batch_size=batch_size), strict=True):
                        row.append(text)
        return [tuple(dict.fromkeys(t.strip() for t in row if t.strip())) for row in captions]

    def describe(self, images: Any, *, batch_size: int = 32) -> list[Description]:
        """One :class:`Description` per image (paths, bytes or PIL images)."""
        image_list = as_list(images, "images")
        image_emb = self.tagger.embed_images(image_list, batch_size=batch_size)  # (N, D)
        tags, attributes = self._ranked(image_emb, "tags"), self._ranked(image_emb, "attributes")
        captions = self._captions(image_list, batch_size)
        return [Description(*parts) for parts in zip(tags, attributes, captions, strict=True)]


# -- asking ----------------------------------------------------------------------------------------


def check_classes(classes: Sequence[str]) -> list[str]:
    """The class names as a list: at least two, distinct, non-empty strings."""
    if isinstance(classes, str):
        raise InputError("classes must be a list of names, not one string")
    names = check_texts(list(classes), "classes")
    if len(names) < 2:
        raise InputError(f"VLLaVO chooses among options: give at least two classes, got {len(names)}")
    if any(not n.strip() for n in names):
        raise InputError("classes: a class name is empty")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise InputError(f"classes: {', '.join(repeated)} given more than once")
    return names


def question(description: str, classes: Sequence[str]) -> str:
    """The whole question for one image (:data:`TEMPLATE` filled in), as text."""
    return TEMPLATE.format(description=description, options=", ".join(classes))


def mask_class_words(description: str, classes: Sequence[str], rate: float, rng: np.random.Generator) -> str:
    """``description`` with each whole-word mention of a class name (or its plural) replaced by
    :data:`MASK_WORD` with probability ``rate``, so that training cannot read the answer off the text."""
    if rate <= 0.0:
        return description
    names = sorted(classes, key=len, reverse=True)  # "ring shape" before "ring"
    pattern = re.compile(r"\b(?:" + "|".join(re.escape(n) for n in names) + r")(?:e?s)?\b", re.IGNORECASE)
    return pattern.sub(lambda m: MASK_WORD if rng.random() < rate else m.group(0), description)


def context_length(lm: Any) -> int | None:
    """The LM's positions (``n_positions`` or ``max_position_embeddings``), None when unbounded."""
    config = lm.config
    value = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)
    return int(value) if value else None


class PromptEncoder:
    """Token ids of questions and answers for one tokenizer, class list and context length.

    The question is tokenised in three pieces (the template's head, the description, the tail with
    the options) so that only the description is ever cut: when a question and its longest answer
    would not fit in ``max_length`` positions, the description loses its last tokens and
    :attr:`truncated` counts it. Training and prediction use the same pieces, so the ids a model is
    trained on are the ids it is asked with."""

    def __init__(self, tokenizer: Any, classes: Sequence[str], max_length: int | None) -> None:
        self.tokenizer = tokenizer
        self.classes = check_classes(classes)
        self.max_length = max_length
        self.eos = tokenizer.eos_token_id
        if self.eos is None:
            raise InputError("the language model's tokenizer has no end-of-sequence token to close an answer with")
        self.lead = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        self.head = self._ids(_HEAD)
        self.tail = self._ids(_TAIL.format(options=", ".join(self.classes)))
        self.answers = [self._ids(" " + c) for c in self.classes]  # answer tokens, eos not included
        self.truncated = 0
        longest = max(len(a) for a in self.answers) + 1
        fixed = len(self.lead) + len(self.head) + len(self.tail) + longest
        if max_length is not None and fixed >= max_length:
            raise InputError(
                f"the question with {len(self.classes)} options and its longest answer take {fixed} tokens before any "
                f"description; the language model has {max_length} positions"
            )

    def _ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])  # long ones are cut below

    def prompt(self, description: str) -> list[int]:
        """The question's ids (bos first when the tokenizer has one), the description cut to fit."""
        body = self._ids(" " + description)
        if self.max_length is not None:
            room = self.max_length - (len(self.lead) + len(self.head) + len(self.tail) + max(len(a) for a in self.answers) + 1)
            if len(body) > room:
                body = body[:room]
                self.truncated += 1
        return [*self.lead, *self.head, *body, *self.tail]

    def training_row(self, description: str, label: str) -> tuple[list[int], list[int]]:
        """(ids, labels) of one question and its answer: labels are -100 except on the answer's
        tokens and the eos after it (the loss is on the answer only)."""
        if label not in self.classes:
            raise InputError(f"label {label!r} is not one of the classes ({', '.join(self.classes)})")
        prompt, answer = self.prompt(description), [*self.answers[self.classes.index(label)], self.eos]
        return [*prompt, *answer], [-100] * len(prompt) + answer


def _by_length(prompts: Sequence[Sequence[int]], batch_size: int) -> list[list[int]]:
    """Indices of ``prompts`` in batches of one length each: nothing is padded, so each prompt's
    result is the one it gets alone."""
    by_length: dict[int, list[int]] = {}
    for index, row in enumerate(prompts):
        by_length.setdefault(len(row), []).append(index)
    return [indices[i : i + batch_size] for indices in by_length.values() for i in range(0, len(indices), batch_size)]


@torch.no_grad()
def class_log_likelihoods(lm: Any, encoder: PromptEncoder, prompts: Sequence[Sequence[int]], *, batch_size: int = 16) -> np.ndarray:
    """(N, C): the log-probability the LM gives each class's answer tokens and the eos after them,
    after each prompt. The answer of highest likelihood is the prediction; a softmax over a row is
    the model's probability of each option. Each prompt is encoded once; its cache is repeated for
    the C answers, which are scored in one more pass."""
    device = next(lm.parameters()).device
    answers = [[*a, encoder.eos] for a in encoder.answers]
    n_classes, width = len(answers), max(len(a) for a in answers)
    padded = torch.tensor([a + [encoder.eos] * (width - len(a)) for a in answers], device=device)  # (C, A)
    counted = torch.arange(width - 1, device=device) < torch.tensor([len(a) - 1 for a in answers], device=device)[:, None]  # (C, A-1)
    scores = np.zeros((len(prompts), n_classes), dtype=np.float64)
    for chunk in _by_length(prompts, batch_size):
        ids = torch.tensor([list(prompts[i]) for i in chunk], device=device)  # (b, T)
        out = lm(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True)
        first = torch.log_softmax(out.logits[:, -1].float(), dim=-1)  # (b, V): the answers' first tokens
        name = "cache" if "cache" in out else "past_key_values"  # transformers 5 renamed it
        cache = out[name]
        cache.batch_repeat_interleave(n_classes)  # (b * C) rows, each prompt's C in a row
        follow = padded.repeat(len(chunk), 1)  # (b * C, A)
        mask = torch.ones((len(chunk) * n_classes, ids.shape[1] + width), dtype=torch.long, device=device)
        rest = torch.log_softmax(lm(input_ids=follow, attention_mask=mask, **{name: cache}).logits.float(), dim=-1)
        b = len(chunk)
        later = rest[:, :-1].gather(-1, follow[:, 1:, None])[..., 0]  # (b * C, A-1): each next answer token
        later = (later * counted.repeat(b, 1)).sum(dim=1).view(b, n_classes)
        scores[chunk] = (first.gather(1, padded[:, 0].expand(b, n_classes)) + later).cpu().numpy()
    return scores


@torch.no_grad()
def generate_answers(lm: Any, encoder: PromptEncoder, prompts: Sequence[Sequence[int]], *, batch_size: int = 8) -> list[str]:
    """The LM's greedy answer to each prompt, as text (up to the longest answer's tokens and two
    more; cut at the first line break). Prompts of one length are batched together, so nothing is
    padded and each answer is the one the LM gives the prompt alone."""
    device = next(lm.parameters()).device
    new_tokens = max(len(a) for a in encoder.answers) + 2
    answers = [""] * len(prompts)
    for chunk in _by_length(prompts, batch_size):
        ids = torch.tensor([list(prompts[i]) for i in chunk], device=device)  # (b, T)
        out = lm.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, do_sample=False,
            pad_token_id=encoder.eos, eos_token_id=encoder.eos,
        )
        for i, text in zip(chunk, encoder.tokenizer.batch_decode(out[:, ids.shape[1] :], skip_special_tokens=True), strict=True):
            answers[i] = text.strip().split("\n")[0].strip()
    return answers


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance: the fewest single-character insertions, deletions and substitutions."""
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def snap_to_class(answer: str, classes: Sequence[str]) -> str:
    """The class name nearest ``answer`` by edit distance, ignoring case (the first on a tie)."""
    text = answer.strip().lower()
    return min(classes, key=lambda c: edit_distance(text, c.lower()))


# -- the trained classifier ------------------------------------------------------------------------


@dataclass(frozen=True)
class VLLaVOConfig:
    """A VLLaVO checkpoint: the base LM its adapter fits, the classes it was trained on, how it
    describes images and how it picks an answer."""

    language_model: str  # the base causal LM's hub id or directory (the LoRA adapter fits it)
    classes: tuple[str, ...]
    describer: DescriberConfig = DescriberConfig()
    #: "likelihood": the class whose answer the LM finds most likely. "generate": the greedy answer,
    #: snapped to the nearest class name.
    predict: Literal["likelihood", "generate"] = "likelihood"
    max_length: int = 0  # the LM's context in tokens; 0: its own

    def __post_init__(self) -> None:
        if isinstance(self.describer, dict):  # read back from config.json
            object.__setattr__(self, "describer", DescriberConfig(**self.describer))
        object.__setattr__(self, "classes", tuple(check_classes(list(self.classes))))
        if self.predict not in ("likelihood", "generate"):
            raise InputError(f"predict must be 'likelihood' or 'generate', got {self.predict!r}")


class VLLaVO(VisionLanguageModel):
    """A trained VLLaVO classifier: ``classify`` describes the images and asks the fine-tuned LM."""

    def __init__(self, name: str, config: VLLaVOConfig, describer: Describer, lm: Any, tokenizer: Any,
                 device: torch.device, dtype: torch.dtype) -> None:
        super().__init__(name, KINDS["VlmkitVLLaVO"], device, dtype)
        self.config = config
        self.describer = describer
        self.lm = lm.eval()
        self.tokenizer = tokenizer
        self.max_length = config.max_length or context_length(lm)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.lm.parameters())

    def describe(self, images: Any, *, batch_size: int = 32) -> list[Description]:
        return self.describer.describe(images, batch_size=batch_size)

    def encoder(self, classes: Sequence[str]) -> PromptEncoder:
        return PromptEncoder(self.tokenizer, classes, self.max_length)

    def option_probabilities(self, descriptions: Sequence[str], classes: Sequence[str], *, batch_size: int = 8) -> np.ndarray:
        """(N, C): a softmax over the classes of each description's answer log-likelihoods; with
        ``predict="generate"``, one-hot on the snapped generated answer."""
        encoder = self.encoder(classes)
        prompts = [encoder.prompt(d) for d in descriptions]
        if encoder.truncated:
            warnings.warn(f"{encoder.truncated} of {len(prompts)} descriptions were cut to fit the LM's {self.max_length} positions",
                          stacklevel=2)
        if self.config.predict == "generate":
            picked = [snap_to_class(a, encoder.classes) for a in generate_answers(self.lm, encoder, prompts, batch_size=batch_size)]
            return np.eye(len(encoder.classes))[[encoder.classes.index(p) for p in picked]]
        scores = class_log_likelihoods(self.lm, encoder, prompts, batch_size=batch_size)
        scores -= scores.max(axis=1, keepdims=True)
        probs = np.exp(scores)
        return probs / probs.sum(axis=1, keepdims=True)

    def classify(self, images: Any, labels: Sequence[str] | None = None, *, templates: Sequence[str] | None = None,
                 top_k: int | None = None) -> list[list[LabelScore]]:
        """Each image's classes, best first: its description, then the LM's choice among ``labels``
        (default: the classes the checkpoint was trained on)."""
        if templates:
            raise InputError("a VLLaVO model asks its LM one fixed question; prompt templates do not apply")
        classes = check_classes(list(self.config.classes) if labels is None else labels)
        descriptions = [d.text for d in self.describe(images)]
        probs = self.option_probabilities(descriptions, classes)
        return [[LabelScore(classes[i], float(row[i])) for i in np.argsort(-row, kind="stable")[: top_k or len(classes)]]
                for row in probs]

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        return save_checkpoint(directory, self.config, self.lm, self.tokenizer)


def save_checkpoint(directory: str | os.PathLike, config: VLLaVOConfig, lm: Any, tokenizer: Any) -> Path:
    """Write a checkpoint: ``config.json``, the LoRA adapter of the peft-wrapped ``lm`` in peft's
    format (``adapter/``; the base LM is not copied) and the tokenizer (``tokenizer/``)."""
    path = write_config(directory, config, model_type=MODEL_TYPE, architecture="VlmkitVLLaVO")
    lm.save_pretrained(path / "adapter")
    tokenizer.save_pretrained(path / "tokenizer")
    return path


def load_lm(name: str, *, device: torch.device | str = "cpu", dtype: torch.dtype | None = None) -> tuple[Any, Any]:
    """A causal LM and its tokenizer by hub id or directory, from safetensors only."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
        lm: Any = AutoModelForCausalLM.from_pretrained(name, use_safetensors=True, dtype=dtype or torch.float32)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelNotFoundError(f"{name}: cannot load a causal language model ({exc})") from None
    lm.to(torch.device(device))
    return lm, tokenizer


def load_native(path: str | os.PathLike, *, name: str, device: torch.device, dtype: torch.dtype, load: Any = None) -> VLLaVO:
    """Load a ``vlmkit-vllavo`` checkpoint: its base LM with the LoRA adapter, and its describer."""
    try:
        from peft import PeftModel
    except ImportError:
        raise VlmkitError("VLLaVO checkpoints need peft: pip install 'vlmkit[train]'") from None
    where = Path(path)
    config, _ = read_config(where, VLLaVOConfig, model_types=MODEL_TYPE)
    if not (where / "adapter" / "adapter_config.json").is_file():
        raise ModelNotFoundError(f"{where}: no LoRA adapter (adapter/adapter_config.json)")
    base, _ = load_lm(config.language_model, device=device, dtype=dtype)
    try:
        lm = PeftModel.from_pretrained(base, where / "adapter", is_trainable=False)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelNotFoundError(f"{where}: the adapter does not fit {config.language_model} ({exc})") from None
    tokenizer = load_tokenizer(where / "tokenizer")
    if load is None:
        raise TypeError("load_native needs the loader (vlmkit.load) to load the describer's models")
    describer = Describer.from_config(config.describer, device=device, load=load)
    return VLLaVO(name, config, describer, lm, tokenizer, device, dtype)

