"""Image to prompt for text-to-image generators: a caption, then modifiers ranked by how well they
match the image.

One model captions the image; a ranker (the same model, or another that embeds images and texts
into one space) scores word lists against it. The lists are vlmkit's own, shipped as package data
(``vlmkit/terms/*.txt``): mediums, styles (art movements and genres), lighting, and general
descriptive "flavours". Two modes:

- ``fast``: the caption, then the best medium, style and lighting term and the ``top_k`` best
  flavours, each ranked by the cosine of the image's embedding with the term's own.
- ``best``: greedy search over whole prompts. Starting from the caption, append the candidate that
  most raises the cosine of the *whole prompt's* embedding with the image's; stop when none raises
  it by at least ``MIN_GAIN`` (1e-4) or after ``max_terms``. Candidates are the ``candidates`` best
  terms of each list by their own cosine, with at most one medium, one style and one lighting term.
  Each step embeds every remaining candidate prompt (one batched text call), so it costs a few
  hundred text embeddings.
  How many terms it adds depends on the ranker. With the built-in it usually adds none: its image
  embeddings are mixtures of ImageNet class-name embeddings, the tag caption is already their
  nearest text, and any appended term lowers the similarity (the fast prompt scores lower still).

>>> from vlmkit.interrogate import Interrogator
>>> interrogator = Interrogator(vlmkit.load("default"))
>>> interrogator.interrogate("cat.jpg").prompt
'a photo of a tabby, ..., 35mm photograph, ...'

Term embeddings are computed once per ranker and cached twice: in memory for the process, and on
disk as one ``.npy`` float32 array per list (rows in list order), named by a hash of the ranker's
identity (name, architecture, dtype) and the list's contents, so an edited list or another model
never reads stale rows. Files load with ``allow_pickle=False``; one that is unreadable or has the
wrong shape, type or norms is ignored and rewritten. Images, captions and prompts are never cached.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .errors import ImageError, InputError
from .images import iter_loaded
from .models.base import GenerationOptions, VisionLanguageModel, as_list
from .models.kinds import supported_by

__all__ = [
    "CATEGORIES",
    "MIN_GAIN",
    "MODES",
    "InterrogateResult",
    "Interrogator",
    "load_terms",
    "default_cache_dir",
    "clear_memory_cache",
]

#: The word lists, in the order their terms join a fast-mode prompt.
CATEGORIES = ("mediums", "styles", "lighting", "flavours")
MODES = ("fast", "best")
_ONE_EACH = frozenset({"mediums", "styles", "lighting"})  # a prompt takes at most one term of these
_CACHE_VERSION = "1"  # bump when the way terms are embedded changes
#: Best mode adds a term only if it raises the prompt's cosine by at least this much. Cosines lie in
#: [-1, 1], where float32 rounding moves a re-batched text embedding's cosine by about 1e-6; a smaller
#: "gain" is noise or a tie (a term past the text encoder's context length changes nothing at all).
MIN_GAIN = 1e-4
_TEXT_BATCH = 256  # texts per text-encoder call: the term lists, and best mode's candidate prompts

_MEMORY: dict[str, np.ndarray] = {}  # cache key -> (N_terms, D) float32


@dataclass(frozen=True)
class InterrogateResult:
    """A prompt for one image. ``terms`` maps each category to the terms the prompt took from it,
    best first, each with the cosine of its own embedding with the image's. ``similarity`` is the
    cosine of the whole prompt's embedding with the image's; ``seconds`` the image's share of the
    batched model calls plus its own ranking."""

    prompt: str
    caption: str
    terms: dict[str, list[tuple[str, float]]]
    mode: str
    captioner: str
    ranker: str
    seconds: float
    similarity: float


@cache
def load_terms() -> dict[str, tuple[str, ...]]:
    """The shipped word lists, category -> terms in file order (blank lines and ``#`` lines skipped)."""
    from importlib.resources import files

    root = files("vlmkit") / "terms"
    lists = {}
    for category in CATEGORIES:
        lines = (root / f"{category}.txt").read_text(encoding="utf-8").splitlines()
        lists[category] = tuple(line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#"))
    return lists


def default_cache_dir() -> Path:
    """Where term embeddings are kept on disk: the user cache directory's ``vlmkit/terms``."""
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("vlmkit")) / "terms"


def clear_memory_cache() -> None:
    """Forget the in-memory term embeddings (the disk cache stays)."""
    _MEMORY.clear()


def _cache_key(ranker: VisionLanguageModel, terms: Sequence[str]) -> str:
    identity = "\n".join([_CACHE_VERSION, ranker.name, ranker.kind.architecture, str(ranker.dtype)])
    return hashlib.sha256((identity + "\0" + "\n".join(terms)).encode("utf-8")).hexdigest()[:32]


def _read_cached(path: Path, rows: int) -> np.ndarray | None:
    """The cached array, or None when the file is missing, unreadable or not what we wrote."""
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    if not isinstance(array, np.ndarray):  # an .npz archive under an .npy name
        array.close()
        return None
    if array.dtype != np.float32 or array.ndim != 2 or array.shape[0] != rows or array.shape[1] < 1:
        return None
    if not np.all(np.isfinite(array)) or not np.allclose(np.linalg.norm(array, axis=1), 1.0, atol=1e-3):
        return None
    return array


def _write_cached(path: Path, array: np.ndarray) -> None:
    """Write atomically (a temporary file, then rename); a read-only cache only costs recomputation."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem + ".", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            np.save(f, array, allow_pickle=False)
        os.replace(tmp, path)
    except OSError:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def _embed_terms(ranker: VisionLanguageModel, category: str, terms: Sequence[str], cache_dir: Path) -> np.ndarray:
    """(N_terms, D) L2-normalised embeddings of ``terms`` by ``ranker``: from memory, else from
    ``cache_dir``, else computed and stored in both."""
    key = _cache_key(ranker, terms)
    if key in _MEMORY:
        return _MEMORY[key]
    path = cache_dir / f"{category}-{key}.npy"
    array = _read_cached(path, len(terms))
    if array is None:
        array = np.ascontiguousarray(ranker.embed_texts(list(terms), batch_size=_TEXT_BATCH), dtype=np.float32)
        _write_cached(path, array)
    _MEMORY[key] = array
    return array


def _rank(image_emb: np.ndarray, term_emb: np.ndarray, terms: Sequence[str], k: int) -> list[tuple[str, float]]:
    """The ``k`` terms whose embeddings have the highest cosine with the image's, best first."""
    scores = term_emb @ image_emb  # (N_terms,)
    order = np.argsort(-scores, kind="stable")[:k]
    return [(terms[i], float(scores[i])) for i in order]


def _join(*parts: str) -> str:
    return ", ".join(part for part in parts if part)


class Interrogator:
    """Turns images into prompts with a captioner and a ranker (by default, the captioner itself).

    The ranker must embed both images and texts (CLIP, SigLIP, the built-in...). ``generation``
    sets the captioner's decoding. Term embeddings are computed on first use and cached in memory
    and in ``cache_dir`` (default: :func:`default_cache_dir`); see the module docstring.
    """

    def __init__(
        self,
        captioner: VisionLanguageModel,
        ranker: VisionLanguageModel | None = None,
        *,
        cache_dir: str | os.PathLike[str] | None = None,
        generation: GenerationOptions | None = None,
    ) -> None:
        captioner.require("caption")
        if ranker is None:
            if not captioner.supports("embed"):
                can = ", ".join(supported_by("embed"))
                raise InputError(
                    f"interrogate: {captioner.name!r} ({captioner.kind.label}) captions but cannot embed "
                    f"images and texts to rank terms; give a ranker that can: {can}"
                )
            ranker = captioner
        else:
            ranker.require("embed")
        self.captioner = captioner
        self.ranker = ranker
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.generation = generation or GenerationOptions()
        self.terms = load_terms()
        self._term_emb: dict[str, np.ndarray] | None = None

    def __repr__(self) -> str:
        return f"<Interrogator captioner={self.captioner.name!r} ranker={self.ranker.name!r}>"

    def term_embeddings(self) -> dict[str, np.ndarray]:
        """Category -> (N_terms, D) embeddings of its terms by the ranker, computed or loaded once."""
        if self._term_emb is None:
            self._term_emb = {
                category: _embed_terms(self.ranker, category, terms, self.cache_dir)
                for category, terms in self.terms.items()
            }
        return self._term_emb

    def interrogate(
        self,
        image: Any,
        *,
        mode: Literal["fast", "best"] = "fast",
        top_k: int = 3,
        max_terms: int = 8,
        candidates: int = 32,
    ) -> InterrogateResult:
        """A prompt for one image (a path, bytes, PIL image or array). ``top_k``: flavours in fast
        mode; ``max_terms`` and ``candidates`` (per list): the greedy search of best mode."""
        return self.interrogate_many([image], mode=mode, top_k=top_k, max_terms=max_terms, candidates=candidates)[0]

    def interrogate_many(
        self,
        images: Any,
        *,
        mode: Literal["fast", "best"] = "fast",
        top_k: int = 3,
        max_terms: int = 8,
        candidates: int = 32,
        batch_size: int = 8,
    ) -> list[InterrogateResult]:
        """One prompt per image, in order. Images are decoded, captioned and embedded ``batch_size``
        at a time, and only one batch of decoded images is held at once. A bad image raises
        :class:`~vlmkit.errors.ImageError` naming it."""
        if mode not in MODES:
            raise InputError(f"interrogate: mode must be one of {', '.join(MODES)}, got {mode!r}")
        for name, value, least in (("top_k", top_k, 0), ("max_terms", max_terms, 1), ("candidates", candidates, 1)):
            if not isinstance(value, int) or value < least:
                raise InputError(f"interrogate: {name} must be an integer >= {least}, got {value!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise InputError(f"interrogate: batch_size must be an integer >= 1, got {batch_size!r}")
        items = as_list(images, "images")
        results: list[InterrogateResult] = []
        for start in range(0, len(items), batch_size):
            batch = self._decode(items[start : start + batch_size])
            began = time.perf_counter()
            captions = self.captioner.caption(batch, options=self.generation, batch_size=len(batch))
            image_emb = self.ranker.embed_images(batch, batch_size=len(batch))  # (B, D)
            del batch
            term_emb = self.term_embeddings()
            shared = (time.perf_counter() - began) / len(captions)
            if mode == "fast":
                results += self._fast(captions, image_emb, term_emb, top_k, shared)
            else:
                results += [self._best(c, v, term_emb, max_terms, candidates, shared) for c, v in zip(captions, image_emb, strict=True)]
        return results

    # -- steps ------------------------------------------------------------------------------------

    def _decode(self, items: list[Any]) -> list[Any]:
        """Decode one batch (and no more) at the larger of the two models' input sizes."""
        sizes = [m.image_size for m in (self.captioner, self.ranker)]
        draft = None if None in sizes else max(s for s in sizes if s is not None)
        limit = self.captioner.max_pixels if self.captioner.max_pixels is not None else self.ranker.max_pixels
        decoded = []
        for _, item in iter_loaded(items, max_pixels=limit, draft_size=draft, prefetch=len(items)):
            if isinstance(item, ImageError):
                raise item
            decoded.append(item)
        return decoded

    def _fast(
        self, captions: list[str], image_emb: np.ndarray, term_emb: dict[str, np.ndarray], top_k: int, shared: float
    ) -> list[InterrogateResult]:
        began = time.perf_counter()
        chosen, prompts = [], []
        for caption, vector in zip(captions, image_emb, strict=True):
            picked = {
                category: _rank(vector, term_emb[category], terms, 1 if category in _ONE_EACH else top_k)
                for category, terms in self.terms.items()
            }
            chosen.append(picked)
            prompts.append(_join(caption, *(term for category in CATEGORIES for term, _ in picked[category])))
        similarity = np.sum(self.ranker.embed_texts(prompts) * image_emb, axis=1)  # (B,)
        own = (time.perf_counter() - began) / len(captions)
        return [
            self._result(prompt, caption, picked, "fast", shared + own, float(sim))
            for prompt, caption, picked, sim in zip(prompts, captions, chosen, similarity, strict=True)
        ]

    def _best(
        self,
        caption: str,
        vector: np.ndarray,
        term_emb: dict[str, np.ndarray],
        max_terms: int,
        candidates: int,
        shared: float,
    ) -> InterrogateResult:
        began = time.perf_counter()
        single = {category: dict(zip(terms, (term_emb[category] @ vector).tolist(), strict=True)) for category, terms in self.terms.items()}
        pool = [(category, term) for category, terms in self.terms.items() for term, _ in _rank(vector, term_emb[category], terms, candidates)]
        prompt = caption
        best = float(self.ranker.embed_texts([prompt])[0] @ vector)
        picked: dict[str, list[tuple[str, float]]] = {category: [] for category in CATEGORIES}
        added = 0
        while pool and added < max_terms:
            texts = [_join(prompt, term) for _, term in pool]
            scores = self.ranker.embed_texts(texts, batch_size=_TEXT_BATCH) @ vector  # (N_pool,)
            index = int(np.argmax(scores))
            if scores[index] < best + MIN_GAIN:  # a tie or float noise is no reason to add a term
                break
            category, term = pool[index]
            prompt, best = texts[index], float(scores[index])
            picked[category].append((term, single[category][term]))
            added += 1
            pool = [(c, t) for c, t in pool if t != term and not (c == category and category in _ONE_EACH)]
        ranked = {category: sorted(pairs, key=lambda pair: -pair[1]) for category, pairs in picked.items()}
        return self._result(prompt, caption, ranked, "best", shared + time.perf_counter() - began, best)

    def _result(
        self,
        prompt: str,
        caption: str,
        terms: dict[str, list[tuple[str, float]]],
        mode: str,
        seconds: float,
        similarity: float,
    ) -> InterrogateResult:
        return InterrogateResult(
            prompt=prompt,
            caption=caption,
            terms={category: list(terms.get(category, [])) for category in CATEGORIES},
            mode=mode,
            captioner=self.captioner.name,
            ranker=self.ranker.name,
            seconds=seconds,
            similarity=similarity,
        )
