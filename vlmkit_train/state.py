"""Checkpoint and exact resume without pickles: model weights and RNG states in safetensors, the
optimizer state read back with ``weights_only=True``, counters and scheduler in JSON."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

__all__ = ["save_training_state", "load_training_state"]


def save_training_state(
    directory: Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, step: int
) -> None:
    """Write everything a resumed run needs to continue as if never stopped, atomically."""
    tmp = directory.with_name(directory.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(tmp / "model.safetensors"))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for index, state in enumerate(torch.cuda.get_rng_state_all()):
            rng[f"cuda{index}"] = state
    save_file(rng, str(tmp / "rng.safetensors"))
    numpy_state: Any = np.random.get_state()
    meta = {
        "step": step,
        "scheduler": scheduler.state_dict(),
        "numpy_random": [numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:]],
    }
    (tmp / "state.json").write_text(json.dumps(meta))
    if directory.exists():
        old = directory.with_name(directory.name + ".old")
        os.replace(directory, old)
        os.replace(tmp, directory)
        for item in old.iterdir():
            item.unlink()
        old.rmdir()
    else:
        os.replace(tmp, directory)


def load_training_state(directory: Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any) -> int:
    """Restore a state written by :func:`save_training_state`; returns the step to continue from."""
    model.load_state_dict(load_file(str(directory / "model.safetensors")))
    optimizer.load_state_dict(torch.load(directory / "optimizer.pt", weights_only=True))
    meta = json.loads((directory / "state.json").read_text())
    scheduler.load_state_dict(meta["scheduler"])
    rng = load_file(str(directory / "rng.safetensors"))
    torch.set_rng_state(rng["torch"])
    if torch.cuda.is_available():
        states = [rng[k] for k in sorted(rng) if k.startswith("cuda")]
        if states:
            torch.cuda.set_rng_state_all(states)
    numpy_state = meta["numpy_random"]
    np.random.set_state((numpy_state[0], np.array(numpy_state[1], dtype=np.uint32), *numpy_state[2:]))
    return int(meta["step"])
