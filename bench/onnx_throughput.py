"""Embedding throughput on this CPU: the plain transformers loop, vlmkit on torch, and vlmkit on ONNX
Runtime (fp32 and int8), in one run; and what int8 costs the built-in in accuracy.

What is measured
----------------
Two models, each exported with ``vlmkit export onnx`` (fp32, and ``--int8``: ONNX Runtime dynamic
quantisation, per-channel int8 MatMul/Gemm weights):

- a CLIP with the ViT-B/32 sizes (``bench/_fixtures.py``'s ``build_clip_checkpoint``: ``CLIPConfig()``
  defaults, the openai/clip-vit-base-patch32 image processor settings, a CLIP BPE tokenizer built
  offline by :mod:`vlmkit.testing`). Its weights are *random*, which does not change its speed;
  with ``--quick`` the tiny CLIP of :mod:`vlmkit.testing` stands in for it;
- the built-in (``vlmkit.DEFAULT_MODEL``: EfficientNet-Lite0 + MiniLM, real pretrained weights).

For images (``--items`` photo-like JPEGs from ``bench/_fixtures.py``'s ``write_photos``, decoded,
preprocessed and embedded end to end) and texts (``--items`` captions), every engine embeds the same
inputs in batches of ``--batch``; ``--repeats`` timed passes run interleaved across engines (so a
drift of a shared machine hits all alike) after one warm-up pass each, and the median is reported:

- ``transformers``: the loop a user would write (CLIP only): ``CLIPProcessor`` then
  ``get_image_features`` / ``get_text_features`` under ``torch.no_grad()``, normalised;
- ``vlmkit-torch``: ``vlmkit.load(MODEL).embed_images`` / ``embed_texts``;
- ``onnx-fp32`` / ``onnx-int8``: ``vlmkit.load(EXPORT_DIR)``, the same calls.

``--threads`` (default: every core) sets torch's intra-op threads and ONNX Runtime's alike.

Accuracy of int8 (the built-in, real weights): the cosine of ONNX int8 vs fp32 embeddings of the
photos and captions, and for vlmkit-torch, onnx-fp32 and onnx-int8, zero-shot accuracy (the shape
of single-object shapes-world scenes, labels "circle", "square", ...) and text-to-image and
image-to-text recall@1/@5 on held-out shapes scenes with their first caption (``--gallery`` scenes).

Run::

    python bench/onnx_throughput.py --out /tmp/onnx-bench                 # the full run (idle machine)
    python bench/onnx_throughput.py --quick --threads 1 --out /tmp/onnx-smoke   # a smoke run

Figures go to ``OUT/figures.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _fixtures import build_clip_checkpoint, write_photos  # bench/ is sys.path[0] when run
from _measure import print_machine, timed

import vlmkit
from vlmkit.onnx_export import export_onnx

CAPTIONS = (
    "a photo of a cat lying on a sofa", "a cup of coffee on a wooden table", "an astronaut in a white space suit",
    "a red rocket on the launch pad", "a motorcycle parked in the street", "a field of stars and distant galaxies",
    "two people walking on the beach at sunset", "a small yellow triangle",
)


def _engines(source: str, root: Path, clip: bool, batch: int) -> dict[str, tuple[Callable[[list[Path]], Any], Callable[[list[str]], Any]]]:
    """Engine name -> (embed images, embed texts)."""
    engines: dict[str, tuple[Callable[[list[Path]], Any], Callable[[list[str]], Any]]] = {}
    if clip:
        import transformers
        from PIL import Image

        model = transformers.CLIPModel.from_pretrained(source, use_safetensors=True).eval()
        processor = transformers.CLIPProcessor.from_pretrained(source)

        def hf_images(paths: list[Path]) -> np.ndarray:
            out = []
            with torch.no_grad():
                for start in range(0, len(paths), batch):
                    images = [Image.open(p).convert("RGB") for p in paths[start : start + batch]]
                    feats = model.get_image_features(**processor(images=images, return_tensors="pt"))
                    feats = feats if isinstance(feats, torch.Tensor) else feats.pooler_output
                    out.append(torch.nn.functional.normalize(feats, dim=-1).numpy())
            return np.concatenate(out)

        def hf_texts(texts: list[str]) -> np.ndarray:
            out = []
            with torch.no_grad():
                for start in range(0, len(texts), batch):
                    inputs = processor.tokenizer(texts[start : start + batch], padding=True, truncation=True, return_tensors="pt")
                    feats = model.get_text_features(**inputs)
                    feats = feats if isinstance(feats, torch.Tensor) else feats.pooler_output
                    out.append(torch.nn.functional.normalize(feats, dim=-1).numpy())
            return np.concatenate(out)

        engines["transformers"] = (hf_images, hf_texts)
    torch_model = vlmkit.load(source)
    for name, int8 in (("onnx-fp32", False), ("onnx-int8", True)):
        print(f"exporting {source} ({name}) ...", flush=True)
        export_onnx(torch_model, root / name, int8=int8)
    models = {"vlmkit-torch": torch_model, "onnx-fp32": vlmkit.load(root / "onnx-fp32"), "onnx-int8": vlmkit.load(root / "onnx-int8")}
    for name, m in models.items():
        engines[name] = (lambda paths, m=m: m.embed_images(paths, batch_size=batch), lambda texts, m=m: m.embed_texts(texts, batch_size=batch))
    return engines


def _throughput(label: str, engines: dict[str, Any], photos: list[Path], texts: list[str], repeats: int) -> list[dict[str, Any]]:
    rows = []
    for modality, items, which in (("image", photos, 0), ("text", texts, 1)):
        for fns in engines.values():
            fns[which](items)  # warm-up
        seconds: dict[str, list[float]] = {name: [] for name in engines}
        for _ in range(repeats):
            for name, fns in engines.items():
                measured, _ = timed(lambda fn=fns[which], batch=items: fn(batch))
                seconds[name].append(measured.seconds)
        base = len(items) / statistics.median(seconds["vlmkit-torch"])
        for name in engines:
            rate = len(items) / statistics.median(seconds[name])
            rows.append({"model": label, "modality": modality, "engine": name, "items_per_s": round(rate, 2),
                         "ratio_to_vlmkit_torch": round(rate / base, 2)})
    return rows


def _accuracy(root: Path, photos: list[Path], gallery: int, batch: int) -> dict[str, Any]:
    """int8's cost on the built-in: cosines against fp32, zero-shot and retrieval on shapes scenes."""
    from _recipes import retrieval, shapes

    from vlmkit.data.shapes import make_scenes

    models = {"vlmkit-torch": vlmkit.load(vlmkit.DEFAULT_MODEL), "onnx-fp32": vlmkit.load(root / "onnx-fp32"),
              "onnx-int8": vlmkit.load(root / "onnx-int8")}
    fp32, int8 = models["onnx-fp32"], models["onnx-int8"]
    image_cos = np.sum(fp32.embed_images(photos, batch_size=batch) * int8.embed_images(photos, batch_size=batch), axis=1)
    text_cos = np.sum(fp32.embed_texts(list(CAPTIONS)) * int8.embed_texts(list(CAPTIONS)), axis=1)
    data = shapes(train=0, test=gallery)
    scenes = make_scenes(gallery, 0, "test")
    single = [(e.image, s.objects[0].shape) for e, s in zip(data.test, scenes, strict=True) if len(s.objects) == 1]
    labels = sorted({shape for _, shape in single})
    figures: dict[str, Any] = {
        "int8_vs_fp32_cosine": {"images_min": float(image_cos.min()), "images_mean": float(image_cos.mean()),
                                "texts_min": float(text_cos.min()), "texts_mean": float(text_cos.mean())},
        "zero_shot_images": len(single), "zero_shot_labels": labels, "gallery": gallery,
    }
    for name, model in models.items():
        ranked = model.classify([image for image, _ in single], labels, top_k=1)
        accuracy = float(np.mean([row[0].label == shape for row, (_, shape) in zip(ranked, single, strict=True)]))
        scores = retrieval(model, data)
        figures[name] = {"zero_shot_accuracy": accuracy, **{k: v for k, v in scores.items() if k != "gallery"}}
    return figures


