"""`compare`: the built-in default and tiny checkpoints of several families side by side on real photos;
the report's cells, counts and timings; the HTML page in headless Chromium; the CLI's errors."""

from __future__ import annotations

import gc
import json
import re
import statistics
import weakref
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from numerics import REORDERED
from test_serve_search import CHROMIUM, CHROMIUM_ARGS

import vlmkit
import vlmkit.eval.comparison.run as compare_module
from vlmkit.errors import ImageError, InputError
from vlmkit.eval.comparison import CompareReport, compare, imagenet_labels, render_markdown
from vlmkit.models.kinds import supported_by
from vlmkit_cli.main import main

FAMILIES = ("blip_caption", "blip2_opt", "clip", "llava")
QUESTIONS = ("What is in the picture?", "Is it a cat?")
LABELS = ("a cat", "a cup of coffee", "a rocket", "a motorcycle", "an astronaut", "a bird")
MISSING_MODEL = "./no/such/model"


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models gain nothing from intra-op threads, and on a busy machine a thread team waiting at
    its barriers makes every call up to 50x slower; one thread keeps the module fast everywhere."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _torch_parameters(model: object) -> int:
    """Parameters of every torch module the wrapper holds, counted independently of num_parameters."""
    seen: dict[int, int] = {}
    for value in vars(model).values():
        if isinstance(value, torch.nn.Module):
            seen.update((id(p), p.numel()) for p in value.parameters())
    return sum(seen.values())


@pytest.fixture(scope="module")
def run(photos: dict[str, Path], tiny: dict[str, Path]) -> Iterator[dict]:
    """One comparison of the default and four tiny families (and a model that does not exist) on two
    photos, recording each model's torch parameters and that it was freed before the next loaded."""
    loaded: list[weakref.ref] = []
    alive_at_load: list[int] = []  # models loaded before and still alive, at each load
    parameters: dict[str, int] = {}
    steps: list[tuple[int, int, str]] = []

    def recording_load(name: str, **kwargs: object) -> vlmkit.VisionLanguageModel:
        gc.collect()
        alive_at_load.append(sum(ref() is not None for ref in loaded))
        model = vlmkit.load(name, **kwargs)
        loaded.append(weakref.ref(model))
        parameters[name] = _torch_parameters(model)
        return model

    images = [str(photos["cat"]), str(photos["coffee"])]
    models = ["default", *(str(tiny[f]) for f in FAMILIES), MISSING_MODEL]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(compare_module, "load", recording_load)
        report = compare(
            images, models, questions=QUESTIONS, labels=LABELS, runs=2, progress=lambda *a: steps.append(a)
        )
    gc.collect()
    yield {
        "report": report,
        "images": images,
        "models": models,
        "parameters": parameters,
        "alive_at_load": alive_at_load,
        "alive_after": sum(ref() is not None for ref in loaded),
        "steps": steps,
    }


