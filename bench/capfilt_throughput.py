"""CapFilt throughput (issue 18): a bootstrapped web set of ``--images`` shapes scenes (20,000 by
default) captioned and filtered by :func:`vlmkit.bootstrap.capfilt`, in images/s, once in this
process (``engine="local"``) and once on a local Ray cluster of two worker nodes (``engine="ray"``),
and whether both keep the same (image, text) pairs.

The figure is about throughput, not quality: without ``--captioner``/``--filter`` the script first
trains a short BLIP pre-training run (``vlmkit train blip``, preset ``shapes``, ``--train-steps``
steps on 2,000 scenes; into ``OUT/blip``, reused when already there) whose ``model/`` is the
captioner and ``retrieval/`` the ITM filter. Its captions and filter decisions are those of a
barely trained model; the sizes (a 4-layer ViT on 64-pixel images, a 2-layer MED 128 wide) are the
offline recipe's.

Web set: ``--images`` scenes of the shapes world's training stream with ``--seed`` (1 by default;
the training run uses seed 0) as a noisy web crawl (:func:`vlmkit.data.make_web_split`): each with
ONE web text, about half of them true, the others wrong in a colour, shape, count or position, or
another scene's text. Deterministic by seed.

Both runs use beam search (3 beams: nucleus sampling differs between the engines by design, see
:mod:`vlmkit.bootstrap`) and ``--threshold`` (0.5). Timing: a run's images/s is the report's
(images captioned and filtered / ``CapFiltReport.seconds``). Those seconds include writing the
in-memory scenes as PNG files into the run's folder (``capfilt`` does it before it captions: Ray
actors read files), so that part is also timed on its own (from the call to ``on_plan``) and the
model part (``on_plan`` to the last image) is reported beside it. At the default size the PNG
writing is a few percent of the run (about 0.3 ms a 64-pixel scene). Models are loaded before the
local run's clock starts; Ray's actors load both models inside the timed part (what a user of
``--engine ray`` waits for): "first result" says how long the first image took to come back.

Ray: a head node with 0 CPUs and 2 worker nodes of 1 CPU each (``ray.cluster_utils.Cluster``,
as tests/test_index_ray.py builds it). ``RayEngine`` puts half the cluster's CPUs into model actors
(here one actor on one CPU) and decodes on the rest. The kept sets are compared from the two
``captions.json`` files: (image id, text) pairs in each, pairs only in one of them, synthetic
captions that differ (from the journals), and the largest |difference| of the filter's
probabilities by image. Nothing is asserted: the script prints what it measured, and exits
non-zero only on errors.

Each run starts from an empty folder (``OUT/local``, ``OUT/ray``: a journal left there would make
``capfilt`` resume). Progress bars on a terminal (not with ``VLMKIT_NO_PROGRESS`` set).

Run: ``python bench/capfilt_throughput.py [--images 20000] [--captioner DIR --filter DIR] [--out DIR]
[--batch-size 32] [--skip-ray]``; ``--images 300`` is a smoke run of a few minutes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TRAIN_SIZE = 2000
#: Files of a capfilt run folder: a folder holding one is taken for a run's and emptied before a run.
RUN_MARKERS = ("settings.json", "journal.jsonl")


# -- the models ----------------------------------------------------------------------------------------


def trained_blip(out: Path, steps: int) -> tuple[Path, Path]:
    """A short BLIP pre-training run in ``out`` (reused when its exports are there): (captioner, filter)."""
    from vlmkit_train.blip import RETRIEVAL_DIR, blip_train_config, train_blip
    from vlmkit_train.driver import MODEL_DIR

    captioner, filter_dir = out / MODEL_DIR, out / RETRIEVAL_DIR
    if (captioner / "config.json").is_file() and (filter_dir / "config.json").is_file():
        print(f"# reusing the BLIP pre-training run in {out}")
    else:
        print(f"# training BLIP (preset shapes, {steps} steps on {TRAIN_SIZE} scenes) into {out}")
        start = time.perf_counter()
        config = blip_train_config("shapes", [f"max_steps={steps}", f"train_size={TRAIN_SIZE}", "log_every=50"])
        train_blip(config, out, progress=_show_progress())
        print(f"# trained in {time.perf_counter() - start:.0f} s")
    return captioner, filter_dir


def default_prompt(captioner: Path) -> str | None:
    """BLIP's prompt for a captioner fine-tuned with it (``task=caption``), none for a pre-training
    run's (its LM loss has no prompt) or a checkpoint that does not say."""
    from vlmkit.bootstrap import BLIP_PROMPT

    run_config = captioner.parent / "config.json"
    try:
        task = json.loads(run_config.read_text()).get("task")
    except (OSError, ValueError, AttributeError):
        task = None
    return BLIP_PROMPT if task == "caption" else None