def _trained_accuracy(model_dir: Path, held: str, root: Path, batch: int) -> dict[str, Any]:
    """int8's cost on a model that does the task: a vlmkit dual encoder trained on the other shapes
    domains (``bench/vllavo_offline.py --part lit`` makes them), zero-shot on the held-out domain's
    700 images with the source domains' templates, and text-to-image retrieval of each class (the
    template-averaged class query against the 700 images: average precision and precision@10)."""
    from vlmkit.data.domains import CLASSES, DOMAINS, make_domain_split

    sources = [d for d in DOMAINS if d != held]
    templates = [f"a {d} of a {{}}" for d in sources]
    rows = make_domain_split(held, 100, seed=0)
    images, truth = [e.image for e in rows], np.array([CLASSES.index(e.label) for e in rows])
    torch_model = vlmkit.load(model_dir)
    for name, int8 in (("onnx-fp32", False), ("onnx-int8", True)):
        if not (root / name / "config.json").is_file():
            export_onnx(torch_model, root / name, int8=int8)
    models = {"vlmkit-torch": torch_model, "onnx-fp32": vlmkit.load(root / "onnx-fp32"), "onnx-int8": vlmkit.load(root / "onnx-int8")}
    prompts = [t.format(c) for c in CLASSES for t in templates]
    figures: dict[str, Any] = {"model": str(model_dir), "held_out": held, "images": len(rows), "templates": templates}
    embedded = {}
    for name, model in models.items():
        image_emb = model.embed_images(images, batch_size=batch)
        text_emb = model.embed_texts(prompts).reshape(len(CLASSES), len(templates), -1).mean(axis=1)
        text_emb /= np.linalg.norm(text_emb, axis=1, keepdims=True)
        embedded[name] = (image_emb, model.embed_texts(prompts))
        ranked = model.classify(images, list(CLASSES), templates=templates, top_k=1)
        accuracy = float(np.mean([r[0].label == e.label for r, e in zip(ranked, rows, strict=True)]))
        aps, p10 = [], []
        for c in range(len(CLASSES)):
            order = np.argsort(-(image_emb @ text_emb[c]), kind="stable")
            hits = truth[order] == c
            aps.append(float(np.sum(np.cumsum(hits)[hits] / (np.flatnonzero(hits) + 1)) / hits.sum()))
            p10.append(float(hits[:10].mean()))
        figures[name] = {"zero_shot_accuracy": accuracy, "t2i_map": float(np.mean(aps)), "t2i_p_at_10": float(np.mean(p10))}
    for kind, which in (("images", 0), ("texts", 1)):
        cos = np.sum(embedded["onnx-fp32"][which] * embedded["onnx-int8"][which], axis=1)
        figures[f"int8_vs_fp32_cosine_{kind}"] = {"min": float(cos.min()), "mean": float(cos.mean())}
    return figures