def test_every_cell_is_filled_or_not_supported(run: dict) -> None:
    report: CompareReport = run["report"]
    assert report.images == tuple(run["images"]) and [m.name for m in report.models] == run["models"]
    assert report.tasks == ("caption", "ask", "classify") and report.questions == QUESTIONS
    by_label = {kind.label: kind for kind in vlmkit.KINDS.values()}
    kinds = {m.name: by_label[m.kind] for m in report.models if m.loaded}
    for image in run["images"]:
        for name, kind in kinds.items():
            cell = report.cell(image, name)
            assert cell is not None and [o.task for o in cell.outcomes] == list(report.tasks)
            for outcome in cell.outcomes:
                if outcome.task in kind.tasks:
                    assert outcome.status == "ok", outcome.message
                    if outcome.task == "classify":
                        assert len(outcome.labels) == 5 and {r.label for r in outcome.labels} <= set(LABELS)
                        scores = [r.score for r in outcome.labels]
                        # float32 probabilities, each an ulp or two off (numpy's exp and the
                        # normalising sum vary by machine): their sum may pass 1 by a few ulps.
                        assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1 + REORDERED
                    else:
                        expected = 1 if outcome.task == "caption" else len(QUESTIONS)
                        assert len(outcome.texts) == expected and all(isinstance(t, str) for t in outcome.texts)
                else:
                    assert outcome.status == "not supported" and outcome.latency is None
                    assert outcome.supported_by == tuple(supported_by(outcome.task))
                    assert f"cannot '{outcome.task}'; models that can: " in outcome.message

    default, clip = report.cell(run["images"][0], "default"), report.cell(run["images"][0], str(run["models"][3]))
    assert default.outcome("caption").texts[0].startswith("a photo of")  # type: ignore[union-attr]
    assert default.outcome("classify").labels[0].label == "a cat"  # type: ignore[union-attr]
    assert report.cell(run["images"][1], "default").outcome("classify").labels[0].label == "a cup of coffee"  # type: ignore[union-attr]
    assert default.outcome("ask").status == "not supported"  # type: ignore[union-attr]
    assert clip.outcome("caption").status == "not supported" and clip.outcome("classify").status == "ok"  # type: ignore[union-attr]


def test_a_model_that_does_not_load_is_recorded(run: dict) -> None:
    report: CompareReport = run["report"]
    missing = report.models[-1]
    assert not missing.loaded and "no such directory" in (missing.error or "")
    assert missing.parameters is None and all(report.cell(image, MISSING_MODEL) is None for image in run["images"])


def test_counts_timings_memory_and_freeing(run: dict) -> None:
    report: CompareReport = run["report"]
    for model in report.models[:-1]:
        assert model.parameters == run["parameters"][model.name] > 0
        assert model.load_s is not None and model.load_s > 0
        assert model.peak_memory_bytes is not None and model.peak_memory_bytes >= 0
    assert report.models[0].peak_memory_bytes > 0  # type: ignore[operator] - the built-in's 27M weights
    assert run["alive_at_load"] == [0] * 6 and run["alive_after"] == 0  # one model in memory at a time
    timed = [o for c in report.cells for o in c.outcomes if o.status == "ok"]
    # Two images, each: the built-in captions and classifies, BLIP captions, BLIP-2 captions and answers,
    # CLIP classifies, LLaVA captions and answers.
    assert len(timed) == 2 * (2 + 1 + 2 + 1 + 2)
    for outcome in timed:
        latency = outcome.latency
        assert latency is not None and len(latency.runs_s) == 2 and latency.warmup_s > 0
        assert all(s > 0 for s in latency.runs_s)
        assert latency.median_s == pytest.approx(statistics.median(latency.runs_s)) == pytest.approx(sum(latency.runs_s) / 2)
    cells = [c for c in report.cells if c.model == "default"]
    expected = statistics.median(c.outcome("caption").latency.median_s for c in cells)  # type: ignore[union-attr]
    assert report.median_latency("default", "caption") == pytest.approx(expected)
    assert report.median_latency("default", "ask") is None
    steps = run["steps"]
    assert [s[0] for s in steps] == sorted(s[0] for s in steps) and steps[-1][0] == steps[-1][1] == 6 * (1 + 2 * 3)
    assert "psutil" in report.memory_method or "/proc/self/statm" in report.memory_method


def test_to_dict_is_json(run: dict) -> None:
    data = json.loads(json.dumps(run["report"].to_dict()))
    assert data["runs"] == 2 and data["labels"] == list(LABELS)
    assert data["models"][0]["kind"] == "conse (ConSE)" and data["models"][-1]["error"]
    cell = data["cells"][0]
    assert cell["outcomes"][2]["labels"][0] == {"label": "a cat", "score": pytest.approx(cell["outcomes"][2]["labels"][0]["score"])}
    assert set(data["median_latency_s"]["default"]) == {"caption", "ask", "classify"}


