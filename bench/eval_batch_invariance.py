"""`vlmkit eval` on a trained model: scores, and the same predictions at batch 1 and 16.

Trains the offline BLIP-2 recipe on easy-VQA (a small LM, stage 1, stage 2: about 12 minutes on a
2-core CPU), unless ``--model`` names a trained checkpoint. It then evaluates VQA, captioning and
retrieval on the easy-VQA test split at batch 1 and at batch 16. For each task it prints the scores,
how many predictions differ between the two batch sizes, and the wall time of each.

Run: ``python bench/eval_batch_invariance.py [--model DIR] [--questions 2000] [--images 500] [--out DIR]``
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import vlmkit
from vlmkit.data import load_easy_vqa
from vlmkit.eval import EvalConfig, evaluate


def train(out: Path) -> Path:
    from vlmkit_train.lm import corpus_texts, lm_config, train_lm
    from vlmkit_train.stage1 import stage1_config, train_stage1
    from vlmkit_train.stage2 import stage2_config, train_stage2

    corpus = [e for e in load_easy_vqa("train") if e.captions][:4000]
    train_lm(lm_config("shapes", ["max_steps=500", "mixed_precision=bf16"]), corpus_texts(corpus, context=True), out / "lm")
    data = ["mixed_precision=bf16", "data=easy-vqa", "train_size=4000", f"features_dir={out / 'features'}"]
    train_stage1(stage1_config("shapes", [*data, "max_steps=1500", "log_every=100"]), out / "stage1")
    stage2 = [*data, "max_steps=1200", f"language_model={out / 'lm' / 'lm'}", f"stage1={out / 'stage1'}", "qa_fraction=0.9", "log_every=100"]
    train_stage2(stage2_config("shapes", stage2), out / "stage2")
    return out / "stage2" / "model"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="a trained checkpoint (default: train one)")
    parser.add_argument("--questions", type=int, default=2000)
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or tmp)
        began = time.perf_counter()
        path = Path(args.model) if args.model else train(out)
        print(f"model: {path} ({'given' if args.model else f'trained in {time.perf_counter() - began:.0f} s'})")
        model = vlmkit.load(path)
        print("| task | items | scores | predictions differing, batch 1 vs 16 | time b1 / b16 |")
        print("|---|---:|---|---:|---|")
        for task, limit in (("vqa", args.questions), ("caption", args.images), ("retrieval", None)):
            results, seconds = {}, {}
            for batch in (1, 16):
                start = time.perf_counter()
                results[batch] = evaluate(model, EvalConfig(task, "easy-vqa:test", batch_size=batch, limit=limit))
                seconds[batch] = time.perf_counter() - start
            one, sixteen = results[1], results[16]
            differing = sum(one.outputs[k] != sixteen.outputs.get(k) for k in one.outputs) if one.outputs else "n/a"
            same = "same" if one.scores == sixteen.scores else "DIFFERENT"
            shown = ", ".join(f"{k} {v:.2f}" for k, v in one.scores.items() if "mean rank" not in k)
            print(f"| {task} | {one.items} | {shown} ({same} at 16) | {differing} | {seconds[1]:.0f} s / {seconds[16]:.0f} s |")


if __name__ == "__main__":
    main()
