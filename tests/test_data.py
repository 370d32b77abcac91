"""Data: the shapes world (determinism, compositional split, answers checked against the scene and the
pixels by an independent reader of the questions) and the easy-VQA loader."""

from __future__ import annotations

import re
import sys

import numpy as np
import pytest
from PIL import Image

from vlmkit.data import (
    HELD_OUT,
    Example,
    Scene,
    SceneObject,
    ShapesDataset,
    easy_vqa_answers,
    load_easy_vqa,
    make_scenes,
    make_split,
    render,
    shapes_answers,
    to_example,
)
from vlmkit.data.shapes import BACKGROUND_RGB, COLOUR_RGB, COLOURS, NUMBER_WORDS, SHAPES, SIZES
from vlmkit.errors import InputError, VlmkitError

N = 300


@pytest.fixture(scope="module")
def scenes() -> dict[str, list[Scene]]:
    return {split: make_scenes(N, seed=0, split=split) for split in ("train", "test")}


def _same(a: list[Example], b: list[Example]) -> bool:
    return all(
        x.id == y.id
        and x.captions == y.captions
        and x.qa == y.qa
        and np.array_equal(np.asarray(x.image), np.asarray(y.image))
        for x, y in zip(a, b, strict=True)
    )


# ---------------------------------------------------------------------------------------------------
# Shapes world: structure


def test_same_seed_same_data_other_seed_other_data():
    first, again = make_split(20, seed=3), make_split(20, seed=3)
    assert _same(first, again)
    other = make_split(20, seed=4)
    assert not any(
        np.array_equal(np.asarray(x.image), np.asarray(y.image)) for x, y in zip(first, other, strict=True)
    )
    assert [x.qa for x in first] != [y.qa for y in other]
    test = make_split(20, seed=3, split="test")
    assert [x.qa for x in first] != [y.qa for y in test]


def test_dataset_builds_the_same_examples_on_demand():
    dataset = ShapesDataset(12, seed=5, split="test", image_size=96)
    assert len(dataset) == 12
    assert _same([dataset[i] for i in (0, 7, 11)], [make_split(12, 5, "test", 96)[i] for i in (0, 7, 11)])
    assert dataset.scene(-1) == dataset.scene(11)
    with pytest.raises(IndexError):
        dataset[12]


@pytest.mark.parametrize("image_size", [64, 96])
def test_images_have_the_requested_size(image_size):
    for example in make_split(10, seed=1, image_size=image_size):
        assert isinstance(example.image, Image.Image)
        assert example.image.size == (image_size, image_size) and example.image.mode == "RGB"


def test_bad_arguments_are_input_errors():
    for kwargs in ({"split": "val"}, {"image_size": 16}, {"n": -1}):
        with pytest.raises(InputError):
            make_scenes(**{"n": 2, **kwargs})


def test_scenes_hold_one_to_four_separate_objects(scenes):
    for scene in scenes["train"] + scenes["test"]:
        objects = scene.objects
        assert 1 <= len(objects) <= 4
        assert len({(o.colour, o.shape) for o in objects}) == len(objects)
        for o in objects:
            x0, y0, x1, y1 = o.box
            assert 0 < x0 and 0 < y0 and x1 < scene.image_size - 1 and y1 < scene.image_size - 1
        for i, a in enumerate(objects):
            for b in objects[i + 1 :]:
                reach = a.radius + b.radius
                assert abs(a.x - b.x) > reach or abs(a.y - b.y) > reach, scene.id
    counts = {len(scene.objects) for scene in scenes["train"]}
    assert counts == {1, 2, 3, 4}


