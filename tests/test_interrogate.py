"""The interrogator: prompts from real photos with the built-in, scores checked against the model's
own embeddings, the greedy search of best mode, the term-embedding cache, and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

import vlmkit
import vlmkit.interrogate
import vlmkit_cli.common
from vlmkit.interrogate import CATEGORIES, MIN_GAIN, Interrogator, clear_memory_cache, load_terms
from vlmkit.models.base import GenerationOptions
from vlmkit_cli.main import main

_load = vlmkit.load
_models: dict = {}


def _cached_load(name, **kwargs):
    key = (str(name), tuple(sorted(kwargs.items())))
    if key not in _models:
        _models[key] = _load(name, **kwargs)
    return _models[key]


@pytest.fixture(scope="module")
def builtin():
    return _cached_load(vlmkit.DEFAULT_MODEL, device="cpu", dtype=None)  # the instance the CLI loads


_term_cache: dict[int, dict[str, np.ndarray]] = {}


def _term_embeddings(model) -> dict[str, np.ndarray]:
    """The term lists embedded directly by the model (one call), independently of vlmkit's cache."""
    if id(model) not in _term_cache:
        terms = load_terms()
        flat = model.embed_texts([t for category in CATEGORIES for t in terms[category]], batch_size=512)
        bounds = np.cumsum([0] + [len(terms[c]) for c in CATEGORIES])
        _term_cache[id(model)] = {c: flat[bounds[i] : bounds[i + 1]] for i, c in enumerate(CATEGORIES)}
    return _term_cache[id(model)]


@pytest.fixture(scope="module")
def terms_dir(tmp_path_factory):
    """A term cache shared by the tests that are not about the cache (filled by the first one)."""
    return tmp_path_factory.mktemp("terms")


@pytest.fixture(autouse=True)
def fresh_memory(monkeypatch, terms_dir):
    """Each test starts with an empty in-memory cache; the CLI's default cache is a temporary one."""
    clear_memory_cache()
    monkeypatch.setattr(vlmkit.interrogate, "default_cache_dir", lambda: terms_dir)
    monkeypatch.setattr(vlmkit_cli.common.vlmkit, "load", _cached_load)
    yield
    clear_memory_cache()


def _added_terms(result) -> list[str]:
    """The terms appended to the caption, in the order they were added."""
    assert result.prompt.startswith(result.caption)
    rest = result.prompt[len(result.caption) :]
    return [] if not rest else rest.removeprefix(", ").split(", ")


def _check_scores(model, image, result) -> np.ndarray:
    """Every reported score is the cosine of the model's own embeddings, recomputed here."""
    image_emb = model.embed_images([image])[0]  # (D,)
    terms = load_terms()
    for category, ranked in result.terms.items():
        if not ranked:
            continue
        cosines = dict(zip(terms[category], _term_embeddings(model)[category] @ image_emb, strict=True))
        scores = [score for _, score in ranked]
        assert scores == sorted(scores, reverse=True)
        np.testing.assert_allclose(scores, [cosines[term] for term, _ in ranked], atol=1e-5)
    np.testing.assert_allclose(result.similarity, model.embed_texts([result.prompt])[0] @ image_emb, atol=1e-5)
    return image_emb


# Cosines of unit vectors re-embedded in another batch move by ~1e-6 (float32 over a few layers);
# 1e-5 leaves room for that and stays ten times below MIN_GAIN, the rise the search demands.
REBATCHED = 1e-5


def _check_greedy(model, result, image_emb, candidates: int = 32, max_terms: int = 8) -> None:
    """Each added term raised the prompt's similarity by at least MIN_GAIN, and on stopping early no
    candidate would."""
    added = _added_terms(result)
    prefixes = [", ".join([result.caption, *added[:i]]) if result.caption else ", ".join(added[:i]) for i in range(len(added) + 1)]
    similarities = model.embed_texts(prefixes) @ image_emb
    assert np.all(np.diff(similarities) >= MIN_GAIN - REBATCHED), similarities
    if len(added) == max_terms:
        return
    terms = load_terms()
    used = {category for category in ("mediums", "styles", "lighting") if result.terms[category]}
    pool = []
    for category in CATEGORIES:
        if category in used:
            continue
        scores = _term_embeddings(model)[category] @ image_emb
        pool += [terms[category][i] for i in np.argsort(-scores, kind="stable")[:candidates] if terms[category][i] not in added]
    extended = model.embed_texts([f"{result.prompt}, {term}" for term in pool], batch_size=512) @ image_emb
    assert extended.max() < result.similarity + MIN_GAIN + REBATCHED


