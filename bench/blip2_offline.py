"""The whole offline BLIP-2 recipe on CPU, and the figures that show what it reaches.

Steps (each a vlmkit_train recipe, run in-process):
1. the frozen LM: a small GPT-2-architecture LM trained on the corpus with complete scene
   descriptions (``vlmkit train lm``; ``bench/lm_ceiling.py`` trains the same one and ``--lm DIR``
   reuses its output), and its text-only ceiling, the first row: the same test questions asked
   with the TRUE description where stage 2 puts the visual prompts. No stage 2 through this LM can
   read more from an image than the LM reads from that text;
2. stage 1 on shapes-world scenes (ITC + ITM + ITG on cached EfficientNet-Lite0 features), with
   and without ITG (the paper's Table 6 ablation), for each of ``--seeds`` seeds;
3. stage 2 through the frozen LM from each seed's stage 1, and from a fresh Q-Former (the paper's
   Figure 5 ablation: stage 2 without stage 1);
4. evaluation on held-out shapes scenes (every test scene holds a colour-shape pair never seen in
   training): grouped image->text and text->image R@1 on the 1,000-image gallery (ITC, max over
   queries), VQA exact match on 2,000 questions with each question type separately, and, for
   the first seed, ITM re-ranking and caption CIDEr (pycocoevalcap's CIDEr-D);
5. easy-VQA: the same recipe on its training split (one seed), exact match on all 9,673 test
   questions, beside its own LM ceiling.

Seeds change the Q-Former's initialisation, the batch order and the sampling; every run trains on
the same scenes (``data.seed=0``). Figures over seeds are mean and standard deviation (n-1). An
ablation goes the paper's way ("reproduced") when the full recipe's mean beats the ablated one's by
more than the larger of the two standard deviations; the opposite is "reversed"; anything between
is "within noise".

Retrieval is scored twice. ``strict``: a text's own image is the only right one. ``grouped``: the
gallery holds different scenes that one caption describes equally well (247 of 1,000 test scenes
share their first caption with another: same objects, other places), so images whose scenes hold
the same objects count as interchangeable (``retrieval_scores(..., image_groups=...)``).

Re-ranking (the paper's ITC top-k then ITM) uses k = 16 rather than 128 to fit the CPU budget.
Evaluation runs the trained checkpoints as ``vlmkit.load`` returns them, with the frozen encoder's
features of the test images computed once.

``equal`` is ``bench/recipes_table.py``'s budget (``bench/_recipes.py``): each stage
``EQUAL_STEPS`` steps at the equal batch size, one seed, no ablation.

Run: ``python bench/blip2_offline.py [--scale smoke|full|equal] [--lm DIR] [--seeds N] [--out DIR]``.
``smoke`` checks the pipeline in a few minutes (its figures mean little). ``--lm DIR`` takes the
LMs of ``python bench/lm_ceiling.py --out DIR`` (``DIR/shapes_lm/lm``, ``DIR/easy-vqa_lm/lm``)
instead of training them here; the printed minutes then leave out their training.
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
from _lm import answer_kind, train_frozen_lm  # bench/ is sys.path[0] when run
from _recipes import EQUAL_STEPS, budget

STAGE1_STEPS = 800
STAGE2_STEPS = 1000


@dataclass(frozen=True)
class Scale:
    train: int  # training scenes (and easy-VQA training images)
    test: int  # held-out scenes: the retrieval gallery and the VQA / caption test set
    lm_steps: int | None  # when the LMs are trained here (no --lm); None: bench/lm_ceiling.py's
    stage1_steps: int
    stage2_steps: int
    questions: int  # shapes VQA questions scored (easy-VQA: all of them)
    seeds: int
    ablations: bool = True  # stage 1 without ITG and stage 2 without stage 1, each seed
    extra: tuple[str, ...] = ()  # on top of every stage's preset


SCALES = {
    "smoke": Scale(train=100, test=50, lm_steps=30, stage1_steps=20, stage2_steps=30, questions=100, seeds=2),
    "full": Scale(train=4000, test=1000, lm_steps=None, stage1_steps=STAGE1_STEPS, stage2_steps=STAGE2_STEPS, questions=2000, seeds=3),
    # bench/recipes_table.py's budget: the rows every recipe has, one seed, no ablation.
    "equal": Scale(train=4000, test=1000, lm_steps=None, stage1_steps=EQUAL_STEPS, stage2_steps=EQUAL_STEPS, questions=2000,
                   seeds=1, ablations=False, extra=tuple(budget("equal"))),
}

#: On top of the ``shapes`` presets: bfloat16 autocast.
QFORMER = ["mixed_precision=bf16"]


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


def _questions(examples: list[Any], limit: int | None, seed: int = 0) -> list[tuple[int, str, str]]:
    """(example index, question, answer): a seeded sample of ``limit`` questions (all when None)."""
    pairs = [(i, q, a) for i, e in enumerate(examples) for q, a in e.qa]
    if limit is None:
        return pairs
    rng = np.random.default_rng(seed)
    return [pairs[i] for i in rng.permutation(len(pairs))[:limit]]


def _scores(predictions: list[str], chosen: list[tuple[int, str, str]], data: str) -> dict[str, Any]:
    """Exact match overall and per question type (shapes) or answer kind (easy-VQA), in %."""
    from vlmkit.eval import exact_match_accuracy

    kinds: dict[str, list[int]] = {}
    for index, (_, question, answer) in enumerate(chosen):
        kinds.setdefault(answer_kind(question, answer, data), []).append(index)
    per_type = {
        kind: round(exact_match_accuracy([predictions[i] for i in rows], [chosen[i][2] for i in rows]), 2)
        for kind, rows in sorted(kinds.items())
    }
    return {"all": round(exact_match_accuracy(predictions, [c[2] for c in chosen]), 2), **per_type}


def _vqa(model: Any, features: torch.Tensor, examples: list[Any], chosen: list[tuple[int, str, str]], data: str) -> dict[str, Any]:
    rows = torch.tensor([c[0] for c in chosen])
    prompts = [model.net.config.vqa_prompt.format(c[1]) for c in chosen]
    return _scores(_generate(model, features[rows], prompts, max_new_tokens=4), chosen, data)


def _ceiling(lm_dir: Path, examples: list[Any], chosen: list[tuple[int, str, str]], data: str) -> dict[str, Any]:
    """The frozen LM's answers to ``chosen`` with the true description where the prompts go."""
    from dataclasses import replace

    from vlmkit_train.lm import answer_from_descriptions

    asked = [replace(examples[i], qa=((q, a),)) for i, q, a in chosen]
    return _scores([p for _, _, p in answer_from_descriptions(lm_dir, asked)], chosen, data)


