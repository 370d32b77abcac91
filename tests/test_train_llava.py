"""LLaVA-1.5 recipe on tiny parts: conversation data, the validation pass, label masking, both stages,
LoRA, the llava-hf export (transformers and ``vlmkit.load``), resume and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers
from numerics import DEEP, assert_close
from PIL import Image

import vlmkit
from vlmkit import GenerationOptions
from vlmkit.data import make_split
from vlmkit.data.conversation_encoding import IGNORE, encode_conversation, validate_conversations
from vlmkit.data.conversations import (
    BRIEF_INSTRUCTIONS,
    Conversation,
    Turn,
    read_conversations,
    stage1_records,
    stage2_records,
    write_conversations,
)
from vlmkit.errors import InputError
from vlmkit.models.llava import CAPTION_INSTRUCTION, VQA_SUFFIX
from vlmkit.models.llava_build import build_llava
from vlmkit.objectives import LlavaObjective
from vlmkit.testing import _llama_config, _vision_kwargs, make_clip_image_processor, make_llama_tokenizer
from vlmkit_cli.main import main
from vlmkit_train.llava import run_model, stage1_config, stage2_config, train_stage1, train_stage2

# -- tiny parts ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vision(tmp_path_factory):
    """A random CLIP vision tower (32x32 images, 8x8 patches: 16 image tokens) and its processor."""
    path = tmp_path_factory.mktemp("vision")
    torch.manual_seed(0)
    transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**_vision_kwargs())).save_pretrained(path)
    make_clip_image_processor().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """A tiny Llama LM with a byte-level BPE tokenizer that has no <image> token yet."""
    path = tmp_path_factory.mktemp("llama")
    tokenizer = make_llama_tokenizer()
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(_llama_config(tokenizer)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    """A tiny GPT-2 LM as `vlmkit train lm` makes them: corpus BPE, <|endoftext|> as bos/eos/pad,
    128 learned positions."""
    from vlmkit_train.lm import corpus_texts, train_tokenizer

    path = tmp_path_factory.mktemp("gpt2")
    tokenizer = train_tokenizer(corpus_texts(make_split(20, 0, "train")), 300)
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=len(tokenizer), n_positions=128, n_embd=32, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0, pad_token_id=0
    )
    transformers.GPT2LMHeadModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def parts(vision, llama):
    model, processor = build_llava(str(vision), str(llama))
    return model, processor


def _parts_args(vision: Path, lm: Path) -> list[str]:
    return [f"vision_tower={vision}", f"language_model={lm}"]


@pytest.fixture(scope="module")
def stage1_run(tmp_path_factory, vision, llama):
    out = tmp_path_factory.mktemp("stage1")
    train_stage1(stage1_config("tiny", _parts_args(vision, llama)), out)
    return out


def _state(path: Path) -> dict[str, torch.Tensor]:
    """The weights of an exported model, by the names the model class gives them."""
    model = transformers.LlavaForConditionalGeneration.from_pretrained(path)
    return {k: v.detach().contiguous() for k, v in model.state_dict().items()}


def _split(state: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    groups: dict[str, dict[str, torch.Tensor]] = {"tower": {}, "projector": {}, "lm": {}}
    for key, value in state.items():
        group = "tower" if "vision_tower" in key else "projector" if "multi_modal_projector" in key else "lm"
        groups[group][key] = value
    return groups


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# -- conversation files ----------------------------------------------------------------------------


def _write(tmp_path: Path, records, images=("a.png", "b.png")) -> Path:
    for name in images:
        Image.new("RGB", (8, 8), "red").save(tmp_path / name)
    path = tmp_path / "data.json"
    path.write_text(json.dumps(records))
    return path


GOOD = {"id": "g", "image": "a.png", "conversations": [{"from": "human", "value": "<image>\nq?"}, {"from": "gpt", "value": "a"}]}


@pytest.mark.parametrize(
    "record, message",
    [
        ({**GOOD, "id": None}, "'id' must be"),
        ({**GOOD, "image": 3}, "'image' must be"),
        ({**GOOD, "conversations": "hi"}, "'conversations' must be"),
        ({**GOOD, "conversations": [{"from": "human", "value": 1}, {"from": "gpt", "value": "a"}]}, "'value' must be a string"),
        ({**GOOD, "conversations": [{"from": "gpt", "value": "<image>"}, {"from": "human", "value": "a"}]}, "turn 0 is from 'gpt'"),
        ({**GOOD, "conversations": [{"from": "human", "value": "<image>"}, {"from": "human", "value": "a"}]}, "turn 1 is from 'human'"),
        ({**GOOD, "conversations": [{"from": "human", "value": "<image>\nq"}]}, "without an answer"),
        ({**GOOD, "image": "missing.png"}, "missing.png' not found"),
        ({**GOOD, "image": ["a.png", "b.png"]}, "1 <image> placeholder(s) for 2 image(s)"),
        ({**GOOD, "extra": 1}, "unknown field"),
        ("text", "expected an object"),
    ],
)
def test_reader_names_file_and_record(tmp_path, record, message):
    path = _write(tmp_path, [GOOD | {"id": "first"}, record])
    with pytest.raises(InputError) as error:
        read_conversations(path)
    text = str(error.value)
    assert message in text and str(path) in text and "record 1" in text and "\n" not in text


def test_reader_more_errors_and_round_trip(tmp_path):
    with pytest.raises(InputError, match="expected a JSON list"):
        read_conversations(_write(tmp_path, {"id": 1}))
    with pytest.raises(InputError, match="duplicate id 'g'"):
        read_conversations(_write(tmp_path, [GOOD, GOOD]))
    (tmp_path / "bad.json").write_text("[{")
    with pytest.raises(InputError, match="not valid JSON"):
        read_conversations(tmp_path / "bad.json")
    # Several images, several turns, ids as integers; placeholders move in front of the text.
    two = {"id": 7, "image": ["a.png", "b.png"], "conversations": [
        {"from": "human", "value": "Compare <image> and <image> please"}, {"from": "gpt", "value": "same"},
        {"from": "human", "value": "sure?"}, {"from": "gpt", "value": "yes"}]}
    path = _write(tmp_path, [GOOD, two])
    conversations = read_conversations(path)
    assert conversations[1].id == "7" and conversations[1].images == ("a.png", "b.png")
    assert conversations[1].messages()[0]["content"] == [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "Compare  and  please"}]
    assert [m["role"] for m in conversations[1].messages()] == ["user", "assistant", "user", "assistant"]
    write_conversations(conversations, tmp_path / "again.json")
    assert read_conversations(tmp_path / "again.json") == conversations
    # Placeholder mismatches can be kept for the validation pass to report.
    mismatch = _write(tmp_path, [{**GOOD, "image": ["a.png", "b.png"]}])
    assert len(read_conversations(mismatch, check_placeholders=False)) == 1


def test_builders_make_llava_records(tmp_path):
    examples = make_split(40, 0, "train", 32)
    first = stage1_records(examples, tmp_path / "images")
    assert len(first) == 40 and all(len(c.images) == 1 and len(c.turns) == 2 for c in first)
    assert all(c.turns[0].value.startswith("<image>\n") and c.turns[0].value[8:] in BRIEF_INSTRUCTIONS for c in first)
    assert all(c.turns[1].value in e.captions for c, e in zip(first, examples, strict=True))
    second = stage2_records(examples, tmp_path / "images", two_image_share=0.2)
    questions = [t.value for c in second for t in c.turns if t.role == "human"]
    assert all(q.endswith(VQA_SUFFIX) or q.endswith(CAPTION_INSTRUCTION) for q in questions)
    assert any(len(c.turns) >= 4 for c in second), "no multi-turn conversation"
    pairs = [c for c in second if len(c.images) == 2]
    assert pairs and all(c.placeholders == 2 for c in pairs)
    assert all(c.placeholders == len(c.images) for c in second)
    write_conversations(second, tmp_path / "s2.json")
    assert read_conversations(tmp_path / "s2.json", tmp_path / "images") == second


# -- tokenisation, labels, validation --------------------------------------------------------------


def _chat(answers: list[str], questions: list[str] | None = None, images: int = 1, id: str = "c") -> Conversation:
    questions = questions or [f"question {i}?" for i in range(len(answers))]
    turns = []
    for i, (q, a) in enumerate(zip(questions, answers, strict=True)):
        turns += [Turn("human", ("<image>\n" * images if i == 0 else "") + q), Turn("gpt", a)]
    return Conversation(id, tuple(f"{i}.png" for i in range(images)), tuple(turns))


def _spans(labels: list[int]) -> list[list[int]]:
    spans, current = [], []
    for label in labels:
        if label == IGNORE:
            if current:
                spans.append(current)
            current = []
        else:
            current.append(label)
    return spans + ([current] if current else [])


@pytest.mark.parametrize("lm", ["llama", "gpt2"])
def test_labels_cover_exactly_the_assistant_tokens(request, vision, lm):
    _, processor = build_llava(str(vision), str(request.getfixturevalue(lm)))
    answers = ["a red square", "two", "yes"]
    sample = encode_conversation(_chat(answers), processor, 16, 512)
    assert sample.problems == []
    eos = processor.tokenizer.eos_token
    decoded = [processor.tokenizer.decode(span) for span in _spans(sample.labels)]
    assert decoded == [f" {a}{eos}" for a in answers]
    labelled = [i for i, label in enumerate(sample.labels) if label != IGNORE]
    assert all(sample.labels[i] == sample.input_ids[i] for i in labelled)


@pytest.mark.parametrize("lm", ["llama", "gpt2"])
def test_training_tokens_equal_inference_prompt_plus_answer(request, vision, lm):
    """What training sees is what `processor.apply_chat_template(..., add_generation_prompt=True)`
    gives at inference, followed by the answer's tokens, which are the labelled ones."""
    _, processor = build_llava(str(vision), str(request.getfixturevalue(lm)))
    conversation = _chat(["blue", "a circle"], ["what colour is it?", "and the shape?"])
    sample = encode_conversation(conversation, processor, 16, 512)
    image = Image.new("RGB", (32, 32), "blue")
    messages = conversation.messages()
    full = processor.apply_chat_template(messages, tokenize=False)
    assert processor(images=[image], text=[full])["input_ids"][0] == sample.input_ids
    for index in (1, 3):
        prompt = processor.apply_chat_template(messages[:index], add_generation_prompt=True)
        prompt_ids = processor(images=[image], text=[prompt])["input_ids"][0]
        assert prompt.endswith("ASSISTANT:")
        assert sample.input_ids[: len(prompt_ids)] == prompt_ids
        assert sample.labels[len(prompt_ids) - 1] == IGNORE and sample.labels[len(prompt_ids)] != IGNORE
    assert sample.input_ids[-1] == processor.tokenizer.eos_token_id == sample.labels[-1]


