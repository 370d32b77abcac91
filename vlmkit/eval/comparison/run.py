"""The comparison run: check the arguments, decode every image, then load one model at a time, run
every task on every image, and free the model before the next."""

from __future__ import annotations

import os
import time
import weakref
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...errors import InputError, UnsupportedTaskError, VlmkitError
from ...images import load_image
from ...loading import _resolve_device, load, resolve_dtype
from ...models.base import LabelScore, VisionLanguageModel
from .measure import _device_name, _free_memory, _latency_method, _memory_method, _PeakMemory, _timed
from .report import COMPARE_TASKS, TOP_K, Cell, CompareReport, ModelSummary, TaskOutcome

# model -> ((labels, templates), their embeddings): computed once per model, gone with the model.
_LABEL_EMBEDDINGS: weakref.WeakKeyDictionary[Any, tuple[Any, np.ndarray]] = weakref.WeakKeyDictionary()

Progress = Callable[[int, int, str], None]  # (steps done, steps in all, what was just done)


def _message(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, VlmkitError) else f"{type(exc).__name__}: {exc}"


def _run_task(
    model: VisionLanguageModel,
    task: str,
    image: Any,
    *,
    questions: tuple[str, ...],
    labels: tuple[str, ...],
    templates: tuple[str, ...] | None,
    runs: int,
) -> TaskOutcome:
    try:
        model.require(task)
    except UnsupportedTaskError as exc:
        return TaskOutcome(task, "not supported", message=str(exc), supported_by=tuple(exc.supported_by))
    try:
        if task == "caption":
            captions, latency = _timed(lambda: model.caption([image]), runs, model.device)
            return TaskOutcome(task, "ok", texts=(captions[0],), latency=latency)
        if task == "ask":
            answers, latency = _timed(lambda: model.ask([image] * len(questions), list(questions)), runs, model.device)
            return TaskOutcome(task, "ok", texts=tuple(answers), latency=latency)
        # The label embeddings are computed once per model (as an application would), not timed.
        key = (labels, templates)
        cached = _LABEL_EMBEDDINGS.get(model)
        if cached is None or cached[0] != key:
            cached = _LABEL_EMBEDDINGS[model] = (key, model.label_embeddings(list(labels), templates))
        label_emb = cached[1]
        probs, latency = _timed(lambda: model.label_probabilities([image], label_emb), runs, model.device)
        order = np.argsort(-probs[0], kind="stable")[:TOP_K]
        ranked = tuple(LabelScore(labels[i], float(probs[0][i])) for i in order)
        return TaskOutcome(task, "ok", labels=ranked, latency=latency)
    except UnsupportedTaskError as exc:
        return TaskOutcome(task, "not supported", message=str(exc), supported_by=tuple(exc.supported_by))
    except Exception as exc:  # noqa: BLE001 - one failing task must not end the comparison
        return TaskOutcome(task, "error", message=_message(exc))


def imagenet_labels() -> list[str]:
    """The 1,000 ImageNet-1k class names, one distinct label each: the first WordNet lemma, or all of
    them where two classes share it ("maillot"), or the class number where even those agree ("crane")."""
    from ...resources import imagenet_class_names

    lemmas = imagenet_class_names()
    firsts = [names[0] for names in lemmas]
    fulls = [", ".join(names) for names in lemmas]
    labels = []
    for index, (first, full) in enumerate(zip(firsts, fulls, strict=True)):
        if firsts.count(first) == 1:
            labels.append(first)
        elif fulls.count(full) == 1:
            labels.append(full)
        else:
            labels.append(f"{first} (ImageNet class {index})")
    return labels


def _names(values: Any, what: str) -> list[str]:
    items = [values] if isinstance(values, (str, os.PathLike)) else list(values)
    for item in items:
        if not isinstance(item, (str, os.PathLike)):
            raise InputError(f"compare: each {what} is a file path or name, got {type(item).__name__}")
    names = [os.fspath(item) for item in items]
    if not names:
        raise InputError(f"compare: give at least one {what}")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise InputError(f"compare: {what} given more than once: {', '.join(duplicates)}")
    return names


def _check_tasks(tasks: Sequence[str] | None, questions: tuple[str, ...]) -> tuple[str, ...]:
    if tasks is None:
        return tuple(t for t in COMPARE_TASKS if t != "ask" or questions)
    if isinstance(tasks, str):
        tasks = [tasks]
    chosen = tuple(dict.fromkeys(tasks))
    unknown = [t for t in chosen if t not in COMPARE_TASKS]
    if unknown:
        raise InputError(f"compare: unknown task {unknown[0]!r}; choose from {', '.join(COMPARE_TASKS)}")
    if not chosen:
        raise InputError("compare: give at least one task")
    if "ask" in chosen and not questions:
        raise InputError("compare: the 'ask' task needs at least one question")
    return chosen


