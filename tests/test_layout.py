"""The library never imports the applications (CLI, training, server)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import vlmkit

APPS = ("vlmkit_cli", "vlmkit_train", "vlmkit_server")


def test_library_source_never_imports_applications():
    root = Path(vlmkit.__file__).parent
    offenders = []
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            offenders += [f"{path.relative_to(root)}: {n}" for n in names if n.split(".")[0] in APPS]
    assert offenders == []


def test_importing_the_library_is_light():
    code = "import sys, vlmkit; print(sorted(m for m in sys.modules if m.split('.')[0] in ('vlmkit_cli', 'transformers')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_public_api():
    for name in vlmkit.__all__:
        assert hasattr(vlmkit, name), name
    names = [info.name for info in vlmkit.list_models()]
    assert names[0] == vlmkit.DEFAULT_MODEL
    assert "openai/clip-vit-base-patch32" in names and "llava-hf/llava-1.5-7b-hf" in names