def test_pixels_show_the_described_objects(scenes):
    """Centre pixel has the object's colour; the box corners tell a square from a triangle from the rest."""
    for scene in scenes["train"][:100] + scenes["test"][:100]:
        pixels = np.asarray(render(scene))
        for o in scene.objects:
            assert tuple(pixels[o.y, o.x]) == COLOUR_RGB[o.colour]
            top_left = tuple(pixels[o.y - o.radius + 1, o.x - o.radius + 1])
            bottom_left = tuple(pixels[o.y + o.radius - 1, o.x - o.radius + 1])
            assert (top_left == COLOUR_RGB[o.colour]) == (o.shape == "square")
            assert (bottom_left == COLOUR_RGB[o.colour]) == (o.shape in ("square", "triangle"))
        drawn = {tuple(p) for p in pixels.reshape(-1, 3)}
        assert drawn == {BACKGROUND_RGB} | {COLOUR_RGB[o.colour] for o in scene.objects}


def test_named_colours_are_far_apart():
    rgb = np.array([COLOUR_RGB[c] for c in COLOURS] + [BACKGROUND_RGB], dtype=float)
    distances = np.linalg.norm(rgb[:, None] - rgb[None], axis=-1) + np.eye(len(rgb)) * 1e9
    assert distances.min() > 80


# ---------------------------------------------------------------------------------------------------
# Shapes world: compositional split


def _mentions_held_out(text: str) -> bool:
    return any(re.search(rf"\b{colour} {shape}", text) for colour, shape in HELD_OUT)


def test_held_out_pairs_never_in_train_and_in_every_test_scene(scenes):
    assert len(HELD_OUT) == 4
    assert {c for c, _ in HELD_OUT} < set(COLOURS) and {s for _, s in HELD_OUT} == set(SHAPES)
    train_pairs = {(o.colour, o.shape) for scene in scenes["train"] for o in scene.objects}
    assert not train_pairs & HELD_OUT
    assert {c for c, _ in train_pairs} == set(COLOURS) and {s for _, s in train_pairs} == set(SHAPES)
    for scene in scenes["test"]:
        assert {(o.colour, o.shape) for o in scene.objects} & HELD_OUT, scene.id
    for example in make_split(N, seed=0, split="train"):
        texts = example.captions + example.questions + example.answers
        assert not any(_mentions_held_out(text) for text in texts), example.id
    test_texts = [t for e in make_split(50, seed=0, split="test") for t in e.captions]
    assert any(_mentions_held_out(text) for text in test_texts)


# ---------------------------------------------------------------------------------------------------
# Shapes world: every answer, recomputed from the scene by a reader that knows only the templates

_RELATION = "to the left of|to the right of|above|below"


def _resolve(scene: Scene, ref: str) -> SceneObject:
    """The one object a reference like "large red object" or "circle" names; fails unless exactly one."""
    words = [w for w in ref.split() if w not in ("object", "shape")]
    hits = [o for o in scene.objects if all(w in (o.colour, o.shape, o.size) for w in words)]
    assert len(hits) == 1, f"{scene.id}: 'the {ref}' names {len(hits)} objects"
    return hits[0]


def _holds(relation: str, a: SceneObject, b: SceneObject) -> bool:
    left = a.x + a.radius < b.x - b.radius
    right = b.x + b.radius < a.x - a.radius
    above = a.y + a.radius < b.y - b.radius
    below = b.y + b.radius < a.y - a.radius
    return {"to the left of": left, "to the right of": right, "above": above, "below": below}[relation]


_OPPOSITE = {
    "to the left of": "to the right of",
    "to the right of": "to the left of",
    "above": "below",
    "below": "above",
}


def _the_one(scene: Scene, relation: str, ref: str) -> SceneObject:
    anchor = _resolve(scene, ref)
    others = [o for o in scene.objects if o is not anchor]
    hits = [o for o in others if _holds(relation, o, anchor)]
    assert len(hits) == 1, f"{scene.id}: {len(hits)} objects {relation} the {ref}"
    assert all(o in hits or _holds(_OPPOSITE[relation], o, anchor) for o in others), scene.id
    return hits[0]


def _colour_at(image: np.ndarray, o: SceneObject) -> str:
    pixel = tuple(image[o.y, o.x])
    return next(name for name, rgb in COLOUR_RGB.items() if rgb == pixel)


