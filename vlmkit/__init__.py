"""vlmkit: one library for vision-language models (CLIP, SigLIP, BLIP, BLIP-2, InstructBLIP, LLaVA).

>>> import vlmkit
>>> model = vlmkit.load("default")            # built-in, offline
>>> model.classify(["cat.jpg"], ["a cat", "a dog"])
"""

from .errors import (
    ImageError,
    ImageTooLargeError,
    InputError,
    ModelNotFoundError,
    OfflineError,
    UnsupportedTaskError,
    VlmkitError,
)
from .images import load_image
from .loading import DEFAULT_MODEL, ModelInfo, list_models, load
from .models import KINDS, TASKS, GenerationOptions, LabelScore, MatchResult, ModelKind, VisionLanguageModel
from .version import __version__

__all__ = [
    "__version__",
    "load",
    "list_models",
    "load_image",
    "DEFAULT_MODEL",
    "ModelInfo",
    "VisionLanguageModel",
    "ModelKind",
    "KINDS",
    "TASKS",
    "LabelScore",
    "MatchResult",
    "GenerationOptions",
    "VlmkitError",
    "ImageError",
    "ImageTooLargeError",
    "InputError",
    "ModelNotFoundError",
    "OfflineError",
    "UnsupportedTaskError",
]