def test_markdown_tables(run: dict) -> None:
    text = render_markdown(run["report"])
    assert "## chelsea.png" in text and "![chelsea.png](chelsea.png)" in text and "## Models" in text
    header = next(line for line in text.splitlines() if line.startswith("|   | default"))
    assert header.count("|") == 2 + len(run["models"])
    assert "| Q: What is in the picture? |" in text and "*not supported*" in text
    tables = re.findall(r"(?:^\|.*\n)+", text, flags=re.M)
    assert len(tables) == 2 + 1 + 1  # one per image, the models, the median latencies
    for table in tables:
        pipes = {len(re.findall(r"(?<!\\)\|", line)) for line in table.splitlines()}
        assert len(pipes) == 1, table  # every row has as many cells as the header


def test_default_labels_are_imagenet(photos: dict[str, Path], tiny: dict[str, Path]) -> None:
    labels = imagenet_labels()
    assert len(labels) == len(set(labels)) == 1000 and "tabby" in labels and "espresso" in labels
    report = compare(photos["cat"], tiny["clip"], tasks=["classify"], runs=1)
    assert report.labels is None and report.tasks == ("classify",)
    (cell,) = report.cells
    assert {r.label for r in cell.outcome("classify").labels} <= set(labels)  # type: ignore[union-attr]


def test_bad_arguments(photos: dict[str, Path], bad_images: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compare_module, "load", lambda *a, **k: pytest.fail("no model may load before the images are checked"))
    with pytest.raises(ImageError, match="not an image"):
        compare([photos["cat"], bad_images["text"]], ["default"])
    for kwargs, words in [
        ({"tasks": ["caption", "dance"]}, "unknown task 'dance'"),
        ({"tasks": ["ask"]}, "needs at least one question"),
        ({"runs": 0}, "runs must be a positive integer"),
        ({"labels": ["a", "a"]}, "distinct"),
        ({"templates": ["a photo"]}, "has no '{}'"),
    ]:
        with pytest.raises(InputError, match=words):
            compare([photos["cat"]], ["default"], **kwargs)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="more than once"):
        compare([photos["cat"]], ["default", "default"])


def test_peak_memory_sees_an_allocation() -> None:
    with compare_module._PeakMemory(torch.device("cpu"), interval_s=0.001) as memory:
        block = np.ones(200 * 2**20, dtype=np.uint8)  # 200 MiB, every page touched
        del block
    assert memory.peak_bytes is not None and memory.peak_bytes > 150 * 2**20


# -- the CLI and the page -------------------------------------------------------------------------

SCRIPT = "<script>alert(1)</script>"


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["compare", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"the page test needs Chromium, not found at {CHROMIUM}: apt-get install -y chromium", pytrace=False)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def test_cli_report_in_chromium(
    capsys: pytest.CaptureFixture[str], photos: dict[str, Path], tiny: dict[str, Path], tmp_path: Path, browser: object
) -> None:
    out = tmp_path / "report.html"
    models = f"default,{tiny['clip']},{tiny['llava']}"
    labels = f"a cat,a cup of coffee,{SCRIPT},a | pipe"
    code, stdout, err = _cli(
        capsys, str(photos["cat"]), str(photos["coffee"]), "--models", models, "--question", "What is it?",
        "--labels", labels, "--runs", "1", "--out", str(out),
    )  # fmt: skip
    assert code == 0, err
    assert stdout.splitlines() == [f"wrote {out}", f"wrote {tmp_path / 'report.md'}"]
    markdown = (tmp_path / "report.md").read_text()
    assert "a \\| pipe" in markdown and "\\<script\\>alert(1)\\</script\\>" in markdown
    page_html = out.read_text()
    assert "<script" not in page_html and "&lt;script&gt;alert(1)&lt;/script&gt;" in page_html

    page = browser.new_page(viewport={"width": 1280, "height": 900})  # type: ignore[attr-defined]
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.goto(out.as_uri())
    page.wait_for_function("() => [...document.images].every(i => i.complete)")
    widths = page.evaluate("() => [...document.images].map(i => i.naturalWidth)")
    assert len(widths) == 2 and all(0 < w <= 256 for w in widths)
    chart = page.locator("#latency-chart svg")
    assert chart.is_visible() and chart.bounding_box()["width"] > 300
    for section in ("#image-1", "#image-2"):
        heads = page.locator(f"{section} thead th.model")
        assert heads.all_inner_texts() == ["default", "clip", "llava"]
        assert heads.nth(1).get_attribute("data-model") == str(tiny["clip"])
    assert page.evaluate("() => document.scripts.length") == 0
    assert page.locator("ol.labels li", has_text=SCRIPT).count() == 4  # the built-in and CLIP, two images
    assert page.locator("#models tbody tr").count() == 3
    assert all(url == out.as_uri() or url.startswith("data:") for url in requested), requested  # self-contained
    shot = tmp_path / "compare-report.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 20_000
    print(f"screenshot: {shot}")
    page.close()


