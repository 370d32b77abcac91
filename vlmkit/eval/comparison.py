"""Side-by-side comparison of models on the same images: what each one says and what it costs.

The table a survey of vision-language models shows, measured on your own images and hardware: for
every image and model the caption, the answers to your questions and the top zero-shot labels, the
latency of each task, and per model its kind, parameter count, load time and peak memory.

Models are loaded one at a time and freed before the next, so the peak memory is each model's own.
A task a model cannot do is recorded as not supported (with the kinds that can), and a model that
fails to load is recorded with its error; neither stops the comparison.

>>> report = compare(["cat.jpg"], ["default", "Salesforce/blip-image-captioning-base"], runs=3)
>>> Path("report.html").write_text(render_html(report))
"""

from __future__ import annotations

import base64
import ctypes
import dataclasses
import gc
import html
import io
import os
import platform
import re
import statistics
import sys
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from ..errors import ImageError, InputError, UnsupportedTaskError, VlmkitError
from ..images import load_image
from ..loading import _resolve_device, load, resolve_dtype
from ..models.base import LabelScore, VisionLanguageModel

__all__ = [
    "COMPARE_TASKS",
    "Latency",
    "TaskOutcome",
    "Cell",
    "ModelSummary",
    "CompareReport",
    "compare",
    "imagenet_labels",
    "render_html",
    "render_markdown",
]

#: The tasks a comparison can run, in the order reports show them.
COMPARE_TASKS = ("caption", "ask", "classify")
# model -> ((labels, templates), their embeddings): computed once per model, gone with the model.
_LABEL_EMBEDDINGS: weakref.WeakKeyDictionary[Any, tuple[Any, np.ndarray]] = weakref.WeakKeyDictionary()
TOP_K = 5  # labels kept per image
THUMBNAIL_SIZE = 256
SAMPLE_INTERVAL_S = 0.005  # how often the CPU memory sampler reads the resident set size

Status = Literal["ok", "not supported", "error"]
Progress = Callable[[int, int, str], None]  # (steps done, steps in all, what was just done)


# -- the report --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Latency:
    """Wall-clock seconds of the timed calls, after one untimed warm-up call."""

    median_s: float
    runs_s: tuple[float, ...]
    warmup_s: float


@dataclass(frozen=True)
class TaskOutcome:
    """One task of one model on one image. ``texts`` holds the caption, or the answers in question
    order; ``labels`` the top zero-shot labels, best first. ``message`` says why there is no output:
    the model cannot do the task (``supported_by`` names the kinds that can) or the call failed."""

    task: str
    status: Status
    texts: tuple[str, ...] = ()
    labels: tuple[LabelScore, ...] = ()
    latency: Latency | None = None
    message: str = ""
    supported_by: tuple[str, ...] = ()


@dataclass(frozen=True)
class Cell:
    """Everything one model produced for one image."""

    image: str
    model: str
    outcomes: tuple[TaskOutcome, ...]

    def outcome(self, task: str) -> TaskOutcome | None:
        return next((o for o in self.outcomes if o.task == task), None)


