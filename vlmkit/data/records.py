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
    """

    id: str
    image: Image.Image | Path
    captions: tuple[str, ...] = ()
    qa: tuple[tuple[str, str], ...] = ()  # (question, answer) pairs
    label: str = ""  # last, so that positional construction of the other fields keeps working

    @property
    def questions(self) -> tuple[str, ...]:
        return tuple(question for question, _ in self.qa)

    @property
    def answers(self) -> tuple[str, ...]:
        return tuple(answer for _, answer in self.qa)