# -- the web set ---------------------------------------------------------------------------------------


def web_set(n: int, seed: int) -> tuple[list[Any], list[bool]]:
    """``n`` shapes scenes as a noisy web crawl (:func:`vlmkit.data.make_web_split`: one text each,
    about half of them wrong), and which texts are true."""
    from vlmkit.data import make_web_split

    examples, noise = make_web_split(n, seed)
    return examples, [kind == "" for kind in noise]


# -- the Ray cluster -----------------------------------------------------------------------------------


@contextlib.contextmanager
def local_cluster(workers: int = 2, cpus: int = 1) -> Iterator[Any]:
    """A Ray cluster on this machine: a head node with no CPUs (so it runs no tasks) and ``workers``
    nodes of ``cpus`` CPUs each; Ray is initialised on it for the duration."""
    import ray
    from ray.cluster_utils import Cluster

    # Ray's usage-stats collector logs a refused connection to a Prometheus server after every
    # dataset: noise. The variable is read by the driver and by the nodes it starts.
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    try:
        for _ in range(workers):
            cluster.add_node(num_cpus=cpus)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        try:
            yield ray
        finally:
            ray.shutdown()
    finally:
        cluster.shutdown()


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def worker_threads(ray: Any) -> int:
    """torch's thread count in a 1-CPU task on a worker node (what each model actor runs with)."""
    return int(ray.get(ray.remote(num_cpus=1)(_torch_threads).remote()))


# -- one run -------------------------------------------------------------------------------------------


def _show_progress() -> bool:
    return sys.stderr.isatty() and not os.environ.get("VLMKIT_NO_PROGRESS")


def _fresh(folder: Path) -> None:
    """Empty a previous run's folder (its journal would make capfilt resume instead of measuring)."""
    if folder.exists():
        if any(folder.iterdir()) and not any((folder / name).exists() for name in RUN_MARKERS):
            raise SystemExit(f"{folder} exists and is not a CapFilt run folder: give another --out")
        shutil.rmtree(folder)


