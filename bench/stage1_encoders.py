"""BLIP-2 stage-1 retrieval on two maps of the same frozen encoder: EfficientNet-Lite0's head
(1280 channels, what every offline Q-Former recipe reads) and the last block before it (320
channels, ``efficientnet-lite0-blocks``).

``bench/shapes_probe.py`` found that a linear probe reads the colour of held-out colour-shape pairs
on 22.6% of their objects from the head map and 77.8% from the map before it. This bench asks
whether the Q-Former's retrieval follows: the same stage-1 recipe as ``bench/blip2_offline.py``
(preset ``shapes``, bfloat16, 800 steps at batch 32, the same 4,000 training scenes, ``data.seed=0``)
for each encoder and seed, scored on the 1,000 held-out scenes with the same grouped R@1 (ITC, max
over queries) as the recipes table (``bench/_recipes.py``), through ``vlmkit.load``.

Run: ``python bench/stage1_encoders.py [--seeds 3] [--steps 800] [--out DIR]``. Prints one table
(mean ± sd over seeds, n-1) and the minutes: 18.8 on a 2-core CPU with the two training-feature caches
already in ``--out`` (they were copied from a smoke run, whose 4.5 minutes included computing them).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import _recipes  # bench/ is sys.path[0] when run

import vlmkit
from vlmkit_train.stage1 import stage1_config, train_stage1

ENCODERS = ("efficientnet-lite0", "efficientnet-lite0-blocks")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--out", default=None, help="keep the runs here (default: a temporary directory)")
    args = parser.parse_args()
    began = time.perf_counter()
    data = _recipes.shapes()
    figures: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(args.out or scratch)
        for encoder in ENCODERS:
            for seed in range(args.seeds):
                run = out / f"{encoder}_seed{seed}"
                overrides = ["mixed_precision=bf16", "train_size=4000", "data.seed=0", f"run.seed={seed}",
                             f"max_steps={args.steps}", "log_every=100", f"encoder={encoder}", f"features_dir={out / ('features_' + encoder)}"]
                train_stage1(stage1_config("shapes", overrides), run, progress=True)
                scores = _recipes.retrieval(vlmkit.load(run / "model"), data)
                for key in ("i2t_r1", "t2i_r1", "strict_i2t_r1", "strict_t2i_r1"):
                    figures.setdefault(encoder, {}).setdefault(key, []).append(scores[key])
                print(f"{encoder} seed {seed}: grouped R@1 I2T {scores['i2t_r1']:.1f} T2I {scores['t2i_r1']:.1f}", flush=True)

    def cell(values: list[float]) -> str:
        return f"{statistics.mean(values):.1f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.1f}"

    print(f"\nstage 1, preset shapes, bf16, {args.steps} steps at batch 32, {args.seeds} seeds; 1,000 held-out scenes; mean ± sd (n-1)\n")
    print("| encoder map | grouped R@1 I2T | grouped R@1 T2I | strict R@1 I2T | strict R@1 T2I |")
    print("|---|---:|---:|---:|---:|")
    for encoder, values in figures.items():
        row = [cell(values[k]) for k in ("i2t_r1", "t2i_r1", "strict_i2t_r1", "strict_t2i_r1")]
        print(f"| {encoder} | " + " | ".join(row) + " |")
    print(f"\nminutes: {(time.perf_counter() - began) / 60:.1f}")


if __name__ == "__main__":
    main()
