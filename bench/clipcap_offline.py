"""ClipCap's offline recipe on CPU: one image embedding -> a prefix of a frozen LM.

Steps (each a ``vlmkit_train.clipcap`` run, in-process):
1. the small frozen LM every soft-prompt recipe shares (``bench/_recipes.shared_lm``), one per data set;
2. shapes: the paper's transformer mapper (4 layers, K = 10) from EfficientNet-Lite0's pooled
   1280-d embedding, on 4,000 training scenes, captions and question-answer pairs half and half;
   the MLP mapper on the same embeddings and LM as a variant (``figures["variants"]["mlp"]``; not
   at ``--scale equal``, the recipes table's budget, which trains the main rows only);
3. easy-VQA: the transformer mapper on its training split (questions on 80% of the samples);
4. the figures through ``vlmkit.load`` and ``bench/_recipes.score``: VQA exact match on 2,000
   held-out shapes questions (colour-shape pairs never seen in training) and on every easy-VQA test
   question, and CIDEr-D of greedy captions.

Every image is embedded once: EfficientNet-Lite0's token features of the training and test images
are cached in float16 beside ``out`` (``features_<data>_<split><n>/``, the caches the other recipe
benches share, built here when missing) and average-pooled into the 1280-d embedding, which is the
embedder's own computation (``PooledEfficientNet``) up to the float16 rounding of the tokens. The
training runs read the pooled vectors from their embedding cache; the loaded models' embedder reads
the test images' from the test cache (``_Pooled``) instead of running the network per call.

Run: ``python bench/clipcap_offline.py [--scale smoke|full|equal] [--out DIR]``.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _recipes import (  # noqa: E402
    EQUAL_STEPS,
    Data,
    Timer,
    bench_main,
    budget,
    easy_vqa,
    save,
    score,
    shapes,
    shared_lm,
    token_features,
)

from vlmkit.models.clipcap import ImageEmbedder, PooledEfficientNet  # noqa: E402


@dataclass(frozen=True)
class Scale:
    train: int  # training scenes (and easy-VQA training images)
    test: int  # held-out shapes scenes
    easy_test: int | None  # easy-VQA test images (None: all)
    lm_steps: int
    steps: int  # shapes runs
    easy_steps: int


SCALES = {
    "smoke": Scale(train=200, test=50, easy_test=50, lm_steps=30, steps=40, easy_steps=30),
    "full": Scale(train=4000, test=1000, easy_test=None, lm_steps=500, steps=500, easy_steps=400),
    "equal": Scale(train=4000, test=1000, easy_test=None, lm_steps=EQUAL_STEPS, steps=EQUAL_STEPS, easy_steps=EQUAL_STEPS),
}

#: On top of the recipe's ``shapes`` preset: bfloat16 autocast (about 1.5x faster steps on this CPU).
MIXED = ["mixed_precision=bf16", "log_every=50"]


class _Pooled(ImageEmbedder):
    """The pooled embedding of images whose token features a cache holds (by object or by path);
    other images go to ``fallback``."""

    identity = PooledEfficientNet.identity

    def __init__(self, images: list[Any], cache: Any, fallback: ImageEmbedder | None = None) -> None:
        self.rows = {_key(image): row for row, image in enumerate(images)}
        self.cache, self.fallback, self.images = cache, fallback, images  # the images keep their id()s

    def embed(self, images: Any, *, batch_size: int = 32) -> torch.Tensor:
        keys = [_key(image) for image in images]
        if self.fallback is not None and any(k not in self.rows for k in keys):
            return self.fallback.embed(images, batch_size=batch_size)
        return self.cache.batch([self.rows[k] for k in keys]).mean(dim=1)  # (B, P, E) -> (B, E)


def _key(image: Any) -> Any:
    return str(image) if isinstance(image, (str, Path)) else id(image)


def _embeddings(data: Data, out: Path) -> Path:
    """The training runs' embedding cache of ``data``, filled from the shared token features."""
    from vlmkit_train.clipcap import clipcap_config, embedding_cache
    from vlmkit_train.data import images_key

    directory = out / f"embeddings_{data.name}"
    images = [e.image for e in data.train]
    config = clipcap_config("shapes", [f"data={data.name}", f"train_size={len(images)}"])
    embedding_cache(_Pooled(images, token_features(data, "train", out.parent)), images, directory, images_key(config, len(images)))
    return directory


def _train_and_score(name: str, data: Data, out: Path, lm_dir: Path, steps: int, extra: list[str], timer: Timer) -> dict[str, Any]:
    import vlmkit
    from vlmkit_train.clipcap import clipcap_config, train_clipcap

    embeddings = timer(f"{name}_embeddings", lambda: _embeddings(data, out))
    overrides = [*MIXED, f"data={data.name}", f"train_size={len(data.train)}", f"language_model={lm_dir}",
                 f"embeddings_dir={embeddings}", f"max_steps={steps}", *extra]
    result = timer(name, lambda: train_clipcap(clipcap_config("shapes", overrides), out / name))
    model = vlmkit.load(out / name / "model")
    assert model.kind.architecture == "VlmkitClipCap" and model.embedder.identity == _Pooled.identity
    test = timer(f"{name}_test_features", lambda: token_features(data, "test", out.parent))
    model.embedder = _Pooled([e.image for e in data.test], test, fallback=model.embedder)
    rows = [json.loads(line) for line in (out / name / "metrics.jsonl").read_text().splitlines()]
    return {
        "final_loss": result.final_losses["loss"],
        "steps": result.steps,
        "steps_per_s": round(rows[-1]["step"] / rows[-1]["seconds"], 2),
        "mapper_parameters": sum(p.numel() for p in model.net.mapper.parameters()),
        **timer(f"{name}_score", lambda: score(model, data, ("vqa", "caption"))),
    }


def run(scale_name: str, out: Path) -> dict[str, Any]:
    scale = SCALES[scale_name]
    out.mkdir(parents=True, exist_ok=True)
    figures: dict[str, Any] = {"recipe": "clipcap", "scale": scale_name, "embedder": "efficientnet-lite0 (pooled, 1280-d)"}
    timer = Timer(figures)

    data = shapes(scale.train, scale.test)
    lm_dir = timer("lm_shapes", lambda: shared_lm(out, data, scale_name, scale.lm_steps))
    extra = budget(scale_name)
    figures["shapes"] = _train_and_score("transformer", data, out, lm_dir, scale.steps, extra, timer)
    if scale_name != "equal":  # the equal-budget table has the main rows only
        figures["variants"] = {"mlp": {"shapes": _train_and_score("mlp", data, out, lm_dir, scale.steps, ["mapper=mlp"], timer)}}

    easy = easy_vqa(scale.train, scale.easy_test)
    easy_lm = timer("lm_easy", lambda: shared_lm(out, easy, scale_name, scale.lm_steps))
    figures["easy-vqa"] = _train_and_score("easy_transformer", easy, out, easy_lm, scale.easy_steps, ["qa_fraction=0.8", *extra], timer)
    timer.total()
    save(figures, out)
    return figures


def main() -> None:
    bench_main("clipcap", __doc__, SCALES, run)


if __name__ == "__main__":
    main()
