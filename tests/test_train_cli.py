"""`vlmkit train`: every recipe in the one table resolves to a declaration, prints its resolved
config, refuses unknown presets and keys with one line, and lists its presets in the help."""

from __future__ import annotations

import dataclasses
import json

import pytest

from vlmkit_cli.main import main
from vlmkit_train.driver import Recipe
from vlmkit_train.recipes import RECIPES, recipe


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_every_recipe_resolves_and_shows_its_config(name, tmp_path, capsys):
    declared = recipe(name)
    assert isinstance(declared, Recipe) and declared.name == name
    assert "tiny" in declared.presets and set(declared.presets) == set(declared.preset_notes)
    assert "smoke test" in declared.preset_notes["tiny"]
    code = main(["train", name, "--preset", "tiny", "--out", str(tmp_path / "run"), "--show-config"])
    assert code == 0, capsys.readouterr().err
    shown = json.loads(capsys.readouterr().out)
    assert shown == json.loads(json.dumps(dataclasses.asdict(declared.config("tiny")), default=str))
    assert {"run", "data"} <= set(shown)  # the shared parts every recipe nests
    assert not (tmp_path / "run").exists()  # showing the config trains nothing


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_unknown_presets_and_keys_are_one_line_errors(name, tmp_path, capsys):
    assert main(["train", name, "--preset", "no-such-preset", "--out", str(tmp_path / "a")]) == 1
    err = capsys.readouterr().err.strip()
    assert "unknown preset" in err and len(err.splitlines()) == 1
    assert main(["train", name, "--preset", "tiny", "--set", "no_such_key=1", "--out", str(tmp_path / "b")]) == 1
    err = capsys.readouterr().err.strip()
    assert "unknown config key" in err and len(err.splitlines()) == 1


def test_help_lists_every_recipes_presets_with_their_cost(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--help"])
    assert exit_info.value.code == 0
    shown = capsys.readouterr().out
    assert "usage: vlmkit train" in shown
    for name in RECIPES:
        declared = recipe(name)
        assert f"  {name}: {declared.summary}" in shown
        for preset, note in declared.preset_notes.items():
            assert f"    {preset}: {note}" in shown


def test_a_run_ends_by_saying_where_the_model_is_and_what_to_run_next(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "blip2-stage1", "--preset", "tiny", "--out", str(out), "--set", "run.max_steps=2"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["steps"] == 2 and summary["model_dir"] == str(out / "model")
    assert f"model: {out / 'model'}" in captured.err
    assert f"next: vlmkit train blip2-stage2 --set stage1={out}" in captured.err
