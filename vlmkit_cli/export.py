"""``vlmkit export onnx MODEL --out DIR [--int8]``: a dual encoder's towers as ONNX graphs
(:func:`vlmkit.onnx_export.export_onnx`), for fast CPU embeddings on ONNX Runtime."""

from __future__ import annotations

import argparse
import json
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a model for another runtime (onnx: the image and text towers for ONNX Runtime)")
    formats = p.add_subparsers(dest="format", metavar="FORMAT")
    onnx = formats.add_parser(
        "onnx",
        help="the image and text towers of CLIP, SigLIP, the built-in or a vlmkit dual encoder as ONNX graphs",
        description="Export the image and text towers (each giving L2-normalised embeddings, dynamic batch) with the "
        "tokenizer, the image preprocessing and the logit scale into DIR; `vlmkit ... --model DIR` and vlmkit.load(DIR) "
        "then run them on ONNX Runtime. An fp32 export keeps the model's name (its embeddings are the same); an int8 "
        "one is named MODEL+onnx-int8.",
    )
    onnx.add_argument("model", metavar="MODEL", help="built-in name, checkpoint directory or hub id")
    onnx.add_argument("--out", required=True, metavar="DIR", help="new (or empty) directory to write the export to")
    onnx.add_argument("--int8", action="store_true",
                      help="quantise both towers' MatMul/Gemm weights to int8 (ONNX Runtime dynamic quantisation; convolutions stay fp32)")
    onnx.add_argument("--json", action="store_true", help="print the export's config as JSON")
    onnx.set_defaults(run=run_export_onnx)
    p.set_defaults(run=lambda args: _missing_format(p))


def _missing_format(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def run_export_onnx(args: argparse.Namespace) -> int:
    import vlmkit
    from vlmkit.models.onnx import OnnxEncoder
    from vlmkit.onnx_export import check_exportable, export_onnx

    def say(message: str) -> None:
        print(f"vlmkit: {message}", file=sys.stderr, flush=True)

    say(f"loading {args.model}")
    model = vlmkit.load(args.model)
    check_exportable(model)  # a one-line error for a captioner, before any work
    out = export_onnx(model, args.out, int8=args.int8, progress=say)
    say("checking the export loads")
    loaded = vlmkit.load(out)
    assert isinstance(loaded, OnnxEncoder)
    config = loaded.config
    if args.json:
        meta = json.loads((out / "config.json").read_text())
        print(json.dumps({"out": str(out), **meta}))
    else:
        print(f"{out}: {config.source_family} ({config.source_architecture}) {config.precision}, {config.embed_dim}-d embeddings, "
              f"name {config.name!r}")
    same = ("an image index built with the torch model can be searched with it" if config.precision == "fp32"
            else "its embeddings differ from the torch model's, so index with it to search with it")
    print(f"next: `vlmkit embed IMAGE --model {out}`, `vlmkit classify IMAGE --labels cat,dog --model {out}`, "
          f"`vlmkit serve --model {out}`; {same}", file=sys.stderr)
    return 0
