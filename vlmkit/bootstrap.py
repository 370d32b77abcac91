"""CapFilt: BLIP's caption-and-filter bootstrapping of a noisy web dataset (Li et al., 2022, "BLIP:
Bootstrapping Language-Image Pre-training for Unified Vision-Language Understanding and Generation").

A captioner writes a synthetic caption for every web image (nucleus sampling by default, top_p 0.9
as BLIP; beam search is the option the paper compares), and a filter's image-text matching (ITM)
head scores every (image, web text) and (image, synthetic caption) pair. A text is kept when its
match probability is at least ``threshold``. The bootstrapped dataset is the clean set, the kept
web texts and the kept synthetic captions. Either model may be left out, for the paper's
ablation (BLIP Table 1): without a captioner only the web texts are filtered ("filter only"),
without a filter every web text and synthetic caption is kept ("captioner only").

:func:`capfilt` writes into one folder ``out``:

- ``captions.json``: the dataset as COCO caption JSON, read back by
  ``read_dataset("coco:OUT/captions.json:OUT/images")`` (:attr:`CapFiltReport.spec`). Written last,
  to a temporary name then renamed: it exists only when the run is complete;
- ``report.json``: texts kept and removed, per reason (:class:`CapFiltReport`);
- ``images/clean/``, ``images/web/``: the images that were arrays in memory (the shapes world's,
  WebDataset members), written as PNG files; images that are files are referred to where they are;
- ``journal.jsonl``: one row per web image (its synthetic caption and the filter's probability for
  each text), appended a whole batch at a time; ``settings.json``: what the journal was made with.

Resuming: a killed run, run again with the same arguments, reads the journal and captions only the
images not in it. A batch is recorded whole or not at all (rows of a batch cut short by a kill are
dropped and the batch is redone), and nucleus sampling is seeded per batch from ``seed`` and the
batch's images, so with the local engine a resumed run gives the dataset a straight run gives. The
threshold is applied when the dataset is written, from the journal's probabilities: running again
with another threshold rewrites the dataset without captioning anything.

``engine="ray"`` runs captioning and filtering through the Ray Data path of the image index and of
:func:`vlmkit.captioning.caption_dataset` (:meth:`vlmkit.index.ray_engine.RayEngine.map_images`):
decoding on CPU tasks, both models in each actor. Its batches are made by Ray, so its nucleus
samples differ from a local run's; beam search gives the same captions on both engines.
"""

from __future__ import annotations

import functools
import json
import os
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from PIL import Image

from .captioning import _JsonLines, _local_results
from .data.formats.spec import read_dataset
from .data.records import Example
from .errors import ImageError, InputError, UnsupportedTaskError
from .index.sources import Entry, Skipped
from .models.base import GenerationOptions

__all__ = ["capfilt", "web_examples", "check_threshold", "CapFiltReport", "TextCounts", "SAMPLING", "DEFAULT_THRESHOLD", "BLIP_PROMPT",
           "REASONS"]

DEFAULT_THRESHOLD = 0.5
#: The captioner's decoding: nucleus sampling (BLIP's choice: more diverse, noisier captions) or beam search.
SAMPLING: dict[str, GenerationOptions] = {
    "nucleus": GenerationOptions(do_sample=True, top_p=0.9),
    "beam": GenerationOptions(num_beams=3),
}
#: BLIP's captioning prompt (``vlmkit train blip`` task=caption trains with it).
BLIP_PROMPT = "a picture of"
#: Why a text is removed.
REASONS = {
    "below_threshold": "the filter's match probability is below the threshold",
    "duplicate": "the same text (case and spacing aside) is already kept for the image",
    "empty": "the captioner wrote nothing",
    "unreadable_image": "the image could not be read",
}

DATASET_FILE, REPORT_FILE, JOURNAL_FILE, SETTINGS_FILE, IMAGES_DIR = (
    "captions.json", "report.json", "journal.jsonl", "settings.json", "images")


@dataclass
class TextCounts:
    """Texts of one kind (web or synthetic): how many there were, were kept, and were removed per reason."""

    total: int = 0
    kept: int = 0
    removed: dict[str, int] = field(default_factory=dict)

    @property
    def removed_total(self) -> int:
        return sum(self.removed.values())

    def count(self, reason: str | None) -> None:
        self.total += 1
        if reason is None:
            self.kept += 1
        else:
            self.removed[reason] = self.removed.get(reason, 0) + 1

    def line(self) -> str:
        why = ", ".join(f"{reason} {n}" for reason, n in sorted(self.removed.items()))
        return f"{self.total}: {self.kept} kept, {self.removed_total} removed" + (f" ({why})" if why else "")


