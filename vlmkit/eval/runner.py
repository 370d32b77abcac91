"""Benchmark runs with pinned protocols: a model, a task and a dataset spec in; scores, the protocol
that produced them, the versions and the matching published figures out.

>>> from vlmkit.eval import EvalConfig, evaluate
>>> result = evaluate(vlmkit.load("Salesforce/blip-vqa-base"), EvalConfig("vqa", "easy-vqa:test", limit=500))
>>> print(result.to_markdown())

Tasks and their metrics:

- ``vqa``: the VQAv2 accuracy when questions carry several human answers (VQAv2, OK-VQA), exact
  match after the same normalisation when they carry one (GQA, easy-VQA, the shapes world).
- ``caption``: BLEU-1..4, METEOR, ROUGE-L, CIDEr-D and SPICE through pycocoevalcap.
- ``retrieval``: R@1/5/10 both ways and the mean rank, on the model's similarity (ITC), optionally
  re-ranked by its ITM head over the top k (BLIP-2's protocol, k = 128).
- ``classify``: zero-shot top-1 and top-5 with a prompt-template ensemble.

What makes the numbers reproducible: decoding is greedy (or a fixed beam) with the model's own
prompt, and every item is predicted from its own inputs only, so the scores do not depend on the
batch size (tested at 1 and 16). Generation, caption and classification predictions go to a JSON
lines file as they are made; a run that is interrupted continues from it (retrieval needs every
embedding at once and recomputes them).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from importlib import metadata
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from ..data import Example, read_dataset
from ..errors import InputError
from ..models.base import GenerationOptions
from .classification import IMAGENET_TEMPLATES
from .predictions import PredictionsFile
from .rerank import rerank_with_itm
from .retrieval import retrieval_scores
from .vqa import exact_match_accuracy, vqa_accuracy

__all__ = ["EVAL_TASKS", "EvalConfig", "EvalResult", "evaluate", "dataset_identity", "published_references"]

EVAL_TASKS = ("vqa", "caption", "retrieval", "classify")
#: The model task each evaluation task needs.
MODEL_TASK = {"vqa": "ask", "caption": "caption", "retrieval": "similarity", "classify": "classify"}
_SYNTHETIC = ("shapes", "easy-vqa")  # sets where different images can have the same description
_BATCHES_PER_SAVE = 8
_NO_ANSWERS = "the split has no public references; export the predictions (--export) and submit them to its evaluation server"


@dataclass(frozen=True)
class EvalConfig:
    """What to run. ``limit`` counts questions for ``vqa`` and images for the other tasks."""

    task: str
    data: str
    batch_size: int = 16
    limit: int | None = None
    max_new_tokens: int | None = None  # task default: 10 for answers, 30 for captions
    num_beams: int = 1
    prompt: str | None = None  # captioning prompt (the model's default when None)
    templates: tuple[str, ...] | None = None  # classification templates (IMAGENET_TEMPLATES when None)
    rerank: int = 0  # retrieval: re-rank the top k by ITM (0: off)
    dataset_name: str | None = None  # override the dataset identity inferred from ``data``

    def __post_init__(self) -> None:
        if self.task not in EVAL_TASKS:
            raise InputError(f"unknown eval task {self.task!r}; expected one of: {', '.join(EVAL_TASKS)}")
        if self.batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.limit is not None and self.limit < 1:
            raise InputError(f"limit must be >= 1, got {self.limit}")
        if self.num_beams < 1:
            raise InputError(f"num_beams must be >= 1, got {self.num_beams}")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.rerank < 0:
            raise InputError(f"rerank must be >= 0, got {self.rerank}")
        from ..data import dataset_schemes

        schemes = [usage.partition(":")[0] for usage in dataset_schemes()]
        if not isinstance(self.data, str) or self.data.partition(":")[0] not in schemes:
            raise InputError(f"unknown dataset spec {self.data!r}; expected one of: {', '.join(dataset_schemes())}")


@dataclass
class EvalResult:
    task: str
    model: str
    model_kind: str
    data: str
    dataset: str
    split: str
    items: int
    scores: dict[str, float]
    protocol: dict[str, Any]
    details: dict[str, Any] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)
    references: list[dict[str, Any]] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)
    date: str = ""
    batch_size: int = 0
    limit: int | None = None
    predictions: str | None = None
    resumed: int = 0  # items taken from an existing predictions file
    outputs: dict[str, Any] = field(default_factory=dict, repr=False)  # id -> prediction (not in to_dict)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        del data["outputs"]
        return data

    def to_markdown(self) -> str:
        """A table of our scores beside the published figures for the same model and dataset."""
        published: dict[str, dict[str, Any]] = {r["metric"]: r for r in self.references}
        lines = [
            f"**{self.task}** · model `{self.model}` ({self.model_kind}) · data `{self.dataset}` "
            f"({self.split or 'all'}, {self.items} {'questions' if self.task == 'vqa' else 'images'})",
            "",
            "| metric | vlmkit | published |",
            "|---|---:|---|",
        ]
        for metric, value in self.scores.items():
            ref = published.pop(metric, None)
            lines.append(f"| {metric} | {value:.2f} | {_reference_cell(ref)} |")
        for metric in self.unavailable:
            lines.append(f"| {metric} | n/a | {_reference_cell(published.pop(metric, None))} |")
        for metric, ref in published.items():
            lines.append(f"| {metric} | | {_reference_cell(ref)} |")
        notes = [f"- {metric} not computed: {reason}" for metric, reason in self.unavailable.items()]
        if self.references:
            notes.append("- published figures are for the full benchmark split named beside them; "
                         "they compare with ours only when the data and protocol are the same")
        return "\n".join(lines + ([""] + notes if notes else []))


def _reference_cell(ref: dict[str, Any] | None) -> str:
    if not ref:
        return ""
    return f"{ref['value']:.2f} ({ref['label']}, {ref['dataset']} {ref['split']}; {ref['source']})"


# ---------------------------------------------------------------------------------------------------
# Datasets: identity for the published figures


def dataset_identity(spec: str) -> tuple[str, str]:
    """(dataset key, split) of a dataset spec, as the published figures name them: ``"vqav2"``,
    ``"okvqa"``, ``"gqa"``, ``"coco-karpathy"``, ``"coco"``, ``"nocaps"``, ``"flickr30k"``,
    ``"imagenet"``, ``"easy-vqa"``, ``"shapes"``, else the spec's scheme."""
    scheme, _, rest = spec.partition(":")
    fields = rest.split(":")
    name = Path(fields[0]).name.lower() if fields and fields[0] else ""
    if scheme == "easy-vqa":
        return "easy-vqa", rest
    if scheme == "shapes":
        return "shapes", fields[1] if len(fields) > 1 else "train"
    if scheme == "imagenet":
        return "imagenet", Path(rest.rstrip("/")).name.lower()
    if scheme == "gqa":
        split = re.sub(r"_?(balanced|all)?_?questions\.json$", "", name).replace("testdev", "test-dev")
        return "gqa", split
    if scheme == "vqa":
        # OK-VQA and VQA v1 share their file names; only a path that says "okvqa" tells them apart.
        if re.search(r"ok-?vqa", spec.lower()):
            dataset = "okvqa"
        else:
            dataset = "vqav2" if "v2_" in name else "vqa"
        match = re.search(r"(train|val|test-dev|test)(20\d\d)", name)
        return dataset, match.group(1) if match else ""
    if scheme == "coco":
        split = fields[2] if len(fields) > 2 else ""
        if "nocaps" in name:
            dataset = "nocaps"
        elif "flickr30k" in name:
            dataset = "flickr30k"
        elif "flickr8k" in name:
            dataset = "flickr8k"
        elif name.startswith("dataset_coco"):
            dataset = "coco-karpathy"
        else:
            dataset = "coco"
        if not split:
            match = re.search(r"(train|val|test)", name)
            split = match.group(1) if match else ""
        return dataset, split
    return scheme, ""