def test_validation_pass_counts_each_problem(tmp_path, parts):
    _, processor = parts
    conversations = [
        _chat(["fine"], id="ok1"),
        _chat(["fine", "too"], id="ok2"),
        _chat(["a very long answer " * 12], id="long"),
        _chat(["a"], ["a very long question " * 12], id="long-question"),
        Conversation("two-placeholders", ("0.png",), (Turn("human", "<image>\n<image>\nq"), Turn("gpt", "a"))),
        _chat(["stop</s>early"], id="masking"),
        _chat(["", " "], id="empty"),
    ]
    samples, summary = validate_conversations(conversations, processor, 16, 128, tmp_path / "validation.json")
    assert summary["counts"] == {"truncated": 2, "masking": 1, "placeholders": 1, "unsupervised": 2}
    report = json.loads((tmp_path / "validation.json").read_text())
    assert {row["id"]: [p["kind"] for p in row["problems"]] for row in report["offending"]} == {
        "long": ["truncated"], "long-question": ["truncated", "unsupervised"], "two-placeholders": ["placeholders"], "masking": ["masking"], "empty": ["unsupervised"],
    }
    # A template whose generation prompt ends in a space splits the answer's first token: every sample.
    processor.chat_template = processor.chat_template.replace("{{ 'ASSISTANT:' }}", "{{ 'ASSISTANT: ' }}")
    try:
        _, broken = validate_conversations(conversations[:2], processor, 16, 128)
    finally:
        processor.chat_template = processor.chat_template.replace("{{ 'ASSISTANT: ' }}", "{{ 'ASSISTANT:' }}")
    assert broken["counts"]["masking"] == 2


