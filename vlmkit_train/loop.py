"""Pieces every recipe's training loop shares: deterministic batch order, metrics, the loss plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["batch_rows", "append_metrics", "plot_losses"]


def batch_rows(seed: int, index: int, *, dataset_size: int, batch_size: int, world: int, rank: int) -> np.ndarray:
    """Rows of micro-batch ``index`` for this rank: epochs are seeded permutations of the dataset, a
    global batch is ``batch_size * world`` consecutive rows of it and each rank takes its slice, so
    the order depends only on (seed, index) and an interrupted run resumes on the same data."""
    per_step = batch_size * world
    epoch, offset = divmod(index * per_step, dataset_size)
    order = np.random.default_rng([seed, epoch]).permutation(dataset_size)
    rows = np.take(order, np.arange(offset, offset + per_step), mode="wrap")
    return rows[rank * batch_size : (rank + 1) * batch_size]


def append_metrics(path: Path, record: dict[str, Any]) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")


def plot_losses(metrics_path: Path, out: Path, keys: tuple[str, ...], title: str) -> bool:
    """Loss curves to PNG; False (and nothing written) when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    figure, axis = plt.subplots(figsize=(7, 4))
    for key in keys:
        axis.plot([r["step"] for r in rows], [r[key] for r in rows], label=key)
    axis.set_xlabel("step")
    axis.set_ylabel("loss")
    axis.set_title(title)
    axis.legend()
    figure.tight_layout()
    figure.savefig(out, dpi=100)
    plt.close(figure)
    return True
