"""Instruction templates for instruction tuning over vlmkit's datasets, as InstructBLIP (Dai et al.,
2023, "InstructBLIP: Towards General-purpose Vision-Language Models with Instruction Tuning") builds
its mixture: every dataset becomes (instruction, target) pairs, each task type with several phrasings
of its instruction; some phrasings and some task types are used in training (held-in), the others
never (held-out), so that zero-shot generalisation to new wordings and new tasks can be measured.

Task types of an :class:`~vlmkit.data.Example` (shapes world and easy-VQA):

* ``caption``: its captions, under a captioning instruction;
* open VQA: ``colour``, ``shape``, ``size`` and ``count`` questions; ``yes/no`` questions. The type
  of a question comes from its wording (:func:`task_type`).

The fixed split: ``count`` is the held-out task type (never trained: the model must answer "how
many" questions zero-shot), and each family of templates (captioning, question answering) keeps two
phrasings back. The first held-in template of each family is BLIP-2's prompt ("a photo of",
"Question: {} Answer:"), which an instruction-tuned checkpoint keeps as its default caption and VQA
prompt: the prompts ``caption`` and ``ask`` use without one are held-in.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Literal

import numpy as np

from ..errors import InputError
from .records import Example

__all__ = [
    "TaskType",
    "TASK_TYPES",
    "HELD_IN_TASKS",
    "HELD_OUT_TASKS",
    "Templates",
    "HELD_IN_TEMPLATES",
    "HELD_OUT_TEMPLATES",
    "InstructionPair",
    "task_type",
    "instruction_pairs",
    "sample_instruction",
]

TaskType = Literal["caption", "colour", "shape", "size", "count", "yes/no"]
TASK_TYPES: tuple[TaskType, ...] = ("caption", "colour", "shape", "size", "count", "yes/no")
#: Trained task types, and the one kept for zero-shot evaluation.
HELD_IN_TASKS: tuple[TaskType, ...] = ("caption", "colour", "shape", "size", "yes/no")
HELD_OUT_TASKS: tuple[TaskType, ...] = ("count",)


@dataclass(frozen=True)
class Templates:
    """Phrasings of the instruction per family: captioning (no slot) and question answering (one
    ``{}`` slot for the question, used by every VQA task type)."""

    caption: tuple[str, ...]
    vqa: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.caption or not self.vqa:
            raise InputError("a template set needs at least one captioning and one VQA template")
        for template in self.vqa:
            if template.count("{}") != 1:
                raise InputError(f"VQA template {template!r} must hold exactly one {{}} for the question")
        for template in self.caption:
            if "{" in template or "}" in template:
                raise InputError(f"caption template {template!r} takes no arguments")

    def all(self) -> tuple[str, ...]:
        return (*self.caption, *self.vqa)


HELD_IN_TEMPLATES = Templates(
    caption=(
        "a photo of",
        "A short description of the image:",
        "Describe the picture in a few words.",
        "Write a caption for this image:",
    ),
    vqa=(
        "Question: {} Answer:",
        "{} Short answer:",
        "Q: {} A:",
        "Look at the image and answer the question: {}",
    ),
)
HELD_OUT_TEMPLATES = Templates(
    caption=(
        "What is shown here? Give a brief description.",
        "A brief caption for this scene:",
    ),
    vqa=(
        "Given the picture, {} Reply in one word:",
        "Answer briefly. {}",
    ),
)


@dataclass(frozen=True)
class InstructionPair:
    """One training or evaluation sample: the instruction (the prompt that the LM and, in an
    instruction-aware model, the Q-Former read), the target text, its task type and its template."""

    instruction: str
    target: str
    task: TaskType
    template: str


def task_type(question: str, answer: str) -> TaskType:
    """The task type of a VQA pair, from its wording (and "yes"/"no" answers)."""
    words = question.lower().rstrip("?").split()
    if answer.strip().lower() in ("yes", "no"):
        return "yes/no"
    if words[:2] == ["how", "many"]:
        return "count"
    if "colour" in words or "color" in words:
        return "colour"
    if "size" in words:
        return "size"
    return "shape"


def _check_tasks(tasks: Collection[str]) -> None:
    unknown = sorted(set(tasks) - set(TASK_TYPES))
    if unknown:
        raise InputError(f"unknown task types {unknown}; known: {', '.join(TASK_TYPES)}")


def instruction_pairs(
    example: Example, templates: Templates, tasks: Collection[str] = HELD_IN_TASKS
) -> list[InstructionPair]:
    """Every (instruction, target) pair of ``example`` whose task type is in ``tasks``: each caption
    under every captioning template, each question under every VQA template."""
    _check_tasks(tasks)
    pairs: list[InstructionPair] = []
    if "caption" in tasks:
        pairs += [InstructionPair(t, c, "caption", t) for c in example.captions for t in templates.caption]
    for question, answer in example.qa:
        kind = task_type(question, answer)
        if kind in tasks:
            pairs += [InstructionPair(t.format(question), answer, kind, t) for t in templates.vqa]
    return pairs


def sample_instruction(
    example: Example,
    rng: np.random.Generator,
    templates: Templates = HELD_IN_TEMPLATES,
    tasks: Collection[str] = HELD_IN_TASKS,
    qa_fraction: float = 0.5,
) -> InstructionPair:
    """One pair for training: with probability ``qa_fraction`` (or when the example has no caption to
    give) one of its questions of a type in ``tasks``, else one of its captions; the template is drawn
    uniformly from its family. An example with nothing of ``tasks`` to give is an error."""
    _check_tasks(tasks)
    questions = [(q, a, task_type(q, a)) for q, a in example.qa]
    questions = [(q, a, kind) for q, a, kind in questions if kind in tasks]
    captions = example.captions if "caption" in tasks else ()
    if not questions and not captions:
        raise InputError(f"example {example.id!r} has nothing for the task types {sorted(tasks)}")
    if questions and (not captions or rng.random() < qa_fraction):
        question, answer, kind = questions[rng.integers(len(questions))]
        template = templates.vqa[rng.integers(len(templates.vqa))]
        return InstructionPair(template.format(question), answer, kind, template)
    template = templates.caption[rng.integers(len(templates.caption))]
    return InstructionPair(template, captions[rng.integers(len(captions))], "caption", template)
