"""Captioning metrics: hand-worked BLEU, parity with pycocoevalcap's COCOEvalCap pipeline, and the
paths without Java or without SPICE's CoreNLP jars.

PTBTokenizer and METEOR are Java programs. CI installs a JRE (scripts/install.sh test), so the tests
that need one fail, not skip, without it; only SPICE, whose CoreNLP jars need a download, may skip.
METEOR takes about 5 s to load, so the METEOR runs share one module fixture and run side by side.
"""

from __future__ import annotations

import math
import os
import stat
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from vlmkit.errors import InputError, VlmkitError
from vlmkit.eval import CAPTION_METRICS, CaptionScores, caption_scores, java_available
from vlmkit.eval import captions as captions_module

# Five images, five references each, one prediction each: the shape of a COCO caption evaluation.
REFERENCES = {
    "kitchen": [
        "A woman cutting vegetables on a wooden counter in a kitchen.",
        "A lady chops carrots and onions at the kitchen counter.",
        "Someone is slicing vegetables on a cutting board.",
        "A woman preparing food in a bright kitchen.",
        "A person in an apron cutting up vegetables for dinner.",
    ],
    "surf": [
        "A surfer riding a large wave in the ocean.",
        "A man on a surfboard rides the crest of a wave.",
        "Someone surfing on a big blue wave.",
        "A surfer in a black wetsuit catching a wave.",
        "A person balancing on a surfboard as a wave breaks.",
    ],
    "train": [
        "A red and yellow train pulling into a station.",
        "A passenger train stopped at a platform.",
        "A commuter train waits at the station while people board.",
        "The train is parked next to an empty platform.",
        "A long train traveling down the tracks near a station.",
    ],
    "giraffes": [
        "Two giraffes standing next to a tall tree.",
        "A pair of giraffes eating leaves from a tree.",
        "Giraffes in a grassy field near some trees.",
        "Two giraffes stretch their necks to reach the branches.",
        "A couple of giraffes standing in the savanna.",
    ],
    "pizza": [
        "A pizza with cheese and pepperoni on a plate.",
        "A large pepperoni pizza sitting on a wooden table.",
        "A freshly baked pizza topped with pepperoni slices.",
        "There's a pizza on the table, ready to eat.",
        "A close up of a pepperoni pizza on a pan.",
    ],
}
PREDICTIONS = {
    "kitchen": "A woman cutting vegetables on a counter in her kitchen.",
    "surf": "A surfer riding a wave in the ocean.",
    "train": "A train pulling into a station.",
    "giraffes": "Two giraffes are standing in a field.",
    "pizza": "A pizza sitting on top of a wooden table.",
}
WITHOUT_SPICE = [m for m in CAPTION_METRICS if m != "SPICE"]
COCO_NAMES = {"BLEU-1": "Bleu_1", "BLEU-2": "Bleu_2", "BLEU-3": "Bleu_3", "BLEU-4": "Bleu_4",
              "METEOR": "METEOR", "ROUGE-L": "ROUGE_L", "CIDEr": "CIDEr", "SPICE": "SPICE"}


def _need_java() -> str:
    java = java_available()
    if java is None:
        pytest.fail("these tests need Java (PTBTokenizer, METEOR): apt-get install default-jre-headless, "
                    "which `bash scripts/install.sh test` does when run as root")
    return java


