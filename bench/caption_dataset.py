"""Captioning a dataset: ``vlmkit caption DIR --out captions.jsonl`` (the library's
:func:`vlmkit.captioning.caption_dataset`) against the loop a user writes today,

    for path in paths:
        rows.append({"image": path, "caption": model.caption([path])[0]})

with the same loaded model, on the same JPEGs, in the same run. Two models: the built-in
(EfficientNet-Lite0 + MiniLM, ConSE captions) and a random-weight BLIP at
Salesforce/blip-image-captioning-base's size (``BlipConfig()`` defaults, built offline by
``bench/_fixtures.build_blip_caption``; greedy decoding of random weights runs to the full
``--max-new-tokens``, so its figures are an upper bound on a trained model's time per caption).

The photos are ``bench/_fixtures.write_photos``' phone/web-size JPEGs made from
scikit-image's sample photos. Each contender runs one untimed warm-up on a few images, then
``--repeats`` timed passes interleaved (loop, dataset, loop, dataset, ...) so slow drifts of a
shared machine hit both; a fresh output file per pass. Figures: median images/s of each and their
ratio. The script also checks that both produce the same caption for every image. Run it with
nothing else working on the machine (it waits up to 60 s for other processes to go idle before
each pass and prints how busy the rest of the machine was).

Run: ``python bench/caption_dataset.py [--images 48] [--repeats 3] [--batch-size 16] [--models default blip]``
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import vlmkit
from vlmkit import GenerationOptions
from vlmkit.captioning import caption_dataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _fixtures import build_blip_caption, write_photos  # noqa: E402 - bench/ is not a package
from _measure import describe_pass, timed  # noqa: E402


def plain_loop(model: vlmkit.VisionLanguageModel, paths: list[Path], max_new_tokens: int) -> dict[str, str]:
    return {str(p): model.caption([str(p)], options=GenerationOptions(max_new_tokens=max_new_tokens))[0] for p in paths}


def dataset_run(model: vlmkit.VisionLanguageModel, folder: Path, out: Path, batch_size: int, max_new_tokens: int) -> dict[str, str]:
    report = caption_dataset(model, [folder], out=out, batch_size=batch_size, generation=GenerationOptions(max_new_tokens=max_new_tokens))
    assert not report.skipped and report.done == report.found, report.summary()
    return {r["image"]: r["caption"] for r in map(json.loads, out.read_text().splitlines())}


def compare(name: str, model: vlmkit.VisionLanguageModel, paths: list[Path], folder: Path, work: Path,
            args: argparse.Namespace) -> dict[str, float]:
    """Interleaved timed passes of the loop and the dataset run; medians and their ratio."""
    loop_s, data_s = [], []
    for r in range(args.repeats):
        loop_pass, looped = timed(lambda: plain_loop(model, paths, args.max_new_tokens), wait_idle=60)
        out = work / f"{name}-{r}.jsonl"
        data_pass, rows = timed(lambda out=out: dataset_run(model, folder, out, args.batch_size, args.max_new_tokens), wait_idle=60)
        same = sum(looped[k] == rows.get(k) for k in looped)
        print(f"  {name} pass {r + 1}: loop {args.images / loop_pass.seconds:.2f} img/s ({describe_pass(loop_pass)}); "
              f"dataset {args.images / data_pass.seconds:.2f} img/s ({describe_pass(data_pass)}); same captions {same}/{len(looped)}")
        loop_s.append(loop_pass.seconds)
        data_s.append(data_pass.seconds)
    loop_rate, data_rate = args.images / statistics.median(loop_s), args.images / statistics.median(data_s)
    print(f"{name}: plain loop {loop_rate:.2f} img/s, vlmkit caption --out {data_rate:.2f} img/s: "
          f"{data_rate / loop_rate:.2f}x (medians of {args.repeats})")
    return {"loop_img_s": round(loop_rate, 2), "dataset_img_s": round(data_rate, 2), "ratio": round(data_rate / loop_rate, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=48, help="JPEGs to caption per pass (default: 48)")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per contender (default: 3)")
    parser.add_argument("--batch-size", type=int, default=16, help="images per model call for the dataset run (default: 16)")
    parser.add_argument("--max-new-tokens", type=int, default=20, help="caption length limit for both (default: 20)")
    parser.add_argument("--models", nargs="+", default=["default", "blip"], choices=["default", "blip"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print("# captioning a dataset: vlmkit caption DIR --out vs. a per-image loop")
    print(f"# {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
          f"{args.images} JPEGs, {args.repeats} timed passes each, batch {args.batch_size}, max_new_tokens {args.max_new_tokens}")
    figures = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        folder = work / "photos"
        paths = write_photos(folder, args.images, args.seed)
        for name in args.models:
            model = vlmkit.load("default" if name == "default" else str(build_blip_caption(work / "blip", args.seed)))
            warm = work / f"warm-{name}"
            warm.mkdir()
            for p in paths[:4]:
                (warm / p.name).write_bytes(p.read_bytes())
            plain_loop(model, sorted(warm.iterdir()), args.max_new_tokens)
            dataset_run(model, warm, work / f"warm-{name}.jsonl", args.batch_size, args.max_new_tokens)
            figures[name] = compare(name, model, paths, folder, work, args)
            del model
    print(json.dumps(figures))
    print(f"# finished {time.strftime('%Y-%m-%d %H:%M')}")


if __name__ == "__main__":
    main()