def test_term_lists():
    terms = load_terms()
    assert tuple(terms) == CATEGORIES
    sizes = {category: len(items) for category, items in terms.items()}
    assert sizes["mediums"] >= 35 and sizes["styles"] >= 50 and sizes["lighting"] >= 25 and sizes["flavours"] >= 180, sizes
    for items in terms.values():
        assert len(set(items)) == len(items)
        assert all(item and "," not in item and item == item.strip() for item in items)  # ", " separates terms


@pytest.mark.parametrize("photo, word", [("cat", "cat"), ("coffee", "espresso")])
def test_fast_prompt_on_photos(builtin, photos, terms_dir, photo, word):
    result = Interrogator(builtin, cache_dir=terms_dir).interrogate(photos[photo], mode="fast")
    assert result.caption == builtin.caption([photos[photo]])[0] and word in result.caption
    assert (result.mode, result.captioner, result.ranker) == ("fast", vlmkit.DEFAULT_MODEL, vlmkit.DEFAULT_MODEL)
    assert [len(result.terms[c]) for c in CATEGORIES] == [1, 1, 1, 3]
    chosen = [term for category in CATEGORIES for term, _ in result.terms[category]]
    assert result.prompt == ", ".join([result.caption, *chosen])
    for category in CATEGORIES:
        assert all(term in load_terms()[category] for term, _ in result.terms[category])
    image_emb = _check_scores(builtin, photos[photo], result)
    # The picks are the best of each whole list, not just sorted among themselves.
    for category in CATEGORIES:
        best = float(np.max(_term_embeddings(builtin)[category] @ image_emb))
        assert result.terms[category][0][1] == pytest.approx(best, abs=1e-5)
    assert result.seconds > 0


@pytest.mark.parametrize("photo", ["cat", "coffee"])
def test_best_mode_on_photos(builtin, photos, terms_dir, photo):
    """With the built-in, no term raises the similarity of the tag caption, so best mode keeps the
    bare caption, which scores higher than the fast prompt (documented in vlmkit.interrogate)."""
    interrogator = Interrogator(builtin, cache_dir=terms_dir)
    best = interrogator.interrogate(photos[photo], mode="best")
    fast = interrogator.interrogate(photos[photo], mode="fast")
    image_emb = _check_scores(builtin, photos[photo], best)
    caption_similarity = float(builtin.embed_texts([best.caption])[0] @ image_emb)
    assert best.similarity >= caption_similarity - 1e-6
    assert best.similarity > fast.similarity
    assert best.prompt == best.caption and all(not ranked for ranked in best.terms.values())
    _check_greedy(builtin, best, image_emb)


def test_many_matches_one_by_one_and_holds_one_batch(builtin, photos, terms_dir, monkeypatch):
    interrogator = Interrogator(builtin, cache_dir=terms_dir)
    paths = [photos[k] for k in ("cat", "coffee", "astronaut")]
    singles = [interrogator.interrogate(p) for p in paths]
    decoded: list[int] = []
    real = vlmkit.interrogate.iter_loaded

    def recording(sources, **kwargs):
        sources = list(sources)
        decoded.append(max(len(sources), kwargs.get("prefetch", 64)))
        return real(sources, **kwargs)

    monkeypatch.setattr(vlmkit.interrogate, "iter_loaded", recording)
    many = interrogator.interrogate_many(paths, batch_size=2)
    assert [r.prompt for r in many] == [r.prompt for r in singles]
    for one, other in zip(many, singles, strict=True):
        assert one.terms.keys() == other.terms.keys()
        for category in CATEGORIES:
            np.testing.assert_allclose([s for _, s in one.terms[category]], [s for _, s in other.terms[category]], atol=1e-5)
    assert decoded == [2, 1]  # one batch of images decoded at a time, never more


def test_bad_input(builtin, photos, bad_images, terms_dir):
    interrogator = Interrogator(builtin, cache_dir=terms_dir)
    with pytest.raises(vlmkit.InputError, match="mode must be one of fast, best"):
        interrogator.interrogate(photos["cat"], mode="slow")
    with pytest.raises(vlmkit.InputError, match="top_k"):
        interrogator.interrogate(photos["cat"], top_k=-1)
    with pytest.raises(vlmkit.ImageError, match="no such file"):
        interrogator.interrogate_many([photos["cat"], bad_images["missing"]])