def _coco_eval(predictions: dict[str, str], references: dict[str, list[str]], meteor: Any = None,
               spice: bool = False) -> dict[str, Any]:
    """pycocoevalcap's COCOEvalCap.evaluate without its COCO objects: PTBTokenizer on gts and res,
    then each scorer's compute_score. {COCOEvalCap name: (score, per-image scores)}."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({i: [{"caption": c} for c in refs] for i, refs in references.items()})
    res = tokenizer.tokenize({i: [{"caption": predictions[i]}] for i in references})
    out: dict[str, Any] = {}
    bleu, bleu_images = Bleu(4).compute_score(gts, res, verbose=0)
    for n in range(4):
        out[f"Bleu_{n + 1}"] = (bleu[n], bleu_images[n])
    if meteor is not None:
        out["METEOR"] = meteor.compute_score(gts, res)
    out["ROUGE_L"] = Rouge().compute_score(gts, res)
    out["CIDEr"] = Cider().compute_score(gts, res)
    if spice:
        from pycocoevalcap.spice.spice import Spice

        score, images = Spice().compute_score(gts, res)
        out["SPICE"] = (score, [image["All"]["f"] for image in images])
    return out


SAME = "A black dog is running across a snowy field."


@pytest.fixture(scope="module")
def runs() -> dict[str, Any]:
    """The three METEOR runs of this file (each JVM loads for about 5 s): ours and pycocoevalcap's on
    the realistic set, and ours on a caption identical to its only reference next to an unrelated one.
    Side by side where there are cores to spare (which also runs caption_scores concurrently); one
    after the other on small machines, where JVMs loading together are slower than in turn."""
    _need_java()
    from pycocoevalcap.meteor.meteor import Meteor

    def pair() -> CaptionScores:
        return caption_scores({"same": SAME, "unrelated": "A plate of sliced oranges on a table."},
                              {"same": [SAME], "unrelated": [SAME]}, metrics=WITHOUT_SPICE)

    with ThreadPoolExecutor(3 if (os.cpu_count() or 1) >= 6 else 1) as pool:
        jobs: dict[str, Future[Any]] = {"ours": pool.submit(caption_scores, PREDICTIONS, REFERENCES, metrics=WITHOUT_SPICE),
                "pair": pool.submit(pair),
                "reference": pool.submit(lambda: _coco_eval(PREDICTIONS, REFERENCES, meteor=Meteor()))}
        return {name: job.result() for name, job in jobs.items()}


def test_identical_prediction_scores_full_bleu_and_rouge(runs: dict[str, Any]):
    same = runs["pair"].per_image["same"]
    for n in range(1, 5):
        # pycocoevalcap smooths every precision as (correct + 1e-15) / (guess + 1e-9): 100 - 1e-8.
        assert same[f"BLEU-{n}"] == pytest.approx(100.0, abs=1e-6)
    assert same["ROUGE-L"] == 100.0
    assert runs["pair"].tokenizer == "ptb"


def test_bleu_by_hand():
    _need_java()
    scores = caption_scores({"a": "The the the cat."}, {"a": ["The cat is on the mat."]}, metrics=["BLEU-1", "BLEU-2"])
    # Tokens: prediction "the the the cat" (4), reference "the cat is on the mat" (6); "." dropped.
    # Unigrams: "the" 3 times, clipped to the reference's 2, + "cat" 1 -> p1 = 3/4.
    # Bigrams: "the the" x2 (0 in the reference), "the cat" (1) -> p2 = 1/3.
    # Brevity penalty: 4 < 6 -> exp(1 - 6/4) = exp(-0.5).
    # BLEU-1 = BP * p1 = 0.75 e^-0.5 = 0.45490; BLEU-2 = BP * sqrt(p1 p2) = e^-0.5 * 0.5 = 0.30327.
    assert scores.scores["BLEU-1"] == pytest.approx(100 * 0.75 * math.exp(-0.5), rel=1e-6)
    assert scores.scores["BLEU-2"] == pytest.approx(100 * 0.5 * math.exp(-0.5), rel=1e-6)
    assert scores.per_image["a"]["BLEU-2"] == pytest.approx(100 * 0.5 * math.exp(-0.5), rel=1e-6)
    assert set(scores.scores) == {"BLEU-1", "BLEU-2"}


def test_matches_pycocoevalcap_pipeline(runs: dict[str, Any]):
    ours: CaptionScores = runs["ours"]
    reference = runs["reference"]
    assert ours.tokenizer == "ptb"
    assert list(ours.scores) == WITHOUT_SPICE
    assert ours.unavailable == {}
    for metric in WITHOUT_SPICE:
        score, images = reference[COCO_NAMES[metric]]
        assert ours.scores[metric] == pytest.approx(100 * score, abs=1e-9), metric
        for image_id, value in zip(REFERENCES, images, strict=True):
            assert ours.per_image[image_id][metric] == pytest.approx(100 * value, abs=1e-9), (metric, image_id)


def test_realistic_set_values(runs: dict[str, Any]):
    # The figures the parity test checks against pycocoevalcap, written out so a change shows in
    # review. CIDEr is high because its IDF comes from 5 images' references, not COCO's 5,000.
    expected = {"BLEU-1": 90.2162, "BLEU-2": 80.8474, "BLEU-3": 65.1277, "BLEU-4": 52.4082,
                "METEOR": 38.5613, "ROUGE-L": 77.1614, "CIDEr": 173.0581}
    assert runs["ours"].scores == pytest.approx(expected, abs=1e-4)


def test_meteor_runs_with_java(runs: dict[str, Any]):
    pair: CaptionScores = runs["pair"]
    assert "METEOR" not in pair.unavailable
    assert 0 < pair.scores["METEOR"] <= 100
    assert 0 < pair.per_image["same"]["METEOR"] <= 100
    assert pair.per_image["same"]["METEOR"] > pair.per_image["unrelated"]["METEOR"]
    assert 0 < runs["ours"].scores["METEOR"] <= 100


def test_without_java_uses_simple_tokenizer(runs: dict[str, Any], monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(captions_module, "java_available", lambda: None)
    scores = caption_scores(PREDICTIONS, REFERENCES)
    assert scores.tokenizer == "simple"
    assert set(scores.unavailable) == {"METEOR", "SPICE"}
    assert all("Java" in reason for reason in scores.unavailable.values())
    # On these captions the simple tokenizer gives PTBTokenizer's tokens, so the same numbers.
    assert list(scores.scores) == ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L", "CIDEr"]
    for metric, value in scores.scores.items():
        assert value == pytest.approx(runs["ours"].scores[metric], abs=1e-9), metric


def test_without_java_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert java_available() is None
    scores = caption_scores({"a": "a dog", "b": "a cat"}, {"a": ["a dog runs"], "b": ["a cat sleeps"]})
    assert scores.tokenizer == "simple"
    assert "Java" in scores.unavailable["METEOR"] and "Java" in scores.unavailable["SPICE"]
    assert "default-jre-headless" in scores.unavailable["METEOR"]
    assert {"BLEU-4", "ROUGE-L", "CIDEr"} <= set(scores.scores)


def test_simple_tokenizer_agrees_with_ptb():
    java = _need_java()
    texts = [c for refs in REFERENCES.values() for c in refs] + list(PREDICTIONS.values()) + [
        "A dog's ball (red) [big] isn't \"here\".",
        "A black-and-white photo of 3.5 cats, e.g. at 10:30 a.m.; well... OK",
        "CAN'T stop, won't stop - they're off -- fast!",
        "It costs $5 (50% off) at #1 x/y",
    ]
    assert [captions_module._simple_tokenize(t) for t in texts] == captions_module._ptb_tokenize(java, texts)


def _fake_jars(lib: Path) -> Path:
    lib.mkdir(parents=True, exist_ok=True)
    for name in ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar"):
        (lib / name).write_bytes(b"")
    return lib


def test_spice_without_corenlp_jars(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    _need_java()
    monkeypatch.setattr(captions_module, "_spice_lib_dir", lambda: tmp_path)

    def no_download(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("SPICE must not download the CoreNLP jars")

    monkeypatch.setattr("pycocoevalcap.spice.get_stanford_models.urlretrieve", no_download)
    scores = caption_scores(PREDICTIONS, REFERENCES, metrics=["SPICE", "CIDEr"])
    assert list(scores.scores) == ["CIDEr"]
    reason = scores.unavailable["SPICE"]
    assert "stanford-corenlp-3.6.0.jar" in reason and "stanford-corenlp-3.6.0-models.jar" in reason
    assert "get_stanford_models()" in reason
    (tmp_path / "stanford-corenlp-3.6.0.jar").write_bytes(b"")
    reason = caption_scores(PREDICTIONS, REFERENCES, metrics=["SPICE"]).unavailable["SPICE"]
    assert "models.jar" in reason and "stanford-corenlp-3.6.0.jar," not in reason


@pytest.mark.skipif(os.name == "nt", reason="the stand-in java is a shell script")
def test_failing_java_is_reported_not_raised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    # A java that answers -version and fails everything else, as a JVM without memory would.
    home = tmp_path / "jre"
    (home / "bin").mkdir(parents=True)
    java = home / "bin" / "java"
    java.write_text('#!/bin/sh\n[ "$1" = -version ] && exit 0\necho "Error: boom" >&2\nexit 1\n')
    java.chmod(java.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("JAVA_HOME", str(home))
    monkeypatch.setattr(captions_module, "_spice_lib_dir", lambda: _fake_jars(tmp_path / "lib"))
    assert java_available() == str(java)
    with pytest.warns(UserWarning, match="PTBTokenizer failed.*boom"):
        scores = caption_scores(PREDICTIONS, REFERENCES)
    assert scores.tokenizer == "simple"
    assert scores.unavailable["METEOR"].startswith("METEOR failed: java exited with code 1: Error: boom")
    assert scores.unavailable["SPICE"].startswith("SPICE failed: java exited with code 1: Error: boom")
    assert {"BLEU-4", "ROUGE-L", "CIDEr"} <= set(scores.scores)


def test_java_available(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("JAVA_HOME", raising=False)
    stub = tmp_path / "path" / "java"  # macOS's /usr/bin/java without a JDK: exits 1
    stub.parent.mkdir()
    stub.write_text("#!/bin/sh\nexit 1\n")
    stub.chmod(stub.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", str(stub.parent))
    assert java_available() is None
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "nowhere"))
    assert java_available() is None


def test_line_breaks_inside_captions_stay_with_their_image():
    _need_java()
    # PTBTokenizer ends lines at \r and U+2028 too; they must not shift captions onto other images.
    broken = {"kitchen": "A woman is cutting\rvegetables in a kitchen.", "pizza": "A pizza sitting\u2028on a table."}
    clean = {"kitchen": "A woman is cutting vegetables in a kitchen.", "pizza": "A pizza sitting on a table."}
    refs = {"kitchen": REFERENCES["kitchen"], "pizza": [REFERENCES["pizza"][0] + "\n", REFERENCES["pizza"][1]]}
    metrics = ["BLEU-4", "ROUGE-L", "CIDEr"]
    assert caption_scores(broken, refs, metrics=metrics) == caption_scores(clean, refs, metrics=metrics)


def test_single_image_has_no_cider():
    scores = caption_scores({"a": "a dog"}, {"a": ["a dog runs"]}, metrics=["CIDEr", "ROUGE-L"])
    assert list(scores.scores) == ["ROUGE-L"]
    assert "at least 2 images" in scores.unavailable["CIDEr"]


def test_missing_pycocoevalcap_names_the_extra(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "pycocoevalcap.bleu.bleu", None)  # import fails as if not installed
    with pytest.raises(VlmkitError, match=r"pip install 'vlmkit\[eval\]'"):
        caption_scores({"a": "a dog"}, {"a": ["a dog runs"]})


@pytest.mark.parametrize(
    ("predictions", "references", "metrics", "message"),
    [
        ({"1": "a", "2": "b", "3": "c"}, {"1": ["a"], "4": ["d"]}, None, "'2', '3'.*'4'"),
        ({}, {}, None, "no captions"),
        ({"1": "a"}, {}, None, "no references"),
        (["a"], {"1": ["a"]}, None, "mappings"),
        ({"1": ["a"]}, {"1": ["a"]}, None, "one str"),
        ({"1": "a"}, {"1": "a"}, None, "list of str.*wrap"),
        ({"1": "a"}, {"1": []}, None, "no reference captions"),
        ({"1": "a"}, {"1": ["a", 2]}, None, "must be str"),
        ({1: "a"}, {1: ["a"]}, None, "ids must be str"),
        ({"1": "a"}, {"1": ["a"]}, ["BLEU", "CIDEr"], "unknown metric.*'BLEU'.*BLEU-1, BLEU-2.*SPICE"),
        ({"1": "a"}, {"1": ["a"]}, "CIDEr", "list of names"),
        ({"1": "a"}, {"1": ["a"]}, [], "no metrics"),
    ],
)
def test_bad_input(predictions: Any, references: Any, metrics: Any, message: str):
    with pytest.raises(InputError, match=message):
        caption_scores(predictions, references, metrics=metrics)


@pytest.mark.slow
def test_spice_matches_pycocoevalcap():
    # SPICE needs the CoreNLP jars (a download) and parses every caption with CoreNLP: minutes.
    missing = captions_module._spice_missing(_need_java())
    if missing:
        pytest.skip(missing)
    ours = caption_scores(PREDICTIONS, REFERENCES, metrics=["SPICE"])
    if "SPICE" in ours.unavailable:
        pytest.fail(ours.unavailable["SPICE"])
    score, images = _coco_eval(PREDICTIONS, REFERENCES, spice=True)["SPICE"]
    assert ours.scores["SPICE"] == pytest.approx(100 * score, abs=1e-9)
    assert [ours.per_image[i]["SPICE"] for i in REFERENCES] == pytest.approx([100 * v for v in images], abs=1e-9)
