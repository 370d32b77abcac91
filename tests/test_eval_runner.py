"""`vlmkit eval` and the library runner: the same scores at batch 1 and 16, resumable predictions,
the VQAv2 path with ten human answers, published figures beside ours, result-file exports, errors."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

import vlmkit
from vlmkit.errors import InputError, UnsupportedTaskError
from vlmkit.eval import EvalConfig, PredictionsFile, dataset_identity, evaluate, published_references
from vlmkit_cli.main import main

_models: dict[str, vlmkit.VisionLanguageModel] = {}


def model(path: str | Path) -> vlmkit.VisionLanguageModel:
    key = str(path)
    if key not in _models:
        _models[key] = vlmkit.load(path)
    return _models[key]


def same_at_batch_1_and_16(m, task: str, data: str, limit: int):
    one = evaluate(m, EvalConfig(task, data, batch_size=1, limit=limit))
    sixteen = evaluate(m, EvalConfig(task, data, batch_size=16, limit=limit))
    assert one.scores == sixteen.scores
    assert one.outputs == sixteen.outputs  # every prediction, not just the averages
    assert one.items == sixteen.items > 0
    return one


@pytest.mark.parametrize("name", ["blip_vqa", "blip2_opt", "llava"])
def test_vqa_same_at_batch_1_and_16_on_easy_vqa(tiny, name):
    # Questions of many token lengths: padded batches would change some answers (BLIP's did).
    result = same_at_batch_1_and_16(model(tiny[name]), "vqa", "easy-vqa:test", 32)
    assert result.protocol["metric"] == "exact match"
    assert len({len(q["question"]) for q in result.details["examples"]}) > 1


def test_vqa_same_at_batch_1_and_16_on_the_shapes_world(tiny):
    result = same_at_batch_1_and_16(model(tiny["instructblip"]), "vqa", "shapes:12:test", 40)
    assert result.dataset == "shapes" and result.split == "test"


def test_caption_and_classify_with_the_builtin_same_at_batch_1_and_16():
    builtin = model(vlmkit.DEFAULT_MODEL)
    caption = same_at_batch_1_and_16(builtin, "caption", "easy-vqa:test", 24)
    assert set(caption.scores) >= {"BLEU-1", "BLEU-4", "ROUGE-L", "CIDEr"}
    assert caption.scores["BLEU-1"] > 0  # the built-in's tags share words with "a blue circle"
    classify = same_at_batch_1_and_16(builtin, "classify", "easy-vqa:test", 48)
    assert set(classify.scores) == {"top-1"}  # top-5 of three classes would always be 100
    assert classify.protocol["classes"] == 3
    assert caption.details["skipped_without_reference"] == 0


def test_retrieval_same_at_batch_1_and_16_and_reranked(tiny):
    result = same_at_batch_1_and_16(model(tiny["clip"]), "retrieval", "shapes:10:test", 10)
    assert set(result.scores) >= {"I2T R@1", "T2I R@10", "I2T mean rank"}
    assert result.protocol["image_groups"]
    reranked = evaluate(model(tiny["blip_itm"]), EvalConfig("retrieval", "shapes:6:test", rerank=3))
    assert reranked.protocol["rerank"] == 3
    with pytest.raises(UnsupportedTaskError):
        evaluate(model(tiny["clip"]), EvalConfig("retrieval", "shapes:4:test", rerank=3))


def test_classify_on_an_imagenet_style_folder_of_real_photos(tmp_path, photos):
    for label, photo in (("cat", "cat"), ("coffee mug", "coffee"), ("motorcycle", "motorcycle"), ("rocket", "rocket")):
        folder = tmp_path / "val" / label
        folder.mkdir(parents=True)
        shutil.copy(photos[photo], folder / photos[photo].name)
    result = evaluate(model(vlmkit.DEFAULT_MODEL), EvalConfig("classify", f"imagenet:{tmp_path / 'val'}"))
    assert (result.dataset, result.split, result.items) == ("imagenet", "val", 4)
    assert result.scores["top-1"] >= 75.0  # the built-in recognises real photos


# -- resuming -----------------------------------------------------------------------------------


class Interrupting:
    """A model that is interrupted (as by Ctrl-C) on its second call to ``ask``."""

    def __init__(self, inner):
        self.inner, self.calls = inner, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def ask(self, *args, **kwargs):
        self.calls += 1
        if self.calls == 2:
            raise KeyboardInterrupt
        return self.inner.ask(*args, **kwargs)


def test_an_interrupted_run_continues_from_its_predictions(tiny, tmp_path):
    m = model(tiny["blip_vqa"])
    config = EvalConfig("vqa", "easy-vqa:test", batch_size=2, limit=40)
    saved = tmp_path / "p.jsonl"
    with pytest.raises(KeyboardInterrupt):
        evaluate(Interrupting(m), config, predictions=saved)
    lines = saved.read_text().splitlines()
    assert len(lines) == 1 + 16  # the header and the first call's predictions (2 x 8 batches)
    resumed = evaluate(m, config, predictions=saved)
    assert resumed.resumed == 16
    fresh = evaluate(m, config)
    assert resumed.outputs == fresh.outputs and resumed.scores == fresh.scores
    # A later run finds everything done and asks the model nothing.
    again = evaluate(Interrupting(Interrupting(m)), config, predictions=saved)
    assert again.resumed == 40


def test_predictions_file_checks(tmp_path):
    path = tmp_path / "p.jsonl"
    store = PredictionsFile(path, {"task": "vqa", "model": "a", "data": "d", "protocol": {"x": 1}})
    store.add([{"id": "1", "prediction": "yes"}, {"id": "2", "prediction": "no"}])
    with path.open("a") as f:
        f.write('{"id": "3", "predi')  # torn by a kill mid-write
    reopened = PredictionsFile(path, {"task": "vqa", "model": "a", "data": "d", "protocol": {"x": 1}})
    assert set(reopened.done) == {"1", "2"}
    reopened.add([{"id": "3", "prediction": "red"}])
    assert [json.loads(line)["id"] for line in path.read_text().splitlines()[1:]] == ["1", "2", "3"]
    with pytest.raises(InputError, match="another model"):
        PredictionsFile(path, {"task": "vqa", "model": "b", "data": "d", "protocol": {"x": 1}})
    with pytest.raises(InputError, match="another protocol"):
        PredictionsFile(path, {"task": "vqa", "model": "a", "data": "d", "protocol": {"x": 2}})
    assert PredictionsFile(path, {"task": "vqa", "model": "b", "data": "d", "protocol": {}}, restart=True).done == {}
    path.write_text('{"format": "vlmkit-predictions/1", "task": "vqa", "model": "a", "data": "d", "protocol": {}}\nnot json\n{}\n')
    with pytest.raises(InputError, match="corrupt line"):
        PredictionsFile(path, {"task": "vqa", "model": "a", "data": "d", "protocol": {}})
    path.write_text("hello\n")
    with pytest.raises(InputError, match="not a vlmkit predictions file"):
        PredictionsFile(path, {"task": "vqa", "model": "a", "data": "d", "protocol": {}})


# -- VQAv2 files, references, exports -------------------------------------------------------------


@pytest.fixture()
def vqav2(tmp_path, photos):
    """A VQAv2-shaped split of three real photos: questions, annotations with ten answers, COCO names."""
    images = tmp_path / "val2014"
    images.mkdir()
    for image_id, photo in ((1, "cat"), (2, "coffee"), (3, "rocket")):
        Image.open(photos[photo]).convert("RGB").save(images / f"COCO_val2014_{image_id:012d}.jpg")
    questions, annotations = [], []
    rows = [(1, "what animal is this?", ["cat"] * 9 + ["kitten"], "other"), (1, "is it a cat?", ["yes"] * 10, "yes/no"),
            (2, "how many cups?", ["1"] * 6 + ["2"] * 4, "number"), (3, "is it flying?", ["no"] * 7 + ["yes"] * 3, "yes/no")]
    for qid, (image_id, question, answers, answer_type) in enumerate(rows, start=100):
        questions.append({"image_id": image_id, "question": question, "question_id": qid})
        annotations.append({"question_id": qid, "image_id": image_id, "answer_type": answer_type, "question_type": "x",
                            "multiple_choice_answer": answers[0],
                            "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(answers)]})
    q = tmp_path / "v2_OpenEnded_mscoco_val2014_questions.json"
    a = tmp_path / "v2_mscoco_val2014_annotations.json"
    q.write_text(json.dumps({"data_subtype": "val2014", "questions": questions}))
    a.write_text(json.dumps({"annotations": annotations}))
    return f"vqa:{q}:{a}:{images}"


def test_vqav2_files_score_with_ten_answers_and_export(tiny, vqav2, tmp_path):
    result = evaluate(model(tiny["blip_vqa"]), EvalConfig("vqa", vqav2))
    assert (result.dataset, result.split, result.items) == ("vqav2", "val", 4)
    assert result.protocol["metric"].startswith("VQAv2 accuracy")
    assert set(result.scores) == {"accuracy", "accuracy (number)", "accuracy (other)", "accuracy (yes/no)"}
    assert sorted(result.outputs) == ["100", "101", "102", "103"]  # the question ids
    out = tmp_path / "vqa_results.json"
    code = main(["eval", "vqa", "--model", str(tiny["blip_vqa"]), "--data", vqav2, "--out", str(tmp_path / "r.json"), "--export", str(out)])
    assert code == 0
    exported = json.loads(out.read_text())
    assert [r["question_id"] for r in exported] == [100, 101, 102, 103]
    assert all(isinstance(r["answer"], str) for r in exported)


def test_published_figures_shown_when_model_and_dataset_match(tiny, tmp_path, vqav2):
    assert dataset_identity("vqa:/d/v2_OpenEnded_mscoco_test-dev2015_questions.json::/d/test2015") == ("vqav2", "test-dev")
    assert dataset_identity("vqa:/okvqa/OpenEnded_mscoco_val2014_questions.json:/okvqa/a.json:/coco/val2014") == ("okvqa", "val")
    assert dataset_identity("vqa:/v1/OpenEnded_mscoco_val2014_questions.json::/coco/val2014") == ("vqa", "val")
    assert dataset_identity("gqa:/d/testdev_balanced_questions.json:/d/images") == ("gqa", "test-dev")
    assert dataset_identity("coco:/d/dataset_flickr30k.json:/d/img:test") == ("flickr30k", "test")
    assert [r["value"] for r in published_references("llava-hf/llava-1.5-7b-hf", "vqav2", "vqa")] == [78.5]
    assert published_references("llava-hf/llava-1.5-7b-hf", "gqa", "caption") == []
    # A local copy under the hub id's name gets the figures; anything else only the dataset baselines.
    copy = tmp_path / "llava-hf" / "llava-1.5-7b-hf"
    shutil.copytree(tiny["llava"], copy)
    result = evaluate(vlmkit.load(copy), EvalConfig("vqa", vqav2))
    assert [r["value"] for r in result.references] == [78.5]
    table = result.to_markdown()
    assert "| accuracy |" in table and "78.50 (LLaVA-1.5 7B, vqav2 test-dev; LLaVA model zoo)" in table
    baseline = evaluate(model(tiny["blip_vqa"]), EvalConfig("vqa", "easy-vqa:test", limit=4))
    assert [r["value"] for r in baseline.references] == [87.6]


# -- the command --------------------------------------------------------------------------------


def test_cli_eval_writes_the_result_and_prints_the_table(tiny, tmp_path, capsys):
    out = tmp_path / "res.json"
    code = main(["eval", "vqa", "--model", str(tiny["blip_vqa"]), "--data", "easy-vqa:test", "--limit", "12",
                 "--batch-size", "4", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "| metric | vlmkit | published |" in captured.out and "| accuracy |" in captured.out
    result = json.loads(out.read_text())
    assert {"scores", "model", "dataset", "protocol", "versions", "date", "references"} <= set(result)
    assert result["items"] == 12 and result["batch_size"] == 4
    assert set(result["versions"]) >= {"vlmkit", "torch", "transformers", "python"}
    assert (tmp_path / "res.predictions.jsonl").exists()
    # Run again: everything comes from the saved predictions.
    assert main(["eval", "vqa", "--model", str(tiny["blip_vqa"]), "--data", "easy-vqa:test", "--limit", "12", "--out", str(out)]) == 0
    assert "(12 resumed from saved predictions)" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["eval", "vqa", "--data", "nowhere:x"], 1, "unknown dataset spec"),
        (["eval", "vqa", "--model", "clip", "--data", "easy-vqa:test"], 1, "cannot 'ask'"),
        (["eval", "classify", "--data", "shapes:3"], 1, "classify needs a labelled set"),
        (["eval", "retrieval", "--model", "clip", "--data", "shapes:3", "--export", "x.json"], 2, "--export writes"),
        (["eval", "vqa", "--model", "blip_vqa", "--data", "vqa:/nope/q.json::/nope"], 1, "not found"),
        (["eval", "summarise", "--data", "shapes:3"], 2, "invalid choice"),
    ],
)
def test_cli_eval_errors(tiny, capsys, argv, code, message):
    argv = [str(tiny[a]) if a in tiny else a for a in argv]
    try:
        got = main(argv)
    except SystemExit as exit_:  # argparse's own usage errors
        got = exit_.code
    err = capsys.readouterr().err
    assert got == code
    assert message in err
    assert "Traceback" not in err


def test_cli_eval_killed_midway_resumes(tiny, tmp_path):
    """SIGKILL the command while it writes predictions; the next run continues and gives the same result."""
    out = tmp_path / "r.json"
    argv = [sys.executable, "-m", "vlmkit_cli.main", "eval", "vqa", "--model", str(tiny["blip_vqa"]),
            "--data", "easy-vqa:test", "--limit", "160", "--batch-size", "2", "--out", str(out)]
    env = {**os.environ, "VLMKIT_NO_PROGRESS": "1"}
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    saved = tmp_path / "r.predictions.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if saved.exists() and len(saved.read_text().splitlines()) >= 1 + 32:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    kept = len(saved.read_text().splitlines()) - 1
    assert 32 <= kept < 160
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"({kept} resumed from saved predictions)" in done.stdout
    resumed = json.loads(out.read_text())
    fresh = evaluate(model(tiny["blip_vqa"]), EvalConfig("vqa", "easy-vqa:test", limit=160))
    assert resumed["scores"] == fresh.scores and resumed["items"] == 160
    ids = [json.loads(line)["id"] for line in saved.read_text().splitlines()[1:]]
    assert len(ids) == len(set(ids)) == 160
