"""The whole offline BLIP-2 recipe on CPU, and the figures that show it learns.

Steps (each a vlmkit_train recipe, run in-process):
1. a small GPT-2-architecture LM trained on the training corpus text, then frozen (``vlmkit train lm``);
2. stage 1 on shapes-world scenes: ITC + ITM + ITG on cached EfficientNet-Lite0 features;
3. stage 2 through the frozen LM;
4. evaluation on held-out shapes scenes (every test scene holds a colour-shape pair never seen in
   training): image->text and text->image R@1 on the 1,000-image gallery (ITC, max over queries),
   VQA exact match, caption CIDEr (pycocoevalcap's CIDEr-D on lower-cased, punctuation-free text);
5. the paper's ablations, in direction: stage 1 without ITG (retrieval, Table 6) and stage 2
   without stage 1 (VQA, Figure 5); and the feature cache's speed-up (stage-1 steps/s with and
   without it);
6. easy-VQA: the same recipe on easy-VQA's training split, exact-match accuracy on its test split.

Retrieval is scored twice. ``strict``: a text's own image is the only right one. ``grouped``: the
gallery holds different scenes that one caption describes equally well (247 of 1,000 test scenes
share their first caption with another: same objects, other places), so images whose scenes hold
the same objects count as interchangeable (``retrieval_scores(..., image_groups=...)``). The strict
figure is capped by those duplicates (``strict_t2i_r1_ceiling``).

Re-ranking (the paper's ITC top-k then ITM) uses k = 16 rather than 128 to fit the CPU budget.

Evaluation runs the trained checkpoints as ``vlmkit.load`` returns them, with the frozen encoder's
features of the test images computed once (the same float16 cache as training) instead of once
per question.

Run: ``python bench/blip2_offline.py [--scale smoke|full] [--out DIR]``. ``smoke`` checks the
pipeline in a few minutes (its figures mean little); ``full`` is the recipe the targets refer to.
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch


@dataclass(frozen=True)
class Scale:
    train: int  # training scenes (and easy-VQA training images)
    test: int  # held-out scenes: the retrieval gallery and the VQA / caption test set
    lm_steps: int
    stage1_steps: int
    stage2_steps: int
    questions: int  # VQA questions scored per test set
    nocache_steps: int  # stage-1 steps timed without the feature cache


SCALES = {
    "smoke": Scale(train=100, test=50, lm_steps=30, stage1_steps=20, stage2_steps=30, questions=100, nocache_steps=5),
    "full": Scale(train=4000, test=1000, lm_steps=500, stage1_steps=1500, stage2_steps=1200, questions=2000, nocache_steps=10),
}

#: On top of the ``shapes`` presets (the scratch Q-Former with a corpus vocabulary): bfloat16 autocast.
QFORMER = ["mixed_precision=bf16"]


def _lm(out: Path, examples: list[Any], steps: int) -> Path:
    from vlmkit_train.lm import corpus_texts, lm_config, train_lm

    # One process, one accelerate state: every run here uses the same mixed precision.
    config = lm_config("shapes", [f"max_steps={steps}", "mixed_precision=bf16"])
    train_lm(config, corpus_texts(examples, context=True), out)
    return out / "lm"


def _features(images: list[Any], out: Path) -> torch.Tensor:
    """The frozen encoder's features of ``images``, once: (N, P, E) float32."""
    from vlmkit.feature_cache import FeatureCache
    from vlmkit.models.image_encoders import load_image_encoder

    cache = FeatureCache.build(load_image_encoder("efficientnet-lite0"), images, out)
    return cache.batch(np.arange(len(images)))


