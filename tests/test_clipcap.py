"""ClipCap on tiny sizes: mappers, frozen LM, target-only loss, checkpoints, `vlmkit train clipcap`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import transformers
from safetensors.torch import load_file

import vlmkit
from vlmkit import GenerationOptions
from vlmkit.models.clipcap import ClipCap, ClipCapConfig, ClipCapTasks, PooledEfficientNet
from vlmkit_cli.main import main
from vlmkit_train.clipcap import clipcap_config, train_clipcap

EMBED = 24  # embedding width of the unit tests' fake embedder


@pytest.fixture(scope="module")
def frozen_lm(tmp_path_factory):
    """A tiny GPT-2 with the byte-level BPE of `vlmkit train lm`, learnt on shapes texts."""
    from vlmkit.data import make_split
    from vlmkit_train.lm import corpus_texts, train_tokenizer

    path = tmp_path_factory.mktemp("lm")
    tokenizer = train_tokenizer(corpus_texts(make_split(16, 0, "train")), 300)
    special = tokenizer.eos_token_id
    config = transformers.GPT2Config(
        vocab_size=len(tokenizer), n_positions=128, n_embd=32, n_layer=2, n_head=4,
        bos_token_id=special, eos_token_id=special, pad_token_id=special,
    )
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _net(frozen_lm, **fields) -> ClipCap:
    torch.manual_seed(0)
    config = ClipCapConfig(embed_dim=EMBED, prefix_length=3, clip_length=2, mapper_layers=1, mapper_heads=4, **fields)
    return ClipCap.from_parts(config, lm_path=frozen_lm).eval()


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory, frozen_lm):
    out = tmp_path_factory.mktemp("run")
    argv = ["train", "clipcap", "--preset", "tiny", "--out", str(out / "run"), "--set", f"language_model={frozen_lm}",
            "--set", f"embeddings_dir={out / 'embeddings'}"]
    assert main(argv) == 0
    return out


@pytest.mark.parametrize("mapper", ["mlp", "transformer"])
def test_mappers_give_prefixes_at_the_lm_scale(frozen_lm, mapper):
    net = _net(frozen_lm, mapper=mapper)
    with torch.no_grad():
        prefix = net.prefix(torch.randn(5, EMBED))
    assert prefix.shape == (5, 3, 32)  # (B, K, D_lm)
    embedding = net.lm.get_input_embeddings().weight.norm(dim=-1).mean()
    ratio = float(prefix.norm(dim=-1).mean() / embedding)
    assert 0.3 < ratio < 3.0, ratio
    with pytest.raises(vlmkit.InputError):
        net.prefix(torch.randn(5, EMBED + 1))


@pytest.mark.parametrize("mapper", ["mlp", "transformer"])
def test_only_the_mapper_learns(frozen_lm, mapper):
    net = _net(frozen_lm, mapper=mapper).train()
    lm_before = {k: v.clone() for k, v in net.lm.state_dict().items()}
    mapper_before = {k: v.clone() for k, v in net.mapper.state_dict().items()}
    optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):
        loss = net(torch.randn(2, EMBED), ["a photo of", "Question: what colour? Answer:"], ["a red circle", "red"])
        loss.backward()
        assert all(p.grad is None for p in net.lm.parameters())
        optimizer.step()
        optimizer.zero_grad()
    assert all(torch.equal(lm_before[k], v) for k, v in net.lm.state_dict().items())
    assert any(not torch.equal(mapper_before[k], v) for k, v in net.mapper.state_dict().items())
    assert not net.lm.training  # frozen: eval mode even while the mapper trains


def test_loss_is_on_target_tokens_only(frozen_lm):
    net = _net(frozen_lm)
    tokenizer = net.lm_tokenizer
    embeddings = torch.randn(2, EMBED)
    targets = ["a small red circle", "blue"]
    _, mask, labels = net.inputs(embeddings, ["a photo of", "Question: what colour is it? Answer:"], targets)
    eos = tokenizer.eos_token_id
    for row, target in enumerate(targets):
        kept = labels[row][labels[row] != -100].tolist()
        assert kept == tokenizer(" " + target, add_special_tokens=False)["input_ids"] + [eos]
    lengths = mask.sum(dim=1)
    assert int(lengths.min()) < mask.shape[1] == int(lengths.max())  # the shorter row is padded, and masked
    assert (labels[mask == 0] == -100).all()

    # Whatever the prompt says, the labels are the target's tokens, right after the prompt's last token.
    for prompts in (["a photo of", "Question: what colour is it? Answer:"], ["a drawing of", "Question: what shape is it? Answer:"]):
        _, _, labels = net.inputs(embeddings, prompts, targets)
        for row, (prompt, target) in enumerate(zip(prompts, targets, strict=True)):
            start = 1 + 3 + len(tokenizer(prompt, add_special_tokens=False)["input_ids"])  # bos, K = 3, prompt
            target_ids = tokenizer(" " + target, add_special_tokens=False)["input_ids"] + [eos]
            assert (labels[row] != -100).nonzero().flatten().tolist() == list(range(start, start + len(target_ids)))
            assert labels[row, start : start + len(target_ids)].tolist() == target_ids

    # forward's loss is the mean cross-entropy over exactly those positions.
    with torch.no_grad():
        inputs, mask, labels = net.inputs(embeddings, ["a photo of", "a photo of"], targets)
        logits = net.lm(inputs_embeds=inputs, attention_mask=mask).logits[:, :-1]
        expected = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels[:, 1:], ignore_index=-100)
        assert torch.allclose(net(embeddings, ["a photo of", "a photo of"], targets), expected, atol=1e-5)
    with pytest.raises(vlmkit.InputError):
        net(embeddings, ["a photo of"], ["x"])


@pytest.mark.parametrize("mapper", ["mlp", "transformer"])
def test_save_and_load_give_the_same_model(tmp_path, frozen_lm, mapper):
    net = _net(frozen_lm, mapper=mapper)
    with torch.no_grad():  # a trained-looking mapper, so the round trip has something to lose
        for parameter in net.mapper.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    net.save_pretrained(tmp_path / "model")
    meta = json.loads((tmp_path / "model" / "config.json").read_text())
    assert meta["model_type"] == "vlmkit-clipcap" and meta["architectures"] == ["VlmkitClipCap"] and meta["language_model"] == "lm"
    loaded = ClipCap.from_pretrained(tmp_path / "model")
    embeddings = torch.randn(3, EMBED)
    prompts, targets = ["a photo of"] * 3, ["a red circle", "a blue square", "a star"]
    with torch.no_grad():
        assert torch.equal(net(embeddings, prompts, targets), loaded(embeddings, prompts, targets))
    questions = ["Question: what colour? Answer:", "a photo of", "Question: is there a star? Answer:"]
    assert net.generate(embeddings, questions, max_new_tokens=6) == loaded.generate(embeddings, questions, max_new_tokens=6)


def test_generation_does_not_depend_on_the_batch(frozen_lm):
    net = _net(frozen_lm)
    embeddings = torch.randn(4, EMBED)
    prompts = ["a photo of", "Question: what colour is the circle? Answer:", "a photo of", "Question: is it red? Answer:"]
    together = net.generate(embeddings, prompts, max_new_tokens=8)
    alone = [net.generate(embeddings[i : i + 1], prompts[i : i + 1], max_new_tokens=8)[0] for i in range(4)]
    assert together == alone


def test_generation_uses_the_training_layout(frozen_lm):
    """``[bos] prefix prompt`` in training and in generation: the LM sees the same sequence."""
    net = _net(frozen_lm)
    seen: list[torch.Tensor] = []
    net.lm.register_forward_pre_hook(lambda _m, _a, kw: seen.append(kw["inputs_embeds"]) if kw.get("inputs_embeds") is not None else None, with_kwargs=True)
    embeddings, prompt = torch.randn(1, EMBED), "Question: what colour is the circle? Answer:"
    with torch.no_grad():
        net(embeddings, [prompt], ["red"])
        net.generate(embeddings, [prompt], max_new_tokens=2)
    trained, generated = seen[0], seen[1]
    assert torch.equal(trained[:, : generated.shape[1]], generated)  # same embeddings, same order
    bos = net.lm.get_input_embeddings()(torch.tensor([[net.lm_tokenizer.bos_token_id]]))
    with torch.no_grad():
        prefix = net.prefix(embeddings)  # (1, K, D_lm)
    assert torch.equal(generated[:, :1], bos) and torch.equal(generated[:, 1 : 1 + prefix.shape[1]], prefix)


def test_cli_tiny_run_trains_and_loads(cli_run, frozen_lm, photos):
    run = cli_run / "run"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6] and all(np.isfinite(r["loss"]) for r in rows)
    assert (cli_run / "embeddings" / "embeddings.safetensors").is_file() and (run / "state").is_dir()
    meta = json.loads((run / "model" / "config.json").read_text())
    assert meta["embedder"] == "efficientnet-lite0" and meta["embed_dim"] == 1280 and meta["mapper"] == "transformer"

    # The LM stayed frozen: its weights in the checkpoint are the ones we started from.
    before = load_file(frozen_lm / "model.safetensors")
    after = load_file(run / "model" / "lm" / "model.safetensors")
    assert all(torch.equal(before[k], after[k]) for k in before)

    model = vlmkit.load(run / "model")
    assert isinstance(model, ClipCapTasks) and isinstance(model.embedder, PooledEfficientNet)
    assert model.kind.architecture == "VlmkitClipCap" and model.supports("ask") and not model.supports("embed")
    paths = [str(photos["cat"]), str(photos["coffee"]), str(photos["astronaut"])]
    captions = model.caption(paths, options=GenerationOptions(max_new_tokens=5))
    assert len(captions) == 3 and all(isinstance(c, str) for c in captions)
    assert captions == model.caption(paths, options=GenerationOptions(max_new_tokens=5), batch_size=1)
    questions = ["what colour is the circle?", "how many shapes are there?", "is there a star?"]
    answers = model.ask(paths, questions, options=GenerationOptions(max_new_tokens=3))
    assert answers == model.ask(paths, questions, options=GenerationOptions(max_new_tokens=3), batch_size=1)
    assert model.ask(paths[0], questions, options=GenerationOptions(max_new_tokens=3))[0] == answers[0]  # one image, many questions
    assert len(model.generate(paths[:2], "a photo of", options=GenerationOptions(max_new_tokens=3))) == 2
    with pytest.raises(vlmkit.UnsupportedTaskError):
        model.embed_images(paths)


def test_resume_equals_a_straight_run(tmp_path, frozen_lm, cli_run):
    config = clipcap_config("tiny", [f"language_model={frozen_lm}", f"embeddings_dir={cli_run / 'embeddings'}", "save_every=3"])
    train_clipcap(config, tmp_path / "straight")
    train_clipcap(config, tmp_path / "cut", stop_after=3)
    assert not (tmp_path / "cut" / "model").exists()
    train_clipcap(config, tmp_path / "cut", resume=True)
    read = lambda p: [(r["step"], r["loss"]) for r in map(json.loads, (p / "metrics.jsonl").read_text().splitlines())]  # noqa: E731
    assert read(tmp_path / "cut") == read(tmp_path / "straight")
    straight = load_file(tmp_path / "straight" / "model" / "mapper.safetensors")
    cut = load_file(tmp_path / "cut" / "model" / "mapper.safetensors")
    assert all(torch.equal(straight[k], cut[k]) for k in straight)


def test_mlp_mapper_with_a_model_embedder(tmp_path, frozen_lm):
    """Any vlmkit model with embed_images can be the embedder (here a tiny CLIP); the checkpoint
    records it and loading recreates it."""
    from vlmkit.testing import build_clip

    clip = build_clip(tmp_path / "clip")
    config = clipcap_config("tiny", [f"language_model={frozen_lm}", f"embedder={clip}", "mapper=mlp", "max_steps=2"])
    train_clipcap(config, tmp_path / "run")
    meta = json.loads((tmp_path / "run" / "model" / "config.json").read_text())
    assert meta["embedder"] == str(clip.resolve()) and meta["mapper"] == "mlp"
    model = vlmkit.load(tmp_path / "run" / "model")
    assert model.embedder.identity == f"vlmkit:{clip.resolve()}"
    assert meta["embed_dim"] == model.embedder.embed([np.zeros((32, 32, 3), dtype=np.uint8)]).shape[1]
    assert len(model.caption(np.zeros((32, 32, 3), dtype=np.uint8), options=GenerationOptions(max_new_tokens=3))) == 1


@pytest.mark.parametrize(
    "overrides",
    [["nope=1"], ["mapper=lstm"], ["prefix_length=0"], ["qa_fraction=1.5"], ["mapper_width=30"], ["lr=-1"], ["batch_size=two"]],
)
def test_bad_overrides_are_refused(overrides):
    with pytest.raises(vlmkit.InputError):
        clipcap_config("tiny", overrides)


def test_a_language_model_is_required(tmp_path):
    with pytest.raises(vlmkit.InputError, match="language_model"):
        train_clipcap(clipcap_config("tiny"), tmp_path)
    with pytest.raises(vlmkit.InputError):
        clipcap_config("nope")
