"""VLLaVO (vlmkit.models.vllavo, vlmkit_train.vllavo): descriptions, the question and its answer-only
labels, likelihood ranking against generation, LoRA, exact resume, the UDA round, and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from safetensors.torch import load_file

from vlmkit import testing
from vlmkit.errors import InputError
from vlmkit.models.vllavo import (
    MASK_WORD,
    Describer,
    DescriberConfig,
    PromptEncoder,
    class_log_likelihoods,
    edit_distance,
    format_description,
    generate_answers,
    load_lm,
    mask_class_words,
    question,
    snap_to_class,
)
from vlmkit_cli.main import main
from vlmkit_train.vllavo import Described, lora_model, train_vllavo, vllavo_config

CLASSES = ["red", "blue", "green"]
_RGB = {"red": (220, 30, 30), "blue": (30, 70, 220), "green": (30, 160, 50)}


@pytest.fixture(scope="module")
def parts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny CLIP (tagger), BLIP (captioner) and OPT (LM) checkpoints, and a class folder of 3 x 4 images."""
    root = tmp_path_factory.mktemp("vllavo")
    for cls in CLASSES:
        (root / "data" / cls).mkdir(parents=True)
        for i in range(4):
            image = Image.new("RGB", (64, 64), (240, 240, 240))
            ImageDraw.Draw(image).ellipse((8 + 2 * i, 8, 50, 52), fill=_RGB[cls])
            image.save(root / "data" / cls / f"{i}.png")
    return {
        "clip": testing.build_clip(root / "clip"), "blip": testing.build_blip_caption(root / "blip"),
        "lm": testing.build_frozen_lm(root / "lm"), "data": root / "data",
    }


def _overrides(parts: dict[str, Path], *extra: str) -> list[str]:
    return [f"data.spec=imagenet:{parts['data']}", f"language_model={parts['lm']}", f"describer.tagger={parts['clip']}",
            f"describer.captioner={parts['blip']}", "describer.max_caption_tokens=6", *extra]


def _rows() -> list[Described]:
    """Descriptions that name their class: a task a tiny LM learns in a hundred steps."""
    return [Described(f"{c}/{i}", f"Tags: {c}, shape.\nAttributes: {c}.\nCaptions: a {c} thing.", c) for c in CLASSES for i in range(4)]


# -- describing ------------------------------------------------------------------------------------


def test_description_has_the_papers_sections():
    assert format_description(["star", "starfish"], ["yellow"], ["a photo of a star.", "a yellow star", ""]) == (
        "Tags: star, starfish.\nAttributes: yellow.\nCaptions: a photo of a star. a yellow star."
    )
    assert format_description([], [], []) == "Tags: none.\nAttributes: none.\nCaptions: none."


def test_describer_ranks_tags_by_cosine_and_keeps_only_those_above_the_floor(parts):
    import vlmkit

    tagger, captioner = vlmkit.load(parts["clip"]), vlmkit.load(parts["blip"])
    image = parts["data"] / "red" / "0.png"
    config = DescriberConfig(top_k=4, min_similarity=-1.0, sampled_captions=2, max_caption_tokens=6)
    describer = Describer(config, tagger, captioner)
    described = describer.describe([image])[0]
    # The same ranking computed here from the tagger's embeddings, independently of the describer.
    cosines = tagger.embed_images([image])[0] @ tagger.label_embeddings(list(describer.vocabularies["tags"])).T
    assert described.tags == tuple(describer.vocabularies["tags"][i] for i in np.argsort(-cosines, kind="stable")[:4])
    floor = float(np.sort(cosines)[-2])  # only the best two clear it
    fewer = Describer(DescriberConfig(top_k=4, min_similarity=floor, sampled_captions=0, max_caption_tokens=6), tagger, captioner)
    assert fewer.describe([image])[0].tags == described.tags[:2]
    beam = captioner.caption([image], options=vlmkit.GenerationOptions(max_new_tokens=6, num_beams=3))[0]
    assert described.captions[0] == beam and 1 <= len(described.captions) <= 3
    assert describer.describe([image])[0] == described  # sampled captions are seeded


def test_a_describer_that_cannot_embed_or_caption_says_which_part_is_missing(parts):
    import vlmkit

    tagger, captioner = vlmkit.load(parts["clip"]), vlmkit.load(parts["blip"])
    with pytest.raises(InputError, match=r"captioner .* cannot caption; models that can: .*blip"):
        Describer(DescriberConfig(), tagger, tagger)
    with pytest.raises(InputError, match=r"tagger .* cannot embed images and texts.*models that can: .*clip"):
        Describer(DescriberConfig(), captioner, captioner)
    with pytest.raises(InputError, match="word list"):
        Describer(DescriberConfig(tags="/no/such/list.txt"), tagger, captioner)


# -- the question ----------------------------------------------------------------------------------


