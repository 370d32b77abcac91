"""``vlmkit train RECIPE``: the training recipes of :mod:`vlmkit_train`, with checked overrides.

Multi-GPU and multi-node runs go through HF accelerate: ``accelerate launch -m vlmkit_cli.main
train blip2-stage1 ...`` with an ``accelerate config`` file choosing DDP, FSDP or DeepSpeed; several
CPU processes through ``torchrun --standalone --nproc_per_node N -m vlmkit_cli.main train ...``.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import sys
from typing import Any

# recipe -> (module, config factory, training function); every factory takes (preset, overrides)
# and every training function (config, out_dir, resume=, progress=) and returns a result dataclass.
RECIPES: dict[str, tuple[str, str, str, str]] = {
    "blip2-stage1": ("vlmkit_train.stage1", "stage1_config", "train_stage1", "BLIP-2 stage 1: Q-Former with ITC + ITM + ITG"),
    "blip2-stage2": ("vlmkit_train.stage2", "stage2_config", "train_stage2", "BLIP-2 stage 2: Q-Former into a frozen LM"),
    "lm": ("vlmkit_train.lm", "lm_config", "train_lm", "a small GPT-2-style LM to freeze for stage 2"),
    "clip": ("vlmkit_train.contrastive", "contrastive_config", "train_contrastive", "CLIP / LiT / SigLIP contrastive learning"),
    "llava-stage1": ("vlmkit_train.llava", "stage1_config", "train_stage1", "LLaVA stage 1: projector on image-caption pairs"),
    "llava-stage2": ("vlmkit_train.llava", "stage2_config", "train_stage2", "LLaVA stage 2: projector + LM on conversations"),
    "instructblip": ("vlmkit_train.instruct", "instruct_config", "train_instruct", "InstructBLIP instruction tuning"),
    "clipcap": ("vlmkit_train.clipcap", "clipcap_config", "train_clipcap", "ClipCap: image embedding -> frozen LM prefix"),
    "coca": ("vlmkit_train.coca", "coca_config", "train_coca", "CoCa: contrastive + captioning"),
    "simvlm": ("vlmkit_train.simvlm", "simvlm_config", "train_simvlm", "SimVLM: prefix-LM over image and text"),
}


def register(sub: argparse._SubParsersAction) -> None:
    recipes = "; ".join(f"{name}: {what}" for name, (_, _, _, what) in RECIPES.items())
    p = sub.add_parser("train", help="train a model (CLIP/LiT, BLIP-2, InstructBLIP, LLaVA, ClipCap, CoCa, SimVLM, a small LM)",
                       description=f"Recipes. {recipes}.")
    p.add_argument("recipe", choices=list(RECIPES), help="what to train")
    p.add_argument("--preset", default="shapes", help="named config: shapes (default), tiny, or a recipe's own")
    p.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE", help="override a config field, repeatable")
    p.add_argument("--out", required=True, help="output directory (checkpoints, metrics, loss curve)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out exactly where it stopped")
    p.add_argument("--show-config", action="store_true", help="print the resolved config and exit")
    p.set_defaults(run=run_train)


def _summary(result: Any) -> dict[str, Any]:
    return {key: (str(value) if not isinstance(value, (int, float, str, bool, dict, list, type(None))) else value)
            for key, value in dataclasses.asdict(result).items()}


def run_train(args: argparse.Namespace) -> int:
    from vlmkit_train.config import dumps

    module_name, config_name, train_name, _ = RECIPES[args.recipe]
    module = importlib.import_module(module_name)
    config = getattr(module, config_name)(args.preset, args.overrides)
    if args.show_config:
        print(dumps(config))
        return 0
    progress = sys.stderr.isatty()
    if args.recipe == "lm":
        result = module.train_lm(config, module.training_texts(config), args.out, resume=args.resume, progress=progress)
    else:
        result = getattr(module, train_name)(config, args.out, resume=args.resume, progress=progress)
    print(json.dumps(_summary(result)))
    return 0