def _counting(monkeypatch, model) -> list[list[str]]:
    calls: list[list[str]] = []
    real = model.embed_texts

    def embed_texts(texts, **kwargs):
        calls.append(list(texts))
        return real(texts, **kwargs)

    monkeypatch.setattr(model, "embed_texts", embed_texts)
    return calls


def test_cache_on_disk_and_in_memory(builtin, tmp_path, monkeypatch):
    calls = _counting(monkeypatch, builtin)
    first = Interrogator(builtin, cache_dir=tmp_path).term_embeddings()
    assert sorted(len(c) for c in calls) == sorted(len(t) for t in load_terms().values())
    files = sorted(tmp_path.glob("*.npy"))
    assert [f.name.split("-")[0] for f in files] == sorted(CATEGORIES)
    for path in files:
        array = np.load(path, allow_pickle=False)
        category = path.name.split("-")[0]
        assert array.dtype == np.float32 and array.shape == (len(load_terms()[category]), 384)
        np.testing.assert_array_equal(array, first[category])

    clear_memory_cache()
    calls.clear()
    second = Interrogator(builtin, cache_dir=tmp_path).term_embeddings()  # from disk
    assert calls == []
    for category in CATEGORIES:
        np.testing.assert_array_equal(second[category], first[category])

    for path in files:
        path.unlink()
    third = Interrogator(builtin, cache_dir=tmp_path).term_embeddings()  # from memory
    assert calls == [] and list(tmp_path.glob("*.npy")) == []
    assert all(third[c] is second[c] for c in CATEGORIES)


def test_corrupt_cache_files_are_rewritten(builtin, tmp_path, monkeypatch):
    good = Interrogator(builtin, cache_dir=tmp_path).term_embeddings()
    files = {path.name.split("-")[0]: path for path in tmp_path.glob("*.npy")}
    files["mediums"].write_bytes(b"\x93NUMPY garbage")  # truncated header
    np.save(files["styles"], np.array([{"a": 1}], dtype=object), allow_pickle=True)  # needs pickle
    np.save(files["lighting"], good["lighting"][:-1])  # a row short
    np.save(files["flavours"], good["flavours"] * 2)  # not unit norm
    clear_memory_cache()
    calls = _counting(monkeypatch, builtin)
    again = Interrogator(builtin, cache_dir=tmp_path).term_embeddings()
    assert len(calls) == 4
    for category, path in files.items():
        np.testing.assert_allclose(again[category], good[category], atol=1e-6)
        np.testing.assert_allclose(np.load(path, allow_pickle=False), good[category], atol=1e-6)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in files.values())  # no temporary files left


def test_separate_captioner_and_ranker(tiny, photos, tmp_path):
    captioner = _cached_load(str(tiny["blip_caption"]))
    ranker = _cached_load(str(tiny["clip"]))
    with pytest.raises(vlmkit.InputError, match="cannot embed .* give a ranker that can: clip"):
        Interrogator(captioner)
    with pytest.raises(vlmkit.UnsupportedTaskError, match="cannot 'embed'"):
        Interrogator(captioner, captioner)
    with pytest.raises(vlmkit.UnsupportedTaskError, match="cannot 'caption'"):
        Interrogator(ranker)

    interrogator = Interrogator(captioner, ranker, cache_dir=tmp_path, generation=GenerationOptions(max_new_tokens=4))
    fast = interrogator.interrogate(photos["cat"], mode="fast")
    assert fast.caption == captioner.caption([photos["cat"]], options=GenerationOptions(max_new_tokens=4))[0]
    assert (fast.captioner, fast.ranker) == (str(tiny["blip_caption"]), str(tiny["clip"]))
    assert fast.prompt.startswith(fast.caption) and [len(fast.terms[c]) for c in CATEGORIES] == [1, 1, 1, 3]
    _check_scores(ranker, photos["cat"], fast)

    best = interrogator.interrogate(photos["cat"], mode="best")
    image_emb = _check_scores(ranker, photos["cat"], best)
    assert _added_terms(best)  # with this ranker, terms do raise the similarity
    assert sorted(_added_terms(best)) == sorted(t for ranked in best.terms.values() for t, _ in ranked)
    assert sum(bool(best.terms[c]) for c in ("mediums", "styles", "lighting")) <= 3
    assert best.similarity > fast.similarity
    _check_greedy(ranker, best, image_emb)


