"""The learning curve of the offline LM's text ceiling on shapes: how well the LM answers from the
true description (where stage 2 puts the visual prompts) as it trains, per question type, on
held-out scenes and on training scenes. ``bench/lm_ceiling.py`` gives the end point of one run;
this script shows when each question type is learned, to tell a budget that has not run out from
a wall.

The loop is ``vlmkit train lm``'s: the same corpus (``lm_texts``), held-out split, tokenizer,
encoding, batching, AdamW groups and cosine schedule, under bfloat16 autocast. Batches are drawn
with a seeded ``random.Random`` instead of the recipe's step-indexed sampler, and there are no
resumable checkpoints. Every ``log_every`` steps the model is scored by exact match on the first
``--scenes`` held-out test scenes and the first ``--scenes`` training scenes
(``answer_from_descriptions``), and a JSON line is printed.

Run: ``python bench/lm_curve.py [--threads 1] [--scenes 150] [--set max_steps=4000] [--set log_every=500] [--set n_embd=128] [--set lr=2e-3]``
(``--set`` overrides the LM preset ``shapes``; the session that added this script measured
width 128, lr 2e-3, ``loss_on=targets``: 56.2 / 62.6 / 65.8 / 72.5 / 72.8% held-out at steps 500 to
2500, on one thread, 85 minutes).
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch


def main() -> None:
    from transformers import get_cosine_schedule_with_warmup

    from vlmkit.data import make_split
    from vlmkit.data.shapes import question_type
    from vlmkit_train import lm
    from vlmkit_train.config import data_seed
    from vlmkit_train.loop import adamw

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--scenes", type=int, default=150, help="scenes scored, held-out and training each (default: 150)")
    parser.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE", help="override the LM preset shapes")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    config = lm.lm_config("shapes", args.overrides)
    run = config.run
    train_examples = make_split(4000, 0, "train")
    probes = {"test": make_split(1000, 0, "test")[: args.scenes], "train": train_examples[: args.scenes]}
    texts, _ = lm.split_heldout(lm.lm_texts(config, train_examples), config.heldout_fraction, data_seed(config))
    tokenizer = lm.train_tokenizer(texts, config.vocab_size)
    rows = lm._encode(tokenizer, texts, config.n_positions, loss_on=config.loss_on)
    special = tokenizer.eos_token_id
    torch.manual_seed(run.seed)
    model = lm.new_lm(config, tokenizer)
    optimizer = adamw(model, lr=run.lr, weight_decay=run.weight_decay)
    scheduler = get_cosine_schedule_with_warmup(optimizer, run.warmup_steps, run.max_steps)
    print(json.dumps({"overrides": args.overrides, "texts": len(texts), "parameters": sum(p.numel() for p in model.parameters())}), flush=True)

    def score(lm_dir: Path, examples: list[Any]) -> dict[str, float]:
        model.save_pretrained(lm_dir)
        model.eval()
        groups: dict[str, list[bool]] = defaultdict(list)
        for question, answer, predicted in lm.answer_from_descriptions(lm_dir, examples):
            groups[question_type(question)].append(predicted == answer)
            groups["all"].append(predicted == answer)
        model.train()
        return {kind: round(100 * sum(hits) / len(hits), 1) for kind, hits in sorted(groups.items())}

    rng = random.Random(run.seed)
    start, running = time.perf_counter(), 0.0
    with tempfile.TemporaryDirectory() as tmp:
        lm_dir = Path(tmp) / "lm"
        tokenizer.save_pretrained(lm_dir)
        for step in range(1, run.max_steps + 1):
            ids, mask, labels = lm._batch([rows[rng.randrange(len(rows))] for _ in range(run.batch_size)], special)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            running = loss.item() if step == 1 else 0.98 * running + 0.02 * loss.item()
            if step % run.log_every == 0 or step == run.max_steps:
                record = {"step": step, "loss": round(running, 4), "minutes": round((time.perf_counter() - start) / 60, 1)}
                record.update({name: score(lm_dir, examples) for name, examples in probes.items()})
                print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
