"""CapFilt (:func:`vlmkit.bootstrap.capfilt` and ``vlmkit bootstrap``) with a tiny untrained BLIP
exported as captioner and filter, on shapes scenes whose web texts are partly wrong: the dataset
reads back as the clean set plus exactly the texts the filter scores at or above the threshold, the
report's counts add up, thresholds 0 and 1 keep everything and nothing, a run killed mid-way
continues to the dataset a straight run writes, and bad inputs are one-line errors that write
nothing. The Ray engine is checked against the local one in test_index_ray.py (its cluster)."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
from pathlib import Path
from typing import Any

import pytest
from index_fakes import tiny_blip_exports

import vlmkit
from vlmkit.bootstrap import JOURNAL_FILE, REPORT_FILE, capfilt, web_examples
from vlmkit.data import Example, make_split, read_dataset
from vlmkit.errors import InputError
from vlmkit_cli.main import main

UNRELATED = "a bowl of soup on a wooden table"


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    captioner, filter_dir = tiny_blip_exports(tmp_path_factory.mktemp("blip"))
    return {"captioner_dir": captioner, "filter_dir": filter_dir, "captioner": vlmkit.load(captioner), "filter": vlmkit.load(filter_dir)}


@pytest.fixture(scope="module")
def web() -> list[Example]:
    """Six scenes as a web crawl: each with its own caption, three also with another scene's (a wrong
    colour, shape or count), one also with an unrelated text, one with a text longer than the text
    encoder's positions (cut to fit), and one with no text at all."""
    scenes = make_split(6, 3)
    texts: list[tuple[str, ...]] = []
    for i, scene in enumerate(scenes):
        own = (scene.captions[0],)
        texts.append(own + (scenes[(i + 1) % 6].captions[0],) if i % 2 == 0 else own)
    texts[5] = texts[5] + (UNRELATED,)
    texts[1] = texts[1] + (" ".join(scenes[1].captions),)
    texts[3] = ()
    return [dataclasses.replace(scene, captions=t) for scene, t in zip(scenes, texts, strict=True)]


@pytest.fixture(scope="module")
def clean() -> list[Example]:
    return make_split(2, 9, "test")


