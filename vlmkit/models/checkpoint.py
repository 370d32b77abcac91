"""vlmkit's own checkpoint directories: one reader and one writer for every native family.

A native checkpoint is a directory holding ``config.json`` (``model_type``, ``architectures``, the
vlmkit version, then the fields of the family's config dataclass) beside safetensors weights and
whatever sub-checkpoints the family keeps (a frozen LM, a tokenizer). Reading is strict, as
``from_pretrained`` should be: an unreadable file, another ``model_type``, a config key the family
does not know, a bad value, or weights that do not fit the model all raise
:class:`~vlmkit.errors.ModelNotFoundError` naming the directory. Nothing is ever unpickled.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import ModelNotFoundError, VlmkitError

__all__ = ["RESERVED_KEYS", "write_config", "read_meta", "read_config", "save_weights", "load_weights", "load_tokenizer"]

#: Keys of ``config.json`` that describe the checkpoint rather than the model.
RESERVED_KEYS = ("model_type", "architectures", "vlmkit_version")

C = TypeVar("C")


def write_config(
    directory: str | os.PathLike, config: Any, *, model_type: str, architecture: str | None = None, drop: Iterable[str] = ()
) -> Path:
    """Write ``config.json``: the checkpoint's kind and version, then the fields of the dataclass
    ``config`` (less ``drop``). Creates the directory; returns it."""
    from ..version import __version__

    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    fields = dataclasses.asdict(config)
    for name in drop:
        fields.pop(name)
    meta: dict[str, Any] = {"model_type": model_type}
    if architecture is not None:
        meta["architectures"] = [architecture]
    meta.update(vlmkit_version=__version__, **fields)
    (path / "config.json").write_text(json.dumps(meta, indent=2) + "\n")
    return path


def read_meta(directory: str | os.PathLike) -> dict[str, Any]:
    """``config.json`` as a dict, or :class:`ModelNotFoundError` saying why it cannot be read."""
    path = Path(directory)
    try:
        meta = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(f"{path}: cannot read config.json ({exc})") from None
    if not isinstance(meta, dict):
        raise ModelNotFoundError(f"{path}: config.json is not an object")
    return meta


def read_config(directory: str | os.PathLike, config_class: type[C], *, model_types: str | tuple[str, ...]) -> tuple[C, str]:
    """The family's config from ``config.json``, and the checkpoint's ``model_type`` (one of
    ``model_types``). Fields missing from the file take their defaults; unknown ones are an error."""
    path = Path(directory)
    meta = read_meta(path)
    allowed = (model_types,) if isinstance(model_types, str) else model_types
    model_type = meta.get("model_type")
    if model_type not in allowed:
        raise ModelNotFoundError(f"{path}: model_type {model_type!r} is not {' or '.join(allowed)}")
    fields = {k: v for k, v in meta.items() if k not in RESERVED_KEYS}
    known = {f.name for f in dataclasses.fields(config_class)}  # type: ignore[arg-type]
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ModelNotFoundError(f"{path}: unknown keys in config.json: {', '.join(unknown)}")
    try:
        config = config_class(**fields)
    except (TypeError, ValueError, VlmkitError) as exc:
        raise ModelNotFoundError(f"{path}: config.json does not describe a valid {config_class.__name__} ({exc})") from None
    return config, str(model_type)


def save_weights(state: dict[str, torch.Tensor], file: str | os.PathLike) -> None:
    """Write a state dict as safetensors (detached, contiguous, on the CPU)."""
    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, os.fspath(file))


def load_weights(module: torch.nn.Module, file: str | os.PathLike, *, keys: Iterable[str] | None = None) -> None:
    """Load safetensors weights into ``module``: every key must be there, with its shape, and no
    other. ``keys`` names the part of the module the file holds, when it holds only a part."""
    path = Path(file)
    if not path.is_file():
        raise ModelNotFoundError(f"{path.parent}: no {path.name}")
    try:
        state = load_file(os.fspath(path))
    except (OSError, SafetensorError) as exc:
        raise ModelNotFoundError(f"{path}: cannot read the weights ({exc})") from None
    if keys is not None and set(state) != set(keys):
        wrong = sorted(set(state) ^ set(keys))
        raise ModelNotFoundError(f"{path}: the weights do not fit the model (keys missing or unexpected: {', '.join(wrong)})")
    try:
        module.load_state_dict(state, strict=keys is None)
    except RuntimeError as exc:
        raise ModelNotFoundError(f"{path}: the weights do not fit the model ({exc})") from None


def load_tokenizer(directory: str | os.PathLike) -> Any:
    """The transformers tokenizer saved in a native checkpoint's directory. ``AutoTokenizer`` would
    read the ``config.json`` beside it to guess a model type, fail on vlmkit's own ``model_type`` and
    warn that the checkpoint may be incompatible; an empty config skips that guess, and the class
    comes from ``tokenizer_config.json`` as for any saved tokenizer."""
    import transformers

    return transformers.AutoTokenizer.from_pretrained(directory, config=transformers.PretrainedConfig())
