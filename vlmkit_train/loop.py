"""Pieces every recipe's training loop shares: deterministic batch order, metrics, the loss plot."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vlmkit.errors import InputError

from .state import save_training_state

__all__ = ["open_metrics", "make_accelerator", "batch_rows", "append_metrics", "plot_losses", "check_resume", "StepLoop", "run_steps"]


def _end_process_group() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def make_accelerator(*, grad_accum: int = 1, mixed_precision: str = "no") -> Any:
    """The accelerate ``Accelerator`` every recipe trains with.

    Launched by ``torchrun`` (or ``accelerate launch`` on GPUs) it runs data-parallel over all
    processes. On machines without CUDA accelerate only joins the process group when told it runs
    on CPU, so with ``WORLD_SIZE > 1`` and no CUDA it is (gloo): otherwise every process would train
    alone on its slice and think it was the only one. The group is torn down at exit.
    """
    import atexit
    import os

    from accelerate import Accelerator

    cpu = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    accelerator = Accelerator(gradient_accumulation_steps=grad_accum, mixed_precision=mixed_precision, cpu=cpu)
    if accelerator.num_processes > 1:
        atexit.register(_end_process_group)
    return accelerator


def open_metrics(out: Path, accelerator: Any, *, resume: bool, max_steps: int, stop_after: int | None) -> tuple[Path, int]:
    """``out/metrics.jsonl`` (emptied by the main process unless resuming) and the step this call
    of a recipe ends at: ``max_steps``, or earlier with ``stop_after``."""
    metrics_path = out / "metrics.jsonl"
    if not resume and accelerator.is_main_process:
        metrics_path.write_text("")
    return metrics_path, min(max_steps, stop_after if stop_after is not None else max_steps)


def batch_rows(seed: int, index: int, *, dataset_size: int, batch_size: int, world: int, rank: int) -> np.ndarray:
    """Rows of micro-batch ``index`` for this rank: epochs are seeded permutations of the dataset, a
    global batch is ``batch_size * world`` consecutive rows of it and each rank takes its slice, so
    the order depends only on (seed, index) and an interrupted run resumes on the same data."""
    per_step = batch_size * world
    epoch, offset = divmod(index * per_step, dataset_size)
    order = np.random.default_rng([seed, epoch]).permutation(dataset_size)
    rows = np.take(order, np.arange(offset, offset + per_step), mode="wrap")
    return rows[rank * batch_size : (rank + 1) * batch_size]


def adamw(model: torch.nn.Module, *, lr: float, weight_decay: float, no_decay: tuple[str, ...] = ()) -> torch.optim.AdamW:
    """AdamW over the trainable parameters, with weight decay on matrices only: norms' gains, biases,
    scalars and the parameters whose names contain a ``no_decay`` part (learned queries, say) keep
    theirs."""
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    exempt = [p.ndim < 2 or any(part in n for part in no_decay) for n, p in trainable]
    groups = [
        {"params": [p for (_, p), skip in zip(trainable, exempt, strict=True) if not skip], "weight_decay": weight_decay},
        {"params": [p for (_, p), skip in zip(trainable, exempt, strict=True) if skip], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr)


def caption_batch(
    examples: Any, rows: np.ndarray, seed: int, index: int, rank: int, *, groups: bool
) -> tuple[list[str], torch.Tensor | None]:
    """One caption per row, drawn from the example's captions with a generator seeded by (seed,
    index, rank) so a resumed run draws the same ones; with ``groups``, also the rows' (B, 2) group
    keys: the caption's text and the example's content group (:func:`vlmkit.losses.group_keys`)."""
    from vlmkit.losses import group_keys

    pick = np.random.default_rng([seed, index, rank])
    captions = [examples[i].captions[pick.integers(len(examples[i].captions))] for i in rows]
    return captions, group_keys(captions, [examples[i].group for i in rows]) if groups else None


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


def check_resume(out: Path, config_json: str, resume: bool, *, required: tuple[str, ...] = ("state",)) -> None:
    """Refuse to resume a run that has no state, or that was started with another config."""
    if not resume:
        return
    for name in required:
        if not (out / name).is_dir():
            raise InputError(f"{out}: nothing to resume (no {name}/ directory)")
    config_path = out / "config.json"
    if config_path.is_file() and json.loads(config_path.read_text()) != json.loads(config_json):
        raise InputError(f"{out}: the run was started with a different config; resume with the same one")


@dataclass(frozen=True)
class StepLoop:
    """How many steps to run and how often to log and save; ``loss_key`` names the loss to minimise."""

    max_steps: int
    grad_accum: int
    log_every: int
    save_every: int
    desc: str
    loss_key: str = "total"


def run_steps(
    loop: StepLoop,
    *,
    accelerator: Any,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state_model: Callable[[], torch.nn.Module],
    micro_step: Callable[[int], dict[str, torch.Tensor]],
    out: Path,
    start: int,
    end: int,
    progress: bool,
    final_record: Callable[[], dict[str, Any]] | None = None,
) -> dict[str, float]:
    """The optimisation loop every recipe shares: ``grad_accum`` micro-steps per step (``micro_step``
    gets the global micro-batch index and returns its losses), one optimizer and scheduler step,
    a metrics row every ``log_every`` steps and a resumable state every ``save_every`` steps.
    Returns the last step's losses, averaged over its micro-steps."""
    from tqdm import tqdm

    bar = tqdm(total=loop.max_steps, initial=start, desc=loop.desc, unit="step", disable=not (progress and accelerator.is_main_process))
    metrics_path = out / "metrics.jsonl"
    began = time.perf_counter()
    totals: dict[str, float] = {}
    for step in range(start, end):
        model.train()
        totals = {}
        for micro in range(loop.grad_accum):
            with accelerator.accumulate(model):
                losses = micro_step(step * loop.grad_accum + micro)
                accelerator.backward(losses[loop.loss_key])
                optimizer.step()
                if accelerator.sync_gradients:
                    scheduler.step()
                optimizer.zero_grad()
            for key, value in losses.items():
                totals[key] = totals.get(key, 0.0) + value.item() / loop.grad_accum
        bar.update(1)
        bar.set_postfix(loss=f"{totals[loop.loss_key]:.3f}")
        record: dict[str, Any] = {"step": step + 1, "lr": scheduler.get_last_lr()[0], "processes": accelerator.num_processes, **totals}
        if step + 1 == loop.max_steps and final_record is not None:
            record.update(final_record())
        if accelerator.is_main_process and ((step + 1) % loop.log_every == 0 or step + 1 == end):
            append_metrics(metrics_path, {**record, "seconds": time.perf_counter() - began})
        if loop.save_every and (step + 1) % loop.save_every == 0 and accelerator.is_main_process:
            save_training_state(out / "state", model=state_model(), optimizer=optimizer, scheduler=scheduler, step=step + 1)
    bar.close()
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        save_training_state(out / "state", model=state_model(), optimizer=optimizer, scheduler=scheduler, step=end)
    return totals
