"""The comparison as one self-contained HTML page: thumbnails inline, the tables, and the latency
chart as inline SVG (matplotlib, drawn on a bare Figure); no scripts, no external assets."""

from __future__ import annotations

import base64
import html
import io
import re

from ...errors import ImageError
from ...images import load_image
from .formatting import _bytes, _count, _label_set, _notes, _seconds, _short_names, _task_rows
from .report import CompareReport, TaskOutcome

THUMBNAIL_SIZE = 256

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
