"""Every training recipe beside BLIP-2's, on the same data and scored by the same code: one table.

Each recipe has its own bench script (``bench/<recipe>_offline.py``) with a ``run(scale, out)`` that
trains and scores the result through ``vlmkit.load`` (``bench/_recipes.py``). This script runs the
ones whose ``ROOT/<recipe>/figures.json`` is missing (or was made at another scale), reads the
others, and prints a Markdown table.

The default scale, ``equal``, is one stated budget for every recipe (``bench/_recipes.py``): each
trained stage takes ``EQUAL_STEPS`` optimiser steps of ``EQUAL_BATCH`` examples on the same training
scenes and images; the soft-prompt recipes share one frozen LM (``ROOT/lms/``, the one BLIP-2's
bench freezes), InstructBLIP starts from BLIP-2's stage 1 and LLaVA from the CLIP row's tower when
those runs are in ``ROOT``. At ``equal`` only the main rows are trained (no ablation variants).

BLIP-2 comes from ``bench/blip2_offline.py`` run here (``ROOT/blip2_runs``), or from an earlier run
of it given with ``--blip2 DIR`` (its ``stage2_seed0/model`` and ``easy_stage2/model``).

Run: ``python bench/recipes_table.py [--root DIR] [--scale equal|full|smoke] [--only blip2,clip]
[--blip2 DIR] [--print-only]``. Two processes on one root can share the work (``--only`` sets that do not overlap;
BLIP-2 before InstructBLIP, CLIP before LLaVA). A run from nothing takes hours on a 2-core CPU;
with a root holding every recipe's figures it only prints.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _recipes  # noqa: E402

# recipe -> its bench module (bench/<module>.py), in the table's order after BLIP-2.
RECIPES = {
    "blip2": "blip2_offline",
    "blip": "blip_offline",
    "clip": "clip_offline",
    "coca": "coca_offline",
    "llava": "llava_offline",
    "instructblip": "instructblip_offline",
    "clipcap": "clipcap_offline",
    "simvlm": "simvlm_offline",
}

COLUMNS = [
    ("shapes R@1 I2T / T2I (grouped)", "shapes", ("i2t_r1", "t2i_r1")),
    ("shapes R@1 I2T / T2I (strict)", "shapes", ("strict_i2t_r1", "strict_t2i_r1")),
    ("shapes VQA %", "shapes", ("vqa",)),
    ("shapes CIDEr-D", "shapes", ("cider",)),
    ("easy-VQA VQA %", "easy-vqa", ("vqa",)),
    ("easy-VQA CIDEr-D", "easy-vqa", ("cider",)),
    ("easy-VQA R@1 I2T / T2I (grouped)", "easy-vqa", ("i2t_r1", "t2i_r1")),
]


def blip2_figures(run_dir: Path, scale: str) -> dict[str, Any]:
    """BLIP-2 from a ``blip2_offline.py`` run, scored by ``_recipes`` like every other recipe."""
    import vlmkit

    figures: dict[str, Any] = {"recipe": "blip2", "scale": scale, "source": str(run_dir)}
    timer = _recipes.Timer(figures)
    tasks = ("retrieval", "vqa", "caption")
    figures["shapes"] = timer("score_shapes", lambda: _recipes.score(vlmkit.load(run_dir / "stage2_seed0" / "model"), _recipes.shapes(), tasks))
    figures["easy-vqa"] = timer("score_easy", lambda: _recipes.score(vlmkit.load(run_dir / "easy_stage2" / "model"), _recipes.easy_vqa(), tasks))
    return figures


def _cell(values: dict[str, Any], keys: tuple[str, ...]) -> str:
    if not all(isinstance(values.get(k), (int, float)) for k in keys):
        return "n/a"
    return " / ".join(f"{values[k]:.1f}" if k != "cider" else f"{values[k]:.2f}" for k in keys)


def table(rows: dict[str, dict[str, Any]]) -> str:
    lines = ["| recipe | " + " | ".join(name for name, _, _ in COLUMNS) + " | train + eval min |",
             "|---|" + "---:|" * (len(COLUMNS) + 1)]
    for recipe, figures in rows.items():
        cells = [_cell(figures.get(data) or {}, keys) for _, data, keys in COLUMNS]
        minutes = figures.get("total_minutes")
        lines.append(f"| {recipe} | " + " | ".join(cells) + f" | {minutes if minutes is not None else 'n/a'} |")
    return "\n".join(lines)


def _run(recipe: str, scale: str, root: Path, blip2: str) -> dict[str, Any]:
    """Train and score ``recipe`` at ``scale`` into ``root/<recipe>``; its figures."""
    module = importlib.import_module(RECIPES[recipe])
    if recipe != "blip2":
        options: dict[str, str] = {}
        if recipe == "instructblip" and (root / "blip2_runs" / "easy_stage1" / "model").is_dir():
            options = {"stage1": str(root / "blip2_runs" / "stage1_seed0"), "easy_stage1": str(root / "blip2_runs" / "easy_stage1")}
        return module.run(scale, root / recipe, **options)
    if blip2:
        figures = blip2_figures(Path(blip2), scale)
    else:
        began = time.perf_counter()
        lm_root = None
        if scale != "smoke":  # the frozen LMs every soft-prompt recipe shares, timed with BLIP-2
            for data in (_recipes.shapes(), _recipes.easy_vqa()):
                _recipes.shared_lm(root / "blip2", data, scale, smoke_steps=0)
            lm_root = root / "lms"
        trained = module.run(scale, root / "blip2_runs", lm_root=lm_root)
        figures = blip2_figures(root / "blip2_runs", scale)
        figures["bench"] = {key: trained.get(key) for key in ("steps", "seeds", "minutes", "shapes_lm_ceiling_vqa", "easy_vqa_lm_ceiling")}
        figures["total_minutes"] = round((time.perf_counter() - began) / 60, 2)
    _recipes.save(figures, root / "blip2")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="recipe-runs", help="where every recipe's runs and figures.json live")
    parser.add_argument("--scale", choices=["equal", "full", "smoke"], default="equal",
                        help=f"equal: {_recipes.EQUAL_STEPS} steps of {_recipes.EQUAL_BATCH} per trained stage, every recipe (default)")
    parser.add_argument("--only", default="", help="comma-separated recipes (default: all)")
    parser.add_argument("--blip2", default="", help="a `bench/blip2_offline.py --out` directory to score BLIP-2 from")
    parser.add_argument("--print-only", action="store_true", help="print the rows ROOT already holds at --scale; run nothing")
    args = parser.parse_args()
    root = Path(args.root)
    chosen = [r for r in args.only.split(",") if r] or list(RECIPES)
    unknown = sorted(set(chosen) - set(RECIPES))
    if unknown:
        parser.error(f"unknown recipes: {', '.join(unknown)}; known: {', '.join(RECIPES)}")

    rows: dict[str, dict[str, Any]] = {}
    for recipe in chosen:
        path = root / recipe / "figures.json"
        figures = json.loads(path.read_text()) if path.is_file() else None
        if figures is None or figures.get("scale") != args.scale:
            if args.print_only:
                continue
            print(f"running {recipe} ({args.scale})", file=sys.stderr)
            figures = _run(recipe, args.scale, root, args.blip2)
        rows[recipe] = figures
        # Variants (other presets or ablations of the recipe) get their own rows; their figures are
        # on shapes unless they say otherwise.
        for variant, values in (figures.get("variants") or {}).items():
            if variant != recipe:
                rows[f"{recipe}: {variant}"] = values if "shapes" in values else {"shapes": values}
    print(table(rows))
    print(f"\nScale {args.scale}" + (f": every trained stage {_recipes.EQUAL_STEPS} steps of {_recipes.EQUAL_BATCH} examples." if args.scale == "equal" else ".")
          + " Minutes are a recipe bench's whole run, training and scoring (BLIP-2's include training the shared frozen LMs"
          " when the same run trained them; n/a where BLIP-2 came from --blip2).")


if __name__ == "__main__":
    main()
