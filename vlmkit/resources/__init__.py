"""Data files the library ships (package data), below the models so every layer may read them."""

from __future__ import annotations

import csv
from pathlib import Path

__all__ = ["imagenet_info_dir", "imagenet_class_names", "imagenet_lemmas"]


def imagenet_info_dir() -> Path:
    """The ImageNet-1k class files (from timm's ``data/_info``; see ``imagenet/NOTICE.txt``)."""
    return Path(__file__).parent / "imagenet"


def imagenet_lemmas() -> dict[str, str]:
    """WordNet id -> its lemmas as one text (``"tench, Tinca tinca"``), for the 1,000 ImageNet-1k ids."""
    with open(imagenet_info_dir() / "imagenet_synset_to_lemma.txt", encoding="utf-8", newline="") as handle:
        return {row[0]: row[1] for row in csv.reader(handle, delimiter="\t") if len(row) >= 2}


def imagenet_class_names() -> list[list[str]]:
    """The 1,000 ImageNet-1k classes in classifier order, each as its WordNet lemmas
    (e.g. ``["tabby", "tabby cat"]``): the names behind ``timm.data.ImageNetInfo``."""
    synsets = (imagenet_info_dir() / "imagenet_synsets.txt").read_text().split()
    lemmas = imagenet_lemmas()
    return [[name.strip() for name in lemmas[s].split(",")] for s in synsets]
