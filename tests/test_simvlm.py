"""SimVLM on tiny sizes: the prefix-LM mask and loss, checkpoints, batch invariance, the recipe."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import vlmkit
from vlmkit import GenerationOptions
from vlmkit.errors import InputError
from vlmkit.losses.prefix_lm import IGNORE_INDEX, prefix_lm_loss, prefix_lm_mask
from vlmkit.models.simvlm import SimVLM, SimVLMConfig, SimVLMTasks
from vlmkit_cli.main import main
from vlmkit_train.simvlm import make_batch, simvlm_config, train_simvlm

TEXTS = [
    "a large red circle", "a small blue square to the left of a green triangle",
    "question: what colour is the circle? answer: red", "question: how many shapes are there? answer: two",
]


def read_metrics(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def tiny_config(**changes) -> SimVLMConfig:
    fields = dict(vocab_size=40, hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32, dropout=0.0,
                  max_text_length=16, image_hidden_size=8, num_image_tokens=4)
    return SimVLMConfig(**{**fields, **changes})


def spread(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Re-draw the weights (all but the layer norms) with a wide spread, so greedy decoding meets no
    near-ties and different inputs get different outputs."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" not in name:
                parameter.normal_(0.0, 0.3)
    return model.eval()


def test_mask_is_bidirectional_over_the_prefix_and_causal_after():
    mask = prefix_lm_mask(torch.tensor([2, 0]), 4, key_padding=torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]]))
    expected_prefix = [[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 0]]  # last key is padding
    expected_causal = [[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]]
    assert mask[0].int().tolist() == expected_prefix
    assert mask[1].int().tolist() == expected_causal


def test_model_reads_the_prefix_both_ways_and_the_suffix_causally():
    model = spread(SimVLM(tiny_config()))
    image = torch.randn(1, 4, 8)
    ids = torch.tensor([[2, 5, 6, 7, 8, 9]])  # text prefix: bos, 5, 6; suffix: 7, 8, 9
    lengths = torch.tensor([3])

    def hidden(token_ids):
        with torch.no_grad():
            return model(image, token_ids, lengths).hidden_states[0]  # (P+T, D): image rows 0-3, text 4-9

    base = hidden(ids)
    later_prefix = ids.clone()
    later_prefix[0, 2] = 11  # the last prefix token
    changed = hidden(later_prefix)
    # Every prefix position (image tokens and the first text tokens) sees it: bidirectional.
    assert all(not torch.allclose(base[i], changed[i]) for i in range(0, 6))
    later_suffix = ids.clone()
    later_suffix[0, 4] = 12  # the second suffix token (text position 4, sequence position 8)
    changed = hidden(later_suffix)
    assert torch.equal(base[:8], changed[:8])  # nothing before it sees it: causal
    assert not torch.allclose(base[8], changed[8]) and not torch.allclose(base[9], changed[9])


def test_prefix_lm_loss_by_hand():
    # Row 0: prefix of 2 (bos, one token), then two suffix tokens. Position t predicts label t+1.
    logits = torch.tensor([[[0.0, -100.0], [0.0, 0.0], [0.0, math.log(3.0)], [5.0, 5.0]],
                           [[0.0, math.log(3.0)], [9.0, 0.0], [0.0, 0.0], [0.0, 0.0]]])
    labels = torch.tensor([[0, 1, 0, 1], [0, 1, IGNORE_INDEX, IGNORE_INDEX]])
    # Row 0 counts label 0 at 2 (logits [0, 0]: ln 2) and label 1 at 3 (p = 3/4: ln 4/3); the prefix
    # target at 1 would cost 100 if it counted. Row 1 (prefix of 1) counts label 1 at 1 (ln 4/3);
    # its padding carries nothing.
    loss = prefix_lm_loss(logits, labels, torch.tensor([2, 1]))
    expected = (math.log(2.0) + math.log(4 / 3) + math.log(4 / 3)) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # With no prefix beyond bos in row 0 the prefix token now counts, and costs its 100 nats.
    assert prefix_lm_loss(logits, labels, torch.tensor([1, 1])).item() > 20


def test_make_batch_layout():
    batch = make_batch([([5, 6], [7]), ([], [8, 9, 10])], bos=2, eos=3, pad=0, max_length=16)
    assert batch.input_ids.tolist() == [[2, 5, 6, 7, 3], [2, 8, 9, 10, 3]]
    assert batch.prefix_lengths.tolist() == [3, 1]
    batch = make_batch([([5], [7]), ([], [8, 9, 10, 11])], bos=2, eos=3, pad=0, max_length=5)
    assert batch.input_ids.tolist() == [[2, 5, 7, 3, 0], [2, 8, 9, 10, 11]] and batch.attention_mask[0].tolist() == [1, 1, 1, 1, 0]


def test_cached_decoding_equals_uncached():
    model = spread(SimVLM(tiny_config()), seed=1)
    image = torch.randn(3, 4, 8)
    prefixes = [[2, 5], [2, 6, 7, 8], [2, 9]]
    cached = model.generate(image, prefixes, max_new_tokens=8)
    assert cached == model.generate(image, prefixes, max_new_tokens=8, use_cache=False)
    assert any(len(tokens) > 1 for tokens in cached)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A widely spread tiny SimVLM over EfficientNet-Lite0 tokens, with a corpus tokenizer, saved."""
    from vlmkit_train.vocab import train_wordpiece

    tokenizer = train_wordpiece(TEXTS)
    config = SimVLMConfig(
        vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id, hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32,
        dropout=0.0, max_text_length=24,
    )
    model = spread(SimVLM(config), seed=2)
    path = tmp_path_factory.mktemp("simvlm") / "model"
    model.save_pretrained(path, tokenizer)
    return path, model, tokenizer