@lru_cache(maxsize=1)
def _reference_table() -> list[dict[str, Any]]:
    data = json.loads((Path(__file__).parent / "references.json").read_text(encoding="utf-8"))
    return list(data["references"])


def published_references(model: str, dataset: str, task: str) -> list[dict[str, Any]]:
    """The published figures for this model (hub id, or a local copy named after it) on this dataset."""
    ids = {model.lower(), "/".join(Path(model).parts[-2:]).lower()}
    return [
        ref for ref in _reference_table()
        if ref["dataset"] == dataset and ref["task"] == task
        and (not ref["models"] or ids & {m.lower() for m in ref["models"]})
    ]


# ---------------------------------------------------------------------------------------------------
# Items


@dataclass(frozen=True)
class _Question:
    id: str
    image: Any
    question: str
    answers: tuple[str, ...]
    answer_type: str = ""


def _examples(config: EvalConfig) -> Iterator[Example]:
    return read_dataset(config.data)


def _vqa_items(config: EvalConfig) -> list[_Question]:
    annotations = _question_annotations(config.data)
    items: list[_Question] = []
    for example in _examples(config):
        notes = annotations.get(example.id) if annotations is not None else None
        for i, (question, answer) in enumerate(example.qa):
            if notes is not None:
                note = notes[i]
                answers = note.answers or ((note.answer,) if note.answer else ())
                items.append(_Question(str(note.question_id), example.image, question, answers, note.answer_type))
            else:
                items.append(_Question(f"{example.id}#{i}", example.image, question, (answer,) if answer else ()))
            if config.limit is not None and len(items) >= config.limit:
                return items
    return items