def _bad_data(tmp_path: Path) -> Path:
    examples = make_split(6, 0, "train", 32)
    good = stage1_records(examples, tmp_path)
    long = Conversation("long", ("a.png",), (Turn("human", "<image>\nwhy?"), Turn("gpt", "because " * 40)))
    mismatch = Conversation("mismatch", ("a.png", "b.png"), (Turn("human", "<image>\nq"), Turn("gpt", "a")))
    masked = Conversation("masked", ("a.png",), (Turn("human", "<image>\nq"), Turn("gpt", "x</s>y")))
    empty = Conversation("empty", ("a.png",), (Turn("human", "<image>\nq"), Turn("gpt", "")))
    for name in ("a.png", "b.png"):
        Image.new("RGB", (32, 32), "green").save(tmp_path / name)
    return write_conversations([*good, long, mismatch, masked, empty], tmp_path / "bad.json")


def test_invalid_samples_refuse_or_skip(tmp_path, vision, llama):
    data = _bad_data(tmp_path)
    args = [*_parts_args(vision, llama), f"conversations={data}"]
    with pytest.raises(InputError) as error:
        train_stage1(stage1_config("tiny", args), tmp_path / "refused")
    message = str(error.value)
    assert "4 of 10 samples" in message and "truncated: 1, masking: 1, placeholders: 1, unsupervised: 1" in message
    assert (tmp_path / "refused" / "validation.json").is_file() and not (tmp_path / "refused" / "model").exists()
    result = train_stage1(stage1_config("tiny", [*args, "on_invalid=skip"]), tmp_path / "skipped")
    assert (result.final_record["samples"], result.final_record["skipped"], result.steps) == (6, 4, 4)
    assert json.loads((tmp_path / "skipped" / "validation.json").read_text())["invalid"] == 4


