"""BLIP (``vlmkit train blip``) offline, in two parts: CapFilt on a noisy web crawl (``--part
capfilt``, the default; below), and the recipes-table row (``--part recipes``): pre-training, then
VQA fine-tuning, scored as every recipe of ``bench/recipes_table.py`` is.

The recipes row's steps, each a ``vlmkit_train.blip`` run in-process, from pixels (the ViT trains with the rest):
1. pre-training, ITC with momentum distillation + ITM on hard negatives + LM, on the training
   scenes (preset ``shapes``); it exports the captioner (``model/``) and the retrieval model
   (``retrieval/``), both transformers BLIP checkpoints;
2. VQA fine-tuning from it (``task=vqa``, ``init=`` the pre-training run): BLIP's answer decoder over
   the image-grounded question encoding;
3. the same two runs on easy-VQA's training split.

Figures (``bench/_recipes.py``, through ``vlmkit.load`` of each export): retrieval R@1 on the 1,000
held-out shapes scenes (grouped and strict) and on easy-VQA's test split, CIDEr-D of the
pre-trained captioner's greedy captions (no prompt: pre-training's LM loss has none), and VQA exact
match of the fine-tuned model on 2,000 held-out shapes questions and every easy-VQA test question.

``--part capfilt``: CapFilt (BLIP's Tables 1 to 3) on a noisy shapes "web" crawl
(:func:`vlmkit.data.make_web_split`: one text per image, about half of them wrong: a colour, shape,
count or position, or another scene's text) and a clean "human-annotated" set a tenth of its size
(every true caption of each scene):

1. pre-train BLIP on clean + web: the "no bootstrapping" row;
2. from it, fine-tune the captioner (``task=caption``, prompt "a picture of") and the filter
   (``task=retrieval``: ITC + ITM) on the clean set;
3. bootstrap the web set with :func:`vlmkit.bootstrap.capfilt`: filter only, captioner only (nucleus),
   both with nucleus sampling, both with beam search;
4. pre-train a fresh BLIP on each bootstrapped dataset (the same steps), on the clean set plus the
   web texts we did not corrupt (a perfect filter: the ceiling of filtering), and a BLIP that shares
   no parameter between its text encoder and decoder on the "both, nucleus" dataset (Table 3);
5. score every pre-trained model the same way: zero-shot retrieval R@1 of its retrieval export on
   the 1,000 held-out scenes (grouped and strict), CIDEr-D of a captioner fine-tuned from it on the
   clean set, and VQA exact match of a VQA fine-tune on the training scenes' questions (the same
   downstream data for every row), on 2,000 held-out questions.

Every pre-training (and the fine-tunes scored on it) runs with each of ``seeds``; the captioner,
the filter and the bootstrapped datasets are made once, from seed 0's "no bootstrapping" run. The
filter's precision and recall at removing the web texts we corrupted are scored on the known noise
of each text, and each set of synthetic captions on whether it names only objects in the image and
counts them right (a reader of the caption templates; a caption it cannot read counts as wrong).

Run: ``python bench/blip_offline.py [--scale smoke|full|equal] [--part capfilt|recipes] [--overrides K=V,...] [--out DIR]``.
With no options it prints the CapFilt tables at ``--scale full`` (about 45 minutes on a 2-core
machine); ``--part recipes --scale equal`` makes the recipes-table row (``bench/recipes_table.py``
calls :func:`run` for it).
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _recipes as recipes  # noqa: E402


@dataclass(frozen=True)
class Scale:
    train: int  # training scenes (and easy-VQA training images)
    test: int  # held-out shapes scenes
    easy_test: int | None  # easy-VQA test images (None: all)
    pretrain_steps: int
    vqa_steps: int


SCALES = {
    "smoke": Scale(train=200, test=100, easy_test=100, pretrain_steps=20, vqa_steps=20),
    "full": Scale(train=4000, test=1000, easy_test=None, pretrain_steps=1000, vqa_steps=500),
    "equal": Scale(train=4000, test=1000, easy_test=None, pretrain_steps=recipes.EQUAL_STEPS, vqa_steps=recipes.EQUAL_STEPS),
}


@dataclass(frozen=True)
class CapFiltScale:
    web: int  # web images (one noisy text each)
    clean: int  # clean images (every true caption)
    test: int  # held-out scenes
    vqa_train: int  # training scenes whose questions the VQA fine-tune reads
    pretrain_steps: int
    caption_steps: int  # the captioner's fine-tune, and each row's caption fine-tune
    filter_steps: int
    vqa_steps: int
    seeds: tuple[int, ...]


CAPFILT_SCALES = {
    "smoke": CapFiltScale(web=200, clean=80, test=100, vqa_train=200, pretrain_steps=10, caption_steps=5, filter_steps=5, vqa_steps=5,
                          seeds=(0,)),
    "full": CapFiltScale(web=4000, clean=400, test=1000, vqa_train=4000, pretrain_steps=recipes.EQUAL_STEPS, caption_steps=200, filter_steps=200,
                         vqa_steps=300, seeds=(0, 1)),
}
#: The clean set's stream (the web set is seed 0's training scenes, as the VQA fine-tune's).
CLEAN_SEED = 1


def _train(overrides: list[str], out: Path) -> dict[str, Any]:
    from vlmkit_train.blip import blip_train_config, train_blip

    if not (out / "model" / "config.json").is_file():
        train_blip(blip_train_config("shapes", [*overrides, "log_every=50"]), out)
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    return {key: round(value, 4) if isinstance(value, float) else value for key, value in last.items() if key not in ("lr", "processes")}


def _recipe(data: recipes.Data, out: Path, scale: Scale, extra: list[str], timer: recipes.Timer) -> dict[str, Any]:
    import vlmkit

    name = data.name.replace("-", "_")
    common = [f"data={data.name}", f"train_size={len(data.train)}", *extra]
    pretrain = timer(f"{name}_pretrain", lambda: _train([*common, f"max_steps={scale.pretrain_steps}"], out / f"{name}_pretrain"))
    vqa = timer(f"{name}_vqa", lambda: _train([*common, "task=vqa", f"init={out / f'{name}_pretrain'}", f"max_steps={scale.vqa_steps}"],
                                             out / f"{name}_vqa"))
    figures: dict[str, Any] = {"training": {"pretrain": pretrain, "vqa": vqa}}
    retrieval = vlmkit.load(out / f"{name}_pretrain" / "retrieval")
    figures.update(timer(f"{name}_score_retrieval", lambda: recipes.score(retrieval, data, ("retrieval",))))
    captioner = vlmkit.load(out / f"{name}_pretrain" / "model")
    figures.update(timer(f"{name}_score_caption", lambda: recipes.score(captioner, data, ("caption",))))
    answerer = vlmkit.load(out / f"{name}_vqa" / "model")
    figures.update(timer(f"{name}_score_vqa", lambda: recipes.score(answerer, data, ("vqa",))))
    return figures


# -- CapFilt -------------------------------------------------------------------------------------------


def _write_coco(examples: list[Any], out: Path) -> str:
    """``examples`` (in-memory images) as PNG files and COCO caption JSON: the spec that reads them."""
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    listed, annotations = [], []
    for i, e in enumerate(examples):
        name = f"{i:06d}.png"
        if not (images / name).is_file():
            e.image.save(images / name)
        listed.append({"id": i, "file_name": name})
        annotations += [{"id": len(annotations), "image_id": i, "caption": c} for c in e.captions]
    (out / "captions.json").write_text(json.dumps({"images": listed, "annotations": annotations}))
    return f"coco:{out / 'captions.json'}:{images}"


_PAIR = re.compile(r"(red|green|blue|yellow|purple|orange) (circle|square|triangle|star)")
_COUNT = re.compile(r"(one|two|three|four) shapes?\s*: ")  # the tokenizer's decoding writes "shapes :"


def _names_the_image(scene: Any, text: str) -> bool:
    """A caption names only objects in the scene, at least one, and counts them right when it counts."""
    from vlmkit.data.shapes import NUMBER_WORDS

    named = set(_PAIR.findall(text))
    count = _COUNT.match(text)
    return bool(named) and named <= {(o.colour, o.shape) for o in scene.objects} and (
        count is None or count[1] == NUMBER_WORDS[len(scene.objects)])


def _journal(folder: Path) -> dict[int, dict[str, Any]]:
    """A CapFilt journal's rows by web image index (the images are written as web/NNNNNN.png)."""
    rows = [json.loads(line) for line in (folder / "journal.jsonl").read_text().splitlines() if line.strip()]
    return {int(Path(r["image"]).stem): r for r in rows}