def _clean(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def _cider(model: Any, features: torch.Tensor, test: list[Any]) -> tuple[float, list[str]]:
    from pycocoevalcap.cider.cider import Cider

    captions = _generate(model, features, [model.net.config.caption_prompt] * len(test), max_new_tokens=24)
    gts = {str(i): [_clean(c) for c in e.captions] for i, e in enumerate(test)}
    res = {str(i): [_clean(c) or "empty"] for i, c in enumerate(captions)}
    return float(Cider().compute_score(gts, res)[0]), captions


def _spread(values: list[float]) -> dict[str, Any]:
    mean = float(np.mean(values))
    sd = float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")
    return {"mean": round(mean, 2), "sd": round(sd, 2), "runs": [round(v, 2) for v in values]}


def _direction(full: dict[str, Any], ablated: dict[str, Any]) -> str:
    """The paper's direction (full > ablated) beyond the larger standard deviation, or not."""
    gap, noise = full["mean"] - ablated["mean"], max(full["sd"], ablated["sd"])
    if not noise == noise:  # one seed: no spread to compare with
        return "one seed: no verdict"
    return "reproduced" if gap > noise else "reversed" if gap < -noise else "within noise"


def _over_seeds(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """{key: mean/sd/runs} for every numeric key the runs share."""
    return {key: _spread([r[key] for r in runs]) for key in runs[0] if isinstance(runs[0][key], (int, float))}


def _finished(run_dir: Path, config: Any) -> bool:
    """Whether ``run_dir`` holds a finished run of exactly ``config`` (an interrupted bench, run
    again, reuses it rather than training it again; a run is deterministic given its config)."""
    from vlmkit_train.config import dumps

    return (run_dir / "model" / "config.json").is_file() and (run_dir / "config.json").read_text() == dumps(config)


def run(scale_name: str, out: Path, lm_root: Path | None = None, seeds: int | None = None) -> dict[str, Any]:
    import vlmkit
    from vlmkit.data import load_easy_vqa, make_split
    from vlmkit.data.shapes import make_scenes
    from vlmkit.feature_cache import FeatureCache
    from vlmkit.models.qformer import QFormer
    from vlmkit_train.stage1 import stage1_config, train_stage1
    from vlmkit_train.stage2 import stage2_config, train_stage2

    scale = SCALES[scale_name]
    seeds = seeds or scale.seeds
    figures: dict[str, Any] = {"scale": scale_name, "seeds": seeds, "steps": {"stage1": scale.stage1_steps, "stage2": scale.stage2_steps}}
    began = time.perf_counter()

    def timed(name: str, work: Any) -> Any:
        start = time.perf_counter()
        result = work()
        figures.setdefault("minutes", {})[name] = round((time.perf_counter() - start) / 60, 2)
        return result

    def show(name: str) -> None:
        print(json.dumps({name: figures[name]}), flush=True)

    train = make_split(scale.train, 0, "train")
    test = make_split(scale.test, 0, "test")
    groups = [tuple(sorted((o.size, o.colour, o.shape) for o in s.objects)) for s in make_scenes(scale.test, 0, "test")]
    first = Counter(e.captions[0] for e in test)
    figures["strict_t2i_r1_ceiling"] = round(100 * float(np.mean([1 / first[e.captions[0]] for e in test])), 2)
    chosen = _questions(test, scale.questions)

    # 1. The frozen LM and its ceiling on the very questions stage 2 is scored on.
    if lm_root is not None:
        lm_dir = lm_root / "shapes_lm" / "lm"
        figures["lm"] = f"{lm_dir} (trained by bench/lm_ceiling.py; not timed here)"
    else:
        lm_dir = timed("lm", lambda: train_frozen_lm(out / "lm", train, "shapes", scale.lm_steps))
    figures["shapes_lm_ceiling_vqa"] = timed("lm_ceiling", lambda: _ceiling(lm_dir, test, chosen, "shapes"))
    show("shapes_lm_ceiling_vqa")

    test_features = timed("test_features", lambda: _features([e.image for e in test], out / "test_features"))
    # Every seed trains on the same scenes (data.seed=0); run.seed varies the rest.
    data = [f"train_size={scale.train}", "data.seed=0", f"features_dir={out / 'features'}", *scale.extra]

    def stage1(name: str, seed: int, extra: list[str]) -> Path:
        config = stage1_config("shapes", [*QFORMER, *data, f"run.seed={seed}", f"max_steps={scale.stage1_steps}", "log_every=50", *extra])
        if not _finished(out / name, config):
            timed(name, lambda: train_stage1(config, out / name, progress=True))
        return out / name

    def stage2(name: str, seed: int, stage1_dir: str) -> Any:
        overrides = [*QFORMER, *data, f"run.seed={seed}", f"max_steps={scale.stage2_steps}", f"language_model={lm_dir}",
                     f"stage1={stage1_dir}", "log_every=50"]
        config = stage2_config("shapes", overrides)
        if not _finished(out / name, config):
            timed(name, lambda: train_stage2(config, out / name, progress=True))
        return vlmkit.load(out / name / "model")

    def stage1_qformer(run_dir: Path) -> tuple[Any, Any]:
        from vlmkit.models.checkpoint import load_tokenizer

        return QFormer.from_pretrained(run_dir / "model" / "qformer"), load_tokenizer(run_dir / "model" / "qformer")

    # 2-4. Per seed: stage 1 with and without ITG; stage 2 from stage 1 and from nothing.
    per_seed: dict[str, list[dict[str, Any]]] = {"stage1": [], "stage1_no_itg": [], "stage2_vqa": [], "no_stage1_vqa": []}
    for seed in range(seeds):
        s1 = stage1(f"stage1_seed{seed}", seed, [])
        per_seed["stage1"].append(_retrieval(*stage1_qformer(s1), test_features, test, groups))
        if scale.ablations:
            s1_noitg = stage1(f"stage1_no_itg_seed{seed}", seed, ["use_itg=false"])
            per_seed["stage1_no_itg"].append(_retrieval(*stage1_qformer(s1_noitg), test_features, test, groups))
        model = stage2(f"stage2_seed{seed}", seed, str(s1))
        per_seed["stage2_vqa"].append(_vqa(model, test_features, test, chosen, "shapes"))
        if seed == 0:
            figures["shapes_heldout_stage1_itm_reranked"] = _reranked(*stage1_qformer(s1), test_features, test, groups, k=16)
            cider, captions = _cider(model, test_features, test)
            figures["shapes_heldout_cider"] = round(cider, 3)
            figures["caption_examples"] = [[test[i].captions[0], captions[i]] for i in range(3)]
            seen = train[: scale.test]  # training scenes: the gap between seen and held-out pairs
            seen_features = FeatureCache.open(out / "features").batch(np.arange(len(seen)))
            figures["shapes_train_vqa"] = _vqa(model, seen_features, seen, _questions(seen, scale.questions), "shapes")
        if scale.ablations:
            no_stage1 = stage2(f"stage2_no_stage1_seed{seed}", seed, "")
            per_seed["no_stage1_vqa"].append(_vqa(no_stage1, test_features, test, chosen, "shapes"))
        print(json.dumps({f"seed {seed}": {k: v[-1] for k, v in per_seed.items() if v}}), flush=True)
    per_seed = {name: runs for name, runs in per_seed.items() if runs}
    figures["per_seed"] = per_seed
    summary = {name: _over_seeds(runs) for name, runs in per_seed.items()}
    figures["shapes_heldout"] = summary
    show("shapes_heldout")
    if scale.ablations:
        figures["ablations"] = {
            "no_itg_retrieval": {key: _direction(summary["stage1"][key], summary["stage1_no_itg"][key]) for key in ("i2t_r1", "t2i_r1")},
            "no_stage1_vqa": _direction(summary["stage2_vqa"]["all"], summary["no_stage1_vqa"]["all"]),
        }
        show("ablations")

    # 5. easy-VQA: the same recipe on its own training split (one seed), all test questions.
    easy_train = [e for e in load_easy_vqa("train") if e.captions][: scale.train]
    easy_test = load_easy_vqa("test")
    easy_chosen = _questions(easy_test, None if scale_name != "smoke" else scale.questions)
    if lm_root is not None:
        easy_lm = lm_root / "easy-vqa_lm" / "lm"
    else:
        easy_lm = timed("easy_lm", lambda: train_frozen_lm(out / "easy_lm", easy_train, "easy-vqa", scale.lm_steps))
    figures["easy_vqa_lm_ceiling"] = timed("easy_lm_ceiling", lambda: _ceiling(easy_lm, easy_test, easy_chosen, "easy-vqa"))
    show("easy_vqa_lm_ceiling")
    easy_data = ["data=easy-vqa", f"train_size={scale.train}", f"features_dir={out / 'easy_features'}", *scale.extra]
    config1 = stage1_config("shapes", [*QFORMER, *easy_data, f"max_steps={scale.stage1_steps}", "log_every=50"])
    timed("easy_stage1", lambda: train_stage1(config1, out / "easy_stage1", progress=True))
    overrides = [*QFORMER, *easy_data, f"max_steps={scale.stage2_steps}", f"language_model={easy_lm}",
                 f"stage1={out / 'easy_stage1'}", "qa_fraction=0.9", "log_every=50"]
    timed("easy_stage2", lambda: train_stage2(stage2_config("shapes", overrides), out / "easy_stage2", progress=True))
    easy_model = vlmkit.load(out / "easy_stage2" / "model")
    easy_features = timed("easy_test_features", lambda: _features([e.image for e in easy_test], out / "easy_test_features"))
    figures["easy_vqa_test"] = _vqa(easy_model, easy_features, easy_test, easy_chosen, "easy-vqa")
    figures["easy_vqa_test_questions"] = len(easy_chosen)
    show("easy_vqa_test")
    figures["total_minutes"] = round((time.perf_counter() - began) / 60, 2)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=sorted(SCALES), default="full")
    parser.add_argument("--lm", default=None, metavar="DIR", help="reuse the LMs of `bench/lm_ceiling.py --out DIR`")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per figure (default: the scale's)")
    parser.add_argument("--out", default=None, help="keep runs here (default: a temporary directory)")
    args = parser.parse_args()
    lm_root = Path(args.lm) if args.lm else None
    for name in ("shapes_lm", "easy-vqa_lm"):
        if lm_root is not None and not (lm_root / name / "lm").is_dir():
            parser.error(f"--lm {lm_root}: no {name}/lm there (run `python bench/lm_ceiling.py --out {lm_root}` first)")
    with tempfile.TemporaryDirectory(prefix="vlmkit-blip2-") as tmp:
        out = Path(args.out) if args.out else Path(tmp)
        figures = run(args.scale, out, lm_root, args.seeds)
        print(json.dumps(figures, indent=1))
        if args.out:
            (out / "figures.json").write_text(json.dumps(figures, indent=1) + "\n")
            print(f"figures: {out / 'figures.json'}; the runs are in {out}")


if __name__ == "__main__":
    main()
