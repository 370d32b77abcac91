"""Model families behind one task interface. Load them with :func:`vlmkit.load`."""

from .base import GenerationOptions, LabelScore, MatchResult, VisionLanguageModel
from .kinds import KINDS, TASKS, ModelKind

__all__ = ["VisionLanguageModel", "LabelScore", "MatchResult", "GenerationOptions", "ModelKind", "KINDS", "TASKS"]
