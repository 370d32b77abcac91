"""The shared run and data configs every recipe nests, and the checked ``key=value`` overrides:
dotted paths, the flat names older scripts used, and one-line errors for anything else."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from vlmkit.errors import InputError
from vlmkit_train.config import (
    DataConfig,
    RunConfig,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    data_seed,
)
from vlmkit_train.qformer_setup import QFormerSetup


@dataclass(frozen=True)
class Example:
    run: RunConfig = RunConfig()
    data: DataConfig = DataConfig()
    qformer: QFormerSetup = QFormerSetup()
    mapper: str = "mlp"
    weight: float = 1.0


def test_dotted_paths_and_flat_aliases_set_the_same_fields():
    dotted = apply_overrides(Example(), ["run.lr=3e-4", "run.max_steps=7", "data.name=easy-vqa", "data.seed=2", "qformer.init=scratch"])
    flat = apply_overrides(Example(), ["lr=3e-4", "max_steps=7", "data=easy-vqa", "data_seed=2", "qformer_init=scratch"])
    assert dotted == flat
    assert dotted.run.lr == 3e-4 and dotted.run.max_steps == 7 and dotted.data.name == "easy-vqa" and dotted.qformer.init == "scratch"
    assert apply_overrides(Example(), ["mapper=linear", "weight=0.5"]) == Example(mapper="linear", weight=0.5)


def test_a_nested_part_is_checked_with_all_of_its_changes_at_once():
    # Each alone would fail QFormerSetup's check (corpus needs scratch); together they are valid.
    changed = apply_overrides(Example(), ["qformer.tokenizer=corpus", "qformer.init=scratch"])
    assert (changed.qformer.tokenizer, changed.qformer.init) == ("corpus", "scratch")
    with pytest.raises(InputError, match="qformer.tokenizer=corpus needs qformer.init=scratch"):
        apply_overrides(Example(), ["qformer.tokenizer=corpus"])


@pytest.mark.parametrize(("override", "message"), [
    ("run.nope=1", "unknown config key 'run.nope'"),
    ("nope=1", "unknown config key 'nope'"),
    ("run.lr=fast", "run.lr: expected float"),
    ("run.lr=0", "lr must be positive"),
    ("run.batch_size=0", "batch_size must be at least 1"),
    ("run.warmup_steps=-1", "warmup_steps must be at least 0"),
    ("data.name=coco", "data.name: must be one of shapes, easy-vqa"),
    ("run.mixed_precision=fp8", "must be one of no, bf16, fp16"),
    ("run.lr", "expected key=value"),
])
def test_bad_overrides_are_one_line_errors(override, message):
    with pytest.raises(InputError, match=message.replace(".", r"\.")) as error:
        apply_overrides(Example(), [override])
    assert len(str(error.value).splitlines()) == 1


def test_data_seed_defaults_to_the_run_seed():
    assert data_seed(apply_overrides(Example(), ["run.seed=5"])) == 5
    assert data_seed(apply_overrides(Example(), ["run.seed=5", "data.seed=0"])) == 0


def test_a_config_round_trips_through_its_dict_and_refuses_unknown_keys():
    config = apply_overrides(Example(), ["run.lr=0.01", "data.train_size=9", "qformer.layers=3"])
    assert config_from_dict(Example, config_to_dict(config)) == config
    with pytest.raises(InputError, match="unknown config keys: nope"):
        config_from_dict(Example, {**config_to_dict(config), "run": {**config_to_dict(config)["run"], "nope": 1}})