def _count(scene: Scene, word: str) -> int:
    return sum(word in (o.shape, o.colour, o.size) for o in scene.objects)


def _answer(scene: Scene, image: np.ndarray, question: str) -> str:
    """Answer a question from the scene and the pixels, or fail if it is not one of the templates."""
    yes = {True: "yes", False: "no"}
    if m := re.fullmatch(rf"what colour is the shape ({_RELATION}) the (.+)\?", question):
        return _colour_at(image, _the_one(scene, m[1], m[2]))
    if m := re.fullmatch(rf"what shape is ({_RELATION}) the (.+)\?", question):
        return _the_one(scene, m[1], m[2]).shape
    if m := re.fullmatch(r"what colour is the (.+)\?|what is the colour of the (.+)\?", question):
        ref = m[1] or m[2]
        assert not set(ref.split()) & set(COLOURS), question
        return _colour_at(image, _resolve(scene, ref))
    if m := re.fullmatch(r"what shape is the (.+)\?|what is the (.+)\?", question):
        ref = m[1] or m[2]
        assert not set(ref.split()) & set(SHAPES), question
        return _resolve(scene, ref).shape
    if m := re.fullmatch(r"what size is the (.+)\?", question):
        return _resolve(scene, m[1]).size
    if m := re.fullmatch(r"how many (shapes|objects) are there\?", question):
        return NUMBER_WORDS[len(scene.objects)]
    if m := re.fullmatch(r"how many (\w+) shapes are there\?|how many (\w+)s are there\?", question):
        return NUMBER_WORDS[_count(scene, m[1] or m[2])]
    if m := re.fullmatch(r"is there an? (\w+) (\w+)\?", question):
        colour, shape = m[1], m[2]
        if shape == "shape":
            return yes[_count(scene, colour) > 0]
        return yes[any((o.colour, o.shape) == (colour, shape) for o in scene.objects)]
    if m := re.fullmatch(r"is there an? (\w+)\?", question):
        return yes[_count(scene, m[1]) > 0]
    if m := re.fullmatch(rf"is the (.+) ({_RELATION}) the (.+)\?", question):
        a, b = _resolve(scene, m[1]), _resolve(scene, m[3])
        holds, opposite = _holds(m[2], a, b), _holds(_OPPOSITE[m[2]], a, b)
        assert holds or opposite, f"{scene.id}: ambiguous {question!r}"
        return yes[holds]
    if m := re.fullmatch(r"is the (.+) (small|large)\?", question):
        return yes[_resolve(scene, m[1]).size == m[2]]
    raise AssertionError(f"unknown template: {question!r}")


def test_every_answer_follows_from_the_scene_and_the_pixels(scenes):
    vocabulary = set(shapes_answers())
    kinds: dict[str, set[str]] = {}
    for scene in scenes["train"] + scenes["test"]:
        example = to_example(scene)
        image = np.asarray(example.image)
        assert len(set(example.questions)) == len(example.qa) >= 8
        for question, answer in example.qa:
            assert answer in vocabulary, answer
            assert _answer(scene, image, question) == answer, f"{scene.id}: {question!r} -> {answer!r}"
            kinds.setdefault(question.split()[0] + " " + question.split()[1], set()).add(answer)
    # Every family of question is asked, and yes/no questions are not all one answer.
    assert {"what colour", "what shape", "how many", "is there", "what is", "what size", "is the"} <= set(
        kinds
    )
    assert kinds["is there"] == {"yes", "no"} and kinds["is the"] == {"yes", "no"}
    assert kinds["how many"] == set(NUMBER_WORDS)