def _print_table(rows: list[dict[str, Any]]) -> None:
    print(f"\n{'model':<22} {'modality':<8} {'engine':<13} {'items/s':>9} {'x torch':>8}")
    for r in rows:
        print(f"{r['model']:<22} {r['modality']:<8} {r['engine']:<13} {r['items_per_s']:>9.2f} {r['ratio_to_vlmkit_torch']:>8.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch and ONNX Runtime threads (default: all cores)")
    parser.add_argument("--batch", type=int, default=32, help="items per call (default: 32)")
    parser.add_argument("--repeats", type=int, default=5, help="timed passes per engine; the median counts (default: 5)")
    parser.add_argument("--items", type=int, default=128, help="images and texts per pass (default: 128)")
    parser.add_argument("--gallery", type=int, default=1000, help="held-out shapes scenes for the accuracy figures (default: 1000)")
    parser.add_argument("--quick", action="store_true", help="smoke size: the tiny CLIP, 8 items, 2 repeats, 60 scenes")
    parser.add_argument("--trained", default=None, metavar="DIR",
                        help="also measure int8's cost on this vlmkit dual encoder trained on shapes domains (e.g. RUN/lit/photo-0/model)")
    parser.add_argument("--held-out", default="photo", help="the domain --trained did not see (default: photo)")
    parser.add_argument("--accuracy-only", action="store_true", help="skip the throughput passes")
    parser.add_argument("--out", default=None, help="where figures.json (and the exports) go (default: a temporary directory)")
    args = parser.parse_args()
    if args.quick:
        args.items, args.repeats, args.gallery, args.batch = 8, 2, 60, min(args.batch, 8)
    os.environ.setdefault("VLMKIT_NO_PROGRESS", "1")
    torch.set_num_threads(args.threads)  # ONNX Runtime sessions follow torch's thread count
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="onnx-bench-"))
    out.mkdir(parents=True, exist_ok=True)
    print_machine()
    print(f"threads: {args.threads} (torch and ONNX Runtime); batch {args.batch}; {args.items} items; {args.repeats} repeats")

    work = out / "work"
    photos = write_photos(work / "photos", args.items, seed=0)
    texts = [CAPTIONS[i % len(CAPTIONS)] + f" number {i}" for i in range(args.items)]
    if args.quick:
        from vlmkit.testing import build_clip

        clip_dir, clip_label = build_clip(work / "clip"), "clip-tiny (random)"
    else:
        clip_dir, clip_label = build_clip_checkpoint(work / "clip", seed=0), "clip-vit-b32 (random)"
    rows: list[dict[str, Any]] = []
    accuracy: dict[str, Any] = {}
    if not args.accuracy_only:
        for label, source, clip in ((clip_label, str(clip_dir), True), (vlmkit.DEFAULT_MODEL, vlmkit.DEFAULT_MODEL, False)):
            engines = _engines(source, work / label.split()[0], clip, args.batch)
            rows += _throughput(label, engines, photos, texts, args.repeats)
        _print_table(rows)
        accuracy = _accuracy(work / vlmkit.DEFAULT_MODEL, photos, args.gallery, args.batch)
        print("\nint8 on the built-in:", json.dumps(accuracy, indent=1))
    figures: dict[str, Any] = {"threads": args.threads, "batch": args.batch, "items": args.items, "repeats": args.repeats,
                               "quick": args.quick, "throughput": rows, "accuracy": accuracy}
    if args.trained:
        figures["trained"] = _trained_accuracy(Path(args.trained), args.held_out, work / "trained", args.batch)
        print("\nint8 on the trained dual encoder:", json.dumps(figures["trained"], indent=1))
    (out / "figures.json").write_text(json.dumps(figures, indent=1) + "\n")
    print(f"\nfigures: {out / 'figures.json'}")


if __name__ == "__main__":
    main()
