"""`vlmkit train`: every recipe in the CLI's table resolves to a config factory and a training
function, prints its resolved config, and refuses unknown presets and keys with one line."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import json

import pytest

from vlmkit_cli.main import main
from vlmkit_cli.train import RECIPES


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_every_recipe_resolves_and_shows_its_config(recipe, tmp_path, capsys):
    module_name, config_name, train_name, _ = RECIPES[recipe]
    module = importlib.import_module(module_name)
    train = getattr(module, train_name)
    assert {"resume", "progress"} <= set(inspect.signature(train).parameters)
    code = main(["train", recipe, "--preset", "tiny", "--out", str(tmp_path / "run"), "--show-config"])
    assert code == 0, capsys.readouterr().err
    shown = json.loads(capsys.readouterr().out)
    assert shown == json.loads(json.dumps(dataclasses.asdict(getattr(module, config_name)("tiny")), default=str))
    assert not (tmp_path / "run").exists()  # showing the config trains nothing


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_unknown_presets_and_keys_are_one_line_errors(recipe, tmp_path, capsys):
    assert main(["train", recipe, "--preset", "no-such-preset", "--out", str(tmp_path / "a")]) == 1
    err = capsys.readouterr().err.strip()
    assert "unknown preset" in err and len(err.splitlines()) == 1
    assert main(["train", recipe, "--preset", "tiny", "--set", "no_such_key=1", "--out", str(tmp_path / "b")]) == 1
    err = capsys.readouterr().err.strip()
    assert "unknown config key" in err and len(err.splitlines()) == 1