def test_captions_describe_the_scene(scenes):
    for scene in scenes["train"][:100]:
        example = to_example(scene)
        assert len(example.captions) >= 4 and len(set(example.captions)) == len(example.captions)
        listed, counted = example.captions[0], example.captions[1]
        for o in scene.objects:
            assert f"{o.size} {o.colour} {o.shape}" in listed
        assert counted.startswith(NUMBER_WORDS[len(scene.objects)] + " shape")
        if m := re.fullmatch(rf"an? (\w+ \w+) ({_RELATION}) an? (\w+ \w+)", example.captions[3]):
            a, b = _resolve(scene, m[1]), _resolve(scene, m[3])
            assert _holds(m[2], a, b)
        if len(example.captions) > 4:
            assert example.captions[4].startswith("from left to right: ")
            names = re.findall(r"an? (\w+ \w+)", example.captions[4])
            xs = [_resolve(scene, name).x for name in names]
            assert xs == sorted(xs) and len(names) == len(scene.objects)


def test_description_is_complete(scenes):
    """Every object, every present count and every clear relation is stated, and nothing else: an
    independent reading of the description rebuilds the scene's facts."""
    from vlmkit.data.shapes import describe

    for scene in scenes["test"][:100]:
        text = describe(scene)
        sentences = text.removesuffix(".").split(". ")
        assert sentences[0].startswith(NUMBER_WORDS[len(scene.objects)] + " shape")
        listed = re.findall(r"an? (small|large) (\w+) (\w+) (?:in the|at the|on the)", sentences[0])
        assert sorted(listed) == sorted((o.size, o.colour, o.shape) for o in scene.objects)
        counts = {}
        for phrase in re.split(r", | and ", ", ".join(sentences[1:4])):
            number, word = phrase.split()[:2]
            counts[word.removesuffix("s")] = NUMBER_WORDS.index(number)
        for word in (*SHAPES, *COLOURS, *SIZES):
            assert counts.get(word, 0) == scene.count(word), (scene.id, word, sentences[1:4])
        stated = {tuple(re.fullmatch(rf"the (\w+ \w+) is ({_RELATION}) the (\w+ \w+)", s).groups()) for s in sentences[4:]}  # type: ignore[union-attr]
        expected = {
            (a.name, relation, b.name)
            for a in scene.objects
            for b in scene.objects
            for relation in ("to the left of", "above")
            if a is not b and _holds(relation, a, b)
        }
        assert stated == expected and len(sentences[4:]) == len(expected)


def test_group_names_the_content():
    examples = make_split(400, 0, "train")
    by_group: dict[str, list[Example]] = {}
    for e in examples:
        by_group.setdefault(e.group, []).append(e)
    shared = [g for g in by_group.values() if len(g) > 1]
    assert shared  # same objects in the same regions happen in 400 scenes
    for group in shared:  # ... and then their listing captions agree
        assert len({e.captions[0] for e in group}) == 1


def test_answer_vocabulary():
    answers = shapes_answers()
    assert len(answers) == len(set(answers)) == 2 + len(COLOURS) + len(SHAPES) + len(SIZES) + 5
    assert all(re.fullmatch(r"[a-z]+", a) for a in answers)


# ---------------------------------------------------------------------------------------------------
# easy-VQA


@pytest.fixture(scope="module")
def easy_vqa() -> dict[str, list[Example]]:
    # easy-vqa comes with the `test` and `train` extras: a missing package fails here, never skips.
    return {split: load_easy_vqa(split) for split in ("train", "test")}


def test_easy_vqa_counts_and_answers(easy_vqa):
    answers = easy_vqa_answers()
    assert len(answers) == len(set(answers)) == 13
    expected = {"train": (4000, 38_575), "test": (1000, 9_673)}
    for split, examples in easy_vqa.items():
        assert (len(examples), sum(len(e.qa) for e in examples)) == expected[split]
        assert len({e.id for e in examples}) == len(examples)
        assert all(answer in answers for e in examples for answer in e.answers)
        assert all(e.qa and e.image.is_file() for e in examples)  # type: ignore[union-attr]


def test_easy_vqa_groups_and_descriptions(easy_vqa):
    for example in easy_vqa["train"]:
        if example.group:  # colour and shape known: the group, the caption and the description agree
            assert example.captions == (f"a {example.group}",) and example.description == f"a {example.group}"
        else:
            assert example.description == (example.captions[0] if example.captions else "")


