"""``load`` and ``list_models``: from a name, a directory or a hub id to a ready model.

The kind of model is read from the checkpoint's ``config.json`` (``model_type`` and
``architectures``), never guessed from its name. Weights load from safetensors only: vlmkit never
unpickles a checkpoint.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import hub
from .errors import InputError, ModelNotFoundError, VlmkitError
from .models.base import VisionLanguageModel
from .models.kinds import DEFAULT_ARCHITECTURE, KINDS, ModelKind

__all__ = ["load", "list_models", "ModelInfo", "DEFAULT_MODEL", "resolve_dtype", "checkpoint_dir"]

DEFAULT_MODEL = "conse-lite0-minilm"
_ALIASES = {"default": DEFAULT_MODEL}

# Files a checkpoint needs; pickled weights (*.bin, *.pt) are never fetched.
@dataclass(frozen=True)
class ModelInfo:
    name: str
    family: str
    tasks: tuple[str, ...]
    source: str  # "built-in", or "hub" for an example hub id of a supported kind
    description: str


def _conse(device: torch.device, dtype: torch.dtype) -> VisionLanguageModel:
    from .models.conse import ConSE

    return ConSE(DEFAULT_MODEL, device=device, dtype=dtype)


_BUILTINS: dict[str, Callable[[torch.device, torch.dtype], VisionLanguageModel]] = {DEFAULT_MODEL: _conse}

# Well-known checkpoints of each kind (loaded from the hub or its cache).
_EXAMPLES: dict[str, str] = {
    "openai/clip-vit-base-patch32": "CLIPModel",
    "google/siglip-base-patch16-224": "SiglipModel",
    "Salesforce/blip-image-captioning-base": "BlipForConditionalGeneration",
    "Salesforce/blip-vqa-base": "BlipForQuestionAnswering",
    "Salesforce/blip-itm-base-coco": "BlipForImageTextRetrieval",
    "Salesforce/blip2-opt-2.7b": "Blip2ForConditionalGeneration",
    "Salesforce/blip2-flan-t5-xl": "Blip2ForConditionalGeneration",
    "Salesforce/blip2-itm-vit-g": "Blip2ForImageTextRetrieval",
    "Salesforce/instructblip-vicuna-7b": "InstructBlipForConditionalGeneration",
    "llava-hf/llava-1.5-7b-hf": "LlavaForConditionalGeneration",
}

# Which vlmkit class wraps each architecture (module, class), imported when first needed.
_WRAPPERS: dict[str, tuple[str, str]] = {
    "CLIPModel": ("vlmkit.models.clip", "DualEncoder"),
    "SiglipModel": ("vlmkit.models.clip", "DualEncoder"),
    "BlipForConditionalGeneration": ("vlmkit.models.blip", "Blip"),
    "BlipForQuestionAnswering": ("vlmkit.models.blip", "Blip"),
    "BlipForImageTextRetrieval": ("vlmkit.models.blip", "Blip"),
    "Blip2ForConditionalGeneration": ("vlmkit.models.blip2", "Blip2"),
    "Blip2ForImageTextRetrieval": ("vlmkit.models.blip2", "Blip2"),
    "InstructBlipForConditionalGeneration": ("vlmkit.models.instructblip", "InstructBlip"),
    "LlavaForConditionalGeneration": ("vlmkit.models.llava", "Llava"),
    "VisionTextDualEncoderModel": ("vlmkit.models.clip", "DualEncoder"),
}

# vlmkit's own checkpoint formats (``model_type`` in config.json) -> the module whose ``load_native``
# reads them: the recipes of ``vlmkit train`` whose models have no transformers class. Each gets
# ``load`` (this loader) for the models its checkpoint names (ClipCap's embedder), so model files
# never import the loader.
_NATIVE: dict[str, str] = {
    "vlmkit-blip2": "vlmkit.models.blip2_native",
    "vlmkit-instructblip": "vlmkit.models.blip2_native",
    "vlmkit-blip2-retrieval": "vlmkit.models.blip2_native",
    "vlmkit-dual-encoder": "vlmkit.models.dual_encoder",
    "vlmkit-clipcap": "vlmkit.models.clipcap",
    "vlmkit-coca": "vlmkit.models.coca",
    "vlmkit-simvlm": "vlmkit.models.simvlm",
}

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
    for name in _BUILTINS:
        kind = KINDS["ConSE"]
        infos.append(ModelInfo(name, kind.family, tuple(sorted(kind.tasks)), "built-in", kind.description))
    for name, arch in _EXAMPLES.items():
        kind = KINDS[arch]
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


def _kind_of(config: Any, where: Path) -> ModelKind:
    model_type = getattr(config, "model_type", None)
    for arch in getattr(config, "architectures", None) or []:
        if arch in _WRAPPERS:
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
        return _BUILTINS[name](torch_device, torch_dtype)

    import transformers

    where = checkpoint_dir(name)
    native = _NATIVE.get(_model_type(where) or "")
    if native is not None:
        load_native = importlib.import_module(native).load_native
        return load_native(where, name=name, device=torch_device, dtype=torch_dtype, load=load)  # type: ignore[no-any-return]
    try:
        config = transformers.AutoConfig.from_pretrained(where)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelNotFoundError(f"{name}: cannot read config.json ({exc})") from None
    kind = _kind_of(config, where)
    module, cls_name = _WRAPPERS[kind.architecture]
    wrapper = getattr(importlib.import_module(module), cls_name)
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
