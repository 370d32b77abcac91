"""A resumable predictions file: JSON lines, a header naming what made them, one line per item.

The header (first line) records the task, model, dataset spec and protocol; a run that finds a file
made by something else refuses to mix the two. Each batch is appended and flushed to disk before the
next starts, so an interrupted run loses at most the batch in flight; a last line cut off by the
interruption is dropped when the file is reopened.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..errors import InputError

__all__ = ["PredictionsFile"]

_FORMAT = "vlmkit-predictions/1"


class PredictionsFile:
    """Open (or create) ``path`` for ``header``; ``done`` maps item id -> its saved record."""

    def __init__(self, path: str | os.PathLike[str], header: dict[str, Any], *, restart: bool = False) -> None:
        self.path = Path(path)
        self.header = {"format": _FORMAT, **header}
        self.done: dict[str, dict[str, Any]] = {}
        if self.path.is_dir():
            raise InputError(f"predictions file {self.path} is a directory")
        if restart or not self.path.exists() or self.path.stat().st_size == 0:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps(self.header, ensure_ascii=False) + "\n", encoding="utf-8")
        else:
            self._resume()

    def _resume(self) -> None:
        raw = self.path.read_bytes()
        lines = raw.split(b"\n")
        complete = lines[:-1]  # the text after the last newline, if any, is a line cut off mid-write
        if not complete:
            raise InputError(f"{self.path}: not a vlmkit predictions file (no complete header line)")
        try:
            saved = json.loads(complete[0])
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise InputError(f"{self.path}: not a vlmkit predictions file ({error})") from error
        if not isinstance(saved, dict) or saved.get("format") != _FORMAT:
            raise InputError(f"{self.path}: not a vlmkit predictions file (header {str(saved)[:80]!r})")
        different = [key for key in self.header if saved.get(key) != self.header[key]]
        if different:
            key = different[0]
            raise InputError(
                f"{self.path} holds predictions made with another {key} ({saved.get(key)!r}, now "
                f"{self.header[key]!r}); use another predictions file or --restart to start over"
            )
        for number, line in enumerate(complete[1:], start=2):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                raise InputError(f"{self.path}:{number}: corrupt line ({error}); use --restart to start over") from error
            if not isinstance(record, dict) or "id" not in record:
                raise InputError(f"{self.path}:{number}: a prediction needs an 'id'")
            self.done[str(record["id"])] = record
        if lines[-1]:
            # Drop the torn tail so the next append starts on a fresh line.
            with self.path.open("r+b") as file:
                file.truncate(len(raw) - len(lines[-1]))

    def add(self, records: Iterable[dict[str, Any]]) -> None:
        """Append records (each with an ``id``) and make them durable before returning."""
        records = list(records)
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        with self.path.open("a", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        for record in records:
            self.done[str(record["id"])] = record
