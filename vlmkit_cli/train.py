"""``vlmkit train RECIPE``: the training recipes of :mod:`vlmkit_train`, with checked overrides.

Multi-GPU and multi-node runs go through HF accelerate: ``accelerate launch -m vlmkit_cli.main
train blip2-stage1 ...`` with an ``accelerate config`` file choosing DDP, FSDP or DeepSpeed.
"""

from __future__ import annotations

import argparse
import json
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model (BLIP-2 stage 1, stage 2, a small LM)")
    p.add_argument("recipe", choices=["blip2-stage1", "blip2-stage2", "lm"], help="what to train")
    p.add_argument("--preset", default="shapes", help="named config: shapes (default) or tiny")
    p.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE", help="override a config field, repeatable")
    p.add_argument("--out", required=True, help="output directory (checkpoints, metrics, loss curve)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out exactly where it stopped")
    p.add_argument("--show-config", action="store_true", help="print the resolved config and exit")
    p.set_defaults(run=run_train)


def run_train(args: argparse.Namespace) -> int:
    from vlmkit_train.config import dumps

    progress = sys.stderr.isatty()
    if args.recipe == "lm":
        from vlmkit_train.lm import lm_config, train_lm, training_texts

        config_lm = lm_config(args.preset, args.overrides)
        if args.show_config:
            print(dumps(config_lm))
            return 0
        result_lm = train_lm(config_lm, training_texts(config_lm), args.out, resume=args.resume, progress=progress)
        summary = {"out_dir": str(result_lm.out_dir), "steps": result_lm.steps, "loss": result_lm.final_loss}
        print(json.dumps({**summary, "heldout_ppl": result_lm.heldout_ppl}))
        return 0
    if args.recipe == "blip2-stage2":
        from vlmkit_train.stage2 import stage2_config, train_stage2

        config2 = stage2_config(args.preset, args.overrides)
        if args.show_config:
            print(dumps(config2))
            return 0
        result2 = train_stage2(config2, args.out, resume=args.resume, progress=progress)
        print(json.dumps({"out_dir": str(result2.out_dir), "steps": result2.steps, "loss": result2.final_loss}))
        return 0
    from vlmkit_train.stage1 import stage1_config, train_stage1

    config = stage1_config(args.preset, args.overrides)
    if args.show_config:
        print(dumps(config))
        return 0
    result = train_stage1(config, args.out, resume=args.resume, progress=progress)
    print(json.dumps({"out_dir": str(result.out_dir), "steps": result.steps, **result.final_losses}))
    return 0
