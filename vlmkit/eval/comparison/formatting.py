"""Formatting shared by the HTML and Markdown reports: durations, sizes, counts, column headings,
the rows of the per-image tables and the notes under the model summary."""

from __future__ import annotations

from collections.abc import Sequence

from .report import TOP_K, CompareReport


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
