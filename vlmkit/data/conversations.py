"""Visual instruction data in LLaVA's conversation format, read, checked and written.

A file is a JSON list of records::

    {"id": "0001", "image": "0001.png",                  # or ["a.png", "b.png"], or absent
     "conversations": [{"from": "human", "value": "<image>\\nWhat is in the image?"},
                       {"from": "gpt", "value": "A red square."}, ...]}

Turns alternate human / gpt, starting with a human turn and ending with an answer; each image of a
record has one ``<image>`` placeholder in the human turns, in order. Image paths are relative to an
image folder (by default the JSON file's own). LLaVA moves a turn's placeholders in front of its
text; :meth:`Conversation.messages` does the same when it turns a record into chat-template
messages, so a checkpoint's chat template decides how images and turns are laid out.

:func:`stage1_records` and :func:`stage2_records` build such data from our :class:`Example` sets
(shapes, easy-VQA): brief-description requests answered by a caption, as in LLaVA's LCS-558K
pretraining data, and multi-turn conversations of short answers, as in LLaVA-1.5's VQA mixture.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..prompts import LLAVA_IMAGE_TOKEN
from .records import Example

__all__ = [
    "IMAGE_PLACEHOLDER",
    "BRIEF_INSTRUCTIONS",
    "Turn",
    "Conversation",
    "parse_conversations",
    "read_conversations",
    "write_conversations",
    "stage1_records",
    "stage2_records",
]

IMAGE_PLACEHOLDER = LLAVA_IMAGE_TOKEN
HUMAN, GPT = "human", "gpt"
_CHAT_ROLES = {HUMAN: "user", GPT: "assistant"}

#: Requests for a short description, one drawn per stage-1 record (in the spirit of LCS-558K's).
BRIEF_INSTRUCTIONS = (
    "Describe the image briefly.",
    "Give a short description of the image.",
    "What is in this picture?",
    "Summarise the image.",
    "Write a brief caption for this image.",
)


@dataclass(frozen=True)
class Turn:
    role: str  # "human" or "gpt"
    value: str


@dataclass(frozen=True)
class Conversation:
    """One record: its id, its image paths (relative to an image folder) and its turns."""

    id: str
    images: tuple[str, ...]
    turns: tuple[Turn, ...]

    @property
    def placeholders(self) -> int:
        """``<image>`` placeholders in every turn (answers should hold none)."""
        return sum(turn.value.count(IMAGE_PLACEHOLDER) for turn in self.turns)

    def messages(self) -> list[dict[str, Any]]:
        """Chat-template messages: a human turn's placeholders become image parts in front of its
        text (what LLaVA does with its data), the text keeps no placeholder and no surrounding space."""
        messages: list[dict[str, Any]] = []
        for turn in self.turns:
            if turn.role == HUMAN:
                parts: list[dict[str, Any]] = [{"type": "image"}] * turn.value.count(IMAGE_PLACEHOLDER)
                parts.append({"type": "text", "text": turn.value.replace(IMAGE_PLACEHOLDER, "").strip()})
            else:
                parts = [{"type": "text", "text": turn.value}]
            messages.append({"role": _CHAT_ROLES[turn.role], "content": parts})
        return messages

    def answers(self) -> list[str]:
        return [turn.value for turn in self.turns if turn.role == GPT]

    def to_record(self) -> dict[str, Any]:
        record: dict[str, Any] = {"id": self.id}
        if len(self.images) == 1:
            record["image"] = self.images[0]
        elif self.images:
            record["image"] = list(self.images)
        record["conversations"] = [{"from": t.role, "value": t.value} for t in self.turns]
        return record


def _where(source: str, index: int, record: Any) -> str:
    ident = record.get("id") if isinstance(record, dict) else None
    return f"{source}: record {index}" + (f" (id {ident!r})" if isinstance(ident, (str, int)) else "")


def _parse_record(record: Any, where: str) -> Conversation:
    if not isinstance(record, dict):
        raise InputError(f"{where}: expected an object with 'id' and 'conversations', got {type(record).__name__}")
    unknown = set(record) - {"id", "image", "conversations"}
    if unknown:
        raise InputError(f"{where}: unknown field(s) {', '.join(sorted(map(str, unknown)))}")
    ident = record.get("id")
    if isinstance(ident, bool) or not isinstance(ident, (str, int)) or str(ident) == "":
        raise InputError(f"{where}: 'id' must be a non-empty string or an integer, got {ident!r}")
    image = record.get("image")
    if image is None:
        images: tuple[str, ...] = ()
    elif isinstance(image, str) and image:
        images = (image,)
    elif isinstance(image, list) and image and all(isinstance(i, str) and i for i in image):
        images = tuple(image)
    else:
        raise InputError(f"{where}: 'image' must be a file name or a non-empty list of file names, got {image!r}")
    turns_raw = record.get("conversations")
    if not isinstance(turns_raw, list) or not turns_raw:
        raise InputError(f"{where}: 'conversations' must be a non-empty list of turns")
    turns: list[Turn] = []
    for number, turn in enumerate(turns_raw):
        if not isinstance(turn, dict) or set(turn) != {"from", "value"}:
            raise InputError(f"{where}: turn {number} must be an object with exactly 'from' and 'value'")
        role, value = turn["from"], turn["value"]
        if not isinstance(value, str):
            raise InputError(f"{where}: turn {number}: 'value' must be a string, got {type(value).__name__}")
        expected = HUMAN if number % 2 == 0 else GPT
        if role != expected:
            raise InputError(f"{where}: turn {number} is from {role!r}, expected {expected!r} (turns alternate human, gpt)")
        turns.append(Turn(role, value))
    if turns[-1].role != GPT:
        raise InputError(f"{where}: the last turn is a question without an answer")
    return Conversation(str(ident), images, tuple(turns))


def parse_conversations(
    data: Any,
    source: str,
    *,
    image_folder: str | os.PathLike | None = None,
    check_placeholders: bool = True,
) -> list[Conversation]:
    """Records (the decoded JSON list) -> conversations, with a one-line error naming ``source`` and
    the record for anything malformed. With ``image_folder`` every image must exist there. With
    ``check_placeholders=False`` a record whose ``<image>`` count differs from its images is kept,
    for a training run's validation pass to report with the other problems."""
    if not isinstance(data, list):
        raise InputError(f"{source}: expected a JSON list of records, got {type(data).__name__}")
    folder = Path(image_folder) if image_folder is not None else None
    conversations: list[Conversation] = []
    seen: set[str] = set()
    for index, record in enumerate(data):
        where = _where(source, index, record)
        conversation = _parse_record(record, where)
        if conversation.id in seen:
            raise InputError(f"{where}: duplicate id {conversation.id!r}")
        seen.add(conversation.id)
        if check_placeholders and conversation.placeholders != len(conversation.images):
            raise InputError(
                f"{where}: {conversation.placeholders} {IMAGE_PLACEHOLDER} placeholder(s) for {len(conversation.images)} image(s)"
            )
        if folder is not None:
            for name in conversation.images:
                if not (folder / name).is_file():
                    raise InputError(f"{where}: image file {str(folder / name)!r} not found")
        conversations.append(conversation)
    return conversations


