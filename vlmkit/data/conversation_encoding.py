"""Conversations encoded for training a chat model: rendered with a processor's chat template,
tokenised as the processor tokenises a prompt at inference (each ``<image>`` expanded to
``image_seq_length`` tokens, which count towards ``max_length``), and labelled on the assistant
turns' tokens only, their end token included (``IGNORE`` elsewhere).

:func:`validate_conversations` encodes a whole data set and reports what would train wrongly
(:data:`PROBLEMS`): truncation, assistant spans that do not line up with the template's tokens,
``<image>`` placeholders that differ from the images, and samples with nothing to learn. The
processor is any with ``apply_chat_template``, ``image_token`` and ``tokenizer`` (LLaVA's
``LlavaProcessor`` as :func:`vlmkit.models.llava_build.build_llava` makes it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .conversations import IMAGE_PLACEHOLDER, Conversation

__all__ = ["IGNORE", "PROBLEMS", "Problem", "EncodedSample", "encode_conversation", "validate_conversations"]

#: The label of a token that carries no loss (the cross-entropy's ``ignore_index``).
IGNORE = -100
#: What the validation pass looks for, in its report's order.
PROBLEMS = {
    "truncated": "longer than max_length (image tokens included)",
    "masking": "assistant spans do not line up with the template's tokens",
    "placeholders": "<image> placeholders differ from the images",
    "unsupervised": "no supervised tokens",
}


@dataclass(frozen=True)
class Problem:
    kind: str  # a key of PROBLEMS
    reason: str


@dataclass(frozen=True)
class EncodedSample:
    """A conversation as training sees it: token ids (images expanded), labels (-100 except on the
    assistant turns' tokens) and whatever the validation pass found wrong with it."""

    id: str
    input_ids: list[int]
    labels: list[int]
    problems: list[Problem] = field(default_factory=list)


def _render(processor: Any, messages: list[dict[str, Any]], generation: bool) -> str:
    return processor.apply_chat_template(messages, add_generation_prompt=generation, tokenize=False)


def _tokenize(processor: Any, text: str, image_seq_length: int) -> list[int]:
    """Token ids of a rendered prompt exactly as ``processor(images=..., text=...)`` gives them."""
    expanded = text.replace(processor.image_token, processor.image_token * image_seq_length)
    return list(processor.tokenizer(expanded)["input_ids"])


def encode_conversation(conversation: Conversation, processor: Any, image_seq_length: int, max_length: int) -> EncodedSample:
    """Render with the processor's chat template, tokenise, label the assistant turns, and check.

    An assistant turn's span starts where the inference prompt (the conversation so far, rendered
    with ``add_generation_prompt=True``) ends and ends where the conversation up to and including
    the turn ends; both prefixes must tokenise to the leading tokens of the whole sequence, or the
    labels would not be what generation at inference continues from (a masking mismatch)."""
    problems: list[Problem] = []
    if conversation.placeholders != len(conversation.images):
        found = f"{conversation.placeholders} {IMAGE_PLACEHOLDER} placeholder(s) for {len(conversation.images)} image(s)"
        problems.append(Problem("placeholders", found))
    elif any(IMAGE_PLACEHOLDER in answer for answer in conversation.answers()):
        problems.append(Problem("placeholders", f"an answer holds {IMAGE_PLACEHOLDER}"))
    messages = conversation.messages()
    full = _render(processor, messages, False)
    ids = _tokenize(processor, full, image_seq_length)
    labels = [IGNORE] * len(ids)
    specials = [t for t in processor.tokenizer.all_special_tokens if t]
    first_answer = len(_tokenize(processor, _render(processor, messages[:1], True), image_seq_length))
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        answer = message["content"][0]["text"]
        turn = index // 2
        prompt = _render(processor, messages[:index], True)
        upto = _render(processor, messages[: index + 1], False)
        if not upto.startswith(prompt) or not full.startswith(upto) or answer not in upto[len(prompt) :]:
            problems.append(Problem("masking", f"answer {turn}: the template does not render it after the inference prompt"))
            continue
        held = [t for t in specials if t in answer]
        if held:
            why = f"answer {turn}: holds the special token {held[0]!r}, which the tokenizer reads as a control token"
            problems.append(Problem("masking", why))
            continue
        prompt_ids, upto_ids = _tokenize(processor, prompt, image_seq_length), _tokenize(processor, upto, image_seq_length)
        start, end = len(prompt_ids), len(upto_ids)
        if ids[:start] != prompt_ids or ids[:end] != upto_ids:
            problems.append(Problem("masking", f"answer {turn}: its tokens do not start or end on the template's token boundary"))
            continue
        labels[start:end] = ids[start:end]
    if len(ids) > max_length:
        problems.append(Problem("truncated", f"{len(ids)} tokens > max_length {max_length}"))
    if not any(answer.strip() for answer in conversation.answers()):
        problems.append(Problem("unsupervised", "every answer is empty"))
    elif first_answer >= max_length:
        problems.append(Problem("unsupervised", f"the first answer starts at token {first_answer}, past max_length"))
    return EncodedSample(conversation.id, ids, labels, problems)


def validate_conversations(
    conversations: list[Conversation], processor: Any, image_seq_length: int, max_length: int, report: Path | None = None
) -> tuple[list[EncodedSample], dict[str, Any]]:
    """Encode every conversation and report the problems: counts per kind, and every offending id
    with its reasons (written to ``report`` as JSON when given)."""
    samples = [encode_conversation(c, processor, image_seq_length, max_length) for c in conversations]
    counts = {kind: sum(any(p.kind == kind for p in s.problems) for s in samples) for kind in PROBLEMS}
    invalid = [{"id": s.id, "problems": [{"kind": p.kind, "reason": p.reason} for p in s.problems]} for s in samples if s.problems]
    summary = {
        "samples": len(samples), "invalid": len(invalid), "max_length": max_length, "image_seq_length": image_seq_length,
        "counts": counts, "problems": PROBLEMS, "offending": invalid,
    }
    if report is not None:
        report.write_text(json.dumps(summary, indent=1, ensure_ascii=False))
    return samples, summary