def _filter_figures(folder: Path, noise: list[str], threshold: float) -> dict[str, Any]:
    """The filter's removals against the known noise: precision and recall of "removed" for the
    corrupted web texts, the recall per kind of noise, and how many true texts it removed."""
    rows = _journal(folder)
    removed = [rows[i]["web"][0] < threshold for i in range(len(noise))]
    noisy = [kind != "" for kind in noise]
    per_kind = {kind: round(100 * sum(r for r, k in zip(removed, noise, strict=True) if k == kind) / noise.count(kind), 1)
                for kind in sorted(set(noise) - {""})}
    figures = _removal(removed, noisy)
    figures.update(recall_by_noise=per_kind, web_texts=len(noise), noisy=sum(noisy), by_threshold={
        f"{t:.1f}": _removal([rows[i]["web"][0] < t for i in range(len(noise))], noisy) for t in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)})
    return figures


def _removal(removed: list[bool], noisy: list[bool]) -> dict[str, float]:
    hits = sum(r and n for r, n in zip(removed, noisy, strict=True))
    kept_true = sum(not r and not n for r, n in zip(removed, noisy, strict=True))
    return {"precision": round(100 * hits / max(1, sum(removed)), 1), "recall": round(100 * hits / max(1, sum(noisy)), 1),
            "true_texts_removed": round(100 * (noisy.count(False) - kept_true) / max(1, noisy.count(False)), 1),
            "true_among_kept": round(100 * kept_true / max(1, len(removed) - sum(removed)), 1)}


