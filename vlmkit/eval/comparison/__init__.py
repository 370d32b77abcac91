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

from .html_report import render_html
from .markdown_report import render_markdown
from .report import COMPARE_TASKS, Cell, CompareReport, Latency, ModelSummary, TaskOutcome
from .run import compare, imagenet_labels

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