def _question_annotations(spec: str) -> dict[str, Any] | None:
    """Per-image question annotations (question ids, the human answers) where the format has them."""
    scheme, _, rest = spec.partition(":")
    fields = rest.split(":")
    if scheme == "vqa" and len(fields) == 3:
        from ..data import read_vqa_annotations

        return read_vqa_annotations(fields[0], fields[1] or None)
    if scheme == "gqa" and fields:
        from ..data import read_gqa_annotations

        return read_gqa_annotations(fields[0])
    return None


def _labelled(config: EvalConfig) -> tuple[list[str], list[tuple[Example, int]], int]:
    """(class names, [(example, class index)], examples without a label) for classification."""
    scheme, _, rest = config.data.partition(":")
    if scheme == "imagenet":
        from ..data import read_image_classes

        classes, examples = read_image_classes(rest)
        index = {name: i for i, name in enumerate(classes)}
        pairs = [(e, index[e.label]) for e in islice(examples, config.limit)]
        return list(classes), pairs, 0
    if scheme == "easy-vqa":
        from ..data.easy_vqa import EASY_VQA_SHAPES

        classes = list(EASY_VQA_SHAPES)
        pairs, unlabelled = [], 0
        for example in _examples(config):
            words = set(example.captions[0].split()) if example.captions else set()
            found = [i for i, shape in enumerate(classes) if shape in words]
            if len(found) == 1:
                pairs.append((example, found[0]))
                if config.limit is not None and len(pairs) >= config.limit:
                    break
            else:
                unlabelled += 1
        return classes, pairs, unlabelled
    raise InputError(
        f"classify needs a labelled set: 'imagenet:DIR' (one folder per class) or 'easy-vqa:test' (the shape), not {config.data!r}"
    )