# -- the two stages --------------------------------------------------------------------------------


def test_objective_on_cached_features_equals_the_pixel_path(parts):
    """Training feeds projected tower states into the image-token positions itself (so features can
    be cached); the loss must be the model's own on pixels."""
    model, processor = parts
    conversation = _chat(["red", "one"], images=2)
    sample = encode_conversation(conversation, processor, 16, 512)
    images = [Image.new("RGB", (32, 32), "red"), Image.new("RGB", (32, 32), "blue")]
    pixels = processor.image_processor(images=images, return_tensors="pt")["pixel_values"]
    ids, labels = torch.tensor([sample.input_ids]), torch.tensor([sample.labels])
    with torch.no_grad():
        states = model.model.vision_tower(pixel_values=pixels, output_hidden_states=True).hidden_states[-2]
        ours = LlavaObjective(model)(ids, torch.ones_like(ids), labels, states)
        theirs = model(input_ids=ids, pixel_values=pixels, labels=labels).loss
    assert torch.allclose(ours, theirs, atol=1e-6)


def test_stage1_trains_only_the_projector(stage1_run, vision, llama):
    rows = [json.loads(line) for line in (stage1_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    fresh, _ = build_llava(str(vision), str(llama))
    before = _split({k: v.contiguous() for k, v in fresh.state_dict().items()})
    after = _split(_state(stage1_run / "model"))
    assert _equal(before["tower"], after["tower"]) and _equal(before["lm"], after["lm"])
    assert not _equal(before["projector"], after["projector"])
    assert (stage1_run / "loss.png").is_file() and (stage1_run / "data" / "conversations.json").is_file()


@pytest.mark.parametrize("lora", [0, 4])
def test_stage2_trains_the_lm_and_exports_what_it_trained(tmp_path, stage1_run, lora):
    out = tmp_path / "s2"
    result = train_stage2(stage2_config("tiny", [f"stage1={stage1_run}", f"lora_r={lora}"]), out)
    assert result.steps == 4 and result.final_record["skipped"] == 0
    before, after = _split(_state(stage1_run / "model")), _split(_state(out / "model"))
    assert _equal(before["tower"], after["tower"])
    assert not _equal(before["projector"], after["projector"]) and not _equal(before["lm"], after["lm"])
    changed = {k for k in before["lm"] if not torch.equal(before["lm"][k], after["lm"][k])}
    if lora:  # adapters on the linear layers only, merged: embeddings, norms and head untouched
        assert changed and all("proj" in k for k in changed)
    else:
        assert any("embed_tokens" in k for k in changed) and "lm_head.weight" in changed

    # THE EXPORT TEST: transformers reads back the model training ended with (adapters merged).
    trained, processor = run_model(out)
    exported = transformers.LlavaForConditionalGeneration.from_pretrained(out / "model").eval()
    loaded = transformers.AutoProcessor.from_pretrained(out / "model")
    assert loaded.chat_template == processor.chat_template and loaded.patch_size == 8
    assert loaded.vision_feature_select_strategy == "default" and loaded.num_additional_image_tokens == 1
    messages = _chat(["x"], ["what is this?"]).messages()[:1]
    text = loaded.apply_chat_template(messages, add_generation_prompt=True)
    inputs = loaded(images=[Image.new("RGB", (40, 30), "red")], text=[text], return_tensors="pt")
    with torch.no_grad():
        # Adapters unmerged (x W + x A B) against merged (x (W + A B)): every adapted layer rounds
        # differently, a whole pass's worth; an unmerged export is off by ~0.4.
        assert_close(trained(**inputs).logits, exported(**inputs).logits, rtol=DEEP, what="logits")

    model = vlmkit.load(out / "model")
    images = [e.image for e in make_split(2, 1, "test", 32)]
    assert all(isinstance(a, str) for a in model.ask(images, ["what colour is the circle?"] * 2, options=GenerationOptions(max_new_tokens=3)))
    assert all(isinstance(c, str) for c in model.caption(images, options=GenerationOptions(max_new_tokens=3)))
    reply = model.chat([{"role": "user", "content": [{"type": "image", "image": images[0]}, {"type": "text", "text": "hi"}]}], options=GenerationOptions(max_new_tokens=3))
    assert isinstance(reply, str)


def test_offline_gpt2_lm_both_stages_with_grown_positions(tmp_path, vision, gpt2):
    """The offline GPT-2 LM: head untied for LLaVA, 128 learned positions grown to stage 2's 256."""
    with pytest.raises(InputError, match="exceeds the LM's 128 learned positions"):
        train_stage1(stage1_config("tiny", [*_parts_args(vision, gpt2), "max_length=200"]), tmp_path / "too-long")
    train_stage1(stage1_config("tiny", _parts_args(vision, gpt2)), tmp_path / "s1")
    train_stage2(stage2_config("tiny", [f"stage1={tmp_path / 's1'}", "lora_r=2"]), tmp_path / "s2")
    exported = transformers.LlavaForConditionalGeneration.from_pretrained(tmp_path / "s2" / "model")
    assert exported.config.text_config.n_positions == 256
    trained, processor = run_model(tmp_path / "s2")
    text = processor.apply_chat_template(_chat(["x"]).messages()[:1], add_generation_prompt=True)
    inputs = processor(images=[Image.new("RGB", (32, 32))], text=[text], return_tensors="pt")
    with torch.no_grad():  # adapters unmerged against merged, as above
        assert_close(trained(**inputs).logits, exported.eval()(**inputs).logits, rtol=DEEP, what="logits")
    assert isinstance(vlmkit.load(tmp_path / "s2" / "model").ask([Image.new("RGB", (32, 32))], ["hm?"], options=GenerationOptions(max_new_tokens=2))[0], str)


def test_resume_equals_a_straight_run(tmp_path, stage1_run):
    config = stage2_config("tiny", [f"stage1={stage1_run}", "save_every=1"])
    train_stage2(config, tmp_path / "straight")
    train_stage2(config, tmp_path / "resumed", stop_after=2)
    assert not (tmp_path / "resumed" / "model").exists()
    train_stage2(config, tmp_path / "resumed", resume=True)
    assert _equal(_state(tmp_path / "straight" / "model"), _state(tmp_path / "resumed" / "model"))
    with pytest.raises(InputError, match="different config"):
        train_stage2(stage2_config("tiny", [f"stage1={stage1_run}", "lr=0.5"]), tmp_path / "resumed", resume=True)


def test_configs_refuse_bad_values(vision):
    with pytest.raises(InputError, match="unknown preset"):
        stage1_config("huge")
    with pytest.raises(InputError, match="lora_r"):
        stage2_config("tiny", ["lora_r=-1"])
    with pytest.raises(InputError, match="must be one of"):
        stage1_config("tiny", ["projector=mlp3x"])
    with pytest.raises(InputError, match="vision_tower and language_model are required"):
        train_stage1(stage1_config("tiny"), "/nonexistent/never-made")
    with pytest.raises(InputError, match="not a model directory"):
        build_llava(str(vision), "/nonexistent")


def test_linear_projector_exports_as_llava_hf(tmp_path, vision, llama):
    train_stage1(stage1_config("tiny", [*_parts_args(vision, llama), "projector=linear"]), tmp_path)
    exported = transformers.LlavaForConditionalGeneration.from_pretrained(tmp_path / "model")
    second = exported.model.multi_modal_projector.linear_2
    assert exported.config.projector_hidden_act == "linear"
    assert torch.equal(second.weight, torch.eye(second.weight.shape[0])) and not second.bias.any()


def test_cli_runs_both_stages(tmp_path, vision, llama, capsys):
    argv = ["train", "llava-stage1", "--preset", "tiny", "--out", str(tmp_path / "s1"),
            "--set", f"vision_tower={vision}", "--set", f"language_model={llama}"]
    assert main(argv) == 0, capsys.readouterr().err
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["steps"] == 4
    argv = ["train", "llava-stage2", "--preset", "tiny", "--out", str(tmp_path / "s2"), "--set", f"stage1={tmp_path / 's1'}"]
    assert main(argv) == 0, capsys.readouterr().err
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["steps"] == 4 and result["skipped"] == 0
    assert vlmkit.load(tmp_path / "s2" / "model").kind.architecture == "LlavaForConditionalGeneration"