def read_conversations(
    path: str | os.PathLike,
    image_folder: str | os.PathLike | None = None,
    *,
    check_placeholders: bool = True,
) -> list[Conversation]:
    """A conversation JSON file; images are looked up in ``image_folder`` (default: the file's folder)."""
    file = Path(path)
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(f"{file}: cannot read ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise InputError(f"{file}: not valid JSON ({exc})") from None
    folder = Path(image_folder) if image_folder is not None else file.parent
    return parse_conversations(data, str(file), image_folder=folder, check_placeholders=check_placeholders)


def write_conversations(conversations: Sequence[Conversation], path: str | os.PathLike) -> Path:
    """Write records in LLaVA's format (the inverse of :func:`read_conversations`)."""
    file = Path(path)
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(json.dumps([c.to_record() for c in conversations], indent=1, ensure_ascii=False), encoding="utf-8")
    return file


# -- builders from Examples ------------------------------------------------------------------------


def _save_images(examples: Sequence[Example], image_folder: Path) -> list[str]:
    """Each example's image as ``<id>.png`` in ``image_folder`` (existing files are kept)."""
    image_folder.mkdir(parents=True, exist_ok=True)
    names: list[str] = []
    for example in examples:
        name = f"{example.id}.png"
        target = image_folder / name
        if not target.is_file():
            if isinstance(example.image, Path):
                shutil.copyfile(example.image, target)
            else:
                example.image.save(target)
        names.append(name)
    return names


def stage1_records(examples: Sequence[Example], image_folder: str | os.PathLike, *, seed: int = 0) -> list[Conversation]:
    """One record per example with captions: a brief-description request about its image, answered
    by one of its captions (both drawn with ``seed``). The images are written to ``image_folder``."""
    chosen = [e for e in examples if e.captions]
    names = _save_images(chosen, Path(image_folder))
    rng = np.random.default_rng([seed, 1])
    records = []
    for example, name in zip(chosen, names, strict=True):
        instruction = BRIEF_INSTRUCTIONS[rng.integers(len(BRIEF_INSTRUCTIONS))]
        caption = example.captions[rng.integers(len(example.captions))]
        turns = (Turn(HUMAN, f"{IMAGE_PLACEHOLDER}\n{instruction}"), Turn(GPT, caption))
        records.append(Conversation(f"{example.id}-caption", (name,), turns))
    return records


def stage2_records(
    examples: Sequence[Example],
    image_folder: str | os.PathLike,
    *,
    seed: int = 0,
    max_questions: int = 3,
    caption_share: float = 0.3,
    two_image_share: float = 0.05,
) -> list[Conversation]:
    """One multi-turn record per example: up to ``max_questions`` of its questions (each with
    LLaVA-1.5's short-answer suffix) answered in a word or two, opened in ``caption_share`` of the
    records by a one-sentence caption request (the prompt ``Llava.caption`` uses). In
    ``two_image_share`` of the records the first question is about the second of two images (the
    example's and another one's), so several images per sample are exercised. The images are
    written to ``image_folder``."""
    from ..prompts import LLAVA_CAPTION_INSTRUCTION as CAPTION_INSTRUCTION
    from ..prompts import LLAVA_VQA_SUFFIX as VQA_SUFFIX

    if max_questions < 1:
        raise InputError(f"max_questions must be at least 1, got {max_questions}")
    names = _save_images(examples, Path(image_folder))
    rng = np.random.default_rng([seed, 2])
    records = []
    for index, example in enumerate(examples):
        turns: list[Turn] = []
        if example.captions and (not example.qa or rng.random() < caption_share):
            caption = example.captions[rng.integers(len(example.captions))]
            turns += [Turn(HUMAN, CAPTION_INSTRUCTION), Turn(GPT, caption)]
        if example.qa:
            count = int(rng.integers(1, min(max_questions, len(example.qa)) + 1))
            for row in rng.choice(len(example.qa), size=count, replace=False):
                question, answer = example.qa[row]
                turns += [Turn(HUMAN, question + VQA_SUFFIX), Turn(GPT, answer)]
        if not turns:
            continue
        images: tuple[str, ...] = (names[index],)
        two = len(examples) > 1 and bool(example.qa) and rng.random() < two_image_share
        if two:
            partner = (index + 1 + int(rng.integers(len(examples) - 1))) % len(examples)
            first = Turn(HUMAN, f"{IMAGE_PLACEHOLDER}\n{IMAGE_PLACEHOLDER}\nIn the second image, {turns[-2].value}")
            turns = [first, turns[-1]]
            images = (names[partner], names[index])
        else:
            turns[0] = Turn(HUMAN, f"{IMAGE_PLACEHOLDER}\n{turns[0].value}")
        records.append(Conversation(f"{example.id}-chat" + ("-pair" if two else ""), images, tuple(turns)))
    return records