def test_best_stops_on_a_tie_or_noise(tiny, photos, tmp_path, monkeypatch):
    """A term that changes nothing (past the text encoder's context, say) or raises the cosine by
    float noise alone is not added: the ranker here sees only the caption and the first term, and
    each further term adds 1e-6 to the cosine, the size of float32 rounding."""
    captioner = _cached_load(str(tiny["blip_caption"]))
    ranker = _load(str(tiny["clip"]))  # its own instance: embed_texts is patched below
    caption = captioner.caption([photos["cat"]], options=GenerationOptions(max_new_tokens=4))[0]
    image_emb = ranker.embed_images([photos["cat"]])[0]
    real = ranker.embed_texts

    def embed_texts(texts, batch_size=32):
        terms = [t[len(caption) :].removeprefix(", ").split(", ") if t.startswith(caption) and t != caption else [] for t in texts]
        seen = [caption if not ts else f"{caption}, {ts[0]}" if t.startswith(caption) else t for t, ts in zip(texts, terms, strict=True)]
        noise = np.array([max(0, len(ts) - 1) * 1e-6 for ts in terms], dtype=np.float32)[:, None]
        return real(seen, batch_size=batch_size) + noise * image_emb

    monkeypatch.setattr(ranker, "embed_texts", embed_texts)
    interrogator = Interrogator(captioner, ranker, cache_dir=tmp_path, generation=GenerationOptions(max_new_tokens=4))
    best = interrogator.interrogate(photos["cat"], mode="best")
    assert best.caption == caption and len(_added_terms(best)) <= 1, best.prompt


# -- CLI ----------------------------------------------------------------------------------------------


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_json_and_text(capsys, photos, builtin, terms_dir):
    code, out, err = _run(capsys, "interrogate", photos["cat"], photos["coffee"], "--json")
    assert code == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["image"] for r in records] == [str(photos["cat"]), str(photos["coffee"])]
    expected = Interrogator(builtin, cache_dir=terms_dir).interrogate_many([photos["cat"], photos["coffee"]])
    for record, result in zip(records, expected, strict=True):
        assert record["prompt"] == result.prompt and record["caption"] == result.caption
        assert list(record["terms"]) == list(CATEGORIES) and len(record["terms"]["mediums"]) == 1
        assert set(record["terms"]["flavours"][0]) == {"term", "score"}
    code, out, _ = _run(capsys, "interrogate", photos["coffee"], "--mode", "best")
    assert code == 0 and out.strip() == builtin.caption([photos["coffee"]])[0]
    code, out, _ = _run(capsys, "interrogate", photos["cat"], photos["coffee"], "--top-k", "1")
    assert code == 0
    lines = out.splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"{photos['cat']}: a photo of a tiger cat")
    assert lines[1].startswith(f"{photos['coffee']}: a photo of an espresso, ")
    assert len(lines[1].split(", ")) == 5  # caption, medium, style, lighting, 1 flavour


def test_cli_missing_image_still_does_the_good_one(capsys, photos, bad_images):
    code, out, err = _run(capsys, "interrogate", photos["cat"], bad_images["missing"], "--json")
    assert code == 1
    (record,) = [json.loads(line) for line in out.splitlines()]
    assert record["image"] == str(photos["cat"]) and record["prompt"].startswith(record["caption"])
    assert err.count("\n") == 2 and f"skipped {bad_images['missing']}: no such file" in err
    assert "1 of 2 inputs failed" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--ranker", "{blip}"], "cannot 'embed'; models that can: clip (CLIPModel, "),
        (["--model", "{blip}"], "give a ranker that can: clip (CLIPModel, "),
        (["--ranker", "not a model!!"], "unknown model"),
        (["--model", "{clip}"], "cannot 'caption'"),
    ],
)
def test_cli_errors_are_one_line(capsys, photos, tiny, extra, message):
    extra = [a.format(blip=tiny["blip_caption"], clip=tiny["clip"]) for a in extra]
    code, out, err = _run(capsys, "interrogate", photos["cat"], *extra)
    assert code == 1 and out == ""
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
