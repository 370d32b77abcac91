"""``load`` and ``list_models``: from a name, a directory or a hub id to a ready model.

The kind of model is read from the checkpoint's ``config.json`` (``model_type`` and
``architectures``), never guessed from its name. Weights load from safetensors only: vlmkit never
unpickles a checkpoint.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import hub
from .errors import InputError, ModelNotFoundError, VlmkitError
from .models.base import VisionLanguageModel
from .models.kinds import DEFAULT_ARCHITECTURE, KINDS, NATIVE_KINDS, ModelKind

__all__ = ["load", "list_models", "ModelInfo", "DEFAULT_MODEL", "resolve_dtype", "checkpoint_dir"]

DEFAULT_MODEL = "conse-lite0-minilm"
_ALIASES = {"default": DEFAULT_MODEL}

@dataclass(frozen=True)
class ModelInfo:
    name: str
    family: str
    tasks: tuple[str, ...]
    source: str  # "built-in", or "hub" for an example hub id of a supported kind
    description: str


# Built-in models: name -> their kind's architecture (the kind's implementation takes name, device, dtype).
_BUILTINS: dict[str, str] = {DEFAULT_MODEL: "ConSE"}

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def list_models() -> list[ModelInfo]:
    """The built-in models, then an example hub checkpoint for every supported kind."""
    infos = []
    for name, architecture in _BUILTINS.items():
        kind = KINDS[architecture]
        infos.append(ModelInfo(name, kind.family, tuple(sorted(kind.tasks)), "built-in", kind.description))
    for kind in KINDS.values():
        for name in kind.examples:
            infos.append(ModelInfo(name, kind.family, tuple(sorted(kind.tasks)), "hub", kind.description))
    return infos


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str) and dtype.lower() in _DTYPES:
        return _DTYPES[dtype.lower()]
    raise InputError(f"unknown dtype {dtype!r}; use one of {', '.join(sorted(_DTYPES))}")


def _resolve_device(device: str | torch.device) -> torch.device:
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise InputError(f"unknown device {device!r}") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device!r} requested but CUDA is not available on this machine")
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise InputError(f"device {device!r} requested but MPS is not available on this machine")
    return resolved


def checkpoint_dir(name: str) -> Path:
    """A local checkpoint directory for ``name``: the directory itself, or the hub snapshot."""
    return hub.checkpoint_dir(name, builtins=tuple(_BUILTINS))


def _model_type(where: Path) -> str | None:
    """The raw ``model_type`` of a checkpoint, for the kinds transformers does not know (vlmkit's own)."""
    import json

    try:
        value = json.loads((where / "config.json").read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def _implementation(kind: ModelKind) -> Any:
    """What makes a model of ``kind`` (its table entry's "module:attribute"), imported when first needed."""
    if kind.implementation is None:
        raise ModelNotFoundError(f"{kind.label}: no implementation to load it with")
    module, attribute = kind.implementation.split(":")
    return getattr(importlib.import_module(module), attribute)


def _kind_of(config: Any, where: Path) -> ModelKind:
    model_type = getattr(config, "model_type", None)
    for arch in getattr(config, "architectures", None) or []:
        if arch in KINDS and KINDS[arch].model_type in DEFAULT_ARCHITECTURE:
            return KINDS[arch]
    if model_type in DEFAULT_ARCHITECTURE:
        return KINDS[DEFAULT_ARCHITECTURE[model_type]]
    supported = ", ".join(sorted(DEFAULT_ARCHITECTURE))
    raise ModelNotFoundError(
        f"{where}: model type {model_type!r} is not a vision-language model vlmkit supports ({supported})"
    )


def load(
    name_or_path: str | os.PathLike,
    *,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype | None = None,
) -> VisionLanguageModel:
    """Load a model: a built-in name (see :func:`list_models`), a checkpoint directory, or a hub id.

    Hub ids download like transformers does and work from the local cache with ``HF_HUB_OFFLINE=1``.
    """
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise InputError(f"model name must be a string or path, got {type(name_or_path).__name__}")
    name = os.fspath(name_or_path)
    if not name:
        raise InputError("model name is empty")
    torch_device = _resolve_device(device)
    torch_dtype = resolve_dtype(dtype)
    name = _ALIASES.get(name, name)
    if name in _BUILTINS:
        return _implementation(KINDS[_BUILTINS[name]])(name, device=torch_device, dtype=torch_dtype)  # type: ignore[no-any-return]

    import transformers

    where = checkpoint_dir(name)
    native = NATIVE_KINDS.get(_model_type(where) or "")
    if native is not None:
        load_native = _implementation(native)
        return load_native(where, name=name, device=torch_device, dtype=torch_dtype, load=load)  # type: ignore[no-any-return]
    try:
        config = transformers.AutoConfig.from_pretrained(where)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelNotFoundError(f"{name}: cannot read config.json ({exc})") from None
    kind = _kind_of(config, where)
    wrapper = _implementation(kind)
    model_cls = getattr(transformers, kind.architecture)
    try:
        processor = transformers.AutoProcessor.from_pretrained(where)
        model = model_cls.from_pretrained(where, dtype=torch_dtype, use_safetensors=True)
    except VlmkitError:
        raise
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelNotFoundError(f"{name}: cannot load the {kind.label} checkpoint ({exc})") from None
    model.to(torch_device)
    return wrapper(name, kind, model, processor, torch_device, torch_dtype)
