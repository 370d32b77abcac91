"""The comparison report: what each model said about each image, what each task took, and what
loading and running each model cost."""

from __future__ import annotations

import dataclasses
import statistics
from dataclasses import dataclass
from typing import Any, Literal

from ...models.base import LabelScore

#: The tasks a comparison can run, in the order reports show them.
COMPARE_TASKS = ("caption", "ask", "classify")
TOP_K = 5  # labels kept per image

Status = Literal["ok", "not supported", "error"]


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
