"""The comparison as GitHub Markdown: the same tables as the HTML page, images referenced by file
name."""

from __future__ import annotations

from pathlib import Path

from .formatting import _bytes, _count, _label_set, _notes, _seconds, _short_names, _task_rows
from .report import CompareReport, TaskOutcome

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