def test_question_and_answer_only_labels_decode_to_the_template(parts):
    _, tokenizer = load_lm(str(parts["lm"]))
    encoder = PromptEncoder(tokenizer, CLASSES, 128)
    description = "Tags: circle.\nAttributes: red.\nCaptions: a red circle."
    ids, labels = encoder.training_row(description, "blue")
    assert len(ids) == len(labels)
    text = tokenizer.decode(ids, skip_special_tokens=False)
    assert text == tokenizer.bos_token + question(description, CLASSES) + " blue" + tokenizer.eos_token
    assert question(description, CLASSES).endswith(
        "a red circle. According to the information, choose the most similar category from the given options: red, blue, "
        "green. ### Answer:"
    )
    answer = [t for t in labels if t != -100]
    assert tokenizer.decode(answer, skip_special_tokens=False) == " blue" + tokenizer.eos_token
    assert labels[: len(labels) - len(answer)] == [-100] * (len(labels) - len(answer))  # nothing before the answer


def test_a_long_description_is_cut_never_the_options_or_the_answer(parts):
    _, tokenizer = load_lm(str(parts["lm"]))
    encoder = PromptEncoder(tokenizer, CLASSES, 110)
    ids, labels = encoder.training_row("word " * 200, "green")
    assert len(ids) == 110 - (max(len(a) for a in encoder.answers) + 1) + len(encoder.answers[2]) + 1  # filled to the room left
    text = tokenizer.decode(ids, skip_special_tokens=False)
    assert text.endswith("given options: red, blue, green. ### Answer: green" + tokenizer.eos_token)
    assert encoder.truncated == 1
    encoder.training_row("short", "red")
    assert encoder.truncated == 1
    with pytest.raises(InputError, match="positions"):
        PromptEncoder(tokenizer, CLASSES, 80)


def test_class_lists_and_masking():
    for bad, message in ((["one"], "at least two"), (["a", "b", "a"], "more than once"), ("a,b", "not one string")):
        with pytest.raises(InputError, match=message):
            PromptEncoder(None, bad, 100)
    masked = mask_class_words("a star, two Stars and a starfish", ["star"], 1.0, np.random.default_rng(0))
    assert masked == f"a {MASK_WORD}, two {MASK_WORD} and a starfish"
    assert mask_class_words("a star", ["star"], 0.0, np.random.default_rng(0)) == "a star"
    assert edit_distance("kitten", "sitting") == 3
    assert snap_to_class(" Gren.", CLASSES) == "green"


def test_likelihoods_do_not_depend_on_the_batch(parts):
    lm, tokenizer = load_lm(str(parts["lm"]))
    encoder = PromptEncoder(tokenizer, CLASSES, 128)
    prompts = [encoder.prompt(r.description) for r in _rows()[::3]]
    one = class_log_likelihoods(lm, encoder, prompts, batch_size=1)
    many = class_log_likelihoods(lm, encoder, prompts, batch_size=4)
    # Right padding never reaches a real position under the causal mask; only float32 summation
    # order differs between batch shapes (1e-6 relative on values of about 10 nats).
    np.testing.assert_allclose(many, one, rtol=1e-4)
    # One answer's score by hand: the log-probabilities of its tokens and eos after the prompt.
    ids = torch.tensor([[*prompts[0], *encoder.answers[1], encoder.eos]])
    logp = torch.log_softmax(lm(input_ids=ids).logits[0, :-1].float(), dim=-1)
    start = len(prompts[0]) - 1
    by_hand = sum(float(logp[start + k, t].detach()) for k, t in enumerate([*encoder.answers[1], encoder.eos]))
    assert one[0, 1] == pytest.approx(by_hand, rel=1e-4)


# -- training --------------------------------------------------------------------------------------


def test_ranking_equals_generation_once_the_lm_has_learnt_the_answers(parts, tmp_path):
    config = vllavo_config("tiny", _overrides(parts, "max_steps=150", "lr=2e-2", "batch_size=6"))
    result = train_vllavo(config, tmp_path / "run", prepared=(_rows(), CLASSES, {}))
    from peft import PeftModel

    base, tokenizer = load_lm(str(parts["lm"]))
    lm = PeftModel.from_pretrained(base, result.model_dir / "adapter").eval()
    encoder = PromptEncoder(tokenizer, CLASSES, 128)
    prompts = [encoder.prompt(r.description) for r in _rows()]
    ranked = [CLASSES[i] for i in class_log_likelihoods(lm, encoder, prompts).argmax(axis=1)]
    generated = generate_answers(lm, encoder, prompts)
    defined = [i for i, g in enumerate(generated) if g in CLASSES]  # the generation path gave a class outright
    assert len(defined) >= len(prompts) // 2, generated
    assert [ranked[i] for i in defined] == [generated[i] for i in defined]
    assert ranked == [r.label for r in _rows()]


def test_lora_trains_only_the_adapters(parts):
    config = vllavo_config("tiny", _overrides(parts))
    lm, tokenizer = load_lm(str(parts["lm"]))
    torch.manual_seed(0)
    model = lora_model(config, lm)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    encoder = PromptEncoder(tokenizer, CLASSES, 128)
    ids, labels = (torch.tensor([t]) for t in encoder.training_row(_rows()[0].description, "red"))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        optimizer.zero_grad()
        model(input_ids=ids, labels=labels).loss.backward()
        optimizer.step()
    after = dict(model.named_parameters())
    assert all(torch.equal(after[n], before[n]) for n in before if n not in trainable)  # untouched: bit-equal
    assert any(not torch.equal(after[n], before[n]) for n in trainable if "lora_B" in n)