def _check_texts(values: Sequence[str] | None, what: str) -> tuple[str, ...] | None:
    if values is None:
        return None
    if isinstance(values, str):
        raise InputError(f"compare: {what} must be a list of strings, not one string")
    items = tuple(values)
    if any(not isinstance(v, str) or not v.strip() for v in items):
        raise InputError(f"compare: {what} must be non-empty strings")
    return items


def compare(
    images: Sequence[str | os.PathLike] | str | os.PathLike,
    models: Sequence[str | os.PathLike] | str | os.PathLike,
    *,
    tasks: Sequence[str] | None = None,
    questions: Sequence[str] = (),
    labels: Sequence[str] | None = None,
    templates: Sequence[str] | None = None,
    runs: int = 3,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype | None = None,
    max_pixels: int | None = None,
    progress: Progress | None = None,
) -> CompareReport:
    """Run every task of ``tasks`` with every model on every image, one model at a time.

    ``tasks`` defaults to caption, ask (when ``questions`` are given) and classify. ``labels``
    default to the 1,000 ImageNet classes; ``templates`` to each model's own prompt templates. Every
    image is decoded before any model loads, so a bad file fails fast (:class:`ImageError`).
    ``progress(done, total, step)`` is called after each load and task.
    """
    image_paths = _names(images, "image")
    model_names = _names(models, "model")
    question_list = _check_texts(questions, "questions") or ()
    task_list = _check_tasks(tasks, question_list)
    label_list = _check_texts(labels, "labels")
    template_list = _check_texts(templates, "templates")
    if label_list is not None:
        if not label_list:
            raise InputError("compare: give at least one label")
        if len(set(label_list)) != len(label_list):
            raise InputError("compare: labels must be distinct")
    for template in template_list or ():
        if "{}" not in template:
            raise InputError(f"compare: template {template!r} has no '{{}}' for the label")
    if not isinstance(runs, int) or runs < 1:
        raise InputError(f"compare: runs must be a positive integer, got {runs!r}")
    torch_device = _resolve_device(device)
    torch_dtype = resolve_dtype(dtype)

    decoded = {path: load_image(path, max_pixels=max_pixels) for path in image_paths}
    classify_labels = (
        label_list if label_list is not None else tuple(imagenet_labels()) if "classify" in task_list else ()
    )

    total = len(model_names) * (1 + len(image_paths) * len(task_list))
    done = 0

    def step(what: str, count: int = 1) -> None:
        nonlocal done
        done += count
        if progress is not None:
            progress(done, total, what)

    summaries: list[ModelSummary] = []
    cells: list[Cell] = []
    for name in model_names:
        _free_memory(torch_device)
        model: VisionLanguageModel | None = None
        error = ""
        with _PeakMemory(torch_device) as memory:
            start = time.perf_counter()
            try:
                model = load(name, device=torch_device, dtype=torch_dtype)
            except Exception as exc:  # noqa: BLE001 - one model that does not load must not end the comparison
                error = _message(exc)
            load_s = time.perf_counter() - start
            step(f"{name}: loaded" if model is not None else f"{name}: failed to load")
            if model is not None:
                for path in image_paths:
                    outcomes = []
                    for task in task_list:
                        outcomes.append(
                            _run_task(
                                model,
                                task,
                                decoded[path],
                                questions=question_list,
                                labels=classify_labels,
                                templates=template_list,
                                runs=runs,
                            )
                        )
                        step(f"{name}: {task} {Path(path).name}")
                    cells.append(Cell(path, name, tuple(outcomes)))
        if model is None:
            summaries.append(ModelSummary(name, error=error))
            step(f"{name}: skipped", len(image_paths) * len(task_list))
            continue
        summaries.append(
            ModelSummary(
                name,
                kind=model.kind.label,
                family=model.family,
                parameters=model.num_parameters(),
                load_s=load_s,
                peak_memory_bytes=memory.peak_bytes,
            )
        )
        del model
    _free_memory(torch_device)

    from ...version import __version__

    return CompareReport(
        images=tuple(image_paths),
        models=tuple(summaries),
        cells=tuple(cells),
        tasks=task_list,
        questions=question_list,
        labels=label_list,
        templates=template_list,
        runs=runs,
        device=str(torch_device),
        device_name=_device_name(torch_device),
        dtype=str(torch_dtype).removeprefix("torch."),
        created=datetime.now().astimezone().isoformat(timespec="seconds"),
        vlmkit_version=__version__,
        torch_version=torch.__version__,
        latency_method=_latency_method(runs),
        memory_method=_memory_method(torch_device),
    )