def _synthetic_figures(folder: Path, scenes: list[Any], threshold: float) -> dict[str, Any]:
    """A run's synthetic captions: how many name the image right, how many the filter keeps, how
    many are distinct, and the share of true ones among those kept."""
    rows = _journal(folder)
    captions = [rows[i]["caption"] or "" for i in range(len(scenes))]
    right = [_names_the_image(scene, c) for scene, c in zip(scenes, captions, strict=True)]
    kept = [rows[i]["synthetic"] is not None and rows[i]["synthetic"] >= threshold for i in range(len(scenes))]
    figures = {"right": round(100 * sum(right) / len(scenes), 1), "distinct": len(set(captions)), "examples": captions[:3]}
    if any(rows[i]["synthetic"] is not None for i in rows):
        figures.update(kept=round(100 * sum(kept) / len(scenes), 1),
                       right_among_kept=round(100 * sum(r and k for r, k in zip(right, kept, strict=True)) / max(1, sum(kept)), 1))
    return figures


def _row(name: str, spec: str, extra: list[str], out: Path, scale: CapFiltScale, data: recipes.Data, clean: str,
         timer: recipes.Timer) -> dict[str, Any]:
    """One row: pre-train on ``spec`` with each seed, then score its retrieval export, a caption
    fine-tune on the clean set and a VQA fine-tune; the figures per seed and their mean and sd."""
    import vlmkit
    from vlmkit.bootstrap import BLIP_PROMPT

    seeds: dict[str, dict[str, Any]] = {}
    for seed in scale.seeds:
        run = out / f"{name}_s{seed}"
        common = [f"seed={seed}", "data_seed=0", *extra]
        timer(f"{name}_s{seed}_pretrain", partial(
            _train, [*common, f"data.spec={spec}", "train_size=1000000", f"max_steps={scale.pretrain_steps}"], run / "pretrain"))
        timer(f"{name}_s{seed}_caption", partial(
            _train, [*common, "task=caption", f"init={run / 'pretrain'}", f"data.spec={clean}", f"max_steps={scale.caption_steps}"],
            run / "caption"))
        timer(f"{name}_s{seed}_vqa", partial(
            _train, [*common, "task=vqa", f"init={run / 'pretrain'}", "data=shapes", f"train_size={scale.vqa_train}",
                     f"max_steps={scale.vqa_steps}"], run / "vqa"))
        scored = run / "figures.json"  # a rerun (a row added) scores only the runs it trained
        if not scored.is_file():
            figures = recipes.retrieval(vlmkit.load(run / "pretrain" / "retrieval"), data)
            captioner = vlmkit.load(run / "caption" / "model")
            figures["cider"], figures["caption_examples"] = recipes.cider(captioner, data, prompt=BLIP_PROMPT)
            figures["vqa"] = recipes.vqa(vlmkit.load(run / "vqa" / "model"), data, recipes.SHAPES_QUESTIONS)
            scored.write_text(json.dumps(figures))
        seeds[str(seed)] = json.loads(scored.read_text())
    summary: dict[str, Any] = {"seeds": seeds}
    for key in ("i2t_r1", "t2i_r1", "strict_i2t_r1", "strict_t2i_r1", "cider", "vqa"):
        values = [f[key] for f in seeds.values()]
        summary[key] = {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0}
    return summary



