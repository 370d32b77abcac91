"""What one training step of each recipe's default preset costs on this machine, and so roughly what
a whole preset run costs: the figures ``vlmkit train --help`` quotes.

Every recipe runs its first preset (``shapes``; CLIP's too) through the shared driver for
``--steps`` steps with nothing else changed but the data size (``data.train_size``, which only sets
how many images are encoded into the feature cache, not what a step computes). A step's cost is the
median of the time between consecutive ``metrics.jsonl`` rows (``run.log_every`` = 1) after the
first ``--skip`` steps, so model building, caching and warm-up are left out. The frozen LM, CLIP
tower and stage-1 runs the later recipes need are made first with their own preset's architecture
and one step, since a step's cost depends on their size, not on how well they are trained.

Run with nothing else working on the machine: ``python bench/recipe_costs.py [--steps 25] [--skip 5]
[--only coca,simvlm] [--bf16] [--out DIR]``. Prints one Markdown table: recipe, mixed precision, batch,
seconds a step (median, and the spread of the middle half), steps in the preset, minutes a preset
run's steps take.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any


def _step_seconds(run: Path, skip: int) -> list[float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    times = [r["seconds"] for r in rows]
    return [b - a for a, b in zip(times[skip:], times[skip + 1 :], strict=False)]


def _train(name: str, overrides: list[str], out: Path) -> Any:
    """One run in a process of its own: accelerate allows one mixed-precision setting a process."""
    from vlmkit_train.recipes import recipe

    declared = recipe(name)
    config = declared.config(None, overrides)
    declared.train(config, out)
    return config.run


def main() -> None:
    import multiprocessing

    from vlmkit_train.recipes import RECIPES, recipe

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=25, help="steps timed per recipe, after --skip (default: 25)")
    parser.add_argument("--skip", type=int, default=5, help="first steps left out (warm-up; default: 5)")
    parser.add_argument("--train-size", type=int, default=256, help="images encoded per recipe (default: 256)")
    parser.add_argument("--only", default="", help="comma-separated recipe names (default: all)")
    parser.add_argument("--bf16", action="store_true", help="every recipe in bfloat16 autocast (run.mixed_precision=bf16)")
    parser.add_argument("--out", default=None, help="keep the runs here (default: a temporary directory)")
    args = parser.parse_args()
    names = [n for n in args.only.split(",") if n] or list(RECIPES)
    with tempfile.TemporaryDirectory(prefix="vlmkit-costs-") as tmp:
        root = Path(args.out or tmp)
        common = [f"data.train_size={args.train_size}", "run.log_every=1", "run.warmup_steps=2"]
        common += ["run.mixed_precision=bf16"] if args.bf16 else []
        spawn = multiprocessing.get_context("spawn")

        def run(name: str, steps: int, extra: list[str], where: Path) -> tuple[Path, Any]:
            with spawn.Pool(1) as pool:
                settings = pool.apply(_train, (name, [*common, f"run.max_steps={steps}", *extra], where / name))
            return where / name, settings

        # What later recipes read: their size matters, their training does not.
        lm_dir = run("lm", 1, [], root / "needs")[0] / "lm"
        clip_dir = run("clip", 1, [], root / "needs")[0] / "model"
        stage1_dir = run("blip2-stage1", 1, [], root / "needs")[0]
        llava1_dir = run("llava-stage1", 1, [f"vision_tower={clip_dir}", f"language_model={lm_dir}"], root / "needs")[0]
        needs = {
            "blip2-stage2": [f"stage1={stage1_dir}", f"language_model={lm_dir}"],
            "instructblip": [f"stage1={stage1_dir}", f"language_model={lm_dir}"],
            "clipcap": [f"language_model={lm_dir}"],
            "llava-stage1": [f"vision_tower={clip_dir}", f"language_model={lm_dir}"],
            "llava-stage2": [f"stage1={llava1_dir}"],
        }
        lines = ["| recipe | precision | batch | s/step (median; middle half) | preset steps | minutes of steps |", "|---|---|---:|---:|---:|---:|"]
        for name in names:
            preset_steps = recipe(name).config().run.max_steps
            out, config = run(name, args.skip + args.steps + 1, needs.get(name, []), root / "timed")
            seconds = sorted(_step_seconds(out, args.skip))
            quarter = len(seconds) // 4
            median = statistics.median(seconds)
            lines.append(
                f"| {name} | {config.mixed_precision} | {config.batch_size} | {median:.3f} ({seconds[quarter]:.3f}-{seconds[-1 - quarter]:.3f}) "
                f"| {preset_steps} | {median * preset_steps / 60:.1f} |"
            )
            print(lines[-1], flush=True)
        print("\n".join(lines))


if __name__ == "__main__":
    main()