def test_cli_json_and_markdown_on_stdout(capsys: pytest.CaptureFixture[str], photos: dict[str, Path], tiny: dict[str, Path]) -> None:
    code, out, err = _cli(capsys, str(photos["cat"]), "--models", str(tiny["clip"]), "--labels", "a cat,a dog", "--runs", "1", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["tasks"] == ["caption", "classify"] and data["models"][0]["parameters"] > 0
    code, out, err = _cli(capsys, str(photos["cat"]), "--models", str(tiny["clip"]), "--tasks", "classify", "--labels", "a cat,a dog", "--runs", "1")
    assert code == 0, err
    assert out.startswith("# Model comparison") and "| top 5 labels |" in out


@pytest.mark.parametrize(
    "argv, words",
    [
        (["{missing}", "--models", "default"], "no such file"),
        (["{cat}", "{corrupt}", "--models", "default"], "corrupt.jpg: "),
        (["{cat}", "--models", "not a model!!", "--tasks", "caption"], "unknown model 'not a model!!'"),
        (["{cat}", "--models", "./no/such/model", "--tasks", "caption"], "./no/such/model: no such directory"),
        (["{cat}", "--models", "default", "--tasks", "ask"], "the ask task needs a question"),
        (["{cat}", "--models", "default", "--out", "report.txt"], "ending in .html"),
    ],
)
def test_cli_errors_are_one_line(
    capsys: pytest.CaptureFixture[str], photos: dict[str, Path], bad_images: dict[str, Path], argv: list[str], words: str
) -> None:
    argv = [a.format(cat=photos["cat"], missing=bad_images["missing"], corrupt=bad_images["corrupt"]) for a in argv]
    code, _, err = _cli(capsys, *argv)
    assert code == 1 and words in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_cli_out_creates_its_folder(capsys: pytest.CaptureFixture[str], photos: dict[str, Path], tiny: dict[str, Path], tmp_path: Path) -> None:
    """--out in a folder that does not exist yet: it is made, as every command that writes does."""
    report = tmp_path / "new" / "deeper" / "report.html"
    code, out, err = _cli(capsys, str(photos["cat"]), "--models", str(tiny["clip"]), "--tasks", "classify", "--labels", "a cat,a dog",
                          "--runs", "1", "--out", str(report))
    assert code == 0, err
    assert report.is_file() and report.with_suffix(".md").is_file() and f"wrote {report}" in out


def test_cli_usage_errors(capsys: pytest.CaptureFixture[str], photos: dict[str, Path]) -> None:
    for argv in (["--models", "default", "--tasks", "caption,dance"], ["--models", "default", "--runs", "0"], []):
        with pytest.raises(SystemExit) as info:
            main(["compare", str(photos["cat"]), *argv])
        assert info.value.code == 2
    err = capsys.readouterr().err
    assert "unknown task 'dance'" in err and "the following arguments are required: --models" in err