def _batches(items: Sequence[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


# ---------------------------------------------------------------------------------------------------
# Running


def _versions() -> dict[str, str]:
    from ..version import __version__

    found = {"vlmkit": __version__, "python": platform.python_version()}
    for package in ("torch", "transformers", "numpy", "pycocoevalcap"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return found


def _progress(total: int, initial: int, desc: str, enabled: bool) -> Any:
    from tqdm import tqdm

    disabled = not enabled or bool(os.environ.get("VLMKIT_NO_PROGRESS"))
    return tqdm(total=total, initial=initial, desc=desc, unit="item", disable=disabled, leave=False)


def evaluate(
    model: Any,
    config: EvalConfig,
    *,
    predictions: str | os.PathLike[str] | None = None,
    restart: bool = False,
    progress: bool = False,
) -> EvalResult:
    """Run ``config`` on ``model``. With ``predictions``, predictions are saved there as they are made
    and an earlier interrupted run with the same model, data and protocol is continued."""
    model.require(MODEL_TASK[config.task])
    dataset, split = dataset_identity(config.data)
    dataset = config.dataset_name or dataset
    runner: Callable[..., EvalResult] = {
        "vqa": _run_vqa, "caption": _run_caption, "retrieval": _run_retrieval, "classify": _run_classify,
    }[config.task]
    result = runner(model, config, predictions=predictions, restart=restart, progress=progress)
    result = replace(
        result,
        model=model.name,
        model_kind=model.kind.label,
        data=config.data,
        dataset=dataset,
        split=split,
        references=published_references(model.name, dataset, config.task),
        versions=_versions(),
        date=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        batch_size=config.batch_size,
        limit=config.limit,
        predictions=os.fspath(predictions) if predictions is not None else None,
    )
    return result


def _empty_result(task: str, items: int, scores: dict[str, float], protocol: dict[str, Any], **extra: Any) -> EvalResult:
    return EvalResult(task=task, model="", model_kind="", data="", dataset="", split="", items=items,
                      scores=scores, protocol=protocol, **extra)


def _generate_all(
    model: Any,
    config: EvalConfig,
    items: Sequence[Any],
    header: dict[str, Any],
    predict: Callable[[list[Any]], list[Any]],
    predictions: str | os.PathLike[str] | None,
    restart: bool,
    progress: bool,
) -> tuple[dict[str, Any], int]:
    """Predict every item not already in the predictions file; returns id -> prediction and how
    many came from the file."""
    store = PredictionsFile(predictions, header, restart=restart) if predictions is not None else None
    done = {key: record["prediction"] for key, record in (store.done.items() if store else ())}
    wanted = {item.id for item in items}
    resumed = len(done.keys() & wanted)
    todo = [item for item in items if item.id not in done]
    # Models batch equal-length prompts together (no padding), so each call gets several batches'
    # worth to group; predictions are saved after every call.
    with _progress(len(items), resumed, config.task, progress) as bar:
        for batch in _batches(todo, config.batch_size * _BATCHES_PER_SAVE):
            outputs = predict(batch)
            records = [{"id": item.id, "prediction": out} for item, out in zip(batch, outputs, strict=True)]
            if store is not None:
                store.add(records)
            done.update((r["id"], r["prediction"]) for r in records)
            bar.update(len(batch))
    return done, resumed


def _decoding(config: EvalConfig, default_tokens: int) -> dict[str, Any]:
    return {"max_new_tokens": config.max_new_tokens or default_tokens, "num_beams": config.num_beams, "sampling": False}


def _options(decoding: dict[str, Any]) -> GenerationOptions:
    """The model's decoding options for the protocol's ``decoding`` record."""
    return GenerationOptions(max_new_tokens=decoding["max_new_tokens"], num_beams=decoding["num_beams"])


def _run_vqa(model: Any, config: EvalConfig, **run: Any) -> EvalResult:
    items = _vqa_items(config)
    if not items:
        raise InputError(f"{config.data}: no questions to answer")
    unanswered = [item.id for item in items if not item.answers]
    if unanswered and len(unanswered) < len(items):
        raise InputError(f"{config.data}: {len(unanswered)} questions have no reference answer (first: {unanswered[0]})")
    multi = [len(item.answers) >= 2 for item in items]
    if unanswered:
        multi = [True] * len(items)  # nothing to score; the metric named is the split's own
    if any(multi) and not all(multi):
        raise InputError(f"{config.data}: some questions have several human answers and some one; cannot score them together")
    metric = "VQAv2 accuracy over the human answers" if all(multi) else "exact match"
    decoding = _decoding(config, 10)
    protocol = {"metric": metric, "normalisation": "VQAv2", "prompt": getattr(model, "vqa_prompt", None), "decoding": decoding}
    header = {"task": "vqa", "model": model.name, "data": config.data, "protocol": protocol}

    def predict(batch: list[_Question]) -> list[str]:
        return model.ask([q.image for q in batch], [q.question for q in batch], options=_options(decoding), batch_size=config.batch_size)

    done, resumed = _generate_all(model, config, items, header, predict, **run)
    answers = [done[item.id] for item in items]
    outputs = {item.id: done[item.id] for item in items}
    details: dict[str, Any] = {}
    if unanswered:
        return _empty_result("vqa", len(items), {}, protocol, resumed=resumed, outputs=outputs,
                             unavailable={"accuracy": _NO_ANSWERS})
    if all(multi):
        scored = vqa_accuracy(answers, [item.answers for item in items], [item.answer_type for item in items])
        scores = {"accuracy": scored.overall, **{f"accuracy ({t})": v for t, v in scored.per_answer_type.items()}}
    else:
        scores = {"accuracy": exact_match_accuracy(answers, [item.answers[0] for item in items])}
    details["examples"] = [
        {"id": item.id, "question": item.question, "prediction": answer, "answers": list(item.answers[:3])}
        for item, answer in list(zip(items, answers, strict=True))[:5]
    ]
    return _empty_result("vqa", len(items), scores, protocol, details=details, resumed=resumed, outputs=outputs)


@dataclass(frozen=True)
class _Image:
    id: str
    image: Any
    references: tuple[str, ...] = ()


def _run_caption(model: Any, config: EvalConfig, **run: Any) -> EvalResult:
    items = [_Image(e.id, e.image, e.captions) for e in islice(_examples(config), config.limit)]
    if not items:
        raise InputError(f"{config.data}: no images to caption")
    missing = [item.id for item in items if not item.references]
    skipped = 0
    if missing and len(missing) < len(items):
        # Images without a reference cannot be scored; leave them out and say how many.
        items, skipped, missing = [item for item in items if item.references], len(missing), []
    decoding = _decoding(config, 30)
    prompt = config.prompt if config.prompt is not None else getattr(model, "caption_prompt", None)
    protocol = {"metric": "pycocoevalcap", "prompt": prompt, "decoding": decoding}
    header = {"task": "caption", "model": model.name, "data": config.data, "protocol": protocol}

    def predict(batch: list[_Image]) -> list[str]:
        return model.caption([i.image for i in batch], prompt=config.prompt, options=_options(decoding), batch_size=config.batch_size)

    done, resumed = _generate_all(model, config, items, header, predict, **run)
    outputs = {i.id: done[i.id] for i in items}
    if missing:
        return _empty_result("caption", len(items), {}, protocol, resumed=resumed, outputs=outputs,
                             unavailable={"CIDEr": _NO_ANSWERS})
    from .captions import caption_scores

    scored = caption_scores({i.id: done[i.id] for i in items}, {i.id: list(i.references) for i in items})
    protocol["tokenizer"] = scored.tokenizer
    details = {"skipped_without_reference": skipped,
               "examples": [{"id": i.id, "prediction": done[i.id], "references": list(i.references[:2])} for i in items[:5]]}
    return _empty_result("caption", len(items), dict(scored.scores), protocol, details=details,
                         unavailable=dict(scored.unavailable), resumed=resumed, outputs=outputs)


def _run_retrieval(model: Any, config: EvalConfig, *, predictions: Any = None, restart: bool = False, progress: bool = False) -> EvalResult:
    examples = [e for e in islice(_examples(config), config.limit)]
    texts: list[str] = []
    owner: list[int] = []
    for i, example in enumerate(examples):
        texts.extend(example.captions)
        owner.extend([i] * len(example.captions))
    if not texts:
        raise InputError(f"{config.data}: no captions to retrieve")
    images = [e.image for e in examples]
    dataset, _ = dataset_identity(config.data)
    groups = [e.captions[0] if e.captions else e.id for e in examples] if dataset in _SYNTHETIC else None
    protocol: dict[str, Any] = {
        "similarity": "the model's image-text similarity (ITC; max over queries for BLIP-2)",
        "rerank": config.rerank,
        "image_groups": "images with the same first caption are interchangeable" if groups else None,
    }
    with _progress(2, 0, "retrieval", progress) as bar:
        if config.rerank:
            ranked = rerank_with_itm(model, images, texts, k=config.rerank, batch_size=config.batch_size)
            i2t_sim, t2i_sim = ranked.image_to_text, ranked.text_to_image
        else:
            image_emb, text_emb = None, None
            if _plain_cosine(model):
                image_emb = model.embed_images(images, batch_size=config.batch_size)
                bar.update(1)
                text_emb = model.embed_texts(texts, batch_size=config.batch_size)
                i2t_sim = t2i_sim = image_emb @ text_emb.T
            else:
                i2t_sim = t2i_sim = model.similarity(images, texts)
        bar.update(2 - bar.n)
    i2t = retrieval_scores(i2t_sim, owner, image_groups=groups)
    t2i = retrieval_scores(t2i_sim, owner, image_groups=groups)
    scores = {
        **{f"I2T R@{k}": v for k, v in i2t.image_to_text.items()},
        **{f"T2I R@{k}": v for k, v in t2i.text_to_image.items()},
        "I2T mean rank": i2t.image_to_text_mean_rank,
        "T2I mean rank": t2i.text_to_image_mean_rank,
    }
    return _empty_result("retrieval", len(examples), scores, protocol, details={"texts": len(texts)})


def _plain_cosine(model: Any) -> bool:
    """Whether similarity is the plain product of the two embeddings (then embed with our batch size)."""
    from ..models.base import VisionLanguageModel

    return type(model).similarity is VisionLanguageModel.similarity


def _run_classify(model: Any, config: EvalConfig, **run: Any) -> EvalResult:
    classes, pairs, unlabelled = _labelled(config)
    if not pairs:
        raise InputError(f"{config.data}: no labelled images to classify")
    templates = config.templates or IMAGENET_TEMPLATES
    ks = [k for k in (1, 5) if k == 1 or k < len(classes)]  # top-5 of five classes or fewer says nothing
    protocol = {"templates": list(templates), "classes": len(classes), "ks": ks}
    header = {"task": "classify", "model": model.name, "data": config.data, "protocol": protocol}
    items = [_Image(e.id, e.image, (str(target),)) for e, target in pairs]
    label_emb = model.label_embeddings(classes, templates)

    def predict(batch: list[_Image]) -> list[dict[str, Any]]:
        probs = model.label_probabilities([i.image for i in batch], label_emb)
        out = []
        for item, row in zip(batch, probs, strict=True):
            target = int(item.references[0])
            rank = int((row >= row[target]).sum())  # ties count against us
            top = np.argsort(-row, kind="stable")[:5]
            out.append({"rank": rank, "top": [classes[j] for j in top]})
        return out

    done, resumed = _generate_all(model, config, items, header, predict, **run)
    ranks = np.array([done[i.id]["rank"] for i in items])
    scores = {f"top-{k}": float(100 * np.mean(ranks <= k)) for k in ks}
    details = {"unlabelled_skipped": unlabelled, "examples": [
        {"id": i.id, "label": classes[int(i.references[0])], "top": done[i.id]["top"]} for i in items[:5]
    ]}
    outputs = {i.id: done[i.id]["top"][0] for i in items}
    return _empty_result("classify", len(items), scores, protocol, details=details, resumed=resumed, outputs=outputs)
