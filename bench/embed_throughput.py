"""Image-embedding throughput: vlmkit vs. the plain transformers code a user would write.

What is measured
----------------
A CLIP checkpoint with the real ViT-B/32 architecture (``CLIPConfig()`` defaults: vision tower
768 wide, 12 layers, 32 px patches on 224 px images; text tower 512 wide, 12 layers) is built
with *random* weights -- speed does not depend on the values -- and saved with ``save_pretrained``
(safetensors) next to a ``CLIPProcessor`` whose image processor has the settings of
openai/clip-vit-base-patch32 (shortest edge to 224, bicubic; centre crop 224; CLIP mean/std) and
a CLIP BPE tokenizer built offline by ``vlmkit.testing.make_clip_tokenizer``
(``bench/_fixtures.py``'s ``build_clip_checkpoint``). Nothing is downloaded.

``--images`` JPEG files (quality 90) are written from scikit-image's sample photos (astronaut,
chelsea, coffee, rocket, the motorcycle stereo pair, the Hubble deep field), randomly cropped,
flipped, colour-jittered, upscaled to phone/web photo sizes between 640x480 and 1600x1200 (both
orientations) and given a little sensor-like noise so they compress like real photos. All of it
is deterministic for a given ``--seed`` (``bench/_fixtures.py``'s ``write_photos``).

Three contenders turn the JPEG paths into L2-normalised float32 vectors, timed end to end
(decode + preprocess + model), with every model loaded before timing:

(a) the plain transformers loop: per path ``Image.open(p).convert("RGB")``, ``CLIPProcessor``,
    ``model.get_image_features`` (``.pooler_output`` in transformers 5), normalise -- one image at
    a time under ``torch.inference_mode()``;
(b) the same, ``--batch-size`` images per processor and model call;
(c) ``vlmkit.load(checkpoint).embed_images(paths, batch_size=...)``.

Each contender first runs one warm-up pass (not timed); then ``--repeats`` timed passes are run,
interleaved across contenders (a, b, c, a, b, c, ...) so that slow drifts of a shared machine hit
all of them alike, and the median pass is reported. The script checks that (c)'s vectors agree
with (b)'s (minimum cosine over corresponding rows: vlmkit decodes large JPEGs at reduced scale
with PIL's draft mode, so expect > 0.99 but not exactly 1).

Finally it breaks the batched path down per image, each stage timed alone on one thread of
Python (torch keeps its own intra-op threads): full-size JPEG decode vs. draft-mode decode
(``vlmkit.images.load_image(p, draft_size=224)``), the CLIP image processor (resize, crop,
normalise) on full-size and on draft-decoded images, and the model forward at batch
``--batch-size`` and at batch 1.

How to run
----------
::

    python bench/embed_throughput.py                 # defaults: 128 images, 3 repeats
    python bench/embed_throughput.py --bf16          # also (b16) and (c16) with bfloat16 weights
    python bench/embed_throughput.py --images 256 --repeats 5 --out-dir /tmp/embed-bench
    python bench/embed_throughput.py --wait-idle 120  # on a shared machine

``--out-dir`` keeps the checkpoint and JPEGs (by default a temporary directory, removed at the
end). On an idle 2-core CPU the default run takes about 3 minutes (190 s measured); the ViT-B/32
forward dominates, so ``--images`` defaults to 128 rather than 256, which takes about 6 minutes.

Every pass also reports how many CPU cores this process and all *other* processes kept busy
(from ``/proc/stat``). Competing load distorts the figures badly -- one-image-at-a-time forwards
with two OpenMP threads slow down several-fold when another process takes a core -- so the script
warns when other processes used more than a quarter of a core, and ``--wait-idle SECONDS`` makes
it wait (up to SECONDS) for the machine to go idle before each timed pass and the breakdown.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import PIL
import torch
import transformers
from _fixtures import build_clip_checkpoint, write_photos  # bench/ is sys.path[0] when run
from _measure import Pass, describe_pass, per_item_ms, timed
from PIL import Image, features

import vlmkit
from vlmkit.images import load_image

# --------------------------------------------------------------------------------------------------
# Contenders
# --------------------------------------------------------------------------------------------------


def l2_normalise(x: torch.Tensor) -> np.ndarray:
    return torch.nn.functional.normalize(x.float(), dim=-1).numpy().astype(np.float32)


def transformers_loop(paths: Sequence[Path], model: transformers.CLIPModel, processor) -> np.ndarray:
    """(a) What a user writes first: one image at a time."""
    vectors = []
    with torch.inference_mode():
        for path in paths:
            image = Image.open(path).convert("RGB")
            inputs = processor(images=image, return_tensors="pt")
            vectors.append(l2_normalise(model.get_image_features(**inputs).pooler_output))
    return np.concatenate(vectors)


def transformers_batched(
    paths: Sequence[Path], model: transformers.CLIPModel, processor, batch_size: int
) -> np.ndarray:
    """(b) The same, ``batch_size`` images per processor and model call."""
    vectors = []
    with torch.inference_mode():
        for start in range(0, len(paths), batch_size):
            images = [Image.open(path).convert("RGB") for path in paths[start : start + batch_size]]
            pixels = processor(images=images, return_tensors="pt")["pixel_values"].to(model.dtype)
            vectors.append(l2_normalise(model.get_image_features(pixel_values=pixels).pooler_output))
    return np.concatenate(vectors)


# --------------------------------------------------------------------------------------------------
# Breakdown
# --------------------------------------------------------------------------------------------------


def breakdown(
    paths: Sequence[Path],
    model: transformers.CLIPModel,
    image_processor,
    batch_size: int,
    draft_size: int,
    single_images: int,
) -> dict[str, float]:
    """Milliseconds per image for each stage of the batched path, each stage timed on its own."""
    n = len(paths)
    out: dict[str, float] = {}
    full: list[Image.Image] = []
    draft: list[Image.Image] = []

    def decode_full() -> None:
        full.extend(Image.open(path).convert("RGB") for path in paths)

    def decode_draft() -> None:
        draft.extend(load_image(path, draft_size=draft_size) for path in paths)

    out["decode_full"] = per_item_ms(decode_full, n)
    out["decode_draft"] = per_item_ms(decode_draft, n)
    out["mpix_full"] = statistics.fmean(im.width * im.height for im in full) / 1e6
    out["mpix_draft"] = statistics.fmean(im.width * im.height for im in draft) / 1e6

    def process_batched(images: list[Image.Image]) -> list[torch.Tensor]:
        return [
            image_processor(images=images[s : s + batch_size], return_tensors="pt")["pixel_values"]
            for s in range(0, len(images), batch_size)
        ]

    out["proc_full_batched"] = per_item_ms(lambda: process_batched(full), n)
    out["proc_draft_batched"] = per_item_ms(lambda: process_batched(draft), n)
    # vlmkit calls the image processor once per image, on its decode threads.
    out["proc_draft_single"] = per_item_ms(
        lambda: [image_processor(images=[im], return_tensors="pt") for im in draft], n
    )
    full.clear()  # free the full-size images
    pixel_batches = process_batched(draft)
    draft.clear()

    with torch.inference_mode():
        batch_ms = []
        for pixels in pixel_batches:
            if len(pixels) == batch_size:
                batch_ms.append(
                    per_item_ms(lambda p=pixels: model.get_image_features(pixel_values=p), batch_size)
                )
        out["forward_batched"] = statistics.median(batch_ms)
        single = torch.cat(pixel_batches)[:single_images]
        model.get_image_features(pixel_values=single[:1])  # batch-1 shapes warm up separately
        single_ms = [
            per_item_ms(lambda p=single[i : i + 1]: model.get_image_features(pixel_values=p), 1)
            for i in range(len(single))
        ]
        out["forward_single"] = statistics.median(single_ms)
    return out


# --------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--images", type=int, default=128, help="number of JPEGs (default 128; 256 takes ~6 min on 2 cores)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per contender (median reported)")
    parser.add_argument(
        "--batch-size", type=int, default=32, help="batch size for (b), (c) and the breakdown"
    )
    parser.add_argument(
        "--out-dir", type=Path, default=None, help="keep checkpoint and JPEGs here (default: temp dir)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for the weights and the photos")
    parser.add_argument(
        "--bf16", action="store_true", help="also time the batched paths with bfloat16 weights, (b16) and (c16)"
    )
    parser.add_argument(
        "--wait-idle",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before each timed pass and the breakdown, wait up to SECONDS for other processes to go idle "
        "(for shared machines; default 0: do not wait)",
    )
    parser.add_argument(
        "--single-images", type=int, default=16, help="images for the batch-1 forward timing in the breakdown"
    )
    args = parser.parse_args(argv)
    if args.images < 1 or args.repeats < 1 or args.batch_size < 1:
        parser.error("--images, --repeats and --batch-size must be >= 1")
    return args


def run(args: argparse.Namespace, work_dir: Path) -> None:
    transformers.logging.set_verbosity_error()  # e.g. the "no torchvision, using the PIL backend" notice
    transformers.logging.disable_progress_bar()  # "Loading weights" / "Writing model shards" bars
    t0 = time.perf_counter()
    print("== setup")
    print(
        f"python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}, "
        f"Pillow {PIL.__version__} (libjpeg-turbo: {features.check_feature('libjpeg_turbo')}), "
        f"vlmkit {vlmkit.__version__}"
    )
    print(f"cpu cores: {os.cpu_count()}, torch.get_num_threads(): {torch.get_num_threads()}")

    start = time.perf_counter()
    checkpoint = build_clip_checkpoint(work_dir / "clip-vit-b32-random", args.seed)
    print(f"checkpoint: {checkpoint} (built and saved in {time.perf_counter() - start:.1f} s)")
    start = time.perf_counter()
    paths = write_photos(work_dir / "photos", args.images, args.seed)
    sizes = [Image.open(p).size for p in paths]
    megapixels = [w * h / 1e6 for w, h in sizes]
    file_kb = [p.stat().st_size / 1024 for p in paths]
    print(
        f"photos: {len(paths)} JPEGs (q90) in {time.perf_counter() - start:.1f} s; "
        f"{min(megapixels):.2f}-{max(megapixels):.2f} MP (mean {statistics.fmean(megapixels):.2f}), "
        f"{statistics.fmean(file_kb):.0f} KB mean file size"
    )

    # Models are loaded before any timing.
    hf_model = transformers.CLIPModel.from_pretrained(checkpoint, use_safetensors=True).eval()
    hf_processor = transformers.CLIPProcessor.from_pretrained(checkpoint)
    vk_model = vlmkit.load(checkpoint)
    params = sum(p.numel() for p in hf_model.vision_model.parameters()) / 1e6
    print(
        f"vision tower: {params:.1f} M parameters; image processor: {type(hf_processor.image_processor).__name__}; "
        f"vlmkit decode workers: {getattr(vk_model, 'decode_workers', '?')}, draft size: "
        f"{getattr(vk_model, 'image_size', '?')}"
    )

    batch_size = args.batch_size
    contenders: dict[str, Callable[[], np.ndarray]] = {
        "(a) transformers, 1 image at a time": lambda: transformers_loop(paths, hf_model, hf_processor),
        f"(b) transformers, batch {batch_size}": lambda: transformers_batched(
            paths, hf_model, hf_processor, batch_size
        ),
        f"(c) vlmkit embed_images, batch {batch_size}": lambda: vk_model.embed_images(
            paths, batch_size=batch_size
        ),
    }
    if args.bf16:
        # The same two batched paths with bfloat16 weights (fast on CPUs with native bf16, e.g. avx512_bf16).
        hf_bf16 = transformers.CLIPModel.from_pretrained(checkpoint, use_safetensors=True, dtype=torch.bfloat16).eval()
        vk_bf16 = vlmkit.load(checkpoint, dtype="bfloat16")
        contenders[f"(b16) transformers, batch {batch_size}, bfloat16"] = lambda: transformers_batched(
            paths, hf_bf16, hf_processor, batch_size
        )
        contenders[f"(c16) vlmkit embed_images, batch {batch_size}, bfloat16"] = lambda: vk_bf16.embed_images(
            paths, batch_size=batch_size
        )
    keys = list(contenders)

    print(f"\n== timing: {len(paths)} images, 1 warm-up pass + {args.repeats} timed passes each, interleaved")
    passes: dict[str, list[Pass]] = {key: [] for key in keys}
    vectors: dict[str, np.ndarray] = {}
    for key in keys:
        warm, vectors[key] = timed(contenders[key], args.wait_idle)
        print(f"warm-up {key}: {warm.seconds:.1f} s; {describe_pass(warm)}")
    for repeat in range(args.repeats):
        for key in keys:
            result, _ = timed(contenders[key], args.wait_idle)
            passes[key].append(result)
            print(
                f"repeat {repeat + 1} {key}: {result.seconds:.1f} s ({len(paths) / result.seconds:.2f} images/s); "
                f"{describe_pass(result)}"
            )
    times = {key: [p.seconds for p in passes[key]] for key in keys}

    a, b, c = keys[:3]
    rate = {key: len(paths) / statistics.median(times[key]) for key in keys}
    print("\n== results (median pass)")
    for key in keys:
        spread = ", ".join(f"{t:.1f}" for t in times[key])
        print(f"{key}: {rate[key]:.2f} images/s ({1000 / rate[key]:.0f} ms/image; passes {spread} s)")
    print(
        f"(c)/(a) = {rate[c] / rate[a]:.2f}x   (c)/(b) = {rate[c] / rate[b]:.2f}x   (b)/(a) = {rate[b] / rate[a]:.2f}x"
    )
    for key in keys:
        norms = np.linalg.norm(vectors[key], axis=1)
        assert vectors[key].dtype == np.float32 and vectors[key].shape == vectors[a].shape, key
        assert np.allclose(norms, 1.0, atol=1e-4), f"{key}: vectors are not unit length"
    for key in keys[3:]:
        cos = np.sum(vectors[key] * vectors[b], axis=1)
        print(f"agreement: min cosine {key.split()[0]} vs (b) float32 = {cos.min():.5f}")
    if len(keys) == 5:
        print(f"(c16)/(b16) = {rate[keys[4]] / rate[keys[3]]:.2f}x   (c16)/(a) = {rate[keys[4]] / rate[a]:.2f}x")
    cos_cb = np.sum(vectors[c] * vectors[b], axis=1)
    cos_ab = np.sum(vectors[a] * vectors[b], axis=1)
    print(
        f"agreement: min cosine (c) vs (b) = {cos_cb.min():.5f} (mean {cos_cb.mean():.5f}); "
        f"(a) vs (b) = {cos_ab.min():.6f}; shape {vectors[c].shape}, float32, unit norm"
    )

    print(
        f"\n== breakdown per image (batched path; each stage alone, torch threads = {torch.get_num_threads()})"
    )
    draft_size = int(getattr(vk_model, "image_size", None) or 224)
    breakdown_pass, parts = timed(
        lambda: breakdown(
            paths,
            hf_model,
            hf_processor.image_processor,
            batch_size,
            draft_size,
            min(args.single_images, len(paths)),
        ),
        args.wait_idle,
    )
    print(f"breakdown took {breakdown_pass.seconds:.1f} s; {describe_pass(breakdown_pass)}")
    rows = [
        (
            "JPEG decode, full size (Image.open().convert)",
            parts["decode_full"],
            f"{parts['mpix_full']:.2f} MP",
        ),
        (
            f"JPEG decode, draft mode (load_image draft_size={draft_size})",
            parts["decode_draft"],
            f"{parts['mpix_draft']:.2f} MP",
        ),
        (
            f"CLIP image processor, full-size input, batch call of {batch_size}",
            parts["proc_full_batched"],
            "as (b)",
        ),
        (f"CLIP image processor, draft input, batch call of {batch_size}", parts["proc_draft_batched"], ""),
        ("CLIP image processor, draft input, one call per image", parts["proc_draft_single"], "as (c)"),
        (f"model forward (get_image_features), batch {batch_size}", parts["forward_batched"], "as (b), (c)"),
        ("model forward (get_image_features), batch 1", parts["forward_single"], "as (a)"),
    ]
    for name, ms, note in rows:
        print(f"{name:<66} {ms:8.2f} ms/image  {note}")
    serial_a = parts["decode_full"] + parts["proc_full_batched"] + parts["forward_single"]
    serial_b = parts["decode_full"] + parts["proc_full_batched"] + parts["forward_batched"]
    serial_c = parts["decode_draft"] + parts["proc_draft_single"] + parts["forward_batched"]
    print(
        f"sum of stages: (a) ~{serial_a:.0f} ms, (b) ~{serial_b:.0f} ms, (c) ~{serial_c:.0f} ms if run serially "
        f"(measured: {1000 / rate[a]:.0f}, {1000 / rate[b]:.0f}, {1000 / rate[c]:.0f} ms/image)"
    )

    print("\n| contender | images/s | ms/image | vs (a) | vs (b) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for key in keys:
        print(
            f"| {key} | {rate[key]:.2f} | {1000 / rate[key]:.0f} | {rate[key] / rate[a]:.2f}x | {rate[key] / rate[b]:.2f}x |"
        )
    print("\n| stage (per image) | ms |")
    print("| --- | ---: |")
    for name, ms, _ in rows:
        print(f"| {name} | {ms:.1f} |")
    all_passes = [p for key in keys for p in passes[key]] + [breakdown_pass]
    others = [p.other_cores for p in all_passes if p.other_cores is not None]
    if others and max(others) > 0.25:
        print(
            f"\nWARNING: other processes kept up to {max(others):.2f} of {os.cpu_count()} cores busy during the "
            "timed passes; the figures above are slowed and noisy. Re-run on an idle machine (see --wait-idle)."
        )
    print(
        f"\n{len(paths)} images, median of {args.repeats}, batch {batch_size}, torch threads "
        f"{torch.get_num_threads()}, min cosine (c) vs (b) {cos_cb.min():.5f}; total run {time.perf_counter() - t0:.0f} s"
    )


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.out_dir is not None:
        args.out_dir.mkdir(parents=True, exist_ok=True)
        run(args, args.out_dir)
    else:
        with tempfile.TemporaryDirectory(prefix="vlmkit-embed-bench-") as tmp:
            run(args, Path(tmp))


if __name__ == "__main__":
    main()
