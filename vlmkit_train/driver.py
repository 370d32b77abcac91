"""The one training driver every recipe runs on.

A recipe is a declaration (:class:`Recipe`): its config class and presets, and a ``build`` that
turns a config into a :class:`Plan`: the module whose forward computes the losses, what one
micro-step feeds it, and how the result is exported. :func:`train` owns the rest, the same way for
every recipe: the run directory and its ``config.json``, the accelerate ``Accelerator`` (mixed
precision, gradient accumulation, DDP under ``torchrun`` / ``accelerate launch``), seeding, AdamW with
no decay on norms, biases and learned tokens, the cosine schedule with warm-up, exact resume from
``state/``, ``metrics.jsonl``, the progress bar, the loss plot and the export to ``OUT/model``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import dumps, preset_config
from .loop import StepLoop, adamw, check_resume, make_accelerator, open_metrics, plot_losses, run_steps
from .state import load_training_state

__all__ = ["Recipe", "Run", "Plan", "TrainResult", "train", "MODEL_DIR"]

#: Where every recipe's result is written inside the run directory, loadable with ``vlmkit.load``.
MODEL_DIR = "model"


@dataclass(frozen=True)
class Run:
    """What a recipe's ``build`` may use from the run: its directory and the accelerator."""

    out: Path
    accelerator: Any
    resume: bool
    progress: bool

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def world(self) -> int:
        return int(self.accelerator.num_processes)

    @property
    def rank(self) -> int:
        return int(self.accelerator.process_index)

    @property
    def is_main(self) -> bool:
        return bool(self.accelerator.is_main_process)

    def wait(self) -> None:
        self.accelerator.wait_for_everyone()


@dataclass
class Plan:
    """What a recipe builds for one run; :func:`train` does everything else with it."""

    #: The module whose forward returns the losses (a dict of scalars); accelerate prepares it.
    model: nn.Module
    #: ``micro_step(model, index)``: the losses of global micro-batch ``index`` (``model`` is the
    #: prepared one); with ``batch_rows`` the data depends only on (seed, index), so resume is exact.
    micro_step: Callable[[nn.Module, int], dict[str, torch.Tensor]]
    #: ``export(model, out)``: writes the trained (unwrapped) model into the run directory ``out``
    #: (main process only) and returns where it is: ``out/model`` (:data:`MODEL_DIR`) for every recipe
    #: whose result ``vlmkit.load`` reads.
    export: Callable[[nn.Module, Path], Path]
    #: The losses drawn in ``loss.png``; the first is the one minimised.
    losses: tuple[str, ...] = ("loss",)
    #: Parameter-name parts that get no weight decay, beside norms, biases and scalars.
    no_decay: tuple[str, ...] = ()
    #: The part of the (unwrapped) model a resumable state holds; frozen parts are rebuilt by
    #: ``build``. Default: the whole model.
    state: Callable[[nn.Module], nn.Module] | None = None
    #: Figures added to the last metrics row (held-out loss, say), computed after the last step.
    final_record: Callable[[nn.Module], dict[str, Any]] | None = None


@dataclass(frozen=True)
class Recipe:
    """A training recipe, declared: ``vlmkit train NAME`` runs it through :func:`train`."""

    name: str
    summary: str
    #: Named configs; the first is the default.
    presets: dict[str, Any]
    #: What each preset is for and roughly what it costs, for ``vlmkit train --help``.
    preset_notes: dict[str, str]
    build: Callable[[Any, Run], Plan]
    #: The command that uses the result, given the model directory.
    next_step: Callable[[Path], str]
    #: Title of the loss plot.
    title: str = ""
    #: Directories besides ``state/`` a resumed run needs.
    resume_needs: tuple[str, ...] = ()
    #: Checks a config once before the run (beyond its own field checks), e.g. required paths.
    check: Callable[[Any], None] | None = None

    def config(self, preset: str | None = None, overrides: list[str] | None = None) -> Any:
        """The named preset (default: the first) with checked ``key=value`` overrides."""
        return preset_config(self.presets, preset or next(iter(self.presets)), overrides)

    def train(
        self, config: Any, out_dir: str | Path, *, resume: bool = False, progress: bool = False, stop_after: int | None = None
    ) -> TrainResult:
        """Run this recipe with :func:`train` (the driver)."""
        return train(self, config, out_dir, resume=resume, progress=progress, stop_after=stop_after)


@dataclass(frozen=True)
class TrainResult:
    out_dir: Path
    steps: int
    #: The last step's losses, averaged over its micro-steps.
    final_losses: dict[str, float]
    #: Where the export is once the run reached ``run.max_steps``; None when it stopped early.
    model_dir: Path | None
    #: The last metrics row's extra figures (``Plan.final_record``).
    final_record: dict[str, Any] = field(default_factory=dict)


def train(
    recipe: Recipe,
    config: Any,
    out_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = False,
    stop_after: int | None = None,
) -> TrainResult:
    """Run ``recipe`` with ``config`` into ``out_dir``. ``resume`` continues exactly where
    ``out_dir/state`` left off (same config only); ``stop_after`` ends the run after that many steps
    with a resumable state and no export."""
    from transformers import get_cosine_schedule_with_warmup

    if recipe.check is not None:
        recipe.check(config)
    settings = config.run
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    check_resume(out, dumps(config), resume, required=("state", *recipe.resume_needs))
    accelerator = make_accelerator(grad_accum=settings.grad_accum, mixed_precision=settings.mixed_precision)
    torch.manual_seed(settings.seed)
    if accelerator.is_main_process:
        (out / "config.json").write_text(dumps(config))
    run = Run(out=out, accelerator=accelerator, resume=resume, progress=progress)

    plan = recipe.build(config, run)
    optimizer = adamw(plan.model, lr=settings.lr, weight_decay=settings.weight_decay, no_decay=plan.no_decay)
    scheduler = get_cosine_schedule_with_warmup(optimizer, settings.warmup_steps, settings.max_steps)
    model, optimizer, scheduler = accelerator.prepare(plan.model, optimizer, scheduler)

    def state_model() -> nn.Module:
        unwrapped = accelerator.unwrap_model(model)
        return plan.state(unwrapped) if plan.state is not None else unwrapped

    start = load_training_state(out / "state", model=state_model(), optimizer=optimizer, scheduler=scheduler) if resume else 0
    metrics_path, end = open_metrics(out, accelerator, resume=resume, max_steps=settings.max_steps, stop_after=stop_after)
    final: dict[str, Any] = {}

    def final_record() -> dict[str, Any]:
        final.update(plan.final_record(accelerator.unwrap_model(model)) if plan.final_record else {})
        return final

    losses = run_steps(
        StepLoop(settings.max_steps, settings.grad_accum, settings.log_every, settings.save_every, recipe.name, loss_key=plan.losses[0]),
        accelerator=accelerator, model=model, optimizer=optimizer, scheduler=scheduler, state_model=state_model,
        micro_step=lambda index: plan.micro_step(model, index), out=out, start=start, end=end, progress=progress,
        final_record=final_record if plan.final_record else None,
    )
    model_dir = None
    if end == settings.max_steps:
        if accelerator.is_main_process:
            model_dir = plan.export(accelerator.unwrap_model(model), out)
            plot_losses(metrics_path, out / "loss.png", plan.losses, recipe.title or recipe.summary)
        accelerator.wait_for_everyone()
    return TrainResult(out_dir=out, steps=end, final_losses=losses, model_dir=model_dir, final_record=final)
