"""Writing a folder all at once: :func:`staged_folder`."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["staged_folder"]


@contextlib.contextmanager
def staged_folder(target: Path) -> Iterator[Path]:
    """A hidden folder beside ``target`` to fill. When the block ends it becomes ``target`` (which
    must be missing or an empty folder: callers check, with their own message); when the block
    raises it is removed, so a failed run leaves nothing half-written."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        yield staging
        staging.chmod(0o755)  # mkdtemp made it private
        if target.exists():
            target.rmdir()
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
