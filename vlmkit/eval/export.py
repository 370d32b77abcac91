"""Predictions in the formats the official evaluation servers accept.

- VQAv2 and OK-VQA (EvalAI): a JSON list of ``{"question_id": int, "answer": str}``.
- GQA: a JSON list of ``{"questionId": str, "prediction": str}``.
- COCO captions and NoCaps (EvalAI / CodaLab): a JSON list of ``{"image_id": int, "caption": str}``.

The servers expect every question or image of the split; a run with ``--limit`` exports only what
it predicted, which the servers reject, so those exports are for local checks.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import InputError

__all__ = ["EXPORT_FORMATS", "export_results", "result_records"]

EXPORT_FORMATS = ("vqav2", "gqa", "coco")


def _numeric(value: str) -> int | str:
    return int(value) if value.isdigit() else value


def result_records(kind: str, predictions: Mapping[str, str]) -> list[dict[str, Any]]:
    """``predictions`` maps question id (VQA, GQA) or image id (captions) -> text."""
    if kind == "vqav2":
        return [{"question_id": _numeric(key), "answer": text} for key, text in predictions.items()]
    if kind == "gqa":
        return [{"questionId": key, "prediction": text} for key, text in predictions.items()]
    if kind == "coco":
        return [{"image_id": _numeric(key), "caption": text} for key, text in predictions.items()]
    raise InputError(f"unknown export format {kind!r}; expected one of: {', '.join(EXPORT_FORMATS)}")


def export_results(path: str | os.PathLike[str], kind: str, predictions: Mapping[str, str]) -> Path:
    """Write the result file; returns its path."""
    records = result_records(kind, predictions)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    tmp.replace(out)
    return out