@dataclass(frozen=True)
class ModelSummary:
    """What a model is and what loading and running it cost; ``error`` when it failed to load."""

    name: str
    kind: str | None = None  # e.g. "blip (BlipForConditionalGeneration)"
    family: str | None = None
    parameters: int | None = None
    load_s: float | None = None
    peak_memory_bytes: int | None = None  # above the level before loading; None where unmeasurable
    error: str | None = None

    @property
    def loaded(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class CompareReport:
    images: tuple[str, ...]
    models: tuple[ModelSummary, ...]
    cells: tuple[Cell, ...]
    tasks: tuple[str, ...]
    questions: tuple[str, ...]
    labels: tuple[str, ...] | None  # None: the 1,000 ImageNet classes
    templates: tuple[str, ...] | None  # None: each model's own
    runs: int
    device: str
    device_name: str
    dtype: str
    created: str  # ISO 8601, local time with its offset
    vlmkit_version: str
    torch_version: str
    latency_method: str
    memory_method: str

    def cell(self, image: str, model: str) -> Cell | None:
        return next((c for c in self.cells if c.image == image and c.model == model), None)

    def median_latency(self, model: str, task: str) -> float | None:
        """The median over images of the per-image median latency of ``task``; None if never run."""
        medians = [
            o.latency.median_s
            for c in self.cells
            if c.model == model
            for o in c.outcomes
            if o.task == task and o.latency is not None
        ]
        return statistics.median(medians) if medians else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: plain dicts, lists, strings, numbers and None."""
        data: dict[str, Any] = _plain(dataclasses.asdict(self))
        data["median_latency_s"] = {
            m.name: {task: self.median_latency(m.name, task) for task in self.tasks} for m in self.models
        }
        return data


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# -- measuring --------------------------------------------------------------------------------


def _rss_reader() -> tuple[Callable[[], int], str] | None:
    """A function returning this process's resident set size in bytes, and how it reads it."""
    try:
        import psutil
    except ImportError:
        pass
    else:
        process = psutil.Process()
        return (lambda: int(process.memory_info().rss)), "psutil"
    if os.path.isfile("/proc/self/statm"):
        page = os.sysconf("SC_PAGE_SIZE")

        def read() -> int:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * page

        return read, "/proc/self/statm"
    return None


class _PeakMemory:
    """Peak memory above the level at entry. On CUDA, torch's allocator statistics; elsewhere the
    resident set size, sampled on a background thread every few milliseconds."""

    def __init__(self, device: torch.device, interval_s: float = SAMPLE_INTERVAL_S) -> None:
        self.device = device
        self.interval_s = interval_s
        found = _rss_reader() if device.type == "cpu" else None
        self.reader = found[0] if found else None
        self.baseline = 0
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> _PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.baseline = torch.cuda.memory_allocated(self.device)
        elif self.reader is not None:
            self.baseline = self.peak = self.reader()
            self._thread = threading.Thread(target=self._sample, name="vlmkit-peak-memory", daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        assert self.reader is not None
        while not self._stop.wait(self.interval_s):
            self.peak = max(self.peak, self.reader())

    def __exit__(self, *exc: object) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, self.reader())  # type: ignore[misc]

    @property
    def peak_bytes(self) -> int | None:
        if self.device.type == "cuda":
            return max(0, torch.cuda.max_memory_allocated(self.device) - self.baseline)
        if self.reader is None:
            return None
        return max(0, self.peak - self.baseline)


def _memory_method(device: torch.device) -> str:
    if device.type == "cuda":
        return (
            "Peak memory: torch.cuda.max_memory_allocated during loading and all tasks, minus the memory "
            "allocated just before loading (tensors only: the CUDA context and the caching allocator's "
            "reserve are not counted)."
        )
    reader = _rss_reader() if device.type == "cpu" else None
    if reader is None:
        return "Peak memory: not measured (needs CUDA, psutil or /proc/self/statm)."
    ms = SAMPLE_INTERVAL_S * 1000
    return (
        f"Peak memory: the process's resident set size, read with {reader[1]} every {ms:g} ms on a "
        "background thread while the model loads and runs every task, minus its level just before "
        "loading (after the previous model was freed and glibc asked to return free memory). Memory the "
        "allocator kept from earlier work can be reused unseen, so read it as a lower bound."
    )


def _latency_method(runs: int) -> str:
    return (
        f"Latency: the median wall-clock time (time.perf_counter) of {runs} timed call{'s' * (runs != 1)} "
        "on one image after one untimed warm-up call. caption writes one caption with the model's "
        "default decoding; ask answers all questions about the image in one batched call; classify "
        "scores the image against every label, whose text embeddings are computed once per model beforehand "
        "(not timed). Images are "
        "decoded once beforehand, so decoding is not timed."
    )


def _free_memory(device: torch.device) -> None:
    """Collect garbage and hand freed memory back, so the next model's baseline starts low."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass  # not glibc


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        name = platform.processor() or platform.machine()
        try:
            with open("/proc/cpuinfo") as f:
                name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), name)
        except OSError:
            pass
        threads = torch.get_num_threads()
        return f"{name}, {threads} thread{'s' * (threads != 1)}"
    return device.type


def _timed(call: Callable[[], Any], runs: int, device: torch.device) -> tuple[Any, Latency]:
    """Call once untimed (warm-up), then ``runs`` times timed; return the last result."""

    def once() -> tuple[Any, float]:
        start = time.perf_counter()
        result = call()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return result, time.perf_counter() - start

    result, warmup = once()
    times = []
    for _ in range(runs):
        result, seconds = once()
        times.append(seconds)
    return result, Latency(statistics.median(times), tuple(times), warmup)


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


# -- comparing --------------------------------------------------------------------------------


def imagenet_labels() -> list[str]:
    """The 1,000 ImageNet-1k class names, one distinct label each: the first WordNet lemma, or all of
    them where two classes share it ("maillot"), or the class number where even those agree ("crane")."""
    from ..resources import imagenet_class_names

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

    from ..version import __version__

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


# -- formatting shared by both renderers ----------------------------------------------------------


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 1:
        return f"{value * 1000:.3g} ms"
    return f"{value:.3g} s"


def _bytes(value: int | None) -> str:
    if value is None:
        return "-"
    if value >= 1024**3:
        return f"{value / 1024**3:.2f} GiB"
    return f"{value / 1024**2:.1f} MiB"


def _count(value: int | None) -> str:
    if value is None:
        return "-"
    for size, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if value >= size:
            return f"{value / size:.3g} {unit}"
    return str(value)


def _short_names(names: Sequence[str]) -> dict[str, str]:
    """Column headings: the last path component of each name (a checkpoint directory, a hub id),
    or the full names where two would collide."""
    short = [name.rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1] or name for name in names]
    if len(set(short)) != len(short):
        short = list(names)
    return dict(zip(names, short, strict=True))


def _task_rows(report: CompareReport) -> list[tuple[str, str, int | None]]:
    """(row heading, task, question index) in the order the tables show them."""
    rows: list[tuple[str, str, int | None]] = []
    for task in report.tasks:
        if task == "caption":
            rows.append(("caption", task, None))
        elif task == "ask":
            rows += [(f"Q: {q}", task, i) for i, q in enumerate(report.questions)]
        else:
            rows.append((f"top {TOP_K} labels", task, None))
    return rows


def _label_set(report: CompareReport) -> str:
    if report.labels is None:
        return "the 1,000 ImageNet-1k classes"
    return f"{len(report.labels)} given label{'s' * (len(report.labels) != 1)}"


def _notes(report: CompareReport) -> list[str]:
    """One line per model that did not load, and per task some models cannot do (naming them and
    the kinds that can)."""
    notes = [f"{m.name} did not load: {m.error}" for m in report.models if m.error is not None]
    for task in report.tasks:
        unable: dict[str, None] = {}
        kinds: tuple[str, ...] = ()
        for cell in report.cells:
            outcome = cell.outcome(task)
            if outcome is not None and outcome.status == "not supported":
                unable[cell.model] = None
                kinds = outcome.supported_by
        if unable:
            can = ", ".join(kinds) if kinds else "none"
            notes.append(f"Not supported: {task} by {', '.join(unable)}; model kinds that can: {can}.")
    return notes


# -- HTML -----------------------------------------------------------------------------------------

_CSS = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 2rem auto; max-width: 1200px; padding: 0 1rem; color: #1d1d1f; }
h1 { margin-bottom: .2rem; } h2 { margin-top: 2.2rem; border-bottom: 1px solid #ddd; padding-bottom: .2rem; }
.meta { color: #555; margin-top: 0; }
table { border-collapse: collapse; width: 100%; margin: .8rem 0; }
th, td { border: 1px solid #ddd; padding: .4rem .55rem; text-align: left; vertical-align: top; overflow-wrap: break-word; }
.scroll { overflow-x: auto; }
thead th { background: #f4f5f7; word-break: break-all; }
tbody th { background: #fafafa; font-weight: 600; min-width: 8rem; }
table.results td { min-width: 9rem; max-width: 22rem; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.image-head { display: flex; gap: 1rem; align-items: flex-start; }
img.thumb { border: 1px solid #ccc; border-radius: 4px; }
ol.labels { margin: 0; padding-left: 1.3rem; } .score { color: #666; font-variant-numeric: tabular-nums; white-space: nowrap; }
.na { color: #888; font-style: italic; } .error { color: #b00020; }
.runs { color: #777; font-size: .85em; }
#latency-chart svg { max-width: 100%; height: auto; }
footer { margin-top: 2.5rem; color: #555; font-size: .9em; border-top: 1px solid #ddd; }
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _thumbnail_data_url(path: str) -> tuple[str, int, int] | None:
    """A JPEG thumbnail of at most THUMBNAIL_SIZE px a side, as a data: URL, with its size."""
    try:
        image = load_image(path, draft_size=THUMBNAIL_SIZE)
    except ImageError:
        return None
    image.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii"), image.width, image.height


def _html_outcome(outcome: TaskOutcome | None, question: int | None) -> str:
    if outcome is None:
        return '<td class="na">-</td>'
    if outcome.status == "not supported":
        return f'<td class="na" title="{_e(outcome.message)}">not supported</td>'
    if outcome.status == "error":
        return f'<td class="error">error: {_e(outcome.message)}</td>'
    if outcome.task == "classify":
        items = "".join(f'<li>{_e(r.label)} <span class="score">{r.score:.3f}</span></li>' for r in outcome.labels)
        return f'<td><ol class="labels">{items}</ol></td>'
    return f"<td>{_e(outcome.texts[question or 0])}</td>"


def _html_latency(outcome: TaskOutcome | None) -> str:
    if outcome is None or outcome.latency is None:
        return '<td class="na">-</td>'
    runs = ", ".join(_seconds(s) for s in outcome.latency.runs_s)
    return f'<td class="num">{_e(_seconds(outcome.latency.median_s))}<br><span class="runs">runs: {_e(runs)}</span></td>'


def _html_image_section(report: CompareReport, index: int, path: str, names: dict[str, str], shown: str) -> str:
    thumb = _thumbnail_data_url(path)
    if thumb is None:
        picture = '<p class="na">(the image can no longer be read)</p>'
    else:
        url, width, height = thumb
        picture = f'<img class="thumb" src="{url}" width="{width}" height="{height}" alt="{_e(shown)}">'
    head = "".join(f'<th class="model" data-model="{_e(m.name)}" title="{_e(m.name)}">{_e(names[m.name])}</th>' for m in report.models)
    rows = []
    for heading, task, question in _task_rows(report):
        cells = []
        for model in report.models:
            cell = report.cell(path, model.name)
            if cell is None:
                cells.append('<td class="error">did not load</td>')
            else:
                cells.append(_html_outcome(cell.outcome(task), question))
        rows.append(f'<tr data-task="{_e(task)}"><th>{_e(heading)}</th>{"".join(cells)}</tr>')
    for task in report.tasks:
        cells = []
        for model in report.models:
            cell = report.cell(path, model.name)
            cells.append(_html_latency(cell.outcome(task) if cell else None))
        rows.append(f'<tr class="latency"><th>latency: {_e(task)}</th>{"".join(cells)}</tr>')
    return (
        f'<section class="image" id="image-{index}">\n<h2>{_e(shown)}</h2>\n'
        f'<div class="image-head">{picture}<p class="path">{_e(path)}</p></div>\n'
        f'<div class="scroll"><table class="results"><thead><tr><th></th>{head}</tr></thead>\n<tbody>\n'
        + "\n".join(rows)
        + "\n</tbody></table></div>\n</section>"
    )


def _html_summary(report: CompareReport) -> str:
    rows = []
    for m in report.models:
        if m.error is not None:
            rows.append(
                f'<tr data-model="{_e(m.name)}"><td>{_e(m.name)}</td><td class="error" colspan="4">did not load: {_e(m.error)}</td></tr>'
            )
            continue
        rows.append(
            f'<tr data-model="{_e(m.name)}"><td>{_e(m.name)}</td><td>{_e(m.kind)}</td>'
            f'<td class="num" title="{m.parameters:,}">{_e(_count(m.parameters))}</td>'
            f'<td class="num">{_e(_seconds(m.load_s))}</td><td class="num">{_e(_bytes(m.peak_memory_bytes))}</td></tr>'
        )
    notes = "".join(f"<li>{_e(note)}</li>" for note in _notes(report))
    return (
        '<section id="models">\n<h2>Models</h2>\n<table class="summary"><thead><tr><th>model</th><th>kind</th>'
        "<th>parameters</th><th>load time</th><th>peak memory</th></tr></thead>\n<tbody>\n"
        + "\n".join(rows)
        + "\n</tbody></table>\n"
        + (f'<ul class="notes">{notes}</ul>\n' if notes else "")
        + "</section>"
    )


def _latency_chart_svg(report: CompareReport) -> str | None:
    """Grouped bars of the median latency per task (groups) and model (bars), as an SVG element;
    None when nothing was timed. Needs matplotlib; draws on a bare Figure, never pyplot, so no GUI
    backend is involved and the caller's matplotlib state is left alone."""
    from matplotlib.backends.backend_svg import FigureCanvasSVG
    from matplotlib.figure import Figure

    names = _short_names([m.name for m in report.models])
    models = [m for m in report.models if m.loaded]
    values = {m.name: [report.median_latency(m.name, t) for t in report.tasks] for m in models}
    timed = [v for row in values.values() for v in row if v is not None]
    if not timed:
        return None
    figure = Figure(figsize=(min(14.0, 3.0 + 0.55 * len(report.tasks) * len(models)), 3.6))
    FigureCanvasSVG(figure)
    axes = figure.add_subplot()
    log = max(timed) / min(timed) > 30
    width = 0.8 / len(models)
    for i, model in enumerate(models):
        xs = [t + (i - (len(models) - 1) / 2) * width for t in range(len(report.tasks))]
        heights = [v if v is not None else 0.0 for v in values[model.name]]
        label = names[model.name].replace("$", r"\$")  # model names are never mathtext
        bars = axes.bar(xs, heights, width * 0.9, label=label)
        for bar, value in zip(bars, values[model.name], strict=True):
            text = _seconds(value) if value is not None else "n/a"
            base = value if value is not None else (min(timed) if log else 0.0)
            axes.annotate(text, (bar.get_x() + bar.get_width() / 2, base), xytext=(0, 2), textcoords="offset points",
                          ha="center", va="bottom", fontsize=7, rotation=90 if len(models) > 2 else 0, color="#444")
    if log:
        axes.set_yscale("log")
    axes.set_xticks(range(len(report.tasks)), list(report.tasks))
    axes.set_ylabel("median latency (s)")
    axes.margins(y=0.3)
    axes.spines[["top", "right"]].set_visible(False)
    axes.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    figure.tight_layout()
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", metadata={"Date": None})
    svg = buffer.getvalue()
    svg = re.sub(r"<metadata>.*?</metadata>\s*", "", svg, flags=re.S)  # RDF licence boilerplate
    return svg[svg.index("<svg") :]


def render_html(report: CompareReport) -> str:
    """One self-contained page: images inline, tables, the latency chart as inline SVG; no scripts,
    no external assets. Every model output is HTML-escaped."""
    names = _short_names([m.name for m in report.models])
    shown = _short_names(list(report.images))
    sections = [_html_image_section(report, i, path, names, shown[path]) for i, path in enumerate(report.images, 1)]
    try:
        svg = _latency_chart_svg(report)
    except ImportError:
        chart = '<p class="na">The latency chart needs matplotlib: pip install "vlmkit[train]".</p>'
    else:
        chart = f'<figure id="latency-chart" role="img" aria-label="median latency per task and model">{svg}</figure>' if svg else '<p class="na">Nothing was timed.</p>'
    questions = "".join(f"<li>{_e(q)}</li>" for q in report.questions)
    meta = (
        f"{_e(report.created)} · vlmkit {_e(report.vlmkit_version)} · torch {_e(report.torch_version)} · "
        f"device {_e(report.device)} ({_e(report.device_name)}) · {_e(report.dtype)} · "
        f"{report.runs} timed run{'s' * (report.runs != 1)} after 1 warm-up"
    )
    setup = f"<p>Tasks: {_e(', '.join(report.tasks))}. Labels: {_e(_label_set(report))}."
    if report.templates:
        setup += f" Templates: {_e('; '.join(report.templates))}."
    setup += "</p>" + (f"<p>Questions:</p><ol>{questions}</ol>" if questions else "")
    return (
        '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>vlmkit compare: {len(report.models)} models, {len(report.images)} images</title>\n"
        f"<style>{_CSS}</style>\n</head>\n<body>\n"
        f'<header>\n<h1>Model comparison</h1>\n<p class="meta">{meta}</p>\n{setup}\n</header>\n'
        + "\n".join(sections)
        + "\n"
        + _html_summary(report)
        + f'\n<section id="latency">\n<h2>Latency</h2>\n{chart}\n</section>\n'
        + f"<footer>\n<p>{_e(report.latency_method)}</p>\n<p>{_e(report.memory_method)}</p>\n</footer>\n"
        "</body>\n</html>\n"
    )


# -- Markdown -------------------------------------------------------------------------------------

_MD_SPECIAL = "\\`*_[]<>|"


def _md(text: object) -> str:
    """Text for a GitHub table cell: Markdown and HTML characters backslash-escaped, one line."""
    escaped = "".join("\\" + ch if ch in _MD_SPECIAL else ch for ch in str(text))
    return " ".join(escaped.split())


def _md_outcome(outcome: TaskOutcome | None, question: int | None) -> str:
    if outcome is None:
        return "-"
    if outcome.status == "not supported":
        return "*not supported*"
    if outcome.status == "error":
        return f"**error:** {_md(outcome.message)}"
    if outcome.task == "classify":
        return "<br>".join(f"{_md(r.label)} ({r.score:.3f})" for r in outcome.labels)
    return _md(outcome.texts[question or 0])


def _md_table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def render_markdown(report: CompareReport) -> str:
    """The same tables in GitHub Markdown; images are referenced by file name."""
    names = _short_names([m.name for m in report.models])
    head = [" "] + [_md(names[m.name]) for m in report.models]
    out = [
        "# Model comparison",
        "",
        f"{report.created} · vlmkit {report.vlmkit_version} · torch {report.torch_version} · device "
        f"{_md(report.device)} ({_md(report.device_name)}) · {report.dtype} · {report.runs} timed "
        f"run{'s' * (report.runs != 1)} after 1 warm-up",
        "",
        f"Tasks: {', '.join(report.tasks)}. Labels: {_label_set(report)}.",
    ]
    for path in report.images:
        name = Path(path).name
        rows = []
        for heading, task, question in _task_rows(report):
            row = [_md(heading)]
            for model in report.models:
                cell = report.cell(path, model.name)
                row.append(_md_outcome(cell.outcome(task), question) if cell else "*did not load*")
            rows.append(row)
        for task in report.tasks:
            row = [f"latency: {task}"]
            for model in report.models:
                cell = report.cell(path, model.name)
                outcome = cell.outcome(task) if cell else None
                row.append(_seconds(outcome.latency.median_s) if outcome and outcome.latency else "-")
            rows.append(row)
        out += ["", f"## {_md(name)}", "", f"![{_md(name)}]({name.replace(' ', '%20')})", "", _md_table(head, rows)]
    summary = []
    for m in report.models:
        if m.error is not None:
            summary.append([_md(m.name), f"**did not load:** {_md(m.error)}", "-", "-", "-"])
        else:
            summary.append([_md(m.name), _md(m.kind), _count(m.parameters), _seconds(m.load_s), _bytes(m.peak_memory_bytes)])
    out += ["", "## Models", "", _md_table(["model", "kind", "parameters", "load time", "peak memory"], summary)]
    notes = _notes(report)
    if notes:
        out += [""] + [f"- {_md(note)}" for note in notes]
    latency_rows = [[_md(names[m.name])] + [_seconds(report.median_latency(m.name, t)) for t in report.tasks] for m in report.models]
    out += ["", "## Median latency", "", _md_table(["model", *report.tasks], latency_rows)]
    out += ["", report.latency_method, "", report.memory_method, ""]
    return "\n".join(out)
