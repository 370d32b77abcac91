"""OpenAI-style chat messages -> the conversation format of transformers chat templates.

Accepted message content: a string, or a list of parts ``{"type": "text", "text": ...}``,
``{"type": "image_url", "image_url": {"url": ...}}`` (``data:`` URLs or local paths; remote URLs
are refused here, the server decides whether to fetch them) and ``{"type": "image", "image": ...}``
holding anything :func:`vlmkit.images.load_image` reads.
"""

from __future__ import annotations

from typing import Any

from .errors import InputError
from .images import ImageInput

__all__ = ["parse_messages"]

_ROLES = ("system", "user", "assistant")


def _image_part(part: dict[str, Any]) -> ImageInput:
    if part["type"] == "image":
        if "image" not in part:
            raise InputError("an image part needs an 'image' field")
        return part["image"]
    url = part.get("image_url")
    if isinstance(url, dict):
        url = url.get("url")
    if not isinstance(url, str) or not url:
        raise InputError("an image_url part needs {'url': ...}")
    if url.startswith("file://"):
        url = url[len("file://") :]
    return url


def parse_messages(messages: Any) -> tuple[list[dict[str, Any]], list[ImageInput]]:
    """Validate messages and split them into a template conversation and the images in order."""
    if not isinstance(messages, list) or not messages:
        raise InputError("messages must be a non-empty list of {'role', 'content'} objects")
    conversation: list[dict[str, Any]] = []
    images: list[ImageInput] = []
    for number, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise InputError(f"message {number}: expected an object with 'role' and 'content'")
        role = message["role"]
        if role not in _ROLES:
            raise InputError(f"message {number}: role must be one of {', '.join(_ROLES)}, got {role!r}")
        content = message["content"]
        parts: list[dict[str, Any]] = []
        if isinstance(content, str):
            parts.append({"type": "text", "text": content})
        elif isinstance(content, list):
            for part in content:
                if not isinstance(part, dict) or "type" not in part:
                    raise InputError(f"message {number}: each content part needs a 'type'")
                if part["type"] == "text":
                    if not isinstance(part.get("text"), str):
                        raise InputError(f"message {number}: a text part needs a string 'text'")
                    parts.append({"type": "text", "text": part["text"]})
                elif part["type"] in ("image_url", "image"):
                    if role != "user":
                        raise InputError(f"message {number}: only user messages may hold images")
                    images.append(_image_part(part))
                    parts.append({"type": "image"})
                else:
                    raise InputError(f"message {number}: unknown content part type {part['type']!r}")
        else:
            raise InputError(f"message {number}: content must be a string or a list of parts")
        conversation.append({"role": role, "content": parts})
    if conversation[-1]["role"] != "user":
        raise InputError("the last message must come from the user")
    return conversation, images
