"""``vlmkit train RECIPE``: the training recipes of :mod:`vlmkit_train` (its one table,
:data:`vlmkit_train.recipes.RECIPES`), with checked overrides.

Multi-GPU and multi-node runs go through HF accelerate: ``accelerate launch -m vlmkit_cli.main
train blip2-stage1 ...`` with an ``accelerate config`` file choosing DDP, FSDP or DeepSpeed; several
CPU processes through ``torchrun --standalone --nproc_per_node N -m vlmkit_cli.main train ...``.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from vlmkit_train.recipes import RECIPES

OVERRIDES = ("KEY=VALUE: a config field by its path, e.g. run.lr=3e-4, run.max_steps=200, data.name=easy-vqa, "
             "data.train_size=500, data.spec=coco:ANN.json:IMAGES (any dataset spec, instead of the built-in data; "
             "see --show-config); repeatable")


class _RecipeHelp(argparse.Action):
    """``-h``: the usage, then every recipe's presets with what each is for and costs (the recipe
    modules are imported only here, so other commands stay fast)."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, default: Any = argparse.SUPPRESS, help: str | None = None) -> None:
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any, option_string: str | None = None) -> None:
        from vlmkit_train.recipes import all_recipes

        lines = ["recipes and their presets (--preset NAME; the first is the default):"]
        for recipe in all_recipes():
            lines.append(f"  {recipe.name}: {recipe.summary}")
            lines += [f"    {name}: {recipe.preset_notes.get(name, '')}" for name in recipe.presets]
        parser.epilog = "\n".join(lines)
        parser.formatter_class = argparse.RawDescriptionHelpFormatter
        parser.print_help()
        parser.exit()


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help=f"train a model with a recipe: {', '.join(RECIPES)}",
                       description="Train a recipe into --out; the run ends by printing where the model is and what to run next.",
                       add_help=False)
    p.add_argument("-h", "--help", action=_RecipeHelp, help="show this help, with every recipe's presets, and exit")
    p.add_argument("recipe", choices=list(RECIPES), help="what to train")
    p.add_argument("--preset", default=None, help="named config (default: the recipe's first, shapes); tiny is a smoke test")
    p.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE", help=OVERRIDES)
    p.add_argument("--out", required=True, help="output directory (checkpoints, metrics, loss curve)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out exactly where it stopped")
    p.add_argument("--show-config", action="store_true", help="print the resolved config and exit")
    p.set_defaults(run=run_train)


def run_train(args: argparse.Namespace) -> int:
    from vlmkit_train.config import dumps
    from vlmkit_train.driver import train
    from vlmkit_train.recipes import recipe

    declared = recipe(args.recipe)
    config = declared.config(args.preset, args.overrides)
    if args.show_config:
        print(dumps(config))
        return 0
    result = train(declared, config, args.out, resume=args.resume, progress=sys.stderr.isatty())
    print(json.dumps({"out_dir": str(result.out_dir), "steps": result.steps, "final_losses": result.final_losses,
                      "model_dir": str(result.model_dir) if result.model_dir else None, **result.final_record}))
    if result.model_dir is not None:
        print(f"model: {result.model_dir}\nnext: {declared.next_step(result.model_dir)}", file=sys.stderr)
    return 0
