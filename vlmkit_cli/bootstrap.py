"""``vlmkit bootstrap``: CapFilt, BLIP's caption-and-filter bootstrapping of a noisy web dataset
(:func:`vlmkit.bootstrap.capfilt`)."""

from __future__ import annotations

import argparse
import json
import sys

from vlmkit.errors import InputError

from .common import _positive_int, progress


def register(sub: argparse._SubParsersAction) -> None:
    from vlmkit.bootstrap import BLIP_PROMPT, DEFAULT_THRESHOLD, SAMPLING
    from vlmkit.data import dataset_schemes

    p = sub.add_parser(
        "bootstrap",
        help="CapFilt: caption web images, keep the web texts and captions an ITM filter says match",
        description="BLIP's CapFilt: caption every web image, score every (image, web text) and (image, caption) pair with "
        "the filter's image-text matching head, keep the texts whose match probability is at least --threshold, and write "
        "the clean set + the kept texts as COCO caption JSON. A killed run, run again, continues where it stopped. "
        "Data specs: " + "; ".join(dataset_schemes()),
    )
    p.add_argument("--captioner", default=None, metavar="DIR",
                   help="a captioning checkpoint, e.g. the model/ folder of a `vlmkit train blip` run (task=caption); "
                   "leave it out to filter the web texts only")
    p.add_argument("--filter", default=None, dest="filter_model", metavar="DIR",
                   help="a checkpoint with an ITM head, e.g. the retrieval/ folder of a `vlmkit train blip` run (task=retrieval); "
                   "leave it out to keep every web text and synthetic caption")
    p.add_argument("--web", required=True, metavar="SPEC", help="the noisy web set: a dataset spec whose captions are the web texts")
    p.add_argument("--clean", default=None, metavar="SPEC", help="the clean (human-annotated) set, copied into the output as it is")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the dataset, its images, the report and the resume journal")
    p.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                   help=f"keep a text when its match probability is at least this, in [0, 1] (default: {DEFAULT_THRESHOLD})")
    p.add_argument("--sampling", choices=tuple(SAMPLING), default="nucleus",
                   help="synthetic captions by nucleus sampling (top_p 0.9, BLIP's choice; default) or beam search (3 beams)")
    p.add_argument("--prompt", default=BLIP_PROMPT, help=f'the captioner\'s prompt (default: "{BLIP_PROMPT}", BLIP\'s; "" for none)')
    p.add_argument("--seed", type=int, default=0, help="seed of the nucleus sampling (default: 0)")
    p.add_argument("--batch-size", type=_positive_int, default=8, help="images per model call (default: 8)")
    p.add_argument("--engine", choices=("local", "ray"), default="local", help="this process (default) or a Ray cluster, as vlmkit index")
    p.add_argument("--address", default=None, help="with --engine ray: the cluster's address (default: start a local one)")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--dtype", default=None, help="float32 (default), bfloat16 or float16")
    p.add_argument("--max-pixels", type=_positive_int, default=None, help="refuse images with more pixels (default: 100,000,000)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(run=run_bootstrap)


def run_bootstrap(args: argparse.Namespace) -> int:
    import vlmkit
    from vlmkit.bootstrap import REPORT_FILE, capfilt, check_threshold

    check_threshold(args.threshold)  # before any model loads
    if args.captioner is None and args.filter_model is None:
        raise InputError("give --captioner, --filter or both (without either there is nothing to bootstrap)")
    captioner, filter_model = (None if name is None else vlmkit.load(name, device=args.device, dtype=args.dtype)
                               for name in (args.captioner, args.filter_model))
    bar = None

    def on_plan(total: int) -> None:
        nonlocal bar
        bar = progress(total, args, "captioning and filtering", leave=True)

    try:
        report = capfilt(
            captioner, filter_model, args.web, args.out, clean=args.clean, threshold=args.threshold, sampling=args.sampling,
            prompt=args.prompt or None, seed=args.seed, batch_size=args.batch_size, max_pixels=args.max_pixels,
            engine=args.engine, ray_address=args.address, progress=lambda n: bar.update(n) if bar is not None else None,
            on_plan=on_plan,
        )
    finally:
        if bar is not None:
            bar.close()
    for skipped in report.skipped:
        print(f"vlmkit: skipped {skipped.path}: {skipped.reason}", file=sys.stderr)
    if args.json:
        print(json.dumps(report.to_json()))
    else:
        print(report.summary())
    print(f"vlmkit: the dataset is {report.dataset} (COCO caption JSON), the report {args.out}/{REPORT_FILE}; it reads as the "
          f"dataset spec {report.spec}: `vlmkit eval caption --data {report.spec} --model DIR` scores a captioner on it, and "
          f"`vlmkit train blip --set data.spec={report.spec} --set train_size={report.clean_images + report.web_images_kept} --out RUN` "
          "pre-trains BLIP on all of it, and "
          "vlmkit.data.read_dataset(SPEC) gives its examples in Python. Run the same command again to continue after an "
          "interruption, or with another --threshold to refilter without captioning again.", file=sys.stderr)
    if report.skipped:
        print(f"vlmkit: {len(report.skipped)} web image{'s' if len(report.skipped) != 1 else ''} could not be read (listed above); "
              "their texts are left out", file=sys.stderr)
        return 1
    return 0