@dataclass
class CapFiltReport:
    """What a run did and what the dataset holds. ``done`` web images were captioned and scored now,
    ``already`` were in the journal from an earlier run; ``skipped`` could not be read."""

    dataset: str
    spec: str
    threshold: float | None  # None: no filter
    sampling: str | None  # None: no captioner
    clean_images: int = 0
    clean_captions: int = 0
    web_images: int = 0
    #: Web images in the dataset (at least one text kept) and left out (none kept).
    web_images_kept: int = 0
    web_images_dropped: int = 0
    web: TextCounts = field(default_factory=TextCounts)
    synthetic: TextCounts = field(default_factory=TextCounts)
    done: int = 0
    already: int = 0
    skipped: list[Skipped] = field(default_factory=list)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        counts = {name: {"total": c.total, "kept": c.kept, "removed": c.removed_total, "removed_by": dict(sorted(c.removed.items()))}
                  for name, c in (("web_texts", self.web), ("synthetic_captions", self.synthetic))}
        return {
            "dataset": self.dataset, "spec": self.spec, "threshold": self.threshold, "sampling": self.sampling,
            "clean": {"images": self.clean_images, "captions": self.clean_captions},
            "web": {"images": self.web_images, "in_dataset": self.web_images_kept, "left_out": self.web_images_dropped},
            **counts, "reasons": REASONS,
            "run": {"done": self.done, "already": self.already, "seconds": round(self.seconds, 3),
                    "skipped": [{"path": s.path, "reason": s.reason} for s in self.skipped]},
        }

    def summary(self) -> str:
        rate = f", {self.done / self.seconds:.1f} images/s" if self.done and self.seconds > 0 else ""
        how = ", ".join((f"threshold {self.threshold:g}" if self.threshold is not None else "no filter (every text kept)",
                         f"{self.sampling} captions" if self.sampling else "no captioner"))
        work = " and ".join(w for w, on in (("captioned", self.sampling), ("filtered", self.threshold is not None)) if on)
        return "\n".join((
            f"CapFilt, {how}: {self.web_images} web images, {self.done} {work} now, {self.already} already in the journal, "
            f"{len(self.skipped)} unreadable ({self.seconds:.1f} s{rate})",
            f"  web texts          {self.web.line()}",
            f"  synthetic captions {self.synthetic.line() if self.sampling else 'none (no captioner)'}",
            f"  dataset: {self.clean_images} clean images ({self.clean_captions} captions) + {self.web_images_kept} web images "
            f"with a kept text ({self.web_images_dropped} with none, left out)",
        ))


# -- inputs --------------------------------------------------------------------------------------------


def web_examples(images: Sequence[Image.Image | str | os.PathLike[str]], texts: Sequence[str | Sequence[str]]) -> list[Example]:
    """Examples from two parallel lists: each image with its web text (or texts). Lists of different
    lengths are an :class:`InputError`."""
    if len(images) != len(texts):
        raise InputError(f"{len(images)} images but {len(texts)} texts: give one text (or list of texts) per image")
    examples = []
    for i, (image, text) in enumerate(zip(images, texts, strict=True)):
        captions = (text,) if isinstance(text, str) else tuple(text)
        if not all(isinstance(t, str) for t in captions):
            raise InputError(f"texts[{i}]: expected a string or a list of strings")
        examples.append(Example(id=str(i), image=image if isinstance(image, Image.Image) else Path(image), captions=captions))
    return examples