def test_resume_equals_a_straight_run_and_the_export_holds_only_the_adapter(parts, tmp_path):
    config = vllavo_config("tiny", _overrides(parts, "max_steps=6"))
    straight = train_vllavo(config, tmp_path / "straight")
    train_vllavo(config, tmp_path / "resumed", stop_after=3)
    resumed = train_vllavo(config, tmp_path / "resumed", resume=True)
    a = load_file(str(straight.model_dir / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(resumed.model_dir / "adapter" / "adapter_model.safetensors"))
    assert a and all("lora_" in k for k in a)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # the same computation, step for step
    state = load_file(str(tmp_path / "straight" / "state" / "model.safetensors"))
    assert state and all("lora_" in k for k in state)  # the resumable state holds the adapters alone
    rows = [json.loads(line) for line in (tmp_path / "straight" / "descriptions.jsonl").read_text().splitlines()]
    assert [r["label"] for r in rows] == [c for c in sorted(CLASSES) for _ in range(4)]
    assert all(r["description"].startswith("Tags: ") for r in rows)


def test_the_uda_round_reads_target_images_without_their_labels(parts, tmp_path, monkeypatch):
    import vlmkit_train.vllavo as recipe

    source = train_vllavo(vllavo_config("tiny", _overrides(parts)), tmp_path / "source")
    seen: list[list] = []
    describe = recipe.describe_examples

    def spy(describer, examples, **kwargs):
        seen.append(list(examples))
        return describe(describer, examples, **kwargs)

    monkeypatch.setattr(recipe, "describe_examples", spy)
    config = vllavo_config("tiny", _overrides(parts, f"target=imagenet:{parts['data']}", f"source_model={source.model_dir}"))
    result = train_vllavo(config, tmp_path / "uda")
    assert len(seen) == 2  # the source images, then the target's
    assert all(e.label == "" and not e.captions for e in seen[1]) and len(seen[1]) == 12
    rows = [json.loads(line) for line in (tmp_path / "uda" / "descriptions.jsonl").read_text().splitlines()]
    target = [r for r in rows if r["domain"] == "target"]
    assert [r["id"] for r in target] == [e.id for e in seen[1]]
    assert all(r["label"] in CLASSES and 1 / 3 <= r["confidence"] <= 1 for r in target)
    assert result.final_record["pseudo_labelled"] == 12
    high = max(r["confidence"] for r in target)
    kept = train_vllavo(vllavo_config("tiny", [*config_overrides(config), f"threshold={high}"]), tmp_path / "uda-kept")
    assert kept.final_record["pseudo_labelled"] == sum(r["confidence"] >= high for r in target)


def config_overrides(config) -> list[str]:
    return [f"target={config.target}", f"source_model={config.source_model}", f"data.spec={config.data.spec}",
            f"language_model={config.language_model}", f"describer.tagger={config.describer.tagger}",
            f"describer.captioner={config.describer.captioner}", "describer.max_caption_tokens=6"]


def test_bad_configs_are_one_line_errors(parts, tmp_path):
    for extra, message in (
        (["language_model="], "set language_model"),
        ([f"target=imagenet:{parts['data']}"], "needs both target"),
        (["classes=red"], "at least two"),
        (["classes=red,blue"], "not among classes"),
        (["mask_rate=2"], "mask_rate"),
    ):
        with pytest.raises(InputError, match=message):
            train_vllavo(vllavo_config("tiny", _overrides(parts, *extra)), tmp_path / "bad")
    assert not (tmp_path / "bad").exists()  # refused before the run directory is made


# -- the command line ------------------------------------------------------------------------------


def test_classify_and_describe_an_exported_checkpoint_on_the_command_line(parts, tmp_path, capsys):
    assert main(["train", "vllavo", "--preset", "tiny", "--out", str(tmp_path / "run"), *sum((["--set", o] for o in _overrides(parts)), [])]) == 0
    said = capsys.readouterr()
    assert "vlmkit classify IMAGE" in said.out + said.err
    model = tmp_path / "run" / "model"
    images = [str(parts["data"] / c / "0.png") for c in CLASSES]
    assert main(["classify", *images, "--labels", "red,blue,green", "--model", str(model), "--json"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["image"] for r in records] == images
    for record in records:
        assert sorted(x["label"] for x in record["labels"]) == sorted(CLASSES)
        assert sum(x["score"] for x in record["labels"]) == pytest.approx(1.0, rel=1e-6)  # a softmax over the options
    assert main(["describe", images[0], "--model", str(model)]) == 0
    assert capsys.readouterr().out.startswith("Tags: ")
    assert main(["classify", images[0], "--labels", "red", "--model", str(model)]) == 1
    assert "at least two" in capsys.readouterr().err
    assert main(["describe", images[0], "--model", str(parts["clip"])]) == 1
    assert "cannot caption" in capsys.readouterr().err