def _qformer_similarity(qformer: Any, tokenizer: Any, features: torch.Tensor, texts: list[str]) -> np.ndarray:
    """ITC similarity, max over queries, (N_images, N_texts), as ``similarity`` computes it."""
    with torch.inference_mode():
        queries = torch.cat([qformer.image_features(chunk) for chunk in features.split(100)])  # (N, Q, d)
        tokens = tokenizer(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
        text = qformer.text_features(tokens["input_ids"], tokens["attention_mask"])  # (M, d)
    return torch.einsum("nqd,md->nqm", queries, text).amax(dim=1).numpy()


def _retrieval(qformer: Any, tokenizer: Any, features: torch.Tensor, test: list[Any], groups: list[Any]) -> dict[str, float]:
    from vlmkit.eval import retrieval_scores

    sim = _qformer_similarity(qformer, tokenizer, features, [e.captions[0] for e in test])
    own = list(range(len(test)))
    strict = retrieval_scores(sim, own, ks=(1, 5))
    grouped = retrieval_scores(sim, own, ks=(1, 5), image_groups=groups)
    return {
        "i2t_r1": grouped.image_to_text[1], "t2i_r1": grouped.text_to_image[1],
        "i2t_r5": grouped.image_to_text[5], "t2i_r5": grouped.text_to_image[5],
        "strict_i2t_r1": strict.image_to_text[1], "strict_t2i_r1": strict.text_to_image[1],
    }


def _reranked(qformer: Any, tokenizer: Any, features: torch.Tensor, test: list[Any], groups: list[Any], k: int) -> dict[str, float]:
    """The paper's retrieval: ITC top-k, re-ranked by the ITM head (grouped R@1)."""
    from vlmkit.eval import rerank, retrieval_scores

    texts = [e.captions[0] for e in test]
    tokens = tokenizer(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")

    def itm(pairs: list[tuple[int, int]]) -> np.ndarray:
        scores = []
        with torch.inference_mode():
            for start in range(0, len(pairs), 256):
                images, rows = zip(*pairs[start : start + 256], strict=True)
                logits = qformer.itm_logits(features[list(images)], tokens["input_ids"][list(rows)], tokens["attention_mask"][list(rows)])
                scores.append(logits.float().softmax(dim=-1)[:, 1].numpy())
        return np.concatenate(scores)

    ranked = rerank(_qformer_similarity(qformer, tokenizer, features, texts), itm, k=k)
    own = list(range(len(test)))
    return {
        "i2t_r1": retrieval_scores(ranked.image_to_text, own, ks=(1,), image_groups=groups).image_to_text[1],
        "t2i_r1": retrieval_scores(ranked.text_to_image, own, ks=(1,), image_groups=groups).text_to_image[1],
        "k": k,
    }


def _generate(model: Any, features: torch.Tensor, prompts: list[str], max_new_tokens: int) -> list[str]:
    """The checkpoint's own generation (greedy) on precomputed features, in batches of 64."""
    texts: list[str] = []
    with torch.inference_mode():
        for start in range(0, len(prompts), 64):
            texts += model.net.generate(features[start : start + 64], prompts[start : start + 64], max_new_tokens=max_new_tokens)
    return texts


def _vqa(model: Any, features: torch.Tensor, examples: list[Any], limit: int, seed: int = 0) -> float:
    from vlmkit.eval import exact_match_accuracy

    rng = np.random.default_rng(seed)
    pairs = [(i, q, a) for i, e in enumerate(examples) for q, a in e.qa]
    chosen = [pairs[i] for i in rng.permutation(len(pairs))[:limit]]
    rows = torch.tensor([c[0] for c in chosen])
    prompts = [model.net.config.vqa_prompt.format(c[1]) for c in chosen]
    answers = _generate(model, features[rows], prompts, max_new_tokens=4)
    return exact_match_accuracy(answers, [c[2] for c in chosen])


def _clean(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def _cider(model: Any, features: torch.Tensor, test: list[Any]) -> tuple[float, list[str]]:
    from pycocoevalcap.cider.cider import Cider

    captions = _generate(model, features, [model.net.config.caption_prompt] * len(test), max_new_tokens=24)
    gts = {str(i): [_clean(c) for c in e.captions] for i, e in enumerate(test)}
    res = {str(i): [_clean(c) or "empty"] for i, c in enumerate(captions)}
    return float(Cider().compute_score(gts, res)[0]), captions


def run(scale_name: str, out: Path) -> dict[str, Any]:
    import vlmkit
    from vlmkit.data import load_easy_vqa, make_split
    from vlmkit.data.shapes import make_scenes
    from vlmkit.feature_cache import FeatureCache
    from vlmkit.models.qformer import QFormer
    from vlmkit_train.stage1 import stage1_config, train_stage1
    from vlmkit_train.stage2 import stage2_config, train_stage2

    scale = SCALES[scale_name]
    figures: dict[str, Any] = {"scale": scale_name}
    began = time.perf_counter()

    def timed(name: str, work: Any) -> Any:
        start = time.perf_counter()
        result = work()
        figures.setdefault("minutes", {})[name] = round((time.perf_counter() - start) / 60, 2)
        return result

    train = make_split(scale.train, 0, "train")
    test = make_split(scale.test, 0, "test")
    groups = [tuple(sorted((o.size, o.colour, o.shape) for o in s.objects)) for s in make_scenes(scale.test, 0, "test")]
    first = Counter(e.captions[0] for e in test)
    figures["strict_t2i_r1_ceiling"] = 100 * float(np.mean([1 / first[e.captions[0]] for e in test]))
    lm_dir = timed("lm", lambda: _lm(out / "lm", train, scale.lm_steps))
    test_features = timed("test_features", lambda: _features([e.image for e in test], out / "test_features"))
    data = [f"train_size={scale.train}", f"features_dir={out / 'features'}"]

    def stage1(name: str, extra: list[str]) -> Path:
        config = stage1_config("shapes", [*QFORMER, *data, f"max_steps={scale.stage1_steps}", "log_every=50", *extra])
        timed(name, lambda: train_stage1(config, out / name))
        return out / name

    def stage2(name: str, stage1_dir: str) -> Any:
        overrides = [*QFORMER, *data, f"max_steps={scale.stage2_steps}", f"language_model={lm_dir}", f"stage1={stage1_dir}", "log_every=50"]
        timed(name, lambda: train_stage2(stage2_config("shapes", overrides), out / name))
        return vlmkit.load(out / name / "model")

    def steps_per_s(run_dir: Path) -> float:
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        return rows[-1]["step"] / rows[-1]["seconds"]

    def stage1_qformer(run_dir: Path) -> tuple[Any, Any]:
        from transformers import AutoTokenizer

        return QFormer.from_pretrained(run_dir / "qformer"), AutoTokenizer.from_pretrained(run_dir / "qformer")

    s1 = stage1("stage1", [])
    s1_qformer = stage1_qformer(s1)
    figures["shapes_heldout_stage1_retrieval"] = _retrieval(*s1_qformer, test_features, test, groups)
    figures["shapes_heldout_stage1_itm_reranked"] = _reranked(*s1_qformer, test_features, test, groups, k=16)
    nocache = stage1("stage1_nocache", ["cache_features=false", f"max_steps={scale.nocache_steps}", "log_every=1"])
    figures["stage1_steps_per_s"] = {"cached": steps_per_s(s1), "uncached": steps_per_s(nocache)}
    figures["feature_cache_speedup"] = steps_per_s(s1) / steps_per_s(nocache)

    model = stage2("stage2", str(s1))
    cider, captions = _cider(model, test_features, test)
    figures["shapes_heldout"] = {
        **_retrieval(model.retrieval, model.qformer_tokenizer, test_features, test, groups),
        "after_stage2_qformer": _retrieval(model.net.qformer, model.qformer_tokenizer, test_features, test, groups),
        "vqa": _vqa(model, test_features, test, scale.questions),
        "cider": cider,
        "caption_examples": [[test[i].captions[0], captions[i]] for i in range(3)],
    }
    seen = train[: scale.test]  # training scenes, for the gap between seen and held-out pairs
    seen_features = FeatureCache.open(out / "features").batch(np.arange(len(seen)))  # the training cache's first rows
    figures["shapes_train_vqa"] = _vqa(model, seen_features, seen, scale.questions)

    # Ablations, in direction: ITG off in stage 1 (retrieval, Table 6), stage 2 without stage 1 (VQA, Figure 5).
    s1_noitg = stage1("stage1_no_itg", ["use_itg=false"])
    figures["ablation_no_itg_stage1_retrieval"] = _retrieval(*stage1_qformer(s1_noitg), test_features, test, groups)
    no_stage1 = stage2("stage2_no_stage1", "")
    figures["ablation_no_stage1_vqa"] = _vqa(no_stage1, test_features, test, scale.questions)

    # easy-VQA: the same recipe on its own training split.
    easy_train = [e for e in load_easy_vqa("train") if e.captions][: scale.train]
    easy_test = load_easy_vqa("test")
    easy_lm = timed("easy_lm", lambda: _lm(out / "easy_lm", easy_train, scale.lm_steps))
    easy_data = ["data=easy-vqa", f"train_size={scale.train}", f"features_dir={out / 'easy_features'}"]
    config1 = stage1_config("shapes", [*QFORMER, *easy_data, f"max_steps={scale.stage1_steps}", "log_every=50"])
    timed("easy_stage1", lambda: train_stage1(config1, out / "easy_stage1"))
    overrides = [*QFORMER, *easy_data, f"max_steps={scale.stage2_steps}", f"language_model={easy_lm}",
                 f"stage1={out / 'easy_stage1'}", "qa_fraction=0.9", "log_every=50"]
    timed("easy_stage2", lambda: train_stage2(stage2_config("shapes", overrides), out / "easy_stage2"))
    easy_model = vlmkit.load(out / "easy_stage2" / "model")
    easy_features = timed("easy_test_features", lambda: _features([e.image for e in easy_test], out / "easy_test_features"))
    figures["easy_vqa_test_accuracy"] = _vqa(easy_model, easy_features, easy_test, scale.questions * 10)
    figures["easy_vqa_test_questions"] = min(scale.questions * 10, sum(len(e.qa) for e in easy_test))
    figures["total_minutes"] = round((time.perf_counter() - began) / 60, 2)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=sorted(SCALES), default="full")
    parser.add_argument("--out", default=None, help="keep runs here (default: a temporary directory)")
    args = parser.parse_args()
    if args.out:
        figures = run(args.scale, Path(args.out))
    else:
        with tempfile.TemporaryDirectory(prefix="vlmkit-blip2-") as tmp:
            figures = run(args.scale, Path(tmp))
    print(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
