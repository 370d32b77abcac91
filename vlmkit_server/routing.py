"""Tandem routing for ``model: "auto"``: a precise specialist for captions and short factual
answers, a conversational generalist for dialogue, open-ended requests and long answers.

The rules, in order (the first that applies decides; each gives the reason the response reports):

0. several images in the conversation -> conversational, chat only (the models that answer about
   one image, BLIP, BLIP-2, InstructBLIP, take one per prompt);
1. an assistant turn in the conversation (multi-turn dialogue) -> conversational;
2. ``max_tokens`` above ``long_answer_tokens`` -> conversational (a long answer is wanted);
3. no text, or a caption request ("describe this image", "caption", "what is in the picture") ->
   precise, as a caption;
4. an open-ended request (words such as why, how, explain, story, imagine, write; "how many",
   "how old" and the like ask for a fact and do not count) -> conversational;
5. a short question (at most ``short_question_words`` words) -> precise, as VQA;
6. anything else -> conversational.

When the chosen side has no model able to do the work, the other side answers, and the reason says
so. Routes are configurable (:class:`Routes`). With no side configured (``vlmkit serve`` without
``--route``, or a single model), every served model is a candidate: the first, in serving order,
that can do what the rule asks (a chat model for dialogue, a VQA model for a short question, a
captioner for a caption request; models that cannot chat are preferred for captions and short
answers), and the reason says the pick was made by capability.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["Routes", "Route", "choose_route", "is_caption_request"]

_CAPTION = re.compile(
    r"^\s*(please\s+)?((write\s+)?(a\s+)?caption|describe (this|the) (image|picture|photo)( briefly)?|"
    r"what('s| is) (in|on) (this|the) (image|picture|photo)|what do you see)\b[^a-z]*$",
    re.IGNORECASE,
)


def is_caption_request(text: str) -> bool:
    """Whether ``text`` (a message's text) asks for a caption rather than asking a question; no text does."""
    return not text.strip() or _CAPTION.match(text) is not None


@dataclass(frozen=True)
class Routes:
    precise: str | None = None  # model name for captions and short answers
    conversational: str | None = None  # model name for dialogue and open-ended requests
    long_answer_tokens: int = 64
    short_question_words: int = 12
    open_ended_words: tuple[str, ...] = field(
        default=("why", "how", "explain", "story", "imagine", "write", "poem", "opinion", "compare", "suggest", "detail")
    )


@dataclass(frozen=True)
class Route:
    model: str
    task: Literal["caption", "ask", "chat"]
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "task": self.task, "reason": self.reason}


_MEASURE = frozenset({"many", "much", "old", "big", "tall", "far", "long", "large", "small", "high", "wide"})


def _open_ended(words: list[str], i: int, routes: Routes) -> bool:
    """Whether ``words[i]`` marks an open-ended request; "how many" and the like ask for a fact."""
    if words[i] not in routes.open_ended_words:
        return False
    return not (words[i] == "how" and i + 1 < len(words) and words[i + 1] in _MEASURE)


def _wanted(routes: Routes, text: str, words: list[str], turns: int, max_tokens: int | None, images: int) -> tuple[str, str]:
    """The kind of work the request asks for, by the rules above, and the reason in words."""
    if images > 1:
        return "several-images", f"{images} images in the conversation"
    if turns > 0:
        return "conversational", "multi-turn dialogue"
    if max_tokens is not None and max_tokens > routes.long_answer_tokens:
        return "conversational", f"a long answer (max_tokens {max_tokens} > {routes.long_answer_tokens})"
    if is_caption_request(text):
        return "precise-caption", "a caption request"
    found = next((w for i, w in enumerate(words) if _open_ended(words, i, routes)), None)
    if found is not None:
        return "conversational", f"an open-ended request ({found!r})"
    if len(words) <= routes.short_question_words:
        return "precise-ask", f"a short question ({len(words)} words)"
    return "conversational", f"a long request ({len(words)} words)"


def choose_route(
    routes: Routes, *, texts: list[str], turns: int, max_tokens: int | None, can: dict[str, frozenset[str]], images: int = 1
) -> Route:
    """``texts``: the last user message's text parts; ``turns``: assistant messages so far;
    ``can``: model name -> the tasks it can do; ``images``: images in the whole conversation."""
    text = " ".join(t.strip() for t in texts if t.strip())
    wanted, reason = _wanted(routes, text, re.findall(r"[a-z']+", text.lower()), turns, max_tokens, images)
    order = {"conversational": ["chat", "ask", "caption"], "several-images": ["chat"], "precise-caption": ["caption", "chat"],
             "precise-ask": ["ask", "chat"]}[wanted]
    conversational = wanted in ("conversational", "several-images")

    def fits(task: str) -> bool:
        return not (task == "caption" and conversational and text)  # a caption does not answer a question

    if routes.precise is None and routes.conversational is None:
        # No sides configured: the first served model that can do the wanted work, best task first;
        # chat models first for dialogue, specialists (no chat) first for captions and short answers.
        ranked = sorted(can, key=lambda name: ("chat" in can[name]) != conversational)
        note = "" if len(can) == 1 else "; picked by what the served models can do"
        for task in order:
            for name in ranked:
                if task in can[name] and fits(task):
                    return Route(name, task, reason + note)  # type: ignore[arg-type]
        raise LookupError(f"no served model can answer {reason}")
    preferred = routes.conversational if conversational else routes.precise
    fallback = routes.precise if conversational else routes.conversational
    for side, note in ((preferred, ""), (fallback, "; the preferred model cannot do it")):
        if side is None or side not in can:
            continue
        for task in order:
            if task in can[side] and fits(task):
                return Route(side, task, reason + note)  # type: ignore[arg-type]
    raise LookupError(f"no configured model can answer {reason}")
