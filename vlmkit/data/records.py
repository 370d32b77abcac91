"""The one record type every data source yields, so captioning, retrieval and VQA share loaders."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image

__all__ = ["Example"]


@dataclass(frozen=True)
class Example:
    """One image with everything said about it.

    ``image`` is either a decoded image (generated data) or a path to a file on disk (datasets
    shipped as files, so that nothing is decoded until a loader asks for it). ``captions`` may be
    empty for a VQA-only source and ``qa`` empty for a captioning-only one. ``label`` is the class
    name for classification sets (an image-class folder such as ImageNet's) and empty otherwise.
    ``group`` names the image's content when a source knows it: two examples with the same non-empty
    group show the same thing, so each one's captions are true of the other's image, and contrastive
    losses must not treat them as a wrong match (:func:`vlmkit.losses.group_keys`). ``description``
    is a complete account of the image in words, when a source knows one: every question in ``qa``
    can be answered from it (the text-only ceiling of a frozen LM is measured with it).
    """

    id: str
    image: Image.Image | Path
    captions: tuple[str, ...] = ()
    qa: tuple[tuple[str, str], ...] = ()  # (question, answer) pairs
    label: str = ""  # after the others, so that positional construction of them keeps working
    group: str = ""
    description: str = ""

    @property
    def questions(self) -> tuple[str, ...]:
        return tuple(question for question, _ in self.qa)

    @property
    def answers(self) -> tuple[str, ...]:
        return tuple(answer for _, answer in self.qa)