def run_capfilt(scale_name: str, out: Path, overrides: list[str]) -> dict[str, Any]:
    import vlmkit
    from vlmkit.bootstrap import DEFAULT_THRESHOLD, capfilt
    from vlmkit.data import make_split, make_web_split
    from vlmkit.data.shapes import make_scenes

    scale = CAPFILT_SCALES[scale_name]
    figures: dict[str, Any] = {"recipe": "blip-capfilt", "scale": scale_name, "scale_fields": scale.__dict__, "overrides": overrides}
    timer = recipes.Timer(figures)
    data = recipes.shapes(train=1, test=scale.test)
    web, noise = make_web_split(scale.web, 0)
    clean_examples = make_split(scale.clean, CLEAN_SEED, "train")
    clean = f"shapes:{scale.clean}:train:{CLEAN_SEED}"
    none_spec = timer("write_noisy_set", lambda: _write_coco(
        [*clean_examples, *web], out / "data" / "none"))
    figures["data"] = {"web": scale.web, "clean": scale.clean, "web_true": noise.count(""),
                       "texts": sum(len(e.captions) for e in [*clean_examples, *web]),
                       "oracle_texts": sum(len(e.captions) for e in clean_examples) + noise.count(""),
                       "noise": {k: noise.count(k) for k in sorted(set(noise) - {""})}}
    rows: dict[str, Any] = {}
    rows["none"] = timer("row_none", lambda: _row("none", none_spec, overrides, out, scale, data, clean, timer))
    # The ceiling of filtering: the web texts a perfect filter keeps (those we did not corrupt).
    oracle_spec = _write_coco([*clean_examples, *(e for e, kind in zip(web, noise, strict=True) if kind == "")], out / "data" / "oracle")
    rows["oracle_filter"] = timer("row_oracle_filter", lambda: _row("oracle_filter", oracle_spec, overrides, out, scale, data, clean, timer))

    base = out / "none_s0"
    filter_run = base / "filter"
    timer("filter_finetune", lambda: _train([*overrides, "seed=0", "data_seed=0", "task=retrieval", f"init={base / 'pretrain'}",
                                             f"data.spec={clean}", f"max_steps={scale.filter_steps}"], filter_run))
    captioner, filter_model = vlmkit.load(base / "caption" / "model"), vlmkit.load(filter_run / "model")
    scenes = make_scenes(scale.web, 0, "train")
    datasets: dict[str, tuple[Any, Any, str]] = {
        "filter": (None, filter_model, "nucleus"), "captioner": (captioner, None, "nucleus"),
        "both": (captioner, filter_model, "nucleus"), "both_beam": (captioner, filter_model, "beam"),
    }
    bootstrapped: dict[str, Any] = {}
    for name, (cap, fil, sampling) in datasets.items():
        folder = out / "data" / name
        report = timer(f"capfilt_{name}", partial(capfilt, cap, fil, web, folder, clean=clean_examples, sampling=sampling, batch_size=32))
        bootstrapped[name] = {"report": report.to_json(), "spec": report.spec}
        if cap is not None:
            bootstrapped[name]["synthetic"] = _synthetic_figures(folder, scenes, DEFAULT_THRESHOLD)
    figures["bootstrapped"] = bootstrapped
    figures["filter"] = _filter_figures(out / "data" / "filter", noise, DEFAULT_THRESHOLD)
    for name in datasets:
        rows[name] = timer(f"row_{name}", partial(_row, name, bootstrapped[name]["spec"], overrides, out, scale, data, clean, timer))
    rows["both_no_sharing"] = timer("row_both_no_sharing", lambda: _row(
        "both_no_sharing", bootstrapped["both"]["spec"], [*overrides, "sharing=none"], out, scale, data, clean, timer))
    figures["rows"] = rows
    timer.total()
    recipes.save(figures, out)
    print(capfilt_table(figures))
    return figures


ROW_NAMES = {
    "none": "no bootstrapping (clean + noisy web)", "oracle_filter": "a perfect filter (the true web texts)", "filter": "filter only", "captioner": "captioner only (nucleus)",
    "both": "captioner (nucleus) + filter", "both_beam": "captioner (beam) + filter",
    "both_no_sharing": "captioner (nucleus) + filter, no encoder-decoder sharing",
}


