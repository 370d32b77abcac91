"""Every training recipe beside BLIP-2's, on the same data and scored by the same code: one table.

Each recipe has its own bench script (``bench/<recipe>_offline.py``) with a ``run(scale, out)`` that
trains at small scale and scores the result through ``vlmkit.load`` (``bench/_recipes.py``). This
script runs the ones whose ``ROOT/<recipe>/figures.json`` is missing (or was made at another scale),
reads the others, scores BLIP-2 the same way, and prints a Markdown table.

BLIP-2 comes from a ``bench/blip2_offline.py --out DIR`` run (its ``stage2_seed0/model`` and
``easy_stage2/model``) given with ``--blip2 DIR``, or is trained here by that script.

Run: ``python bench/recipes_table.py [--root DIR] [--scale smoke|full] [--only clip,llava] [--blip2 DIR]``.
A full run from nothing takes a few hours on a 2-core CPU; with a root holding earlier runs it only
prints.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _recipes  # noqa: E402

# recipe -> its bench module (bench/<module>.py), in the table's order after BLIP-2.
RECIPES = {
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


def blip2_figures(run_dir: Path) -> dict[str, Any]:
    """BLIP-2 from a ``blip2_offline.py`` run, scored by ``_recipes`` like every other recipe."""
    import vlmkit

    figures: dict[str, Any] = {"recipe": "blip2", "source": str(run_dir)}
    timer = _recipes.Timer(figures)
    tasks = ("retrieval", "vqa", "caption")
    figures["shapes"] = timer("score_shapes", lambda: _recipes.score(vlmkit.load(run_dir / "stage2_seed0" / "model"), _recipes.shapes(), tasks))
    figures["easy-vqa"] = timer("score_easy", lambda: _recipes.score(vlmkit.load(run_dir / "easy_stage2" / "model"), _recipes.easy_vqa(), tasks))
    return figures  # no total_minutes: training happened in blip2_offline.py, which prints its own times


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="recipe-runs", help="where every recipe's runs and figures.json live")
    parser.add_argument("--scale", choices=["smoke", "full"], default="full")
    parser.add_argument("--only", default="", help="comma-separated recipes (default: all)")
    parser.add_argument("--blip2", default="", help="a `bench/blip2_offline.py --out` directory to score BLIP-2 from")
    args = parser.parse_args()
    root = Path(args.root)
    chosen = [r for r in args.only.split(",") if r] or list(RECIPES)
    unknown = sorted(set(chosen) - set(RECIPES))
    if unknown:
        parser.error(f"unknown recipes: {', '.join(unknown)}; known: {', '.join(RECIPES)}")

    rows: dict[str, dict[str, Any]] = {}
    blip2_file = root / "blip2" / "figures.json"
    if blip2_file.is_file():
        rows["blip2"] = json.loads(blip2_file.read_text())
    else:
        run_dir = Path(args.blip2) if args.blip2 else root / "blip2_runs"
        if not args.blip2:
            import blip2_offline

            blip2_offline.run(args.scale, run_dir)
        rows["blip2"] = blip2_figures(run_dir)
        _recipes.save(rows["blip2"], root / "blip2")
    for recipe in chosen:
        path = root / recipe / "figures.json"
        figures = json.loads(path.read_text()) if path.is_file() else None
        if figures is None or figures.get("scale") != args.scale:
            print(f"running {recipe} ({args.scale})", file=sys.stderr)
            figures = importlib.import_module(RECIPES[recipe]).run(args.scale, root / recipe)
        rows[recipe] = figures
        # Variants (other presets or ablations of the recipe) get their own rows; their figures are
        # on shapes unless they say otherwise.
        for variant, values in (figures.get("variants") or {}).items():
            if variant != recipe:
                rows[f"{recipe}: {variant}"] = values if "shapes" in values else {"shapes": values}
    print(table(rows))
    print("\nMinutes are a recipe bench's whole run (training and scoring, on a machine shared with other work);"
          " BLIP-2 was trained by bench/blip2_offline.py, which prints its own times.")


if __name__ == "__main__":
    main()