def test_easy_vqa_images_and_captions(easy_vqa):
    colours = set(easy_vqa_answers()) - {"yes", "no", "circle", "rectangle", "triangle"}
    for example in easy_vqa["test"][:20]:
        with Image.open(example.image) as image:  # type: ignore[arg-type]
            assert image.size == (64, 64)
    captioned = 0
    for example in easy_vqa["train"]:
        if not example.captions:
            continue
        captioned += 1
        words = set(example.captions[0].split())
        for question, answer in example.qa:
            if question.startswith("what") and answer not in words:
                # A colour answer when the caption knows the colour (or a shape answer and the shape) is a bug.
                assert not (answer in colours and words & colours), (example.id, question, answer)
                assert not (answer not in colours and words - colours - {"a", "shape"}), (
                    example.id,
                    question,
                )
    assert captioned > 0.95 * len(easy_vqa["train"])


def test_easy_vqa_errors(monkeypatch):
    with pytest.raises(InputError):
        load_easy_vqa("val")  # type: ignore[arg-type]
    monkeypatch.setitem(sys.modules, "easy_vqa", None)
    with pytest.raises(VlmkitError, match="pip install easy-vqa"):
        load_easy_vqa("train")
    with pytest.raises(VlmkitError, match="pip install easy-vqa"):
        easy_vqa_answers()


_PAIR = rf"({'|'.join(COLOURS)}) ({'|'.join(SHAPES)})"


def _region(o: SceneObject, size: int) -> str:
    row, column = (("top", "middle", "bottom")[min(2, 3 * o.y // size)], ("left", "centre", "right")[min(2, 3 * o.x // size)])
    names = {("middle", "centre"): "in the centre", ("top", "centre"): "at the top", ("bottom", "centre"): "at the bottom",
             ("middle", "left"): "on the left", ("middle", "right"): "on the right"}
    return names.get((row, column), f"in the {row} {column}")


def _web_text_is_true(scene: Scene, text: str) -> bool:
    """An independent reading of a web text: every object it names is in the scene, its count is
    the scene's, its relation holds and its region is the object's."""
    pairs = {(o.colour, o.shape) for o in scene.objects}
    if not {(c, s) for c, s in re.findall(_PAIR, text)} <= pairs:
        return False
    if (m := re.match(r"(\w+) shapes?: ", text)) and m[1] != NUMBER_WORDS[len(scene.objects)]:
        return False
    if m := re.fullmatch(rf"an? {_PAIR} ({_RELATION}) an? {_PAIR}", text):
        return _holds(m[3], _resolve(scene, f"{m[1]} {m[2]}"), _resolve(scene, f"{m[4]} {m[5]}"))
    if m := re.fullmatch(rf"an? (small|large) {_PAIR} (.+) of the image", text):
        return m[4] == _region(_resolve(scene, f"{m[2]} {m[3]}"), scene.image_size)
    return True


def test_web_texts_are_wrong_exactly_where_the_noise_says_and_never_name_a_held_out_pair():
    from vlmkit.data import make_web_split
    from vlmkit.data.shapes import WEB_NOISE

    examples, noise = make_web_split(1000, seed=4)
    again, _ = make_web_split(20, seed=4)
    assert [e.captions for e in again] == [e.captions for e in examples[:20]]
    scenes = make_scenes(1000, seed=4)
    for scene, example, kind in zip(scenes, examples, noise, strict=True):
        (text,) = example.captions
        assert example.id == scene.id and not example.qa and example.group == ""
        assert _web_text_is_true(scene, text) == (kind == ""), (kind, text, scene)
        assert not {(c, s) for c, s in re.findall(_PAIR, text)} & HELD_OUT
    # about half true (binomial sd 1.6 points at n = 1000; 5 points is 3 sd), and every kind of noise drawn
    assert abs(noise.count("") / 1000 - 0.5) < 0.05 and set(noise) == {"", *WEB_NOISE}
    with pytest.raises(InputError, match="true_rate"):
        make_web_split(3, true_rate=1.5)