def capfilt_table(figures: dict[str, Any]) -> str:
    """The bench's figures as Markdown tables."""
    def cell(row: dict[str, Any], key: str) -> str:
        digits = 2 if key == "cider" else 1
        return f"{row[key]['mean']:.{digits}f} ± {row[key]['sd']:.{digits}f}"

    seeds = figures["scale_fields"]["seeds"]
    lines = [f"BLIP with CapFilt on {figures['data']['web']} noisy web images + {figures['data']['clean']} clean, "
             f"mean ± sd over seeds {', '.join(map(str, seeds))}" + (f"; every run with {', '.join(figures['overrides'])}" if figures.get("overrides") else ""),
             "", "| pre-training data | texts | R@1 I2T / T2I (grouped) | R@1 I2T / T2I (strict) | CIDEr-D | VQA % |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, row in figures["rows"].items():
        boot = figures["bootstrapped"].get(name.replace("_no_sharing", ""))
        texts = figures["data"]["texts" if name == "none" else "oracle_texts"] if boot is None else (boot["report"]["clean"]["captions"] + boot["report"]["web_texts"]["kept"]
                                                               + boot["report"]["synthetic_captions"]["kept"])
        lines.append(f"| {ROW_NAMES[name]} | {texts} | {cell(row, 'i2t_r1')} / {cell(row, 't2i_r1')} | "
                     f"{cell(row, 'strict_i2t_r1')} / {cell(row, 'strict_t2i_r1')} | {cell(row, 'cider')} | {cell(row, 'vqa')} |")
    f = figures["filter"]
    lines += ["", f"The filter on the {f['web_texts']} web texts ({f['noisy']} corrupted): removing a corrupted text, precision "
              f"{f['precision']}%, recall {f['recall']}%; true texts removed {f['true_texts_removed']}%; "
              f"true among the kept {f.get('true_among_kept', '?')}% (before: {100 * (1 - f['noisy'] / f['web_texts']):.1f}%); recall by noise: "
              + ", ".join(f"{k} {v}%" for k, v in f["recall_by_noise"].items())]
    lines += ["", "| filter threshold | precision of removal % | recall of removal % | true texts removed % | true among kept % |",
              "|---:|---:|---:|---:|---:|"]
    lines += [f"| {t} | {r['precision']} | {r['recall']} | {r['true_texts_removed']} | {r['true_among_kept']} |"
              for t, r in f.get("by_threshold", {}).items()]
    lines += ["", "| synthetic captions | name the image right % | kept by the filter % | right among kept % | distinct |",
              "|---|---:|---:|---:|---:|"]
    for name in ("both", "both_beam"):
        syn = figures["bootstrapped"][name]["synthetic"]
        lines.append(f"| {'nucleus' if name == 'both' else 'beam'} | {syn['right']} | {syn['kept']} | {syn['right_among_kept']} | {syn['distinct']} |")
    lines += ["", f"minutes: {figures['total_minutes']}"]
    return "\n".join(lines)


def run(scale_name: str, out: Path, part: str | None = None, overrides: str | None = None) -> dict[str, Any]:
    if part == "capfilt":
        if scale_name not in CAPFILT_SCALES:
            raise SystemExit(f"--part capfilt runs at --scale {' or '.join(CAPFILT_SCALES)}, not {scale_name}")
        return run_capfilt(scale_name, out, overrides.split(",") if overrides else [])
    if overrides:
        raise SystemExit("--overrides is for --part capfilt")
    if part not in (None, "recipes"):
        raise SystemExit(f"--part must be recipes or capfilt, not {part}")
    scale = SCALES[scale_name]
    figures: dict[str, Any] = {"recipe": "blip", "scale": scale_name}
    timer = recipes.Timer(figures)
    extra = recipes.budget(scale_name)
    figures["shapes"] = _recipe(recipes.shapes(scale.train, scale.test), out, scale, extra, timer)
    figures["easy-vqa"] = _recipe(recipes.easy_vqa(scale.train, scale.easy_test), out, scale, extra, timer)
    timer.total()
    recipes.save(figures, out)
    return figures


def main() -> None:
    def from_the_command_line(scale_name: str, out: Path, part: str | None = None, overrides: str | None = None) -> dict[str, Any]:
        return run(scale_name, out, part or "capfilt", overrides)  # recipes_table.py calls run() for the row

    recipes.bench_main("blip", __doc__, SCALES, from_the_command_line, {
        "--part": "capfilt (BLIP Tables 1-3, the default) or recipes (the recipes-table row)",
        "--overrides": "with --part capfilt: comma-separated `vlmkit train blip` overrides for every run, e.g. alpha=0"})


if __name__ == "__main__":
    main()