def run_capfilt(name: str, captioner: Any, filter_model: Any, web: list[Any], out: Path, args: argparse.Namespace,
                prompt: str | None, engine: str) -> dict[str, Any]:
    """One timed capfilt run into a fresh ``out``: its figures."""
    from tqdm import tqdm

    from vlmkit.bootstrap import capfilt

    _fresh(out)
    marks: dict[str, float] = {}
    bar: Any = None

    def on_plan(total: int) -> None:
        nonlocal bar
        marks["plan"] = time.perf_counter()
        bar = tqdm(total=total, desc=f"{name}: captioning and filtering", unit="img", disable=not _show_progress(),
                   file=sys.stderr, leave=True)

    def progress(n: int) -> None:
        marks.setdefault("first", time.perf_counter())
        marks["last"] = time.perf_counter()
        if bar is not None:
            bar.update(n)

    load = os.getloadavg()[0]
    marks["call"] = time.perf_counter()
    try:
        report = capfilt(captioner, filter_model, web, out, threshold=args.threshold, sampling="beam", prompt=prompt,
                         batch_size=args.batch_size, engine=engine, progress=progress, on_plan=on_plan)  # type: ignore[arg-type]
    finally:
        if bar is not None:
            bar.close()
    marks["end"] = time.perf_counter()
    print(report.summary())
    done = report.done
    png = marks["plan"] - marks["call"]  # reading the web set, writing its PNGs, opening the journal
    model = marks.get("last", marks["plan"]) - marks["plan"]
    steady = marks.get("last", 0.0) - marks.get("first", 0.0)
    return {
        "engine": engine,
        "images": done,
        "seconds": round(report.seconds, 2),
        "images_per_s": round(done / report.seconds, 2) if report.seconds > 0 else None,
        "png_seconds": round(png, 2),
        "caption_filter_seconds": round(model, 2),
        "caption_filter_images_per_s": round(done / model, 2) if model > 0 else None,
        "first_result_seconds": round(marks.get("first", marks["plan"]) - marks["plan"], 2),
        # after start-up (Ray: the cluster's tasks and actors, both models loaded in each actor)
        "after_first_images_per_s": round((done - 1) / steady, 2) if done > 1 and steady > 0 else None,
        "call_seconds": round(marks["end"] - marks["call"], 2),
        "kept_web_texts": report.web.kept,
        "kept_synthetic_captions": report.synthetic.kept,
        "web_images_kept": report.web_images_kept,
        "load_average_at_start": round(load, 2),
        "report": report.to_json(),
    }


# -- comparing two runs --------------------------------------------------------------------------------


def kept_pairs(folder: Path) -> set[tuple[str, str]]:
    data = json.loads((folder / "captions.json").read_text(encoding="utf-8"))
    return {(a["image_id"], a["caption"]) for a in data["annotations"]}


def journal(folder: Path) -> dict[str, dict[str, Any]]:
    rows = (json.loads(line) for line in (folder / "journal.jsonl").read_text(encoding="utf-8").splitlines() if line.strip())
    return {row["image"]: row for row in rows}


def batch_sizes(rows: dict[str, dict[str, Any]]) -> dict[int, int]:
    """How many batches of each size a journal's rows came in."""
    sizes = {row["batch"]: row["n"] for row in rows.values() if "batch" in row}
    counts: dict[int, int] = {}
    for n in sizes.values():
        counts[n] = counts.get(n, 0) + 1
    return dict(sorted(counts.items()))


def compare(a: Path, b: Path, threshold: float) -> dict[str, Any]:
    """The kept (image, text) pairs of two runs' datasets and their journals, side by side."""
    pairs_a, pairs_b = kept_pairs(a), kept_pairs(b)
    rows_a, rows_b = journal(a), journal(b)
    differ = sorted(k for k in rows_a if k in rows_b and rows_a[k].get("caption") != rows_b[k].get("caption"))
    web_diff, synthetic_diff, near = 0.0, 0.0, 0
    for k, row in rows_a.items():
        other = rows_b.get(k)
        if other is None or "web" not in row or "web" not in other:
            continue
        for p, q in zip(row["web"], other["web"], strict=True):
            web_diff = max(web_diff, abs(p - q))
            near += min(abs(p - threshold), abs(q - threshold)) < 1e-4
        if row["caption"] == other["caption"] and row["synthetic"] is not None and other["synthetic"] is not None:
            synthetic_diff = max(synthetic_diff, abs(row["synthetic"] - other["synthetic"]))
    return {
        "pairs": [len(pairs_a), len(pairs_b)],
        "only_in_first": sorted(pairs_a - pairs_b)[:20],
        "only_in_second": sorted(pairs_b - pairs_a)[:20],
        "only_in_first_count": len(pairs_a - pairs_b),
        "only_in_second_count": len(pairs_b - pairs_a),
        "journal_images": [len(rows_a), len(rows_b)],
        "synthetic_captions_differ": len(differ),
        "synthetic_differences": [(k, rows_a[k]["caption"], rows_b[k]["caption"]) for k in differ[:10]],
        "max_abs_web_probability_difference": web_diff,
        "max_abs_synthetic_probability_difference": synthetic_diff,
        "web_probabilities_within_1e-4_of_threshold": near,
        "batch_sizes": [batch_sizes(rows_a), batch_sizes(rows_b)],
    }


