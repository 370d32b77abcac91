"""`vlmkit train lm` on the tiny preset: the tokenizer, the corpus, outputs that load like a hub LM,
checked overrides, and exact resume."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from vlmkit.data import make_split
from vlmkit.errors import InputError
from vlmkit_cli.main import main
from vlmkit_train.lm import (
    QA_TEMPLATE,
    corpus_texts,
    lm_config,
    split_heldout,
    train_lm,
    train_tokenizer,
    training_texts,
)

QUESTION = "Question: what colour is the circle? Answer: red"


def read_metrics(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def texts():
    return corpus_texts(make_split(20, 0, "train"))


def test_corpus_is_what_stage_2_asks_for():
    examples = make_split(3, 0, "train")
    texts = corpus_texts(examples)
    assert QA_TEMPLATE.format(question="q?", answer="a") == "Question: q? Answer: a"
    assert len(texts) == sum(len(e.captions) + len(e.qa) for e in examples)
    for example in examples:
        assert all(f"a photo of {c}" in texts for c in example.captions)
        assert all(f"Question: {q} Answer: {a}" in texts for q, a in example.qa)


def test_context_corpus_leads_each_text_with_its_scene():
    example = make_split(1, 0, "train")[0]
    texts = corpus_texts([example], context=True)
    description = example.description  # the complete one, ending in a full stop
    assert description.endswith(".") and len(texts) == len(example.captions) + len(example.qa)
    q, a = example.qa[0]
    assert f"{description} Question: {q} Answer: {a}" in texts
    assert all(t.startswith(description + " ") for t in texts)
    # Without a description (a captions-only source), the captions stand for the scene.
    bare = replace(example, description="")
    captions = " ".join(f"{c}." for c in example.captions)
    assert all(t.startswith(captions + " ") for t in corpus_texts([bare], context=True))


def test_packed_segments_share_one_description():
    """segments=k: every caption and question of a scene once, k at most to a text, after one
    description and separated by the eos token; each text opens in stage 2's single-prompt layout."""
    from vlmkit_train.lm import SPECIAL_TOKEN, lm_texts

    examples = make_split(4, 0, "train")
    packed = corpus_texts(examples, context=True, segments=5, seed=1)
    for example in examples:
        own = [t[len(example.description) + 1 :] for t in packed if t.startswith(example.description + " ")]
        parts = [part for text in own for part in text.split(SPECIAL_TOKEN)]
        singles = [t[len(example.description) + 1 :] for t in corpus_texts([example], context=True)]
        assert sorted(parts) == sorted(singles)  # every segment exactly once
        assert len(own) == math.ceil(len(singles) / 5) and all(len(t.split(SPECIAL_TOKEN)) <= 5 for t in own)
        assert all(t.startswith(("Question: ", "a photo of ")) for t in own)
    assert packed != corpus_texts(examples, context=True, segments=5, seed=2)  # the order is seeded
    assert lm_texts(lm_config("tiny", ["segments_per_text=5", "run.seed=1"]), examples) == packed
    with pytest.raises(InputError, match="segments"):
        corpus_texts(examples, segments=0)


def test_loss_on_prompts_or_targets_leaves_the_rest_unpredicted(texts):
    from vlmkit_train.lm import SPECIAL_TOKEN, _encode, _lead_text, loss_batch

    example = make_split(1, 0, "train")[0]
    text = corpus_texts([example], context=True, segments=3)[0]  # description, then three segments
    tokenizer = train_tokenizer(texts + [text], 400)
    assert _lead_text(text) == example.description

    def predicted(loss_on: str) -> str:
        (ids, keep), = _encode(tokenizer, [text], 256, loss_on=loss_on)
        _, _, labels = loss_batch([(ids, keep)], tokenizer.eos_token_id)
        assert labels[0, 0] == -100 and labels[0, -1] == tokenizer.eos_token_id  # bos never, the closing eos always
        return tokenizer.decode([t for t in labels[0].tolist() if t != -100])

    assert predicted("all") == text + SPECIAL_TOKEN
    assert predicted("prompts") == text[len(example.description) :] + SPECIAL_TOKEN  # from the space before the prompt
    targets = [part.split(" Answer:")[-1] if " Answer:" in part else part.split("a photo of")[-1] for part in text[len(example.description) + 1 :].split(SPECIAL_TOKEN)]
    assert predicted("targets") == "".join(t + SPECIAL_TOKEN for t in targets)  # " yes<|endoftext|> square<|endoftext|>..."
    with pytest.raises(InputError, match="loss_on"):
        lm_config("tiny", ["loss_on=answers"])


def test_text_ceiling_on_a_tiny_lm(tmp_path):
    """The ceiling asks every question with the true description in front, answers each one, and
    refuses descriptions longer than the LM's positions."""
    from vlmkit.data import load_easy_vqa
    from vlmkit_train.lm import answer_from_descriptions, description_prompt_ids

    examples = [e for e in load_easy_vqa("test") if e.description][:6]
    train_lm(lm_config("tiny"), corpus_texts(examples, context=True), tmp_path)
    triples = answer_from_descriptions(tmp_path / "lm", examples, max_new_tokens=2)
    assert [(q, a) for q, a, _ in triples] == [(q, a) for e in examples for q, a in e.qa]
    assert all(isinstance(p, str) for _, _, p in triples)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "lm")
    ids = description_prompt_ids(tokenizer, examples[0], examples[0].qa[0][0])
    assert tokenizer.decode(ids) == f"<|endoftext|>{examples[0].description}. Question: {examples[0].qa[0][0]} Answer:"
    long = replace(examples[0], description=" ".join(["a red circle"] * 40))
    with pytest.raises(InputError, match="positions"):
        answer_from_descriptions(tmp_path / "lm", [long])


