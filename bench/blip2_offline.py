"""The whole offline BLIP-2 recipe on CPU, and the figures that show it learns.

Steps (each a vlmkit_train recipe, run in-process):
1. a small GPT-2-architecture LM trained on the training corpus text, then frozen (``vlmkit train lm``);
2. stage 1 on shapes-world scenes: ITC + ITM + ITG on cached EfficientNet-Lite0 features;
3. stage 2 through the frozen LM;
4. evaluation on held-out shapes scenes (every test scene holds a colour-shape pair never seen in
   training): image->text and text->image R@1 on the gallery (ITC, max over queries), VQA exact
   match, caption CIDEr (pycocoevalcap's CIDEr-D on lower-cased, punctuation-free text);
5. the paper's ablations, in direction: stage 1 without ITG (retrieval, Table 6) and stage 2
   without stage 1 (VQA, Figure 5); and the feature cache's speed-up (stage-1 steps/s with and
   without it);
6. easy-VQA: the same recipe on easy-VQA's training split, exact-match accuracy on its test split.

Run: ``python bench/blip2_offline.py [--scale smoke|full] [--out DIR]``. ``smoke`` checks the
pipeline in a few minutes (its figures mean little); ``full`` is the recipe the targets refer to.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

SCALES = {
    # name: (train scenes, test scenes, lm steps, stage-1 steps, stage-2 steps, eval questions, easy-VQA train images)
    "smoke": (100, 50, 30, 20, 30, 100, 100),
    "full": (4000, 1000, 1500, 1500, 2000, 2000, 4000),
}


def _lm(out: Path, examples, steps: int) -> Path:
    from vlmkit_train.lm import corpus_texts, lm_config, train_lm

    config = lm_config("shapes", [f"max_steps={steps}"])
    train_lm(config, corpus_texts(examples), out)
    return out / "lm"


def _retrieval(model, test) -> dict[str, float]:
    from vlmkit.eval import retrieval_scores

    sim = model.similarity([e.image for e in test], [e.captions[0] for e in test])
    scores = retrieval_scores(sim, list(range(len(test))), ks=(1, 5))
    return {"i2t_r1": scores.image_to_text[1], "t2i_r1": scores.text_to_image[1], "i2t_r5": scores.image_to_text[5]}


def _vqa(model, examples, limit: int, seed: int = 0) -> float:
    from vlmkit.eval import exact_match_accuracy

    rng = np.random.default_rng(seed)
    pairs = [(e.image, q, a) for e in examples for q, a in e.qa]
    chosen = [pairs[i] for i in rng.permutation(len(pairs))[:limit]]
    answers = model.ask([p[0] for p in chosen], [p[1] for p in chosen], max_new_tokens=4, batch_size=32)
    return exact_match_accuracy(answers, [p[2] for p in chosen])


def _cider(model, test) -> float:
    import re

    from pycocoevalcap.cider.cider import Cider

    def clean(text: str) -> str:
        return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())

    captions = model.caption([e.image for e in test], max_new_tokens=20, batch_size=32)
    gts = {str(i): [clean(c) for c in e.captions] for i, e in enumerate(test)}
    res = {str(i): [clean("a photo of " + c)[len("a photo of ") :] or "empty"] for i, c in enumerate(captions)}
    return float(Cider().compute_score(gts, res)[0])


def run(scale: str, out: Path) -> dict[str, object]:
    import vlmkit
    from vlmkit.data import load_easy_vqa, make_split
    from vlmkit_train.stage1 import stage1_config, train_stage1
    from vlmkit_train.stage2 import stage2_config, train_stage2

    n_train, n_test, lm_steps, s1_steps, s2_steps, n_questions, n_easy = SCALES[scale]
    figures: dict[str, object] = {"scale": scale}
    began = time.perf_counter()
    train = make_split(n_train, 0, "train")
    test = make_split(n_test, 0, "test")

    lm_dir = _lm(out / "lm", train, lm_steps)
    figures["lm_minutes"] = (time.perf_counter() - began) / 60

    def stage1(name: str, extra: list[str]) -> tuple[Path, float]:
        start = time.perf_counter()
        train_stage1(stage1_config("shapes", [f"train_size={n_train}", f"max_steps={s1_steps}", *extra]), out / name)
        rows = [json.loads(line) for line in (out / name / "metrics.jsonl").read_text().splitlines()]
        steps_per_s = rows[-1]["step"] / rows[-1]["seconds"]
        figures[f"{name}_minutes"] = (time.perf_counter() - start) / 60
        return out / name, steps_per_s

    def stage2(name: str, stage1_dir: str) -> Path:
        start = time.perf_counter()
        overrides = [f"train_size={n_train}", f"max_steps={s2_steps}", f"language_model={lm_dir}", f"stage1={stage1_dir}"]
        train_stage2(stage2_config("shapes", overrides), out / name)
        figures[f"{name}_minutes"] = (time.perf_counter() - start) / 60
        return out / name / "model"

    s1, cached_rate = stage1("stage1", [])
    _, uncached_rate = stage1("stage1_nocache", ["cache_features=false", f"max_steps={max(5, s1_steps // 20)}", "log_every=1"])
    figures["stage1_steps_per_s_cached"] = cached_rate
    figures["stage1_steps_per_s_uncached"] = uncached_rate
    figures["feature_cache_speedup"] = cached_rate / uncached_rate
    model = vlmkit.load(stage2("stage2", str(s1)))
    figures["shapes_heldout"] = {**_retrieval(model, test), "vqa": _vqa(model, test, n_questions), "cider": _cider(model, test)}

    # Ablations, in direction: ITG off in stage 1 (retrieval), stage 2 without stage 1 (VQA).
    s1_noitg, _ = stage1("stage1_no_itg", ["use_itg=false"])
    figures["ablation_no_itg"] = _retrieval(vlmkit.load(stage2("stage2_no_itg", str(s1_noitg))), test)
    figures["ablation_no_stage1_vqa"] = _vqa(vlmkit.load(stage2("stage2_no_stage1", "")), test, n_questions)

    # easy-VQA: the same recipe on its own training split.
    easy_train = [e for e in load_easy_vqa("train") if e.captions][:n_easy]
    easy_test = load_easy_vqa("test")
    easy_lm = _lm(out / "easy_lm", easy_train, lm_steps)
    train_stage1(stage1_config("shapes", ["data=easy-vqa", f"train_size={n_easy}", f"max_steps={s1_steps}"]), out / "easy_stage1")
    overrides = ["data=easy-vqa", f"train_size={n_easy}", f"max_steps={s2_steps}", f"language_model={easy_lm}",
                 f"stage1={out / 'easy_stage1'}", "qa_fraction=0.9"]
    train_stage2(stage2_config("shapes", overrides), out / "easy_stage2")
    figures["easy_vqa_test_accuracy"] = _vqa(vlmkit.load(out / "easy_stage2" / "model"), easy_test, n_questions)
    figures["total_minutes"] = (time.perf_counter() - began) / 60
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