def web_truth(folder: Path, web: list[Any], true: list[bool]) -> dict[str, int]:
    """Kept web texts against what we know of them (a sanity check of the filter, not a figure)."""
    pairs = kept_pairs(folder)
    kept = [(f"web/{e.id}", e.captions[0]) in pairs for e in web]
    return {"true_texts": sum(true), "true_kept": sum(k and t for k, t in zip(kept, true, strict=True)),
            "wrong_texts": len(true) - sum(true), "wrong_kept": sum(k and not t for k, t in zip(kept, true, strict=True))}


# -- the script ----------------------------------------------------------------------------------------


def table(runs: list[dict[str, Any]]) -> str:
    head = f"{'engine':<8} {'images':>7} {'seconds':>9} {'images/s':>9} {'(model part)':>13} {'kept web texts':>15} {'kept synthetic':>15}"
    lines = [head, "-" * len(head)]
    for r in runs:
        lines.append(f"{r['engine']:<8} {r['images']:>7} {r['seconds']:>9.1f} {r['images_per_s'] or 0:>9.2f} "
                     f"{r['caption_filter_images_per_s'] or 0:>13.2f} {r['kept_web_texts']:>15} {r['kept_synthetic_captions']:>15}")
    return "\n".join(lines)


def bench(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    import torch

    import vlmkit

    if args.captioner and args.filter:
        captioner_dir, filter_dir = Path(args.captioner), Path(args.filter)
    else:
        captioner_dir, filter_dir = trained_blip(out / "blip", args.train_steps)
    prompt = default_prompt(captioner_dir) if args.prompt is None else (args.prompt or None)
    captioner, filter_model = vlmkit.load(str(captioner_dir)), vlmkit.load(str(filter_dir))
    start = time.perf_counter()
    web, true = web_set(args.images, args.seed)
    print(f"# web set: {len(web)} shapes scenes (seed {args.seed}), one web text each, {sum(true)} true and "
          f"{len(true) - sum(true)} wrong ({time.perf_counter() - start:.1f} s to render)")
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{torch.get_num_threads()} torch threads in this process; beam search (3 beams), prompt {prompt!r}, "
          f"threshold {args.threshold:g}, batch {args.batch_size}")
    figures: dict[str, Any] = {
        "images": len(web), "seed": args.seed, "batch_size": args.batch_size, "threshold": args.threshold, "sampling": "beam",
        "prompt": prompt, "captioner": str(captioner_dir), "filter": str(filter_dir), "torch_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(), "runs": {},
    }
    runs = figures["runs"]
    runs["local"] = run_capfilt("local", captioner, filter_model, web, out / "local", args, prompt, "local")
    figures["web_truth"] = web_truth(out / "local", web, true)
    if not args.skip_ray:
        with local_cluster(workers=2, cpus=1) as ray:
            nodes = [n for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU")]
            threads = worker_threads(ray)
            print(f"# Ray {ray.__version__}: {len(nodes)} worker nodes of 1 CPU (head: 0 CPUs), {threads} torch thread(s) "
                  "in a 1-CPU task there")
            figures["ray"] = {"worker_nodes": len(nodes), "worker_torch_threads": threads}
            runs["ray"] = run_capfilt("ray", captioner, filter_model, web, out / "ray", args, prompt, "ray")
        figures["local_vs_ray"] = compare(out / "local", out / "ray", args.threshold)
    return figures


def report(figures: dict[str, Any]) -> None:
    runs = list(figures["runs"].values())
    for r in runs:
        print(f"# {r['engine']}: {r['images']} images in {r['seconds']:.1f} s = {r['images_per_s']} images/s (the report's); "
              f"of which {r['png_seconds']:.1f} s writing the in-memory scenes as PNG files before captioning, "
              f"{r['caption_filter_seconds']:.1f} s captioning and filtering ({r['caption_filter_images_per_s']} images/s; "
              f"first result after {r['first_result_seconds']:.1f} s, {r['after_first_images_per_s']} images/s after it); load average {r['load_average_at_start']} at start")
    truth = figures["web_truth"]
    print(f"# filter sanity (local run): kept {truth['true_kept']} of {truth['true_texts']} true web texts, "
          f"{truth['wrong_kept']} of {truth['wrong_texts']} wrong ones")
    if "local_vs_ray" in figures:
        c = figures["local_vs_ray"]
        print(f"# kept (image, text) pairs: local {c['pairs'][0]}, ray {c['pairs'][1]}; only local {c['only_in_first_count']}, "
              f"only ray {c['only_in_second_count']}; synthetic captions that differ: {c['synthetic_captions_differ']} "
              f"of {c['journal_images'][0]} images")
        print(f"# largest |filter probability difference| by image: web texts {c['max_abs_web_probability_difference']:.3g}, "
              f"synthetic captions (where the same) {c['max_abs_synthetic_probability_difference']:.3g}; "
              f"{c['web_probabilities_within_1e-4_of_threshold']} web probabilities within 1e-4 of the threshold")
        print(f"# batches (size: count): local {c['batch_sizes'][0]}, ray {c['batch_sizes'][1]}")
        for pair in c["only_in_first"][:5]:
            print(f"#   only local: {pair}")
        for pair in c["only_in_second"][:5]:
            print(f"#   only ray:   {pair}")
        for key, a, b in c["synthetic_differences"][:5]:
            print(f"#   {key}: local {a!r} / ray {b!r}")
    print(table(runs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=20000, help="web images (default: 20000)")
    parser.add_argument("--captioner", default=None, metavar="DIR", help="a captioning checkpoint (with --filter; default: train one)")
    parser.add_argument("--filter", default=None, metavar="DIR", help="a checkpoint with an ITM head (with --captioner)")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="keep the BLIP run, both runs' folders and figures.json here (default: a temporary directory)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per model call (default: 32)")
    parser.add_argument("--skip-ray", action="store_true", help="the local run only")
    parser.add_argument("--threshold", type=float, default=0.5, help="the filter's threshold (default: 0.5)")
    parser.add_argument("--seed", type=int, default=1, help="the web set's seed (default: 1; training uses 0)")
    parser.add_argument("--train-steps", type=int, default=200, help="steps of the BLIP pre-training run made without --captioner")
    parser.add_argument("--prompt", default=None,
                        help='the captioner\'s prompt (default: "a picture of" for a task=caption run, none for a pre-training run)')
    args = parser.parse_args()
    if bool(args.captioner) != bool(args.filter):
        parser.error("give both --captioner and --filter, or neither (a BLIP run is trained)")
    if args.images < 1 or args.batch_size < 1:
        parser.error("--images and --batch-size must be >= 1")
    began = time.perf_counter()
    with contextlib.ExitStack() as stack:
        out = Path(args.out) if args.out else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="vlmkit-capfilt-")))
        figures = bench(args, out)
        figures["total_minutes"] = round((time.perf_counter() - began) / 60, 2)
        (out / "figures.json").write_text(json.dumps(figures, indent=1))
        report(figures)
        print(f"# figures: {out / 'figures.json'}" + ("" if args.out else " (temporary: give --out to keep it)"))
    print(f"# finished {time.strftime('%Y-%m-%d %H:%M')}, {figures['total_minutes']} min")


if __name__ == "__main__":
    main()
