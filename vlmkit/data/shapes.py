"""Shapes world: small synthetic scenes with captions and questions, for training BLIP-2 offline.

Each scene holds 1 to 4 non-overlapping objects on a plain square canvas. An object has a shape
(circle, square, triangle, star), a colour (red, green, blue, yellow, purple, orange), a size (small,
large) and a position. Within one scene no (colour, shape) pair repeats, so "the red circle" always
names exactly one object.

Compositional split. The (colour, shape) pairs in ``HELD_OUT`` never appear in a train scene, and no
train caption or question mentions one; every test scene contains at least one of them. Each held-out
colour and shape still appears in train in other combinations, so the test split measures whether a
model recombines attributes it has seen rather than recalling pairs.

Text conventions (every answer is one lowercase word, see ``shapes_answers()``):

- counts are number words, "zero" to "four" ("how many stars are there?" -> "zero");
- yes/no questions answer "yes" or "no";
- the spelling is British ("colour");
- "left of", "right of", "above" and "below" hold only when the two objects' bounding boxes do not
  overlap along that axis; a question is asked only when its answer is unambiguous under that rule
  (a relation question about two objects stacked vertically is never asked about left and right).

Everything is deterministic: scene ``i`` of ``(seed, split)`` is drawn from its own random stream,
so a dataset can build any scene on demand without building the ones before it.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

from PIL import Image, ImageDraw
from torch.utils.data import Dataset

from ..errors import InputError
from .records import Example

__all__ = [
    "ShapeName",
    "ColourName",
    "SizeName",
    "Split",
    "SHAPES",
    "COLOURS",
    "COLOUR_RGB",
    "SIZES",
    "BACKGROUND_RGB",
    "NUMBER_WORDS",
    "HELD_OUT",
    "SceneObject",
    "Scene",
    "make_scene",
    "make_scenes",
    "render",
    "to_example",
    "describe",
    "question_type",
    "QUESTION_TYPES",
    "make_split",
    "shapes_answers",
    "ShapesDataset",
    "WEB_NOISE",
    "web_text",
    "make_web_split",
]

ShapeName = Literal["circle", "square", "triangle", "star"]
ColourName = Literal["red", "green", "blue", "yellow", "purple", "orange"]
SizeName = Literal["small", "large"]
Split = Literal["train", "test"]

SHAPES: tuple[ShapeName, ...] = ("circle", "square", "triangle", "star")
COLOURS: tuple[ColourName, ...] = ("red", "green", "blue", "yellow", "purple", "orange")
SIZES: tuple[SizeName, ...] = ("small", "large")
COLOUR_RGB: MappingProxyType[ColourName, tuple[int, int, int]] = MappingProxyType(
    {
        "red": (220, 30, 30),
        "green": (30, 160, 50),
        "blue": (30, 70, 220),
        "yellow": (240, 210, 0),
        "purple": (140, 50, 190),
        "orange": (250, 120, 0),
    }
)
BACKGROUND_RGB = (240, 240, 240)
NUMBER_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four")

# One held-out pair per shape, each with a different colour: every colour and shape stays in train.
HELD_OUT: frozenset[tuple[ColourName, ShapeName]] = frozenset(
    {("red", "triangle"), ("blue", "circle"), ("green", "star"), ("yellow", "square")}
)

MAX_OBJECTS = 4
MIN_IMAGE_SIZE = 32
_SMALL, _LARGE = 0.10, 0.17  # half-side of an object's bounding box, as a fraction of the canvas
_GAP = 2  # pixels kept free between two objects' bounding boxes
_ALL_PAIRS: tuple[tuple[ColourName, ShapeName], ...] = tuple((c, s) for c in COLOURS for s in SHAPES)
_TRAIN_PAIRS = tuple(p for p in _ALL_PAIRS if p not in HELD_OUT)
_HELD_OUT_SORTED = tuple(sorted(HELD_OUT))


@dataclass(frozen=True)
class SceneObject:
    """One object; (x, y) is its centre and ``radius`` half the side of its bounding box, in pixels."""

    shape: ShapeName
    colour: ColourName
    size: SizeName
    x: int
    y: int
    radius: int

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"

    @property
    def box(self) -> tuple[int, int, int, int]:
        return (self.x - self.radius, self.y - self.radius, self.x + self.radius, self.y + self.radius)

    def left_of(self, other: SceneObject) -> bool:
        return self.x + self.radius < other.x - other.radius

    def above(self, other: SceneObject) -> bool:
        return self.y + self.radius < other.y - other.radius


@dataclass(frozen=True)
class Scene:
    """A generated scene: what is drawn where, and nothing else (text is derived by ``to_example``)."""

    id: str
    split: Split
    image_size: int
    objects: tuple[SceneObject, ...]

    def count(self, word: str | None = None) -> int:
        """Objects whose shape, colour or size is ``word`` (all objects when None)."""
        return sum(word is None or word in (o.shape, o.colour, o.size) for o in self.objects)


# ---------------------------------------------------------------------------------------------------
# Scenes


def _check(seed: int, split: str, image_size: int) -> None:
    if split not in ("train", "test"):
        raise InputError(f"split must be 'train' or 'test', not {split!r}")
    if not isinstance(image_size, int) or image_size < MIN_IMAGE_SIZE:
        raise InputError(f"image_size must be an integer >= {MIN_IMAGE_SIZE}, not {image_size!r}")
    if not isinstance(seed, int):
        raise InputError(f"seed must be an integer, not {seed!r}")


def _radius(size: SizeName, image_size: int) -> int:
    return max(3, round((_SMALL if size == "small" else _LARGE) * image_size))


def _apart(a: SceneObject, b: SceneObject) -> bool:
    reach = a.radius + b.radius + _GAP
    return abs(a.x - b.x) > reach or abs(a.y - b.y) > reach


def _place(
    rng: random.Random, attributes: Sequence[tuple[ColourName, ShapeName, SizeName]], image_size: int
) -> tuple[SceneObject, ...] | None:
    """Drop objects one at a time at random free positions; None when one finds no room."""
    placed: list[SceneObject] = []
    for colour, shape, size in attributes:
        r = _radius(size, image_size)
        for _ in range(50):
            x = rng.randint(r + 1, image_size - 2 - r)
            y = rng.randint(r + 1, image_size - 2 - r)
            candidate = SceneObject(shape, colour, size, x, y, r)
            if all(_apart(candidate, other) for other in placed):
                placed.append(candidate)
                break
        else:
            return None
    return tuple(placed)


def make_scene(index: int, seed: int = 0, split: Split = "train", image_size: int = 64) -> Scene:
    """Scene ``index`` of the ``(seed, split)`` stream; the same arguments always give the same scene."""
    _check(seed, split, image_size)
    rng = random.Random(f"vlmkit-shapes/{split}/{seed}/{index}")
    n = rng.randint(1, MAX_OBJECTS)
    if split == "train":
        pairs = rng.sample(_TRAIN_PAIRS, n)
    else:
        first = rng.choice(_HELD_OUT_SORTED)
        pairs = [first] + rng.sample([p for p in _ALL_PAIRS if p != first], n - 1)
        rng.shuffle(pairs)
    attributes = [(colour, shape, rng.choice(SIZES)) for colour, shape in pairs]
    while True:  # at most 4 objects covering about half the canvas: a layout is found in a few tries
        objects = _place(rng, attributes, image_size)
        if objects is not None:
            return Scene(f"shapes-{split}-{seed}-{index}", split, image_size, objects)


def make_scenes(n: int, seed: int = 0, split: Split = "train", image_size: int = 64) -> list[Scene]:
    """The first ``n`` scenes of the ``(seed, split)`` stream."""
    if not isinstance(n, int) or n < 0:
        raise InputError(f"n must be a non-negative integer, not {n!r}")
    return [make_scene(i, seed, split, image_size) for i in range(n)]


# ---------------------------------------------------------------------------------------------------
# Pixels


def _star(x: int, y: int, r: int) -> list[tuple[float, float]]:
    points = []
    for k in range(10):
        angle = -math.pi / 2 + k * math.pi / 5
        reach = r if k % 2 == 0 else 0.45 * r
        points.append((x + reach * math.cos(angle), y + reach * math.sin(angle)))
    return points


def render(scene: Scene) -> Image.Image:
    """Draw the scene (RGB, ``image_size`` square); every object fills its own centre pixel."""
    image = Image.new("RGB", (scene.image_size, scene.image_size), BACKGROUND_RGB)
    draw = ImageDraw.Draw(image)
    for o in scene.objects:
        fill = COLOUR_RGB[o.colour]
        x, y, r = o.x, o.y, o.radius
        if o.shape == "circle":
            draw.ellipse(o.box, fill=fill)
        elif o.shape == "square":
            draw.rectangle(o.box, fill=fill)
        elif o.shape == "triangle":
            draw.polygon([(x, y - r), (x + r, y + r), (x - r, y + r)], fill=fill)
        else:
            draw.polygon(_star(x, y, r), fill=fill)
    return image


# ---------------------------------------------------------------------------------------------------
# Text

_RELATIONS: dict[str, Callable[[SceneObject, SceneObject], bool]] = {
    "to the left of": lambda a, b: a.left_of(b),
    "to the right of": lambda a, b: b.left_of(a),
    "above": lambda a, b: a.above(b),
    "below": lambda a, b: b.above(a),
}
_OPPOSITE = {
    "to the left of": "to the right of",
    "to the right of": "to the left of",
    "above": "below",
    "below": "above",
}
_REGIONS = {
    ("top", "left"): "in the top left",
    ("top", "centre"): "at the top",
    ("top", "right"): "in the top right",
    ("middle", "left"): "on the left",
    ("middle", "centre"): "in the centre",
    ("middle", "right"): "on the right",
    ("bottom", "left"): "in the bottom left",
    ("bottom", "centre"): "at the bottom",
    ("bottom", "right"): "in the bottom right",
}


def _a(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _join(phrases: Sequence[str]) -> str:
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


def _plural(count: int, noun: str) -> str:
    return f"{NUMBER_WORDS[count]} {noun}{'' if count == 1 else 's'}"


def _unique(scene: Scene, match: Callable[[SceneObject], bool]) -> bool:
    return sum(match(o) for o in scene.objects) == 1


def _references(scene: Scene, o: SceneObject, *, colour: bool = True, shape: bool = True) -> list[str]:
    """Noun phrases (without "the") naming exactly ``o`` in this scene, optionally avoiding an attribute."""
    refs = []
    if shape and colour:
        refs.append(o.name)
    if shape and _unique(scene, lambda p: p.shape == o.shape):
        refs.append(o.shape)
    if shape and _unique(scene, lambda p: (p.size, p.shape) == (o.size, o.shape)):
        refs.append(f"{o.size} {o.shape}")
    if colour and _unique(scene, lambda p: p.colour == o.colour):
        refs.append(f"{o.colour} object")
    if colour and _unique(scene, lambda p: (p.size, p.colour) == (o.size, o.colour)):
        refs.append(f"{o.size} {o.colour} object")
    return refs


def _location(o: SceneObject, image_size: int) -> str:
    def third(v: int) -> int:
        return min(2, 3 * v // image_size)

    row = ("top", "middle", "bottom")[third(o.y)]
    column = ("left", "centre", "right")[third(o.x)]
    return _REGIONS[(row, column)]


def _captions(scene: Scene, rng: random.Random) -> tuple[str, ...]:
    objects = scene.objects
    full = [_a(f"{o.size} {o.name}") for o in objects]
    plain = [_a(o.name) for o in objects]
    captions = [
        _join(full),
        f"{_plural(len(objects), 'shape')}: {_join(full)}",
        f"{rng.choice(('a picture of', 'an image of', 'a drawing of'))} {_join(plain)}",
    ]
    pairs = [
        (a, relation, b)
        for a in objects
        for b in objects
        for relation, holds in _RELATIONS.items()
        if a is not b and holds(a, b)
    ]
    if pairs:
        a, relation, b = rng.choice(pairs)
        captions.append(f"{_a(a.name)} {relation} {_a(b.name)}")
    else:
        o = objects[0]
        captions.append(f"{_a(f'{o.size} {o.name}')} {_location(o, scene.image_size)} of the image")
    ordered = sorted(objects, key=lambda o: o.x)
    if len(ordered) > 1 and all(p.left_of(q) for p, q in zip(ordered, ordered[1:], strict=False)):
        captions.append("from left to right: " + _join([_a(o.name) for o in ordered]))
    return tuple(captions)


def _pick(rng: random.Random, candidates: Sequence[tuple[str, str]], k: int) -> list[tuple[str, str]]:
    return rng.sample(list(candidates), min(k, len(candidates)))


def _questions(scene: Scene, rng: random.Random) -> tuple[tuple[str, str], ...]:
    """About a dozen questions: colour, shape, size, counts, existence and relations, all unambiguous."""
    objects = scene.objects
    present = {(o.colour, o.shape) for o in objects}
    qa: list[tuple[str, str]] = []

    # Colour of an object named without its colour; shape of one named without its shape.
    colour_qs = [
        (rng.choice(("what colour is the {}?", "what is the colour of the {}?")).format(ref), o.colour)
        for o in objects
        for ref in _references(scene, o, colour=False)
    ]
    shape_qs = [
        (rng.choice(("what shape is the {}?", "what is the {}?")).format(ref), o.shape)
        for o in objects
        for ref in _references(scene, o, shape=False)
    ]
    qa += _pick(rng, colour_qs, 2) + _pick(rng, shape_qs, 2)

    o = rng.choice(objects)
    ref = rng.choice(_references(scene, o))
    size = rng.choice(SIZES)
    size_qs = [(f"what size is the {ref}?", o.size), (f"is the {ref} {size}?", _yes(o.size == size))]
    qa += _pick(rng, size_qs, 1)

    # Counts: always the total, then one attribute that is present and one drawn from all of them.
    total = rng.choice(("how many shapes are there?", "how many objects are there?"))
    qa.append((total, NUMBER_WORDS[len(objects)]))
    groups = {f"{s}s": s for s in SHAPES} | {f"{w} shapes": w for w in (*COLOURS, *SIZES)}
    seen = [phrase for phrase, word in groups.items() if scene.count(word) > 0]
    for phrase in dict.fromkeys([rng.choice(seen), rng.choice(list(groups))]):
        qa.append((f"how many {phrase} are there?", NUMBER_WORDS[scene.count(groups[phrase])]))

    # Existence: one pair that is there, one that is not, and one shape or colour either way.
    # Train never mentions a held-out pair, even to say that it is absent.
    allowed = _TRAIN_PAIRS if scene.split == "train" else _ALL_PAIRS
    colour, shape = rng.choice(sorted(present))
    qa.append((f"is there {_a(f'{colour} {shape}')}?", "yes"))
    colour, shape = rng.choice([p for p in allowed if p not in present])
    qa.append((f"is there {_a(f'{colour} {shape}')}?", "no"))
    if rng.random() < 0.5:
        s = rng.choice(SHAPES)
        qa.append((f"is there {_a(s)}?", _yes(scene.count(s) > 0)))
    else:
        c = rng.choice(COLOURS)
        qa.append((f"is there {_a(f'{c} shape')}?", _yes(scene.count(c) > 0)))

    qa += _pick(rng, _relation_questions(scene, rng), 3)
    return tuple(dict(qa).items())  # a question asked twice has the same answer: keep it once


def _yes(value: bool) -> str:
    return "yes" if value else "no"


def _relation_questions(scene: Scene, rng: random.Random) -> list[tuple[str, str]]:
    """Every relation question with a clear answer, each object named by a random unique reference."""
    questions = []
    for a in scene.objects:
        for b in scene.objects:
            if a is b:
                continue
            ref_a, ref_b = rng.choice(_references(scene, a)), rng.choice(_references(scene, b))
            for relation in ("to the left of", "above"):
                forward, backward = _RELATIONS[relation](a, b), _RELATIONS[_OPPOSITE[relation]](a, b)
                if forward or backward:  # neither: the boxes overlap along this axis, so no clear answer
                    questions.append((f"is the {ref_a} {relation} the {ref_b}?", _yes(forward)))
    # "what shape is left of B?": exactly one object is, and every other one is clearly on the far side.
    for b in scene.objects:
        others = [o for o in scene.objects if o is not b]
        for relation, holds in _RELATIONS.items():
            hits = [o for o in others if holds(o, b)]
            clear = all(holds(o, b) or _RELATIONS[_OPPOSITE[relation]](o, b) for o in others)
            if len(hits) == 1 and clear:
                ref_b = rng.choice(_references(scene, b))
                if rng.random() < 0.5:
                    questions.append((f"what shape is {relation} the {ref_b}?", hits[0].shape))
                else:
                    questions.append((f"what colour is the shape {relation} the {ref_b}?", hits[0].colour))
    return questions


QUESTION_TYPES = ("colour", "shape", "size", "count", "exists", "relation")


def question_type(question: str) -> str:
    """Which kind of shapes-world question this is (one of ``QUESTION_TYPES``), for per-type scores."""
    if question.startswith("how many"):
        return "count"
    if question.startswith("is there"):
        return "exists"
    if any(f" {r} the " in question for r in _RELATIONS):
        return "relation"
    if question.startswith(("what size", "is the")):
        return "size"
    if "colour" in question:
        return "colour"
    return "shape"


def describe(scene: Scene) -> str:
    """A complete description of the scene in words, from which every question ``to_example`` asks
    can be answered: each object (size, colour, shape, region) from left to right, the count of every
    shape, colour and size that is present, and every clear left-right and above-below relation
    between two objects (each stated once; the opposite relation is implied)."""
    objects = sorted(scene.objects, key=lambda o: (o.x, o.y))
    listed = _join([f"{_a(f'{o.size} {o.name}')} {_location(o, scene.image_size)}" for o in objects])
    counts = [
        _join([_plural(scene.count(word), noun) for word, noun in nouns if scene.count(word)])
        for nouns in (
            [(s, s) for s in SHAPES],
            [(c, f"{c} shape") for c in COLOURS],
            [(z, f"{z} shape") for z in SIZES],
        )
    ]
    relations = [
        f"the {a.name} is {relation} the {b.name}"
        for a in objects
        for b in objects
        for relation in ("to the left of", "above")
        if a is not b and _RELATIONS[relation](a, b)
    ]
    sentences = [f"{_plural(len(objects), 'shape')}: {listed}", *counts, *relations]
    return ". ".join(sentences) + "."


def to_example(scene: Scene) -> Example:
    """Render the scene and derive its captions and question-answer pairs (deterministic per scene id)."""
    rng = random.Random(f"vlmkit-shapes-text/{scene.id}")
    captions = _captions(scene, rng)
    # Scenes with the same objects in the same regions share their captions (up to the relation picked).
    group = "; ".join(sorted(f"{o.size} {o.name} {_location(o, scene.image_size)}" for o in scene.objects))
    return Example(
        id=scene.id, image=render(scene), captions=captions, qa=_questions(scene, rng), group=group, description=describe(scene)
    )


def make_split(n: int, seed: int = 0, split: Split = "train", image_size: int = 64) -> list[Example]:
    """The first ``n`` examples of the ``(seed, split)`` stream, rendered (about 0.4 ms each)."""
    return [to_example(scene) for scene in make_scenes(n, seed, split, image_size)]


def shapes_answers() -> list[str]:
    """Every answer a shapes-world question can have, in a fixed order (a VQA classifier's label set)."""
    return ["yes", "no", *COLOURS, *SHAPES, *SIZES, *NUMBER_WORDS]


# ---------------------------------------------------------------------------------------------------
# A web crawl: one text per image, about half of them wrong, as alt-text is

#: How a web text can be wrong about its image: an object's colour or shape changed, an object
#: added or removed in a caption that counts them, a relation or region reversed, or the text of
#: another scene with none of this one's objects.
WEB_NOISE: tuple[str, ...] = ("colour", "shape", "count", "position", "unrelated")


def _swapped(scene: Scene, i: int, **change: str) -> Scene:
    objects = list(scene.objects)
    objects[i] = dataclasses.replace(objects[i], **change)  # type: ignore[arg-type]
    return dataclasses.replace(scene, objects=tuple(objects))


def _wrong_attribute(scene: Scene, rng: random.Random, attribute: Literal["colour", "shape"]) -> str:
    """A caption listing every object, one with another colour (or shape) than it has: a (colour,
    shape) pair the scene does not hold and that is not held out."""
    pairs = {(o.colour, o.shape) for o in scene.objects}
    i = rng.randrange(len(scene.objects))
    o = scene.objects[i]
    values = COLOURS if attribute == "colour" else SHAPES
    options = [v for v in values if (pair := (v, o.shape) if attribute == "colour" else (o.colour, v)) not in pairs and pair not in HELD_OUT]
    if not options:  # four objects of one colour hold every shape: count them wrong instead
        return _wrong_count(scene, rng)
    wrong = _swapped(scene, i, **{attribute: rng.choice(options)})
    return rng.choice(_captions(wrong, rng)[:3])


def _wrong_count(scene: Scene, rng: random.Random) -> str:
    """The counting caption ("two shapes: ...") of the scene with an object added or one removed."""
    objects = list(scene.objects)
    if len(objects) > 1 and (len(objects) == MAX_OBJECTS or rng.random() < 0.5):
        objects.pop(rng.randrange(len(objects)))
    else:
        pairs = {(o.colour, o.shape) for o in objects}
        colour, shape = rng.choice([p for p in _TRAIN_PAIRS if p not in pairs])
        objects.append(SceneObject(shape, colour, rng.choice(SIZES), 0, 0, 1))
    full = [_a(f"{o.size} {o.name}") for o in objects]
    return f"{_plural(len(objects), 'shape')}: {_join(full)}"


def _wrong_position(scene: Scene, rng: random.Random) -> str:
    """A relation between two objects stated the wrong way round, or, with no clear relation, the
    object placed in another region of the image."""
    pairs = [(a, relation, b) for a in scene.objects for b in scene.objects for relation, holds in _RELATIONS.items()
             if a is not b and holds(a, b)]
    if pairs:
        a, relation, b = rng.choice(pairs)
        return f"{_a(a.name)} {_OPPOSITE[relation]} {_a(b.name)}"
    o = scene.objects[0]
    region = rng.choice([r for r in _REGIONS.values() if r != _location(o, scene.image_size)])
    return f"{_a(f'{o.size} {o.name}')} {region} of the image"


def web_text(scene: Scene, noise: str, rng: random.Random, others: Iterable[Scene] = ()) -> str:
    """One web text for ``scene``: a true caption (``noise`` "") or one wrong in the way ``noise``
    names (:data:`WEB_NOISE`); "unrelated" takes a caption of the first of ``others`` that shares no
    (colour, shape) pair with the scene."""
    if noise == "":
        return rng.choice(_captions(scene, rng))
    if noise in ("colour", "shape"):
        return _wrong_attribute(scene, rng, noise)  # type: ignore[arg-type]
    if noise == "count":
        return _wrong_count(scene, rng)
    if noise == "position":
        return _wrong_position(scene, rng)
    if noise == "unrelated":
        pairs = {(o.colour, o.shape) for o in scene.objects}
        for other in others:
            if not pairs & {(o.colour, o.shape) for o in other.objects}:
                return rng.choice(_captions(other, rng))
        raise InputError("web_text: no scene in others shares no object with the scene")
    raise InputError(f"noise must be '' or one of {', '.join(WEB_NOISE)}, got {noise!r}")


def make_web_split(n: int, seed: int = 0, *, true_rate: float = 0.5, image_size: int = 64) -> tuple[list[Example], list[str]]:
    """The first ``n`` training scenes of ``seed`` as a web crawl: each image with one text, a true
    caption with probability ``true_rate`` and otherwise wrong in one of the :data:`WEB_NOISE` ways
    (equally often), deterministic by seed. Returns the examples (no question-answer pairs, no
    content group: a web text says nothing reliable about what else shows the same thing) and each
    one's noise ("" for a true text), which is what a filter's precision and recall are scored on."""
    if not 0.0 <= true_rate <= 1.0:
        raise InputError(f"true_rate must be in [0, 1], got {true_rate}")
    scenes = make_scenes(n, seed, "train", image_size)
    examples, kinds = [], []
    for i, scene in enumerate(scenes):
        rng = random.Random(f"vlmkit-shapes-web/{scene.id}")
        noise = "" if rng.random() < true_rate else rng.choice(WEB_NOISE)
        others = (make_scene(1_000_000 + 1_000 * i + k, seed, "train", image_size) for k in range(1_000))
        examples.append(Example(id=scene.id, image=render(scene), captions=(web_text(scene, noise, rng, others),)))
        kinds.append(noise)
    return examples, kinds


class ShapesDataset(Dataset[Example]):
    """``n`` shapes-world examples built on demand, so workers never hold the whole split.

    Examples are dataclasses, not tensors: pass a ``collate_fn`` that applies the model's processor.
    """

    def __init__(self, n: int, seed: int = 0, split: Split = "train", image_size: int = 64) -> None:
        _check(seed, split, image_size)
        if not isinstance(n, int) or n < 0:
            raise InputError(f"n must be a non-negative integer, not {n!r}")
        self.n, self.seed, self.split, self.image_size = n, seed, split, image_size

    def __len__(self) -> int:
        return self.n

    def scene(self, index: int) -> Scene:
        if not -self.n <= index < self.n:
            raise IndexError(f"index {index} out of range for {self.n} scenes")
        return make_scene(index % self.n, self.seed, self.split, self.image_size)

    def __getitem__(self, index: int) -> Example:
        return to_example(self.scene(index))