def test_heldout_split_keeps_every_copy_together(texts):
    train, heldout = split_heldout(texts, 0.1, seed=0)
    assert heldout and not set(train) & set(heldout)
    assert sorted(train + heldout) == sorted(texts)
    assert split_heldout(texts, 0.1, seed=0) == (train, heldout)


def test_tokenizer_round_trip_and_reload(tmp_path, texts):
    tokenizer = train_tokenizer(texts, vocab_size=300)
    ids = tokenizer(QUESTION)["input_ids"]
    assert tokenizer.decode(ids) == QUESTION
    assert tokenizer.decode(tokenizer("héllo 🙂 , unseen  words ")["input_ids"]) == "héllo 🙂 , unseen  words "
    special = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert tokenizer.bos_token_id == tokenizer.eos_token_id == tokenizer.pad_token_id == special
    assert special not in ids  # GPT-2 style: special tokens are added by the caller
    # Stage 2 tokenises the prompt and " " + answer separately; that must equal the whole text.
    prompt, answer = QUESTION.rsplit(" ", 1)
    parts = tokenizer(prompt)["input_ids"] + tokenizer(" " + answer)["input_ids"]
    assert parts == ids

    tokenizer.save_pretrained(tmp_path / "tok")
    reloaded = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert reloaded(QUESTION)["input_ids"] == ids
    assert reloaded.decode(ids) == QUESTION
    assert reloaded.pad_token_id == reloaded.eos_token_id == special


def test_tiny_run_through_the_cli(tmp_path, capsys):
    code = main(["train", "lm", "--preset", "tiny", "--out", str(tmp_path / "run")])
    assert code == 0, capsys.readouterr().err
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    config = lm_config("tiny")
    assert summary["steps"] == config.run.max_steps and math.isfinite(summary["heldout_ppl"])
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, config.run.max_steps + 1))
    assert rows[-1]["loss"] < rows[0]["loss"] - 0.3
    assert rows[-1]["heldout_ppl"] == pytest.approx(summary["heldout_ppl"])

    lm_dir = tmp_path / "run" / "lm"
    model = AutoModelForCausalLM.from_pretrained(lm_dir)
    tokenizer = AutoTokenizer.from_pretrained(lm_dir)
    assert model.config.n_layer == config.n_layer and model.config.vocab_size == len(tokenizer)
    prompt = tokenizer(["Question: what colour is the circle? Answer:"], return_tensors="pt")
    out = model.generate(**prompt, max_new_tokens=4, do_sample=False)
    assert out.shape == (1, prompt["input_ids"].shape[1] + 4)
    assert tokenizer.decode(out[0]).startswith("Question: what colour is the circle? Answer:")


def test_resume_continues_exactly(tmp_path):
    config = lm_config("tiny", ["save_every=4"])
    texts = training_texts(config)
    straight = train_lm(config, texts, tmp_path / "straight")
    stopped = train_lm(config, texts, tmp_path / "interrupted", stop_after=4)
    assert stopped.steps == 4 and stopped.final_record.get("heldout_ppl") is None
    assert not (tmp_path / "interrupted" / "lm").exists()
    resumed = train_lm(config, texts, tmp_path / "interrupted", resume=True)
    assert resumed.final_record["heldout_ppl"] == straight.final_record["heldout_ppl"]
    keys = ("step", "lr", "loss")
    rows = [read_metrics(tmp_path / name / "metrics.jsonl") for name in ("straight", "interrupted")]
    assert [[r[k] for k in keys] for r in rows[1]] == [[r[k] for k in keys] for r in rows[0]]
    a, b = (load_file(tmp_path / name / "lm" / "model.safetensors") for name in ("straight", "interrupted"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_overrides_and_resume_are_checked(tmp_path, texts):
    with pytest.raises(InputError, match="unknown config key 'layers'"):
        lm_config("tiny", ["layers=2"])
    with pytest.raises(InputError, match="multiple of n_head"):
        lm_config("tiny", ["n_embd=30"])
    with pytest.raises(InputError, match="must be one of"):
        lm_config("tiny", ["data=wikipedia"])
    with pytest.raises(InputError, match="unknown preset"):
        lm_config("huge")
    with pytest.raises(InputError, match="nothing to resume"):
        train_lm(lm_config("tiny"), texts, tmp_path / "new", resume=True)
    config = lm_config("tiny", ["max_steps=2"])
    train_lm(config, texts, tmp_path / "run", stop_after=1)
    with pytest.raises(InputError, match="different texts"):
        train_lm(config, texts[:-5], tmp_path / "run", resume=True)
    with pytest.raises(InputError, match="different config"):
        train_lm(lm_config("tiny", ["max_steps=3"]), texts, tmp_path / "run", resume=True)
