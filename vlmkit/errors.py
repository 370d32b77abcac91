"""The exceptions vlmkit raises. Applications (CLI, server) translate them into messages and status codes."""

from __future__ import annotations

from typing import Any

__all__ = [
    "VlmkitError",
    "ImageError",
    "ImageTooLargeError",
    "ModelNotFoundError",
    "OfflineError",
    "UnsupportedTaskError",
    "InputError",
]


class VlmkitError(Exception):
    """Base class: every error vlmkit raises on bad input is one of these, with a one-line message."""


class InputError(VlmkitError, ValueError):
    """An argument has the wrong type, shape or value (e.g. two lists of different lengths)."""


class ImageError(VlmkitError):
    """An image could not be read: missing, a directory, not an image, truncated, corrupt, or too large."""

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason

    def __reduce__(self) -> tuple[Any, ...]:  # errors travel between processes (Ray replicas, workers)
        return (type(self), (self.source, self.reason))


class ImageTooLargeError(ImageError):
    """An image has more pixels than the limit allows (a possible decompression bomb)."""


class ModelNotFoundError(VlmkitError):
    """The name is neither a built-in model, a checkpoint directory, nor a model on the hub."""


class OfflineError(VlmkitError):
    """A hub model is needed but is not in the local cache and the hub cannot be reached."""


class UnsupportedTaskError(VlmkitError):
    """The loaded model cannot do the task; the message names the model kinds that can."""

    def __init__(self, task: str, model: str, kind: str, supported_by: list[str]) -> None:
        can = ", ".join(supported_by) if supported_by else "none"
        super().__init__(f"model {model!r} ({kind}) cannot '{task}'; models that can: {can}")
        self.task = task
        self.model = model
        self.kind = kind
        self.supported_by = supported_by

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.task, self.model, self.kind, self.supported_by))