def test_save_load_round_trip_and_vlmkit_load(checkpoint, photos):
    from vlmkit.models.image_encoders import load_image_encoder

    path, model, tokenizer = checkpoint
    meta = json.loads((path / "config.json").read_text())
    assert meta["model_type"] == "vlmkit-simvlm" and meta["architectures"] == ["VlmkitSimVLM"]
    assert (path / "model.safetensors").is_file() and (path / "tokenizer.json").is_file()
    reloaded = SimVLM.from_pretrained(path)
    assert all(torch.equal(v, reloaded.state_dict()[k]) for k, v in model.state_dict().items())

    loaded = vlmkit.load(path)
    assert loaded.kind.architecture == "VlmkitSimVLM" and loaded.supports("ask") and not loaded.supports("embed")
    in_memory = SimVLMTasks("mem", model, tokenizer, load_image_encoder("efficientnet-lite0"), torch.device("cpu"), torch.float32)
    images = [str(photos["cat"]), str(photos["coffee"])]
    assert loaded.caption(images, options=GenerationOptions(max_new_tokens=6)) == in_memory.caption(images, options=GenerationOptions(max_new_tokens=6))
    assert loaded.ask(images, "what colour is the circle?", options=GenerationOptions(max_new_tokens=4)) == in_memory.ask(images, "what colour is the circle?", options=GenerationOptions(max_new_tokens=4))
    assert loaded.generate(images[0], "a large", options=GenerationOptions(max_new_tokens=4)) == in_memory.generate(images[0], "a large", options=GenerationOptions(max_new_tokens=4))
    with pytest.raises(InputError, match="greedily"):
        loaded.caption(images, options=GenerationOptions(num_beams=2))


def test_same_answers_at_batch_size_one_and_n(checkpoint, photos):
    path, _, _ = checkpoint
    model = vlmkit.load(path)
    paths = [str(photos[name]) for name in ("cat", "coffee", "astronaut", "rocket", "motorcycle")]
    questions = ["what colour is the circle?", "how many shapes are there?", "is there a star?",
                 "what is the large red object?", "how many shapes are there?"]
    answers = model.ask(paths, questions, options=GenerationOptions(max_new_tokens=5), batch_size=4)
    assert answers == model.ask(paths, questions, options=GenerationOptions(max_new_tokens=5), batch_size=1)
    assert len(set(answers)) > 1  # the spread weights answer differently per input
    captions = model.caption(paths + paths[:2], options=GenerationOptions(max_new_tokens=8), batch_size=3)
    assert captions == model.caption(paths + paths[:2], options=GenerationOptions(max_new_tokens=8), batch_size=1)
    assert captions[5:] == captions[:2]  # repeated images, same captions


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("simvlm_runs")
    argv = ["train", "simvlm", "--preset", "tiny", "--out", str(root / "cli"), "--set", f"features_dir={root / 'features'}",
            "--set", "save_every=3"]
    assert main(argv) == 0
    return root


def test_tiny_preset_through_the_cli(tiny_run, photos):
    rows = read_metrics(tiny_run / "cli" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6] and all(np.isfinite(r["loss"]) for r in rows)
    assert rows[-1]["loss"] < rows[0]["loss"]
    model = vlmkit.load(tiny_run / "cli" / "model")
    assert model.kind.architecture == "VlmkitSimVLM" and model.net.config.hidden_size == 32
    answers = model.ask(str(photos["cat"]), ["what colour is the circle?"], options=GenerationOptions(max_new_tokens=3))
    assert len(answers) == 1 and isinstance(answers[0], str)
    assert (tiny_run / "cli" / "loss.png").is_file() and (tiny_run / "cli" / "state" / "model.safetensors").is_file()


def test_resume_equals_a_straight_run(tiny_run):
    config = simvlm_config("tiny", [f"features_dir={tiny_run / 'features'}", "save_every=3"])
    train_simvlm(config, tiny_run / "cut", stop_after=3)
    assert not (tiny_run / "cut" / "model").exists()
    train_simvlm(config, tiny_run / "cut", resume=True)
    keys = ("step", "lr", "loss")
    straight = read_metrics(tiny_run / "cli" / "metrics.jsonl")
    resumed = read_metrics(tiny_run / "cut" / "metrics.jsonl")
    assert [[r[k] for k in keys] for r in resumed] == [[r[k] for k in keys] for r in straight]
    a, b = SimVLM.from_pretrained(tiny_run / "cli" / "model"), SimVLM.from_pretrained(tiny_run / "cut" / "model")
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())


def test_bad_overrides_raise_input_error(tmp_path):
    with pytest.raises(InputError, match="unknown config key"):
        simvlm_config("tiny", ["prefix_share=0.5"])
    with pytest.raises(InputError, match="expected int"):
        simvlm_config("tiny", ["hidden_size=wide"])
    with pytest.raises(InputError, match="qa_fraction"):
        simvlm_config("tiny", ["qa_fraction=1.5"])
    with pytest.raises(InputError, match="multiple of num_heads"):
        simvlm_config("tiny", ["hidden_size=30", "num_heads=4"])
    with pytest.raises(InputError, match="must be one of"):
        simvlm_config("tiny", ["data=coco"])
    with pytest.raises(InputError, match="unknown preset"):
        simvlm_config("huge")
    with pytest.raises(InputError, match="nothing to resume"):
        train_simvlm(simvlm_config("tiny"), tmp_path / "new", resume=True)
    with pytest.raises(InputError, match="num_heads"):
        tiny_config(hidden_size=15, num_heads=2)
    assert simvlm_config("tiny", ["empty_prefix=0.5"]).empty_prefix == 0.5