def check_threshold(threshold: float) -> None:
    """A threshold is a match probability: outside [0, 1] (or not a number) is an :class:`InputError`."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 <= threshold <= 1.0:
        raise InputError(f"threshold must be a probability in [0, 1], got {threshold!r}")


def _examples(source: str | Iterable[Example], what: str) -> list[Example]:
    examples = list(read_dataset(source) if isinstance(source, str) else source)
    for e in examples:
        if not isinstance(e, Example):
            raise InputError(f"the {what} set: expected a dataset spec or Examples, got {type(e).__name__}")
    return examples


def _described(model: Any) -> str:
    kind = getattr(model, "kind", None)
    return f"{getattr(model, 'name', type(model).__name__)!r} ({kind.label if kind is not None else type(model).__name__})"


def _check_models(captioner: Any | None, filter_model: Any | None) -> None:
    """A captioner that cannot caption, or a filter without an ITM head, is a one-line InputError."""
    if captioner is None and filter_model is None:
        raise InputError("CapFilt needs a captioner, a filter or both (without either there is nothing to bootstrap)")
    if captioner is not None:
        try:
            captioner.require("caption")
        except UnsupportedTaskError:
            raise InputError(f"the captioner {_described(captioner)} cannot caption: give a captioning checkpoint, "
                             "e.g. the model/ folder of a `vlmkit train blip` run") from None
    if filter_model is None:
        return
    try:
        filter_model.require("match")
    except UnsupportedTaskError:
        raise InputError(f"the filter {_described(filter_model)} has no image-text matching: give a BLIP retrieval "
                         "checkpoint, e.g. the retrieval/ folder of a `vlmkit train blip` run") from None
    side = getattr(filter_model, "image_size", None) or 32
    kind = filter_model.match([Image.new("RGB", (side, side))], ["a picture"]).kind
    if kind != "itm":
        raise InputError(f"the filter {_described(filter_model)} has no ITM head (its match is a {kind} similarity): "
                         "give a BLIP retrieval checkpoint, e.g. the retrieval/ folder of a `vlmkit train blip` run")


def _image_files(examples: Sequence[Example], folder: Path) -> list[str]:
    """Each example's image file: its own path, or the in-memory image written as ``folder/NNNNNN.png``
    (whole or absent: a temporary file renamed; one already there is kept, so a resumed run reuses it)."""
    paths = []
    for i, e in enumerate(examples):
        if isinstance(e.image, Image.Image):
            target = folder / f"{i:06d}.png"
            if not target.is_file():
                folder.mkdir(parents=True, exist_ok=True)
                tmp = folder / f".{target.name}.tmp"
                e.image.convert("RGB").save(tmp, format="PNG")
                tmp.replace(target)
            paths.append(str(target))
        else:
            paths.append(str(Path(e.image)))
    return paths


def _entry(path: str) -> Entry:
    try:
        stat = os.stat(path)
        size, mtime = stat.st_size, stat.st_mtime_ns
    except OSError:
        size, mtime = 0, 0  # decode_entry reports why it cannot be read
    return Entry(path, size, mtime, str(Path(path).parent))


# -- the models' work on one batch (runs in this process or in a Ray actor) -----------------------------


@dataclass
class _Models:
    captioner: Any | None
    filter: Any | None

    @property
    def present(self) -> list[Any]:
        return [m for m in (self.captioner, self.filter) if m is not None]

    @property
    def image_size(self) -> int | None:
        sizes = [getattr(m, "image_size", None) for m in self.present]
        return None if None in sizes else max(s for s in sizes if s is not None)


def _load_models(captioner: str | None, filter_model: str | None, device: str, dtype: Any) -> _Models:
    """What each Ray actor holds: the models, loaded by name."""
    from .loading import load

    def loaded(name: str | None) -> Any:
        return None if name is None else load(name, device=device, dtype=dtype)

    return _Models(loaded(captioner), loaded(filter_model))


def _batch_id(paths: Sequence[str]) -> str:
    return f"{zlib.crc32(chr(0).join(paths).encode('utf-8')):08x}-{len(paths)}"


def _caption_and_score(models: _Models, images: list[Any], paths: list[str], *, texts: Mapping[str, Sequence[str]],
                       keys: Mapping[str, str], prompt: str | None,
                       generation: GenerationOptions, seed: int, batch_size: int) -> list[str]:
    """One journal row (JSON) per image: its synthetic caption and the filter's match probability
    of each web text and of the caption, under the image's journal key (no captioner: the caption is
    null; no filter: every probability is null). Sampling is seeded by ``seed`` and the batch's
    images (their keys: the same wherever the out folder is)."""
    import torch

    batch = _batch_id([keys[path] for path in paths])
    captions: list[str | None] = [None] * len(paths)
    if models.captioner is not None:
        if generation.do_sample:
            torch.manual_seed(seed * 1_000_003 + int(batch.split("-")[0], 16))
        captions = list(models.captioner.caption(images, prompt=prompt, options=generation, batch_size=batch_size))
    pairs = [(i, text) for i, path in enumerate(paths) for text in (*texts[path], captions[i]) if text is not None and text.strip()]
    scores = iter([None] * len(pairs) if models.filter is None or not pairs else
                  models.filter.match([images[i] for i, _ in pairs], [t for _, t in pairs]).scores.tolist())
    rows = []
    for path, caption in zip(paths, captions, strict=True):
        web = [next(scores) if text.strip() else None for text in texts[path]]
        synthetic = next(scores) if caption is not None and caption.strip() else None
        rows.append(json.dumps({"image": keys[path], "batch": batch, "n": len(paths), "caption": caption, "web": web,
                                "synthetic": synthetic}, ensure_ascii=False))
    return rows


# -- the journal ---------------------------------------------------------------------------------------


def _open_journal(path: Path) -> tuple[_JsonLines, dict[str, dict[str, Any]]]:
    """The journal's rows by image, keeping only whole batches (a kill can cut the last one short:
    its rows are dropped from the file, so those images are done again), and the journal to append to."""
    rows: list[dict[str, Any]] = []
    whole = True
    if path.is_file():
        lines = path.read_text(encoding="utf-8").split("\n")
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                row["image"]  # noqa: B018 - every row names its image
            except (ValueError, KeyError, TypeError):
                if number == len(lines):  # a line cut off by a kill
                    whole = False
                    continue
                raise InputError(f"{path}:{number}: not a row of a CapFilt journal; give another out folder") from None
            rows.append(row)
    counts: dict[str, int] = {}
    for row in rows:
        if "batch" in row:
            counts[row["batch"]] = counts.get(row["batch"], 0) + 1
    kept = [row for row in rows if "batch" not in row or counts[row["batch"]] == row["n"]]
    if len(kept) != len(rows) or not whole:
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in kept), encoding="utf-8")
        tmp.replace(path)
    return _JsonLines(path), {row["image"]: row for row in kept}


def _check_settings(path: Path, settings: dict[str, Any]) -> None:
    if path.is_file():
        try:
            before = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            before = None
        if before != settings:
            differ = [k for k in settings if not isinstance(before, dict) or before.get(k) != settings[k]]
            raise InputError(f"{path.parent} holds a CapFilt run with other settings ({', '.join(differ) or 'unreadable'}): "
                             "give another out folder, or run with the same captioner, filter, sampling, prompt, seed and web set")


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)


# -- the run -------------------------------------------------------------------------------------------


def _text_key(text: str) -> str:
    return " ".join(text.lower().split())


def _filtered(texts: Sequence[str], row: dict[str, Any], report: CapFiltReport) -> list[str]:
    """The texts of one web image that are kept (at ``report.threshold``; all, without a filter): its
    web texts then its synthetic caption, each counted in ``report`` as kept or removed with the reason."""
    if "skipped" in row:
        for _ in texts:
            report.web.count("unreadable_image")
        return []
    if len(row["web"]) != len(texts):
        raise InputError(f"{row['image']}: the journal scored {len(row['web'])} web texts, the web set has {len(texts)}: "
                         "the web set changed since; give another out folder")
    kept: list[str] = []
    seen: set[str] = set()

    def judge(text: str, score: float | None) -> str | None:
        if not text.strip():
            return "empty"
        if report.threshold is not None and (score is None or score < report.threshold):
            return "below_threshold"
        if _text_key(text) in seen:
            return "duplicate"
        seen.add(_text_key(text))
        kept.append(text)
        return None

    for text, score in zip(texts, row["web"], strict=True):
        report.web.count(judge(text, score))
    if row["caption"] is not None:
        report.synthetic.count(judge(row["caption"], row["synthetic"]))
    return kept


def _unique_ids(examples: Sequence[Example], prefix: str) -> list[str]:
    ids, seen = [], set()
    for e in examples:
        base = f"{prefix}/{e.id}"
        name, k = base, 1
        while name in seen:
            k += 1
            name = f"{base}#{k}"
        seen.add(name)
        ids.append(name)
    return ids


def _ray_results(models: _Models, todo: Sequence[Entry], call: Callable[..., list[str]], *, batch_size: int, max_pixels: int | None,
                 address: str | None) -> Iterator[tuple[Entry, Any]]:
    """(entry, its journal row or the ImageError reading it raised), from Ray actors that each load
    both models by name (:meth:`vlmkit.index.ray_engine.RayEngine.map_images`)."""
    from .index.ray_engine import RayEngine

    first = models.present[0]
    names = [None if m is None else str(m.name) for m in (models.captioner, models.filter)]
    factory = functools.partial(_load_models, names[0], names[1], str(first.device), first.dtype)
    by_path = {e.path: e for e in todo}
    for path, row, error in RayEngine(factory, address=address).map_images(
            todo, call, batch_size=batch_size, max_pixels=max_pixels, draft_size=models.image_size, with_paths=True):
        yield by_path[path], ImageError(path, error) if error else row


def _record(results: Iterable[tuple[Entry, Any]], sink: _JsonLines, rows: dict[str, dict[str, Any]], key: Mapping[str, str],
            progress: Callable[[int], None] | None) -> int:
    """Append the rows to the journal a whole batch at a time (an unreadable image is a row of its
    own) and to ``rows``; returns how many images were captioned."""
    pending: dict[str, list[dict[str, Any]]] = {}
    done = 0
    for entry, result in results:
        if isinstance(result, ImageError):
            row = {"image": key[entry.path], "skipped": result.reason}
            sink.write([row])
            rows[row["image"]] = row
        else:
            row = json.loads(result)
            batch = pending.setdefault(row["batch"], [])
            batch.append(row)
            if len(batch) == row["n"]:
                sink.write(pending.pop(row["batch"]))
                rows.update((r["image"], r) for r in batch)
            done += 1
        if progress is not None:
            progress(1)
    return done


def capfilt(
    captioner: Any | None,
    filter_model: Any | None,
    web: str | Iterable[Example],
    out: str | os.PathLike[str],
    *,
    clean: str | Iterable[Example] | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    sampling: Literal["nucleus", "beam"] = "nucleus",
    prompt: str | None = BLIP_PROMPT,
    seed: int = 0,
    batch_size: int = 8,
    max_pixels: int | None = None,
    engine: Literal["local", "ray"] = "local",
    ray_address: str | None = None,
    progress: Callable[[int], None] | None = None,
    on_plan: Callable[[int], None] | None = None,
) -> CapFiltReport:
    """Bootstrap ``web`` (a :func:`~vlmkit.data.read_dataset` spec or Examples, their captions the web
    texts; :func:`web_examples` makes them from two lists) with ``captioner`` (a loaded model that
    captions) and ``filter_model`` (one whose ``match`` is an ITM probability, as a BLIP retrieval
    checkpoint's), into the folder ``out`` (see the module docstring), and return the report.

    Every web image is captioned once (``sampling``: "nucleus", top_p 0.9, or "beam", 3 beams; with
    ``prompt``, BLIP's by default), and each web text and synthetic caption is kept when the filter's
    match probability is >= ``threshold`` (0 keeps every text, 1 only those scored exactly 1). The
    dataset is ``clean`` (a spec or Examples; all its captions), then each web image with its kept
    texts (an image with none is left out). ``on_plan(n)`` is called with the number of images to
    caption, ``progress(1)`` as each is done. ``engine="ray"`` runs on the Ray cluster at
    ``ray_address`` (an initialised Ray, else a local one) with both models loaded in each actor.

    ``captioner=None`` filters the web texts only, adding no synthetic caption; ``filter_model=None``
    keeps every web text and synthetic caption (BLIP Table 1's "filter only" and "captioner only")."""
    check_threshold(threshold)
    if sampling not in SAMPLING:
        raise InputError(f"sampling must be one of {', '.join(SAMPLING)}, got {sampling!r}")
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    if engine not in ("local", "ray"):
        raise InputError(f"engine must be local or ray, got {engine!r}")
    _check_models(captioner, filter_model)
    web_set = _examples(web, "web")
    if not web_set:
        raise InputError("the web set is empty")
    if not any(e.captions for e in web_set):
        raise InputError(f"the web set has no captions ({len(web_set)} images without text): CapFilt filters image-text pairs; "
                         "to caption images alone use `vlmkit caption DIR --out FILE`")
    clean_set = _examples(clean, "clean") if clean is not None else []
    root = Path(out).expanduser()
    if root.exists() and not root.is_dir():
        raise InputError(f"{root}: out must be a folder (it holds the dataset, its images, the report and the journal)")
    settings = {"captioner": _model_key(captioner), "filter": _model_key(filter_model),
                "sampling": sampling if captioner is not None else None, "prompt": prompt if captioner is not None else None,
                "seed": seed, "web": web if isinstance(web, str) else f"{len(web_set)} examples"}
    _check_settings(root / SETTINGS_FILE, settings)

    start = time.perf_counter()
    root.mkdir(parents=True, exist_ok=True)
    _write_json(root / SETTINGS_FILE, settings)
    images = root / IMAGES_DIR
    images.mkdir(exist_ok=True)
    clean_paths = _image_files(clean_set, images / "clean")
    texts: dict[str, list[str]] = {}  # web image file -> its web texts (an image listed twice has the texts of both)
    first: dict[str, Example] = {}
    for e, path in zip(web_set, _image_files(web_set, images / "web"), strict=True):
        texts.setdefault(path, []).extend(e.captions)
        first.setdefault(path, e)
    sink, rows = _open_journal(root / JOURNAL_FILE)
    key = {path: _journal_key(path, root) for path in texts}
    todo = [_entry(path) for path in texts if key[path] not in rows]
    report = CapFiltReport(dataset=str(root / DATASET_FILE), spec=f"coco:{root / DATASET_FILE}:{images}",
                           threshold=float(threshold) if filter_model is not None else None,
                           sampling=sampling if captioner is not None else None, web_images=len(texts), already=len(texts) - len(todo))
    if on_plan is not None:
        on_plan(len(todo))

    call = functools.partial(_caption_and_score, texts=texts, keys=key, prompt=prompt, generation=SAMPLING[sampling], seed=seed,
                             batch_size=batch_size)
    models = _Models(captioner, filter_model)
    if engine == "local":
        results = _local_results(models, todo, call, batch_size=batch_size, max_pixels=max_pixels, with_paths=True)
    else:
        results = _ray_results(models, todo, call, batch_size=batch_size, max_pixels=max_pixels, address=ray_address)
    try:
        report.done = _record(results, sink, rows, key, progress)
    finally:
        sink.close()

    clean_ids, web_ids = _unique_ids(clean_set, "clean"), _unique_ids(list(first.values()), "web")
    listed: list[tuple[str, str, Sequence[str]]] = [
        (image_id, path, e.captions) for image_id, path, e in zip(clean_ids, clean_paths, clean_set, strict=True)]
    report.clean_images, report.clean_captions = len(clean_set), sum(len(e.captions) for e in clean_set)
    for image_id, path in zip(web_ids, texts, strict=True):
        row = rows[key[path]]
        if "skipped" in row:
            report.skipped.append(Skipped(path, row["skipped"]))
        kept = _filtered(texts[path], row, report)
        if kept:
            listed.append((image_id, path, kept))
    report.web_images_kept = len(listed) - len(clean_set)
    report.web_images_dropped = len(texts) - report.web_images_kept
    report.seconds = time.perf_counter() - start
    _write_json(root / DATASET_FILE, _coco_json(listed, images))
    _write_json(root / REPORT_FILE, report.to_json())
    return report


def _journal_key(path: str, root: Path) -> str:
    """An image in the journal: its path relative to the out folder where it is under it (so a moved
    or copied folder still resumes), else as given."""
    p = Path(path)
    return p.relative_to(root).as_posix() if p.is_relative_to(root) else path


def _model_key(model: Any | None) -> str | None:
    if model is None:
        return None
    name = str(getattr(model, "name", type(model).__name__))
    return os.path.abspath(name) if os.path.isdir(name) else name


def _coco_json(listed: Sequence[tuple[str, str, Sequence[str]]], images: Path) -> dict[str, Any]:
    """COCO caption JSON: file names relative to ``images`` where they are under it, else absolute."""
    def file_name(path: str) -> str:
        p = Path(path).resolve()
        return str(p.relative_to(images.resolve())) if p.is_relative_to(images.resolve()) else str(p)

    pairs = [(image_id, text) for image_id, _, captions in listed for text in captions]
    annotations = [{"id": i, "image_id": image_id, "caption": text} for i, (image_id, text) in enumerate(pairs)]
    return {
        "info": {"description": "bootstrapped with CapFilt (vlmkit.bootstrap): the clean set, kept web texts and kept synthetic captions"},
        "images": [{"id": image_id, "file_name": file_name(path)} for image_id, path, _ in listed],
        "annotations": annotations,
    }
