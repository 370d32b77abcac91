"""BLIP-2 stage 2 on tiny sizes: stage 1 -> stage 2 through a frozen LM -> `vlmkit.load` answers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from numerics import DEEP, assert_close
from safetensors.torch import load_file

import vlmkit
from vlmkit import GenerationOptions
from vlmkit.models.blip2_native import NativeBlip2
from vlmkit.testing import build_frozen_lm
from vlmkit_cli.main import main
from vlmkit_train.stage1 import stage1_config, train_stage1
from vlmkit_train.stage2 import stage2_config, train_stage2


@pytest.fixture(scope="module")
def frozen_lm(tmp_path_factory):
    """A tiny OPT language model with a real byte-level BPE tokenizer, saved like a hub LM."""
    return build_frozen_lm(tmp_path_factory.mktemp("lm"))


@pytest.fixture(scope="module")
def stage1_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("stage1")
    train_stage1(stage1_config("tiny"), out)
    return out


def test_stage2_end_to_end(tmp_path, frozen_lm, stage1_run, photos, capsys):
    argv = ["train", "blip2-stage2", "--preset", "tiny", "--out", str(tmp_path / "s2"),
            "--set", f"stage1={stage1_run}", "--set", f"language_model={frozen_lm}"]
    assert main(argv) == 0, capsys.readouterr().err
    rows = [json.loads(line) for line in (tmp_path / "s2" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6] and all(np.isfinite(r["loss"]) for r in rows)

    # The LM stayed frozen: its weights in the checkpoint are the ones we started from.
    before = load_file(frozen_lm / "model.safetensors")
    after = load_file(tmp_path / "s2" / "model" / "lm" / "model.safetensors")
    assert all(torch.equal(before[k], after[k]) for k in before)

    model = vlmkit.load(tmp_path / "s2" / "model")
    assert model.kind.architecture == "VlmkitBlip2"
    # Retrieval uses the stage-1 Q-Former, kept beside the one stage 2 trained for the LM.
    from vlmkit.models.qformer import QFormer

    stage1 = QFormer.from_pretrained(stage1_run / "model" / "qformer").state_dict()
    assert all(torch.equal(model.retrieval.state_dict()[k], v) for k, v in stage1.items())
    assert not torch.equal(model.net.qformer.state_dict()["query_tokens"], stage1["query_tokens"])
    paths = [str(photos["cat"]), str(photos["coffee"]), str(photos["astronaut"])]
    captions = model.caption(paths, options=GenerationOptions(max_new_tokens=5))
    assert len(captions) == 3 and captions == model.caption(paths, options=GenerationOptions(max_new_tokens=5), batch_size=1)
    questions = ["what colour is the circle?", "how many shapes are there?", "is there a star?"]
    assert model.ask(paths, questions, options=GenerationOptions(max_new_tokens=3)) == model.ask(paths, questions, options=GenerationOptions(max_new_tokens=3), batch_size=1)
    similarity = model.similarity(paths, ["a red circle", "a blue square"])
    assert similarity.shape == (3, 2)
    match = model.match(paths[0], ["a red circle", "a blue square"])
    assert match.kind == "itm" and ((match.scores >= 0) & (match.scores <= 1)).all()
    assert_close(model.embed_images(paths, batch_size=1), model.embed_images(paths), rtol=DEEP, what="images one at a time")

    # The CLI answers with the trained checkpoint too.
    capsys.readouterr()
    assert main(["ask", paths[0], "what colour is the circle?", "--model", str(tmp_path / "s2" / "model"), "--json"]) == 0
    record = json.loads(capsys.readouterr().out.strip())
    assert record["question"] == "what colour is the circle?" and isinstance(record["answer"], str)


def test_stage2_loss_is_prompt_masked(frozen_lm, stage1_run):
    """Only target tokens carry the loss: changing the prompt's wording changes the loss only through
    conditioning, and an empty batch of targets is refused by the shape checks."""
    from vlmkit.models.blip2_native import Blip2Config
    from vlmkit.models.qformer import QFormer

    net = NativeBlip2.from_parts(Blip2Config(language_model=str(frozen_lm)), QFormer.from_pretrained(stage1_run / "model" / "qformer"), lm_path=frozen_lm)
    features = torch.randn(2, 49, 1280)
    loss = net(features, ["a photo of", "Question: what? Answer:"], ["a red circle", "red"])
    assert torch.isfinite(loss)
    loss.backward()
    assert net.projection.weight.grad is not None and net.qformer.query_tokens.grad is not None
    assert all(p.grad is None for p in net.lm.parameters())
    with pytest.raises(vlmkit.InputError):
        net(features, ["a photo of"], ["x"])


@pytest.mark.parametrize("position", ["before_bos", "after_bos"])
def test_generation_uses_the_training_layout(frozen_lm, stage1_run, position):
    """The LM sees the same sequence when it is trained on (prompt, target) as when it continues the
    prompt: the visual prompts sit at the configured place in both, and nowhere else."""
    from vlmkit.models.blip2_native import Blip2Config
    from vlmkit.models.qformer import QFormer

    config = Blip2Config(language_model=str(frozen_lm), visual_position=position)
    net = NativeBlip2.from_parts(config, QFormer.from_pretrained(stage1_run / "model" / "qformer"), lm_path=frozen_lm).eval()
    seen: list[torch.Tensor] = []
    net.lm.register_forward_pre_hook(lambda _m, _a, kw: seen.append(kw["inputs_embeds"]) if kw.get("inputs_embeds") is not None else None, with_kwargs=True)
    features, prompt = torch.randn(1, 49, 1280), "Question: what colour is it? Answer:"
    with torch.no_grad():
        net(features, [prompt], ["red"])
        net.generate(features, [prompt], max_new_tokens=2)
    trained, generated = seen[0], seen[1]  # (1, Q + T, D) and (1, Q + Tp, D)
    # The same visual prompts and token embeddings, computed the same way: bit-equal.
    assert torch.equal(trained[:, : generated.shape[1]], generated)
    visual = net.visual_prompts(features)  # (1, Q, D_lm)
    bos = net.lm.get_input_embeddings()(torch.tensor([[net.lm_tokenizer.bos_token_id]]))  # (1, 1, D_lm)
    q = visual.shape[1]
    if position == "before_bos":
        assert torch.equal(generated[:, :q], visual) and torch.equal(generated[:, q : q + 1], bos)
    else:
        assert torch.equal(generated[:, :1], bos) and torch.equal(generated[:, 1 : 1 + q], visual)
        # The LM's text-only ceiling reads the true description exactly where these prompts sit:
        # [bos] description, then the very tokens stage 2 gives after its visual prompts.
        from vlmkit.data import make_split
        from vlmkit_train.lm import description_prompt_ids

        example = make_split(1, 0, "test")[0]
        question = example.qa[0][0]
        tokenizer = net.lm_tokenizer
        described = tokenizer(example.description, add_special_tokens=False)["input_ids"]
        after_prompts = net._ids(config.vqa_prompt.format(question), bos=True)[1:]
        assert description_prompt_ids(tokenizer, example, question) == [tokenizer.bos_token_id, *described, *after_prompts]


def test_visual_prompts_start_at_the_lm_embedding_scale(frozen_lm, stage1_run):
    """A fresh projection gives prompts as long as the LM's token embeddings, not tens of times longer."""
    from vlmkit.models.blip2_native import Blip2Config
    from vlmkit.models.qformer import QFormer

    net = NativeBlip2.from_parts(Blip2Config(language_model=str(frozen_lm)), QFormer.from_pretrained(stage1_run / "model" / "qformer"), lm_path=frozen_lm)
    with torch.no_grad():
        prompts = net.visual_prompts(torch.randn(4, 49, 1280))  # (B, Q, D_lm)
    embedding = net.lm.get_input_embeddings().weight.norm(dim=-1).mean()
    ratio = float(prompts.norm(dim=-1).mean() / embedding)
    assert 0.5 < ratio < 2.0, ratio


def test_stage2_resume_is_exact(tmp_path, frozen_lm, stage1_run):
    config = stage2_config("tiny", [f"stage1={stage1_run}", f"language_model={frozen_lm}", "save_every=3"])
    train_stage2(config, tmp_path / "straight")
    train_stage2(config, tmp_path / "cut", stop_after=3)
    train_stage2(config, tmp_path / "cut", resume=True)
    read = lambda p: [(r["step"], r["loss"]) for r in map(json.loads, (p / "metrics.jsonl").read_text().splitlines())]  # noqa: E731
    assert read(tmp_path / "cut") == read(tmp_path / "straight")
