"""Where checkpoints come from: a local directory, or a snapshot of a Hugging Face hub repository
(downloaded once, then read from the cache; ``HF_HUB_OFFLINE=1`` works from the cache alone).
Below the models, so every model family and the loader share one way to find a checkpoint."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import ModelNotFoundError, OfflineError

__all__ = ["checkpoint_dir", "HUB_PATTERNS"]

#: The files a hub snapshot fetches: configs, safetensors weights, tokenizer and chat-template files
#: (never pickled weights).
HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja", "*.tiktoken"]


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or (os.sep != "/" and os.sep in name)


def checkpoint_dir(name: str, *, builtins: tuple[str, ...] = ()) -> Path:
    """A local checkpoint directory for ``name``: the directory itself, or the hub snapshot (only
    the files a checkpoint needs: configs, safetensors weights, tokenizer and template files).
    ``builtins`` are the names the loader knows besides, named in the error for an unknown model."""
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelNotFoundError(f"{name}: is a file; give a checkpoint directory holding config.json")
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"{name}: no config.json in this directory, so it is not a checkpoint")
        return path
    if _looks_like_path(name):
        raise ModelNotFoundError(f"{name}: no such directory")

    import huggingface_hub
    from huggingface_hub import errors as hub_errors

    try:
        return Path(huggingface_hub.snapshot_download(name, allow_patterns=HUB_PATTERNS))
    except hub_errors.HFValidationError:
        raise ModelNotFoundError(
            f"unknown model {name!r}: not a built-in ({', '.join(builtins)}), a directory, or a hub id; "
            "see `vlmkit models`"
        ) from None
    except (hub_errors.RepositoryNotFoundError, hub_errors.GatedRepoError, hub_errors.RevisionNotFoundError):
        raise ModelNotFoundError(
            f"unknown model {name!r}: no such model on the hub (or it needs a login); see `vlmkit models`"
        ) from None
    except hub_errors.LocalEntryNotFoundError:
        offline = bool(getattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False))
        how = "HF_HUB_OFFLINE is set" if offline else "the hub cannot be reached"
        raise OfflineError(
            f"model {name!r} is not in the local Hugging Face cache and {how}; download it once with a "
            "network connection, or pass a local checkpoint directory"
        ) from None
