"""InstructBLIP on tiny sizes: the instruction-aware Q-Former, the checkpoint, the template split and
`vlmkit train instructblip` (stage 1 -> instruction tuning through a frozen LM -> `vlmkit.load`)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import transformers
from numerics import DEEP, assert_close

import vlmkit
from vlmkit import GenerationOptions
from vlmkit.data import load_easy_vqa, make_split
from vlmkit.data.instructions import (
    HELD_IN_TASKS,
    HELD_IN_TEMPLATES,
    HELD_OUT_TASKS,
    HELD_OUT_TEMPLATES,
    TASK_TYPES,
    Templates,
    instruction_pairs,
    sample_instruction,
    task_type,
)
from vlmkit.errors import ModelNotFoundError, UnsupportedTaskError
from vlmkit.models.blip2_native import Blip2Config, NativeBlip2
from vlmkit.models.qformer import QFormer, QFormerConfig, _blip2_names
from vlmkit.testing import build_frozen_lm
from vlmkit_cli.main import main
from vlmkit_train.instruct import instruct_config, train_instruct
from vlmkit_train.stage1 import stage1_config, train_stage1
from vlmkit_train.vocab import train_wordpiece

WIDTH = 1280  # EfficientNet-Lite0's feature width, the encoder a NativeBlip2 loads


@pytest.fixture(scope="module")
def frozen_lm(tmp_path_factory):
    """A tiny OPT language model with a real byte-level BPE tokenizer, saved like a hub LM."""
    return build_frozen_lm(tmp_path_factory.mktemp("lm"))


@pytest.fixture(scope="module")
def stage1_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("stage1")
    train_stage1(stage1_config("tiny"), out)
    return out


def _tiny_qformer(**overrides) -> QFormer:
    torch.manual_seed(0)
    config = QFormerConfig(hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64, vocab_size=200,
                           num_query_tokens=4, encoder_hidden_size=WIDTH, embed_dim=16, dec_token_id=5, **overrides)
    return QFormer(config).eval()


def _corpus_tokenizer():
    texts = [p.instruction for e in make_split(8, 0, "train") for p in instruction_pairs(e, HELD_IN_TEMPLATES, TASK_TYPES)]
    return train_wordpiece(texts, vocab_size=400)


def _net(frozen_lm, aware: bool) -> NativeBlip2:
    tokenizer = _corpus_tokenizer()
    torch.manual_seed(0)
    qformer = QFormer(QFormerConfig(hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64, vocab_size=len(tokenizer),
                                    num_query_tokens=4, encoder_hidden_size=WIDTH, embed_dim=16, dec_token_id=tokenizer.bos_token_id,
                                    image_layer_norm=True))
    config = Blip2Config(language_model=str(frozen_lm), instruction_aware=aware, caption_prompt=HELD_IN_TEMPLATES.caption[0],
                         vqa_prompt=HELD_IN_TEMPLATES.vqa[0], max_instruction_length=24)
    return NativeBlip2.from_parts(config, qformer, lm_path=frozen_lm, qformer_tokenizer=tokenizer).eval()


# ---- the instruction-aware Q-Former ------------------------------------------------------------


def test_instructed_features_depend_on_the_instruction():
    qformer = _tiny_qformer()
    image = torch.randn(2, 9, WIDTH)
    ids = torch.tensor([[2, 10, 11, 12, 3], [2, 10, 11, 12, 3]])
    other = torch.tensor([[2, 40, 41, 42, 3], [2, 40, 41, 42, 3]])
    with torch.no_grad():
        out = qformer.encode_instructed(image, ids).last_hidden_state
        changed = qformer.encode_instructed(image, other).last_hidden_state
        plain = qformer.encode_image(image).last_hidden_state
        # Padding the instruction (masked as a key) changes nothing.
        padded = qformer.encode_instructed(image, torch.cat([ids, torch.zeros(2, 3, dtype=torch.long)], 1),
                                           torch.cat([torch.ones(2, 5), torch.zeros(2, 3)], 1).long()).last_hidden_state
        multimodal = qformer.forward_multimodal(image, ids).query_states
    assert out.shape == (2, 4, 32)
    assert (out - changed).abs().max() > 1e-3 and (out - plain).abs().max() > 1e-3
    # Three masked keys more: other shapes in every self-attention, so the pass may round differently.
    assert_close(padded, out, rtol=DEEP, what="padded instruction")
    torch.testing.assert_close(out, multimodal, atol=0, rtol=0)


def test_instructed_features_match_transformers_instructblip_qformer():
    """Our instruction-aware pass is InstructBLIP's: same weights, same query outputs as
    transformers' InstructBlipQFormerModel (queries + instruction, image cross-attention)."""
    qformer = _tiny_qformer()
    hf_config = transformers.InstructBlipQFormerConfig(
        vocab_size=200, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        encoder_hidden_size=WIDTH, cross_attention_frequency=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    torch.manual_seed(1)
    hf = transformers.InstructBlipQFormerModel(hf_config).eval()
    theirs = hf.state_dict()
    names = _blip2_names(qformer.config)
    with torch.no_grad():
        for ours, name in names.items():
            name = name.replace("qformer.layernorm", "embeddings.layernorm").removeprefix("qformer.")
            if name in theirs:
                qformer.state_dict()[ours].copy_(theirs[name])
    image = torch.randn(2, 9, WIDTH)
    ids = torch.tensor([[2, 10, 11, 12, 3], [2, 40, 41, 3, 0]])
    mask = (ids != 0).long()
    with torch.no_grad():
        ours_out = qformer.encode_instructed(image, ids, mask).last_hidden_state  # (B, Q, D)
        queries = qformer.query_tokens.expand(2, -1, -1)
        full_mask = torch.cat([torch.ones(2, 4, dtype=torch.long), mask], dim=1)
        hf_out = hf(input_ids=ids, attention_mask=full_mask, query_embeds=queries, encoder_hidden_states=image).last_hidden_state
    torch.testing.assert_close(ours_out, hf_out[:, :4], atol=2e-5, rtol=1e-4)


def test_plain_blip2_ignores_instructions(frozen_lm):
    net = _net(frozen_lm, aware=False)
    aware = _net(frozen_lm, aware=True)
    aware.load_state_dict(net.state_dict())
    features = torch.randn(2, 9, WIDTH)
    with torch.no_grad():
        a = net.visual_prompts(features, ["Question: what colour is the circle? Answer:", "a photo of"])
        b = net.visual_prompts(features, ["Q: how many shapes are there? A:", "Write a caption for this image:"])
        reference = net.projection(net.qformer.encode_image(features).last_hidden_state)
        c = aware.visual_prompts(features, ["Question: what colour is the circle? Answer:", "a photo of"])
        d = aware.visual_prompts(features, ["Q: how many shapes are there? A:", "Write a caption for this image:"])
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    torch.testing.assert_close(a, reference, atol=0, rtol=0)
    assert (c - d).abs().max() > 1e-4 and (c - a).abs().max() > 1e-4
    with pytest.raises(vlmkit.InputError):
        aware.visual_prompts(features)


# ---- checkpoints --------------------------------------------------------------------------------


def test_instructblip_checkpoint_round_trips(tmp_path, frozen_lm, photos):
    net = _net(frozen_lm, aware=True)
    with torch.no_grad():  # move the projection off its start so that a lost weight would show
        net.projection.weight.mul_(3.0)
    net.save_pretrained(tmp_path / "ib")
    meta = json.loads((tmp_path / "ib" / "config.json").read_text())
    assert meta["model_type"] == "vlmkit-instructblip" and meta["architectures"] == ["VlmkitInstructBlip"]
    assert meta["instruction_aware"] is True and meta["vqa_prompt"] in HELD_IN_TEMPLATES.vqa
    assert meta["caption_prompt"] in HELD_IN_TEMPLATES.caption

    again = NativeBlip2.from_pretrained(tmp_path / "ib")
    features = torch.randn(3, 9, WIDTH)
    prompts = ["a photo of", "Question: what colour is the circle? Answer:", "Q: is there a star? A:"]
    targets = ["a red circle", "red", "no"]
    with torch.no_grad():
        assert float(net(features, prompts, targets)) == pytest.approx(float(again(features, prompts, targets)), abs=1e-6)
    assert net.generate(features, prompts, max_new_tokens=4) == again.generate(features, prompts, max_new_tokens=4)

    model = vlmkit.load(tmp_path / "ib")
    assert model.kind.architecture == "VlmkitInstructBlip" and model.tasks == {"caption", "ask", "generate"}
    paths = [str(photos["cat"]), str(photos["coffee"])]
    images = model._features(paths, 2)
    with torch.no_grad():
        expected = net.generate(images, ["Question: what colour is it? Answer:", "Question: what is it? Answer:"], max_new_tokens=3)
        captions = net.generate(images, [HELD_IN_TEMPLATES.caption[0]] * 2, max_new_tokens=4)
    assert model.ask(paths, ["what colour is it?", "what is it?"], options=GenerationOptions(max_new_tokens=3)) == expected
    assert model.caption(paths, options=GenerationOptions(max_new_tokens=4)) == captions == model.caption(paths, options=GenerationOptions(max_new_tokens=4), batch_size=1)
    with pytest.raises(UnsupportedTaskError):
        model.embed_images(paths)
    with pytest.raises(UnsupportedTaskError):
        model.match(paths[0], "a cat")


def test_blip2_checkpoints_are_unchanged(tmp_path, frozen_lm):
    net = _net(frozen_lm, aware=False)
    net.save_pretrained(tmp_path / "b2")
    meta = json.loads((tmp_path / "b2" / "config.json").read_text())
    assert meta["model_type"] == "vlmkit-blip2" and meta["architectures"] == ["VlmkitBlip2"]
    assert "instruction_aware" not in meta and "max_instruction_length" not in meta
    model = vlmkit.load(tmp_path / "b2")
    assert model.kind.architecture == "VlmkitBlip2" and not model.net.config.instruction_aware
    # A config that contradicts its model type is refused.
    (tmp_path / "b2" / "config.json").write_text(json.dumps({**meta, "instruction_aware": True}))
    with pytest.raises(ModelNotFoundError):
        NativeBlip2.from_pretrained(tmp_path / "b2")


# ---- templates -----------------------------------------------------------------------------------


def test_template_split_is_disjoint_and_covers_the_tasks():
    assert not set(HELD_IN_TEMPLATES.all()) & set(HELD_OUT_TEMPLATES.all())
    assert not set(HELD_IN_TASKS) & set(HELD_OUT_TASKS) and set(HELD_IN_TASKS) | set(HELD_OUT_TASKS) == set(TASK_TYPES)
    with pytest.raises(vlmkit.InputError):
        Templates(caption=("a photo of",), vqa=("no slot here",))

    examples = make_split(20, 0, "train") + load_easy_vqa("train")[:20]
    kinds = {task_type(q, a) for e in examples for q, a in e.qa}
    assert kinds == {"colour", "shape", "size", "count", "yes/no"}
    assert task_type("what color is the shape?", "blue") == "colour"
    assert task_type("how many small shapes are there?", "two") == "count"
    assert task_type("is the circle above the star?", "no") == "yes/no"

    rng = np.random.default_rng(0)
    drawn = [sample_instruction(e, rng, qa_fraction=0.7) for e in examples for _ in range(10)]
    assert {p.task for p in drawn} == set(HELD_IN_TASKS)
    assert {p.template for p in drawn} == set(HELD_IN_TEMPLATES.all())
    held_out = instruction_pairs(examples[0], HELD_OUT_TEMPLATES, HELD_OUT_TASKS)
    assert held_out and all(p.task == "count" and p.template in HELD_OUT_TEMPLATES.vqa for p in held_out)
    with pytest.raises(vlmkit.InputError):
        instruction_pairs(examples[0], HELD_IN_TEMPLATES, ["counting"])


# ---- the recipe ----------------------------------------------------------------------------------


def test_instructblip_trains_through_the_cli(tmp_path, frozen_lm, stage1_run, photos, capsys):
    argv = ["train", "instructblip", "--preset", "tiny", "--out", str(tmp_path / "ib"),
            "--set", f"stage1={stage1_run}", "--set", f"language_model={frozen_lm}"]
    assert main(argv) == 0, capsys.readouterr().err
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["steps"] == 6 and np.isfinite(result["final_losses"]["loss"])
    rows = [json.loads(line) for line in (tmp_path / "ib" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6] and all(np.isfinite(r["loss"]) for r in rows)
    model = vlmkit.load(tmp_path / "ib" / "model")
    assert model.kind.architecture == "VlmkitInstructBlip"
    assert model.net.config.caption_prompt == HELD_IN_TEMPLATES.caption[0] and model.net.config.vqa_prompt == HELD_IN_TEMPLATES.vqa[0]
    stage1 = QFormer.from_pretrained(stage1_run / "model" / "qformer").state_dict()
    assert not torch.equal(model.net.qformer.state_dict()["query_tokens"], stage1["query_tokens"])
    paths = [str(photos["cat"]), str(photos["astronaut"])]
    answers = model.ask(paths, ["what colour is the circle?", "how many shapes are there?"], options=GenerationOptions(max_new_tokens=3))
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)

    # The ablation: the same mixture with a plain BLIP-2 Q-Former is a BLIP-2 checkpoint.
    argv = [*argv[:5], str(tmp_path / "plain"), *argv[6:], "--set", "instruction_aware=false", "--set", "max_steps=2"]
    assert main(argv) == 0, capsys.readouterr().err
    assert vlmkit.load(tmp_path / "plain" / "model").kind.architecture == "VlmkitBlip2"


def test_instructblip_resume_is_exact(tmp_path, frozen_lm):
    """From a fresh Q-Former (no stage 1): a run cut after 3 steps and resumed equals a straight one."""
    config = instruct_config("tiny", [f"language_model={frozen_lm}", "save_every=3"])
    train_instruct(config, tmp_path / "straight")
    train_instruct(config, tmp_path / "cut", stop_after=3)
    assert not (tmp_path / "cut" / "model").exists()
    train_instruct(config, tmp_path / "cut", resume=True)
    read = lambda p: [(r["step"], r["loss"]) for r in map(json.loads, (p / "metrics.jsonl").read_text().splitlines())]  # noqa: E731
    assert read(tmp_path / "cut") == read(tmp_path / "straight")


@pytest.mark.parametrize(
    "overrides",
    [["no_such_key=1"], ["instruction_aware=maybe"], ["qa_fraction=1.5"], ["max_instruction_length=0"],
     ["tokenizer=corpus", "qformer.init=minilm"], ["data=coco"]],
)
def test_bad_overrides_raise_input_error(overrides):
    with pytest.raises(vlmkit.InputError):
        instruct_config("tiny", overrides)


def test_language_model_is_required(tmp_path):
    with pytest.raises(vlmkit.InputError):
        train_instruct(instruct_config("tiny"), tmp_path)
    with pytest.raises(vlmkit.InputError):
        instruct_config("no-such-preset")