@pytest.fixture(scope="module")
def straight(models: dict[str, Any], web: list[Example], clean: list[Example], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A straight run with batches of two: its output folder."""
    out = tmp_path_factory.mktemp("straight") / "out"
    capfilt(models["captioner"], models["filter"], web, out, clean=clean, batch_size=2)
    return out


def _journal(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / JOURNAL_FILE).read_text().splitlines()]


def _read_back(out: Path) -> list[tuple[str, tuple[str, ...]]]:
    spec = json.loads((out / REPORT_FILE).read_text())["spec"]
    return [(e.id, e.captions) for e in read_dataset(spec)]


def test_the_dataset_is_the_clean_set_and_the_texts_the_filter_keeps(straight: Path, models: dict[str, Any], web: list[Example],
                                                                     clean: list[Example]) -> None:
    rows = {Path(r["image"]).name: r for r in _journal(straight)}
    assert sorted(rows) == [f"{i:06d}.png" for i in range(6)] and all(r["n"] == 2 for r in rows.values())
    # The filter's probabilities, worked out again here from the written image files.
    expected = [(f"clean/{e.id}", e.captions) for e in clean]
    for i, example in enumerate(web):
        row = rows[f"{i:06d}.png"]
        texts = [*example.captions, row["caption"]]
        scores = models["filter"].match([straight / row["image"]] * len(texts), texts).scores.tolist()
        # Probabilities from float32 logits batched differently from the run's: rel 1e-4 covers the
        # rounding of the logits; abs 1e-6 the probabilities near 0, where the relative part vanishes.
        assert scores == pytest.approx([*row["web"], row["synthetic"]], rel=1e-4, abs=1e-6)
        kept = tuple(dict.fromkeys(t for t, s in zip(texts, scores, strict=True) if s >= 0.5 and t.strip()))
        if kept:
            expected.append((f"web/{example.id}", kept))
    assert _read_back(straight) == expected
    # Some texts of each kind kept and some removed, so the check above decides something.
    report = json.loads((straight / REPORT_FILE).read_text())
    web_texts, synthetic = report["web_texts"], report["synthetic_captions"]
    assert 0 < web_texts["kept"] < web_texts["total"] == 10 and synthetic["total"] == 6
    for counts in (web_texts, synthetic):
        assert counts["kept"] + counts["removed"] == counts["total"] and sum(counts["removed_by"].values()) == counts["removed"]
    held = sum(len(captions) for image_id, captions in expected if image_id.startswith("web/"))
    assert web_texts["kept"] + synthetic["kept"] == held
    assert report["clean"] == {"images": 2, "captions": sum(len(e.captions) for e in clean)}
    assert report["web"]["in_dataset"] + report["web"]["left_out"] == report["web"]["images"] == 6


def test_threshold_zero_keeps_every_text_and_one_keeps_none_without_captioning_again(straight: Path, tmp_path: Path,
                                                                                     models: dict[str, Any], web: list[Example],
                                                                                     clean: list[Example]) -> None:
    import shutil

    out = tmp_path / "out"
    shutil.copytree(straight, out)
    captions = {Path(r["image"]).name: r["caption"] for r in _journal(out)}
    report = capfilt(models["captioner"], models["filter"], web, out, clean=clean, batch_size=2, threshold=0)
    assert (report.done, report.already) == (0, 6)  # the journal's probabilities, refiltered
    assert report.web.kept == report.web.total == 10 and report.synthetic.kept == report.synthetic.total == 6
    everything = [(f"clean/{e.id}", e.captions) for e in clean]
    everything += [(f"web/{e.id}", (*e.captions, captions[f"{i:06d}.png"])) for i, e in enumerate(web)]
    assert _read_back(out) == everything
    report = capfilt(models["captioner"], models["filter"], web, out, clean=clean, batch_size=2, threshold=1)
    assert (report.web.kept, report.synthetic.kept, report.web_images_kept, report.web_images_dropped) == (0, 0, 0, 6)
    assert report.web.removed == {"below_threshold": 10} and report.synthetic.removed == {"below_threshold": 6}
    assert _read_back(out) == [(f"clean/{e.id}", e.captions) for e in clean]


def test_without_a_captioner_only_web_texts_are_filtered_and_without_a_filter_every_text_is_kept(
        straight: Path, tmp_path: Path, models: dict[str, Any], web: list[Example], clean: list[Example]) -> None:
    """BLIP Table 1's "filter only" and "captioner only": the same probabilities and captions as the
    straight run (the same models, batches and seed), without the part that is left out."""
    rows = {Path(r["image"]).name: r for r in _journal(straight)}
    report = capfilt(None, models["filter"], web, tmp_path / "filter", clean=clean, batch_size=2)
    assert report.sampling is None and report.synthetic.total == 0 and "synthetic captions none (no captioner)" in report.summary()
    expected = [(f"clean/{e.id}", e.captions) for e in clean]
    for i, e in enumerate(web):
        scores = rows[f"{i:06d}.png"]["web"]
        kept = tuple(t for t, p in zip(e.captions, scores, strict=True) if t.strip() and p >= 0.5)
        assert [r["caption"] for r in _journal(tmp_path / "filter") if r["image"].endswith(f"{i:06d}.png")] == [None]
        expected += [(f"web/{e.id}", kept)] if kept else []
    assert _read_back(tmp_path / "filter") == expected

    report = capfilt(models["captioner"], None, web, tmp_path / "captioner", clean=clean, batch_size=2)
    assert report.threshold is None and report.web.kept == report.web.total == 10 and report.synthetic.kept == 6
    everything = [(f"clean/{e.id}", e.captions) for e in clean]
    everything += [(f"web/{e.id}", (*e.captions, rows[f"{i:06d}.png"]["caption"])) for i, e in enumerate(web)]
    assert _read_back(tmp_path / "captioner") == everything
    with pytest.raises(InputError, match="needs a captioner, a filter or both"):
        capfilt(None, None, web, tmp_path / "neither")
    assert not (tmp_path / "neither").exists()


class _KilledOnCall:
    """The captioner, failing on its ``k``-th call as a crash or a kill in the middle of a run would."""

    def __init__(self, model: Any, k: int) -> None:
        self.model, self.k, self.calls = model, k, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)

    def caption(self, *args: Any, **kwargs: Any) -> list[str]:
        self.calls += 1
        if self.calls == self.k:
            raise RuntimeError("killed")
        return self.model.caption(*args, **kwargs)  # type: ignore[no-any-return]


def test_a_killed_run_continues_to_the_straight_runs_dataset_without_a_row_twice(straight: Path, tmp_path: Path, models: dict[str, Any],
                                                                                 web: list[Example], clean: list[Example]) -> None:
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="killed"):
        capfilt(_KilledOnCall(models["captioner"], 3), models["filter"], web, out, clean=clean, batch_size=2)
    assert not (out / "captions.json").exists() and not (out / REPORT_FILE).exists()  # nothing half-written
    assert len(_journal(out)) == 4  # the first two batches
    report = capfilt(models["captioner"], models["filter"], web, out, clean=clean, batch_size=2)
    assert (report.done, report.already) == (2, 4)
    assert (out / "captions.json").read_text() == (straight / "captions.json").read_text()
    assert [Path(r["image"]).name for r in _journal(out)] == [f"{i:06d}.png" for i in range(6)]
    # A SIGKILL can leave a batch cut short (here: one of its two rows, then half a line): those
    # rows are dropped and the batch done again, to the same rows as in one go.
    lines = (straight / JOURNAL_FILE).read_text().splitlines(keepends=True)
    (out / JOURNAL_FILE).write_text("".join(lines[:3]) + lines[3][:20])
    report = capfilt(models["captioner"], models["filter"], web, out, clean=clean, batch_size=2)
    assert (report.done, report.already) == (4, 2)
    assert (out / JOURNAL_FILE).read_text() == "".join(lines)
    assert (out / "captions.json").read_text() == (straight / "captions.json").read_text()


def test_bad_inputs_are_one_line_errors_that_write_nothing(models: dict[str, Any], web: list[Example], tmp_path: Path) -> None:
    from vlmkit.testing import build_clip

    clip = vlmkit.load(build_clip(tmp_path / "clip", 0))
    captioner, filter_model = models["captioner"], models["filter"]
    out = tmp_path / "out"
    cases: list[tuple[str, dict[str, Any]]] = [
        ("threshold must be a probability in \\[0, 1\\], got -0.1", {"threshold": -0.1}),
        ("threshold must be a probability in \\[0, 1\\], got 1.5", {"threshold": 1.5}),
        ("the web set has no captions", {"web": [dataclasses.replace(e, captions=()) for e in web]}),
        ("the web set is empty", {"web": []}),
        ("the captioner .* cannot caption", {"captioner": filter_model}),
        ("the captioner .*clip.* cannot caption", {"captioner": clip}),
        ("the filter .* has no image-text matching", {"filter_model": captioner}),
        ("the filter .*clip.* has no ITM head \\(its match is a cosine similarity\\)", {"filter_model": clip}),
        ("sampling must be one of nucleus, beam", {"sampling": "greedy"}),
        ("unknown dataset spec", {"web": "shapes"}),
    ]
    for message, change in cases:
        arguments = {"captioner": captioner, "filter_model": filter_model, "web": web, "out": out, **change}
        with pytest.raises(InputError, match=message) as caught:
            capfilt(**arguments)
        assert "\n" not in str(caught.value)
        assert not out.exists(), message
    with pytest.raises(InputError, match="^3 images but 2 texts"):
        web_examples([e.image for e in web[:3]], ["a", "b"])
    pairs = web_examples([e.image for e in web[:2]], ["a red circle", ["a", "b"]])
    assert [e.captions for e in pairs] == [("a red circle",), ("a", "b")]


# -- the CLI -------------------------------------------------------------------------------------------


def cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def test_cli_writes_the_dataset_and_says_what_to_run_next(models: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "boot"
    argv = ["bootstrap", "--captioner", str(models["captioner_dir"]), "--filter", str(models["filter_dir"]), "--web", "shapes:5",
            "--clean", "shapes:2:test", "--out", str(out), "--sampling", "beam", "--batch-size", "2"]
    code, printed, err = cli(argv)
    assert code == 0, err
    assert printed.startswith("CapFilt, threshold 0.5, beam captions: 5 web images, 5 captioned and filtered now")
    spec = f"coco:{out / 'captions.json'}:{out / 'images'}"
    assert f"the dataset spec {spec}" in err and f"vlmkit train blip --set data.spec={spec} --set train_size=" in err
    examples = list(read_dataset(spec))
    report = json.loads((out / REPORT_FILE).read_text())
    assert len(examples) == 2 + report["web"]["in_dataset"]
    assert sum(len(e.captions) for e in examples) == report["clean"]["captions"] + report["web_texts"]["kept"] + report["synthetic_captions"]["kept"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"--threshold": "1.5"}, "threshold must be a probability in [0, 1], got 1.5"),
        ({"--web": "folder:{images}"}, "the web set has no captions"),
        ({"--captioner": "{filter}"}, "cannot caption"),
        ({"--filter": "{captioner}"}, "has no image-text matching"),
        ({"--clean": "coco:{missing}:{images}"}, "caption annotation file not found"),
        ({"--captioner": None, "--filter": None}, "give --captioner, --filter or both"),
    ],
)
def test_cli_bad_inputs_exit_non_zero_in_one_line_with_no_output(change: dict[str, str | None], message: str, models: dict[str, Any],
                                                                   tmp_path: Path) -> None:
    images = tmp_path / "photos"
    images.mkdir()
    make_split(1, 0)[0].image.save(images / "a.png")
    names = {"images": images, "filter": models["filter_dir"], "captioner": models["captioner_dir"], "missing": tmp_path / "no.json"}
    options = {"--captioner": "{captioner}", "--filter": "{filter}", "--web": "shapes:3", "--out": str(tmp_path / "out"), **change}
    argv = ["bootstrap", *[part.format(**names) for pair in options.items() if pair[1] is not None for part in pair]]
    code, printed, err = cli(argv)
    assert code == 1 and printed == ""
    assert err.startswith("vlmkit: error: ") and err.count("\n") == 1 and message in err, err
    assert "Traceback" not in err and not (tmp_path / "out").exists()
