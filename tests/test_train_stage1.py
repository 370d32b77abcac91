"""`vlmkit train blip2-stage1` on the tiny preset: outputs, checked overrides, and exact resume."""

from __future__ import annotations

import json

import pytest

from vlmkit.errors import InputError
from vlmkit.models.qformer import QFormer
from vlmkit_cli.main import main
from vlmkit_train.stage1 import stage1_config, train_stage1


def read_metrics(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_tiny_run_through_the_cli(tmp_path, capsys):
    code = main(["train", "blip2-stage1", "--preset", "tiny", "--out", str(tmp_path / "run"), "--set", "grad_accum=2"])
    assert code == 0, capsys.readouterr().err
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps"] == 6
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert all(set(r) >= {"itc", "itm", "itg", "total", "lr"} for r in rows)
    model = QFormer.from_pretrained(tmp_path / "run" / "model" / "qformer")
    assert model.config.num_query_tokens == 4
    assert (tmp_path / "run" / "loss.png").stat().st_size > 1000
    assert (tmp_path / "run" / "features" / "features.npy").is_file()


def test_resume_continues_exactly(tmp_path):
    config = stage1_config("tiny", ["save_every=3"])
    train_stage1(config, tmp_path / "straight")
    train_stage1(config, tmp_path / "interrupted", stop_after=3)
    assert not (tmp_path / "interrupted" / "model").exists()
    train_stage1(config, tmp_path / "interrupted", resume=True)
    straight = read_metrics(tmp_path / "straight" / "metrics.jsonl")
    resumed = read_metrics(tmp_path / "interrupted" / "metrics.jsonl")
    keys = ("step", "lr", "itc", "itm", "itg", "total")
    assert [[r[k] for k in keys] for r in resumed] == [[r[k] for k in keys] for r in straight]


def test_overrides_are_checked(tmp_path):
    with pytest.raises(InputError, match="unknown config key 'learning_rate'"):
        stage1_config("tiny", ["learning_rate=1"])
    with pytest.raises(InputError, match="expected int"):
        stage1_config("tiny", ["batch_size=lots"])
    with pytest.raises(InputError, match="must be one of"):
        stage1_config("tiny", ["data=imagenet"])
    with pytest.raises(InputError, match="unknown preset"):
        stage1_config("huge")
    with pytest.raises(InputError, match="nothing to resume"):
        train_stage1(stage1_config("tiny"), tmp_path / "new", resume=True)
    assert stage1_config("tiny", ["use_itg=false", "lr=0.01"]).use_itg is False


def test_corpus_vocabulary_is_learnt_saved_and_used(tmp_path):
    from transformers import AutoTokenizer

    from vlmkit.data import make_split
    from vlmkit_train.vocab import train_wordpiece

    train_stage1(stage1_config("tiny", ["max_steps=1"]), tmp_path / "run")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "run" / "model" / "qformer")
    model = QFormer.from_pretrained(tmp_path / "run" / "model" / "qformer")
    assert 20 < len(tokenizer) < 300 and model.config.vocab_size == len(tokenizer)
    assert (tokenizer.pad_token_id, tokenizer.bos_token, model.config.dec_token_id) == (0, "[DEC]", tokenizer.bos_token_id)
    caption = make_split(16, 0, "train")[3].captions[0]
    ids = tokenizer(caption)["input_ids"]
    assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
    assert tokenizer.unk_token_id not in ids and tokenizer.decode(ids, skip_special_tokens=True) == caption
    # The vocabulary depends on the texts, not on their order.
    texts = ["a red circle", "two shapes: a blue square and a red circle", "a green star above a blue square"]
    assert train_wordpiece(texts).get_vocab() == train_wordpiece(texts[::-1]).get_vocab()


def test_bert_vocabulary_for_a_bert_initialised_qformer(tmp_path):
    train_stage1(stage1_config("tiny", ["max_steps=1", "tokenizer=minilm"]), tmp_path / "run")
    assert QFormer.from_pretrained(tmp_path / "run" / "model" / "qformer").config.vocab_size == 30523  # BERT's + [DEC]
    with pytest.raises(InputError, match="tokenizer=corpus needs qformer.init=scratch"):
        stage1_config("tiny", ["qformer_init=minilm"])


def test_two_processes_through_torchrun(tmp_path):
    """DDP over two CPU processes (gloo) through torchrun, the same code as one process: every
    metrics row says two processes took part (without ``make_accelerator``'s CPU switch each would
    have trained alone, as `accelerate launch --cpu` does on one machine)."""
    import os
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "vlmkit_cli.main", "train", "blip2-stage1", "--preset", "tiny", "--out", str(tmp_path / "ddp")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    rows = read_metrics(tmp_path / "ddp" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert all(r["processes"] == 2 for r in rows)
    assert QFormer.from_pretrained(tmp_path / "ddp" / "model" / "qformer").config.num_query_tokens == 4


def test_the_export_loads_with_vlmkit_load_and_retrieves_with_the_trained_heads(tmp_path, capsys):
    """``OUT/model`` is a checkpoint ``vlmkit.load`` reads: embed / similarity / match through the
    frozen encoder and the trained Q-Former's ITC and ITM heads, and the CLI uses it as it is."""
    import numpy as np
    import torch
    from numerics import DEEP, assert_close
    from transformers import AutoTokenizer

    import vlmkit
    from vlmkit.data import make_split
    from vlmkit.models.image_encoders import load_image_encoder

    train_stage1(stage1_config("tiny", ["max_steps=2"]), tmp_path / "run")
    model_dir = tmp_path / "run" / "model"
    model = vlmkit.load(model_dir)
    assert model.kind.architecture == "VlmkitBlip2Retrieval" and model.kind.tasks == {"embed", "similarity", "classify", "match"}
    scenes = make_split(3, 0, "test")
    images, texts = [s.image for s in scenes], [s.captions[0] for s in scenes]

    # The same ITC by hand: the encoder's features through the saved Q-Former, max over queries.
    qformer, tokenizer = QFormer.from_pretrained(model_dir / "qformer").eval(), AutoTokenizer.from_pretrained(model_dir / "qformer")
    encoder = load_image_encoder("efficientnet-lite0")
    with torch.no_grad():
        queries = qformer.image_features(encoder(encoder.preprocess(images)))  # (3, Q, d)
        batch = tokenizer(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
        text = qformer.text_features(batch["input_ids"], batch["attention_mask"])  # (3, d)
    by_hand = torch.einsum("nqd,md->nqm", queries, text).amax(dim=1).numpy()
    assert_close(model.similarity(images, texts), by_hand, rtol=DEEP)  # batch and padding differ: a whole forward pass
    scores = model.match(images, texts).scores
    assert scores.shape == (3,) and np.all((scores > 0) & (scores < 1))
    with pytest.raises(vlmkit.UnsupportedTaskError):
        model.caption(images[:1])

    scenes[0].image.save(tmp_path / "scene.png")
    assert main(["match", str(tmp_path / "scene.png"), texts[0], "--model", str(model_dir)]) == 0, capsys.readouterr().err
    assert texts[0] in capsys.readouterr().out


def test_a_retrieval_checkpoint_with_unknown_config_keys_is_refused(tmp_path):
    import vlmkit
    from vlmkit.errors import ModelNotFoundError

    train_stage1(stage1_config("tiny", ["max_steps=1"]), tmp_path / "run")
    config_path = tmp_path / "run" / "model" / "config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "surprise": 1}))
    with pytest.raises(ModelNotFoundError, match="unknown keys in config.json: surprise"):
        vlmkit.load(tmp_path / "run" / "model")
