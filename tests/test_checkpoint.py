"""The one reader and writer of vlmkit's native checkpoints: strict about keys, kinds and weights."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch

import vlmkit
from vlmkit.errors import ModelNotFoundError
from vlmkit.models.checkpoint import load_weights, read_config, save_weights, write_config
from vlmkit.models.simvlm import SimVLM, SimVLMConfig


@dataclass(frozen=True)
class Tiny:
    width: int = 4
    name: str = "tiny"

    def __post_init__(self) -> None:
        if self.width < 1:
            raise ValueError("width must be >= 1")


def _checkpoint(tmp_path, **config):
    path = write_config(tmp_path / "ckpt", Tiny(**config), model_type="vlmkit-tiny", architecture="VlmkitTiny")
    save_weights(torch.nn.Linear(4, 2).state_dict(), path / "model.safetensors")
    return path


def _edit(path, **changes):
    meta = json.loads((path / "config.json").read_text())
    meta.update(changes)
    (path / "config.json").write_text(json.dumps(meta))


def test_round_trip(tmp_path):
    path = _checkpoint(tmp_path, width=3)
    meta = json.loads((path / "config.json").read_text())
    assert meta["model_type"] == "vlmkit-tiny" and meta["architectures"] == ["VlmkitTiny"] and meta["vlmkit_version"] == vlmkit.__version__
    config, model_type = read_config(path, Tiny, model_types=("vlmkit-other", "vlmkit-tiny"))
    assert config == Tiny(width=3) and model_type == "vlmkit-tiny"
    module = torch.nn.Linear(4, 2)
    load_weights(module, path / "model.safetensors")
    saved = torch.nn.Linear(4, 2)
    assert not torch.equal(module.weight, saved.weight)  # a fresh layer differs; the loaded one is the saved one
    load_weights(saved, path / "model.safetensors")
    assert torch.equal(module.weight, saved.weight)


def test_missing_fields_take_defaults(tmp_path):
    path = _checkpoint(tmp_path)
    meta = json.loads((path / "config.json").read_text())
    del meta["name"]
    (path / "config.json").write_text(json.dumps(meta))
    assert read_config(path, Tiny, model_types="vlmkit-tiny")[0] == Tiny()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"colour": "red"}, "unknown keys in config.json: colour"),
        ({"model_type": "vlmkit-other"}, "model_type 'vlmkit-other' is not vlmkit-tiny"),
        ({"width": 0}, "does not describe a valid Tiny (width must be >= 1)"),
    ],
)
def test_config_errors_name_the_checkpoint(tmp_path, change, message):
    path = _checkpoint(tmp_path)
    _edit(path, **change)
    with pytest.raises(ModelNotFoundError, match=r".*ckpt: .*") as info:
        read_config(path, Tiny, model_types="vlmkit-tiny")
    assert message in str(info.value)


def test_unreadable_config(tmp_path):
    path = _checkpoint(tmp_path)
    (path / "config.json").write_text("[1, 2]")
    with pytest.raises(ModelNotFoundError, match="config.json is not an object"):
        read_config(path, Tiny, model_types="vlmkit-tiny")
    (path / "config.json").write_text("{not json")
    with pytest.raises(ModelNotFoundError, match="cannot read config.json"):
        read_config(path, Tiny, model_types="vlmkit-tiny")


def test_weights_must_fit(tmp_path):
    path = _checkpoint(tmp_path)
    with pytest.raises(ModelNotFoundError, match="do not fit the model"):
        load_weights(torch.nn.Linear(4, 3), path / "model.safetensors")  # another shape
    with pytest.raises(ModelNotFoundError, match="do not fit the model"):
        load_weights(torch.nn.Sequential(torch.nn.Linear(4, 2)), path / "model.safetensors")  # other key names
    with pytest.raises(ModelNotFoundError, match="no weights.safetensors"):
        load_weights(torch.nn.Linear(4, 2), path / "weights.safetensors")
    (path / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ModelNotFoundError, match="cannot read the weights"):
        load_weights(torch.nn.Linear(4, 2), path / "model.safetensors")


def test_a_part_of_the_model(tmp_path):
    """``keys``: the file holds exactly that part (the dual encoder's head beside its text tower)."""
    model = torch.nn.Sequential(torch.nn.Linear(4, 2), torch.nn.Linear(2, 2))
    head = {"1.weight": model[1].weight, "1.bias": model[1].bias}
    save_weights(head, tmp_path / "head.safetensors")
    other = torch.nn.Sequential(torch.nn.Linear(4, 2), torch.nn.Linear(2, 2))
    load_weights(other, tmp_path / "head.safetensors", keys=head)
    assert torch.equal(other[1].weight, model[1].weight) and not torch.equal(other[0].weight, model[0].weight)
    with pytest.raises(ModelNotFoundError, match="keys missing or unexpected: 0.weight"):
        load_weights(other, tmp_path / "head.safetensors", keys=[*head, "0.weight"])


def test_a_family_refuses_an_unknown_key(tmp_path):
    """Every native family reads through the same reader: a SimVLM checkpoint with a key it does not
    know is refused by ``vlmkit.load``'s path too, instead of the key being dropped silently."""
    config = SimVLMConfig(vocab_size=32, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32, max_text_length=8,
                          image_hidden_size=8, num_image_tokens=4)
    SimVLM(config).save_pretrained(tmp_path / "simvlm")
    assert SimVLM.from_pretrained(tmp_path / "simvlm").config == config
    _edit(tmp_path / "simvlm", hidden_sise=32)
    with pytest.raises(ModelNotFoundError, match="unknown keys in config.json: hidden_sise"):
        SimVLM.from_pretrained(tmp_path / "simvlm")


def test_a_tokenizer_beside_a_native_config_loads_without_a_warning(tmp_path, capfd):
    """A trained BLIP-2's ``qformer/`` holds vlmkit's own ``config.json`` beside its tokenizer.
    ``AutoTokenizer`` alone would try that config's ``model_type``, fail, and warn that the
    checkpoint may not fit; ``load_tokenizer`` takes the class from ``tokenizer_config.json``."""
    from vlmkit.models.checkpoint import load_tokenizer
    from vlmkit.testing import make_bert_tokenizer

    make_bert_tokenizer().save_pretrained(tmp_path)
    write_config(tmp_path, Tiny(), model_type="vlmkit-qformer")
    capfd.readouterr()
    tokenizer = load_tokenizer(tmp_path)
    assert tokenizer("a red circle")["input_ids"] == make_bert_tokenizer()("a red circle")["input_ids"]
    assert "vlmkit-qformer" not in capfd.readouterr().err

