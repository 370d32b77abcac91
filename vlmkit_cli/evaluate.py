"""``vlmkit eval``: a benchmark run with a pinned protocol; a JSON result, a Markdown table, and a
predictions file that lets an interrupted run continue."""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from .common import _positive_int, load_model, require, show_progress


def register(sub: argparse._SubParsersAction) -> None:
    from vlmkit.data import dataset_schemes

    p = sub.add_parser(
        "eval",
        help="evaluate a model on a benchmark (vqa, caption, retrieval, classify)",
        description="Evaluate a model on a local copy of a benchmark. Data specs: " + "; ".join(dataset_schemes()),
    )
    p.add_argument("task", choices=("vqa", "caption", "retrieval", "classify"), help="what to measure: vqa, caption, retrieval or classify")
    p.add_argument("--model", "-m", default=None, help="built-in name, checkpoint directory or hub id (default: the built-in)")
    p.add_argument("--data", required=True, metavar="SPEC", help="dataset spec, e.g. easy-vqa:test, shapes:200:test, vqa:Q.json:A.json:DIR")
    p.add_argument("--batch-size", type=_positive_int, default=16, help="items per model call (default: 16); scores do not depend on it")
    p.add_argument("--limit", type=_positive_int, default=None, help="only the first N questions (vqa) or images")
    p.add_argument("--out", default=None, metavar="FILE.json", help="result file (default: vlmkit-eval/TASK-MODEL-DATASET.json)")
    p.add_argument("--predictions", default=None, metavar="FILE.jsonl", help="predictions file to write and resume from (default: next to --out)")
    p.add_argument("--restart", action="store_true", help="discard saved predictions and start over")
    p.add_argument("--export", default=None, metavar="FILE.json", help="also write the predictions in the official result format (VQAv2, GQA or COCO)")
    p.add_argument("--max-new-tokens", type=_positive_int, default=None, help="generation length (default: 10 for vqa, 30 for caption)")
    p.add_argument("--num-beams", type=_positive_int, default=1, help="beam width (default: 1, greedy)")
    p.add_argument("--prompt", default=None, help="captioning prompt (default: the model's)")
    p.add_argument("--template", action="append", dest="templates", help='classification template with {}, repeatable (default: an 8-template ensemble)')
    p.add_argument("--rerank", type=int, default=0, metavar="K", help="retrieval: re-rank the top K by the ITM head (BLIP-2 uses 128; default: off)")
    p.add_argument("--dataset-name", default=None, help="dataset name for the published figures (default: inferred from --data)")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--dtype", default=None, help="float32 (default), bfloat16 or float16")
    p.add_argument("--max-pixels", type=_positive_int, default=None, help="refuse images with more pixels (default: 100,000,000)")
    p.add_argument("--json", action="store_true", help="print the result as JSON instead of a table")
    p.set_defaults(run=run_eval)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-").lower() or "x"


def run_eval(args: argparse.Namespace) -> int:
    import vlmkit
    from vlmkit.eval import MODEL_TASK, EvalConfig, dataset_identity, evaluate, export_results
    from vlmkit.eval.export import EXPORT_FORMATS

    config = EvalConfig(
        task=args.task, data=args.data, batch_size=args.batch_size, limit=args.limit,
        max_new_tokens=args.max_new_tokens, num_beams=args.num_beams, prompt=args.prompt,
        templates=tuple(args.templates) if args.templates else None, rerank=args.rerank,
        dataset_name=args.dataset_name,
    )
    dataset, split = dataset_identity(args.data)
    export_kind = _export_kind(args.task, args.dataset_name or dataset) if args.export else None
    if args.export and export_kind is None:
        print(f"vlmkit: error: --export writes {', '.join(EXPORT_FORMATS)} result files: for vqa and caption runs only", file=sys.stderr)
        return 2
    model_name = args.model or vlmkit.DEFAULT_MODEL
    out = Path(args.out) if args.out else Path("vlmkit-eval") / (
        "-".join(_slug(p) for p in (args.task, Path(model_name).name, args.dataset_name or dataset, split) if p) + ".json"
    )
    predictions = Path(args.predictions) if args.predictions else out.with_suffix(".predictions.jsonl")
    from vlmkit.data import read_dataset

    read_dataset(args.data)  # a bad spec or a missing file fails here, before the model loads
    model = load_model(args)
    require(model, MODEL_TASK[args.task])
    result = evaluate(model, config, predictions=None if args.task == "retrieval" else predictions,
                      restart=args.restart, progress=show_progress(args))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(result.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(out)
    if args.json:
        print(json.dumps(result.to_dict(), ensure_ascii=False))
    else:
        print(result.to_markdown())
        print()
        resumed = f" ({result.resumed} resumed from saved predictions)" if result.resumed else ""
        print(f"result: {out}{resumed}")
        if result.predictions:
            print(f"predictions: {result.predictions}")
    if args.export and export_kind is not None:
        path = export_results(args.export, export_kind, {k: str(v) for k, v in result.outputs.items()})
        print(f"exported {len(result.outputs)} predictions for the {export_kind} evaluation server: {path}", file=sys.stderr)
    return 0


def _export_kind(task: str, dataset: str) -> str | None:
    if task == "vqa":
        return "gqa" if dataset == "gqa" else "vqav2"
    if task == "caption":
        return "coco"
    return None
