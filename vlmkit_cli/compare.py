"""`vlmkit compare`: several models side by side on the same images, as an HTML and Markdown report."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vlmkit.eval.comparison import COMPARE_TASKS, compare, render_html, render_markdown

from .common import CommandError, Output, _positive_int, check_inputs, progress


def _task_list(text: str) -> list[str]:
    tasks = [t.strip() for t in text.split(",") if t.strip()]
    if not tasks:
        raise argparse.ArgumentTypeError(f"give tasks from {','.join(COMPARE_TASKS)}")
    for task in tasks:
        if task not in COMPARE_TASKS:
            raise argparse.ArgumentTypeError(f"unknown task {task!r}; choose from {','.join(COMPARE_TASKS)}")
    return tasks


def _comma_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare",
        help="compare models side by side: outputs, latency, size and memory",
        description="Run caption, ask and classify with every model on every image, one model at a time, "
        "and write a report: HTML with the images inline and a latency chart, and Markdown.",
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files to run every model on")
    p.add_argument("--models", required=True, type=_comma_list, help='comma-separated model names, directories or hub ids, e.g. "default,Salesforce/blip-image-captioning-base"')
    p.add_argument("--tasks", type=_task_list, default=None, help="comma-separated, from caption,ask,classify (default: all three; ask only with --question)")
    p.add_argument("--question", action="append", default=[], dest="questions", help="a question for the ask task, repeatable")
    p.add_argument("--labels", type=_comma_list, default=None, help="comma-separated labels for classify (default: the 1,000 ImageNet classes)")
    p.add_argument("--template", action="append", dest="templates", help='prompt template with {} for classify, repeatable (default: each model\'s own)')
    p.add_argument("--runs", type=_positive_int, default=3, help="timed calls per task after one warm-up (default: 3)")
    p.add_argument("--out", default=None, help="report.html (writes report.md beside it) or report.md; default: Markdown on stdout")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--dtype", default=None, help="float32 (default), bfloat16 or float16")
    p.add_argument(
        "--max-pixels",
        type=_positive_int,
        default=None,
        help="refuse images with more pixels than this (default: VLMKIT_MAX_PIXELS or 100,000,000)",
    )
    p.set_defaults(run=run)


def _outputs(out: str | None) -> tuple[Path | None, Path | None]:
    """(HTML path, Markdown path) for --out."""
    if out is None:
        return None, None
    path = Path(out)
    suffix = path.suffix.lower()
    if suffix in (".html", ".htm"):
        return path, path.with_suffix(".md")
    if suffix in (".md", ".markdown"):
        return None, path
    raise CommandError(f"--out {out}: give a file ending in .html (also writes .md beside it) or .md")


def run(args: argparse.Namespace) -> int:
    if not args.models:
        raise CommandError('--models: give at least one model, e.g. --models "default"')
    if args.tasks is not None and "ask" in args.tasks and not args.questions:
        raise CommandError('the ask task needs a question: add --question "What is in the picture?"')
    if args.labels is not None and not args.labels:
        raise CommandError('--labels: give at least one label, e.g. --labels "cat,dog"')
    html_path, md_path = _outputs(args.out)
    skipped = Output(args.json)
    images = check_inputs(args.images, skipped)  # before any model loads
    for path in (html_path, md_path):
        if path is not None:
            try:  # as every command that writes: the folder is made
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise CommandError(f"--out {args.out}: cannot create {path.parent}: {exc.strerror or exc}") from None

    # A first guess at the number of steps; compare() reports the exact total with each step.
    with progress(len(args.models) * (1 + len(images)), args, "compare") as bar:
        bar.unit = "step"
        bar.refresh()

        def advance(done: int, total: int, step: str) -> None:
            bar.total = total
            bar.set_postfix_str(step[-60:], refresh=False)
            bar.update(done - bar.n)

        report = compare(
            images,
            args.models,
            tasks=args.tasks,
            questions=args.questions,
            labels=args.labels,
            templates=args.templates,
            runs=args.runs,
            device=args.device,
            dtype=args.dtype,
            max_pixels=args.max_pixels,
            progress=advance,
        )

    markdown = render_markdown(report)
    if html_path is not None:
        html_path.write_text(render_html(report), encoding="utf-8")
    if md_path is not None:
        md_path.write_text(markdown, encoding="utf-8")
    if args.json:
        print(json.dumps(report.to_dict(), ensure_ascii=False))
    elif md_path is None:
        print(markdown)
    else:
        print("\n".join(f"wrote {path}" for path in (html_path, md_path) if path is not None))

    failed = [m for m in report.models if not m.loaded]
    for model in failed:
        said = model.error or ""
        print(f"vlmkit: error: {said if model.name in said else f'{model.name}: {said}'}", file=sys.stderr)
    return 1 if failed or skipped.failures else 0
