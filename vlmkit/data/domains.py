"""Shapes in four visual styles: an offline stand-in for the cross-domain classification sets
(PACS, Office-Home, DomainNet, VLCS), and a reader for those sets as local folders.

Each image shows one object of a class in :data:`CLASSES` (random size, 35-80% of the canvas along its
longer side, position, rotation and colour) drawn in one of the :data:`DOMAINS`:

- ``photo``: the object shaded by a light from one side with a highlight, a soft shadow, on a
  two-colour gradient background with luminance grain;
- ``cartoon``: a flat saturated fill with a thick dark outline on a plain light background (three
  colours in all, no anti-aliasing);
- ``sketch``: the outline only, one or two thin dark-grey strokes with hand jitter, on white;
- ``painting``: jittered brush strokes over a flat underpainting, on a textured canvas, blurred,
  with per-channel colour noise.

The class is what stays the same across domains and the look is what changes, so a classifier
trained on some domains and tested on another measures the domain gap: leave-one-domain-out is the
domain generalisation protocol, and every ordered pair of domains an unsupervised adaptation task.

Everything is deterministic: image ``i`` of ``(seed, domain, class)`` is drawn from its own random
stream (:func:`make_domain_example`), so any image can be built without the others.
"""

from __future__ import annotations

import colorsys
import dataclasses
import math
import os
import random
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ..errors import InputError
from ..files import staged_folder
from .formats.folders import read_image_classes
from .records import Example

__all__ = [
    "CLASSES",
    "DOMAINS",
    "render",
    "make_domain_example",
    "make_domain_split",
    "iter_domain_splits",
    "read_domains",
    "write_domain_folder",
]

CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "star", "hexagon", "cross", "heart")
DOMAINS: tuple[str, ...] = ("photo", "cartoon", "sketch", "painting")

MIN_IMAGE_SIZE = 32
_SIZE_RANGE = (0.35, 0.80)  # the object's longer side, as a fraction of the canvas

Points = np.ndarray  # (P, 2) float x, y in pixels


# ---------------------------------------------------------------------------------------------------
# Geometry: each class as a closed outline inside the unit circle (y down), and how far it may turn


def _regular(n: int, start_degrees: float = -90.0, radii: Sequence[float] = (1.0,)) -> np.ndarray:
    angles = np.radians(start_degrees + 360.0 * np.arange(n) / n)
    r = np.resize(np.asarray(radii, dtype=np.float64), n)
    return np.stack([r * np.cos(angles), r * np.sin(angles)], axis=1)


def _heart(n: int = 40) -> np.ndarray:
    t = np.linspace(0.0, 2.0 * math.pi, n, endpoint=False)
    x = 16.0 * np.sin(t) ** 3
    y = -(13.0 * np.cos(t) - 5.0 * np.cos(2 * t) - 2.0 * np.cos(3 * t) - np.cos(4 * t))
    points = np.stack([x, y + 2.5], axis=1)  # roughly centred on its box
    return points / np.abs(points).max()


def _cross(arm: float = 0.34) -> np.ndarray:
    a = arm
    return np.array([(-a, -1), (a, -1), (a, -a), (1, -a), (1, a), (a, a),
                     (a, 1), (-a, 1), (-a, a), (-1, a), (-1, -a), (-a, -a)], dtype=np.float64)


_OUTLINES: dict[str, np.ndarray] = {
    "circle": _regular(40),
    "square": np.array([(-1, -1), (1, -1), (1, 1), (-1, 1)], dtype=np.float64),
    "triangle": _regular(3),
    "star": _regular(10, radii=(1.0, 0.42)),
    "hexagon": _regular(6),
    "cross": _cross(),
    "heart": _heart(),
}
#: Rotation range in degrees (its symmetry, so every pose is reachable; the heart stays upright-ish).
_TURN: dict[str, tuple[float, float]] = {
    "circle": (0.0, 0.0),
    "square": (0.0, 90.0),
    "triangle": (0.0, 120.0),
    "star": (0.0, 72.0),
    "hexagon": (0.0, 60.0),
    "cross": (0.0, 90.0),
    "heart": (-30.0, 30.0),
}


def _place(shape: str, rng: random.Random, size: int) -> Points:
    """The outline in pixels: turned, scaled so its longer side is 35-80% of the canvas, and moved
    to a random place where it fits with a small margin."""
    angle = math.radians(rng.uniform(*_TURN[shape]))
    c, s = math.cos(angle), math.sin(angle)
    points = _OUTLINES[shape] @ np.array([[c, s], [-s, c]])
    low, high = points.min(axis=0), points.max(axis=0)
    extent = rng.uniform(*_SIZE_RANGE) * size
    points = (points - (low + high) / 2) * (extent / float((high - low).max()))
    half = (high - low) * (extent / float((high - low).max())) / 2
    margin = max(2.0, size / 32)
    centre = [rng.uniform(margin + h, size - margin - h) for h in half]
    return points + np.array(centre)


def _as_xy(points: Points, scale: float = 1.0) -> list[tuple[float, float]]:
    return [(float(x) * scale, float(y) * scale) for x, y in points]


def _soft_mask(points: Points, size: int) -> np.ndarray:
    """Coverage of the polygon per pixel in [0, 1] (drawn at twice the size, then averaged)."""
    mask = Image.new("L", (2 * size, 2 * size), 0)
    ImageDraw.Draw(mask).polygon(_as_xy(points, 2.0), fill=255)
    return np.asarray(mask.reduce(2), dtype=np.float32) / 255.0


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), dtype=np.float32) * 255.0


def _rgb(colour: np.ndarray) -> tuple[int, int, int]:
    r, g, b = (int(round(float(c))) for c in np.clip(colour, 0, 255))
    return r, g, b


def _to_image(pixels: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "RGB")


# ---------------------------------------------------------------------------------------------------
# Styles


def _photo(points: Points, rng: random.Random, noise: np.random.Generator, size: int) -> Image.Image:
    grid = np.arange(size, dtype=np.float32) + 0.5
    xx, yy = np.meshgrid(grid, grid)
    # Background: two muted colours blended along a random direction, with luminance grain.
    hue = rng.random()
    near, far = _hsv(hue, rng.uniform(0.1, 0.35), rng.uniform(0.6, 0.9)), _hsv(
        hue + rng.uniform(-0.15, 0.15), rng.uniform(0.1, 0.35), rng.uniform(0.2, 0.45))
    turn = rng.uniform(0, 2 * math.pi)
    t = ((xx - size / 2) * math.cos(turn) + (yy - size / 2) * math.sin(turn)) / size + 0.5
    t = np.clip(t, 0.0, 1.0)[..., None]
    pixels = near * (1 - t) + far * t + noise.normal(0.0, 3.0, (size, size, 1)).astype(np.float32)
    # The light comes from direction (lx, ly): the shadow falls the other way, the object is lit on that side.
    light = rng.uniform(0, 2 * math.pi)
    lx, ly = math.cos(light), math.sin(light)
    offset = size * rng.uniform(0.04, 0.08)
    shadow_mask = Image.fromarray((_soft_mask(points - [lx * offset, ly * offset], size) * 255).astype(np.uint8))
    shadow = np.asarray(shadow_mask.filter(ImageFilter.GaussianBlur(size / 24)), dtype=np.float32) / 255.0
    pixels *= (1.0 - rng.uniform(0.4, 0.6) * shadow)[..., None]
    centre = points.mean(axis=0)
    reach = float(np.abs(points - centre).max()) + 1e-6
    along = ((xx - centre[0]) * lx + (yy - centre[1]) * ly) / reach  # -1 (far side) .. 1 (lit side)
    lit = np.clip(1.0 + 0.35 * along, 0.45, 1.35)
    hx, hy = centre[0] + 0.45 * reach * lx, centre[1] + 0.45 * reach * ly
    highlight = np.exp(-((xx - hx) ** 2 + (yy - hy) ** 2) / (2 * (0.3 * reach) ** 2))
    colour = _hsv(rng.random(), rng.uniform(0.45, 0.9), rng.uniform(0.5, 0.85))
    body = colour * lit[..., None] + (255.0 * rng.uniform(0.2, 0.4)) * highlight[..., None]
    mask = _soft_mask(points, size)[..., None]
    return _to_image(pixels * (1 - mask) + body * mask)


def _cartoon(points: Points, rng: random.Random, noise: np.random.Generator, size: int) -> Image.Image:
    background = _rgb(_hsv(rng.random(), rng.uniform(0.05, 0.2), rng.uniform(0.92, 1.0)))
    hue = rng.random()
    fill, outline = _rgb(_hsv(hue, rng.uniform(0.75, 1.0), rng.uniform(0.85, 1.0))), _rgb(
        _hsv(hue, rng.uniform(0.3, 0.8), rng.uniform(0.0, 0.15)))
    image = Image.new("RGB", (size, size), background)
    ImageDraw.Draw(image).polygon(_as_xy(points), fill=fill, outline=outline, width=max(2, round(size / 20)))
    return image


def _wobble(points: Points, rng: random.Random, noise: np.random.Generator, size: int) -> Points:
    """The closed outline as one hand-drawn stroke: edges cut into short steps, each point nudged,
    with a slow drift so the stroke does not close exactly where it started."""
    closed = np.vstack([points, points[:1]])
    steps = [closed[:1]]
    for a, b in zip(closed[:-1], closed[1:], strict=True):
        n = max(1, int(np.hypot(*(b - a)) / 3))
        steps.append(a + (b - a) * (np.arange(1, n + 1)[:, None] / n))
    path = np.vstack(steps)
    drift = np.linspace(0, 1, len(path))[:, None] * np.array([rng.uniform(-1, 1), rng.uniform(-1, 1)]) * size / 40
    return path + drift + noise.normal(0.0, size / 110, path.shape)


def _sketch(points: Points, rng: random.Random, noise: np.random.Generator, size: int) -> Image.Image:
    image = Image.new("L", (size, size), 255)
    draw = ImageDraw.Draw(image)
    for _ in range(rng.choice((1, 2, 2))):
        draw.line(_as_xy(_wobble(points, rng, noise, size)), fill=rng.randint(15, 90), width=max(1, size // 64))
    return image.convert("RGB")


def _painting(points: Points, rng: random.Random, noise: np.random.Generator, size: int) -> Image.Image:
    # A canvas: a light muted ground with a woven texture, brushed over with nearby colours.
    ground = _hsv(rng.uniform(0.05, 0.6), rng.uniform(0.1, 0.3), rng.uniform(0.7, 0.92))
    weave = (np.add.outer(np.arange(size) % 2, np.arange(size) % 2) * 5.0 - 5.0).astype(np.float32)
    image = _to_image(ground + weave[..., None])
    width = max(2, round(size / 20))

    def stroke(draw: ImageDraw.ImageDraw, x: float, y: float, colour: np.ndarray, jitter: float, length: float,
               turn: float) -> None:
        angle = turn + rng.uniform(-0.5, 0.5)
        dx, dy = math.cos(angle) * length / 2, math.sin(angle) * length / 2
        tint = colour + noise.uniform(-jitter, jitter, 3)
        draw.line([(x - dx, y - dy), (x + dx, y + dy)], fill=_rgb(tint), width=rng.randint(width - 1, width + 1))

    canvas, turn = ImageDraw.Draw(image), rng.uniform(0, math.pi)
    for _ in range(size // 2):
        stroke(canvas, rng.uniform(0, size), rng.uniform(0, size), ground, 30.0, size / 6, turn)
    # The object: a flat underpainting with strokes on it, pasted through a ragged copy of its outline
    # (a pixel or so either way, so the edge is broken but the shape stays readable).
    colour = _hsv(rng.random(), rng.uniform(0.5, 0.95), rng.uniform(0.55, 0.95))
    layer = Image.new("RGB", (size, size), _rgb(colour))
    brush = ImageDraw.Draw(layer)
    inside = Image.new("L", (size, size), 0)
    ImageDraw.Draw(inside).polygon(_as_xy(points), fill=255)
    rows, cols = np.nonzero(np.asarray(inside))
    if len(rows):
        chosen = noise.integers(0, len(rows), size=min(len(rows) // 4 + 10, 120))
        turn = rng.uniform(0, math.pi)
        for k in chosen:
            stroke(brush, float(cols[k]) + 0.5, float(rows[k]) + 0.5, colour, 35.0, size / 10, turn)
    spread = np.asarray(inside.filter(ImageFilter.GaussianBlur(size / 40)), dtype=np.float32)
    ragged = spread + noise.uniform(-90.0, 90.0, spread.shape) > 110.0
    image.paste(layer, (0, 0), Image.fromarray(ragged.astype(np.uint8) * 255, "L"))
    blurred = image.filter(ImageFilter.GaussianBlur(0.6 * size / 64))
    pixels = np.asarray(blurred, dtype=np.float32) + noise.normal(0.0, 10.0, (size, size, 3))
    return _to_image(pixels)


_STYLES = {"photo": _photo, "cartoon": _cartoon, "sketch": _sketch, "painting": _painting}


# ---------------------------------------------------------------------------------------------------
# Public API


def _check_domain(domain: object) -> str:
    if domain not in DOMAINS:
        raise InputError(f"unknown domain {domain!r}; known domains: {', '.join(DOMAINS)}")
    return str(domain)


def _check_size(image_size: object) -> int:
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < MIN_IMAGE_SIZE:
        raise InputError(f"image_size must be an integer >= {MIN_IMAGE_SIZE}, got {image_size!r}")
    return image_size


def _check_classes(classes: Sequence[str]) -> tuple[str, ...]:
    if isinstance(classes, str):
        raise InputError(f"classes must be a sequence of class names, not the string {classes!r}")
    names = tuple(classes)
    unknown = [c for c in names if c not in CLASSES]
    if unknown:
        raise InputError(f"unknown class {unknown[0]!r}; known classes: {', '.join(CLASSES)}")
    if len(names) < 2:
        raise InputError(f"at least 2 classes are needed for classification, got {len(names)}")
    repeated = sorted({c for c in names if names.count(c) > 1})
    if repeated:
        raise InputError(f"classes must be distinct; named more than once: {', '.join(repeated)}")
    return names


def _check_count(n_per_class: object) -> int:
    if isinstance(n_per_class, bool) or not isinstance(n_per_class, int) or n_per_class < 1:
        raise InputError(f"n_per_class must be an integer >= 1, got {n_per_class!r}")
    return n_per_class


def _distinct_domains(domains: Sequence[str]) -> list[str]:
    if isinstance(domains, str):
        raise InputError(f"domains must be a sequence of domain names, not the string {domains!r}")
    chosen = list(domains)
    if not chosen:
        raise InputError("no domain given; known domains: " + ", ".join(DOMAINS))
    repeated = sorted({d for d in chosen if chosen.count(d) > 1})
    if repeated:
        raise InputError(f"domains must be distinct; named more than once: {', '.join(repeated)}")
    return chosen


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def render(shape: str, domain: str, rng: random.Random, image_size: int = 64) -> Image.Image:
    """One object of class ``shape`` drawn in ``domain``'s style (RGB, ``image_size`` square); every
    choice (place, size, turn, colours, strokes, noise) is drawn from ``rng``."""
    if shape not in CLASSES:
        raise InputError(f"unknown class {shape!r}; known classes: {', '.join(CLASSES)}")
    style = _STYLES[_check_domain(domain)]
    size = _check_size(image_size)
    points = _place(shape, rng, size)
    noise = np.random.default_rng(rng.getrandbits(64))
    return style(points, rng, noise, size)


def make_domain_example(domain: str, cls: str, i: int, *, seed: int = 0, image_size: int = 64) -> Example:
    """Image ``i`` of class ``cls`` in ``domain``, from its own random stream, so it can be built alone.

    The id is ``"DOMAIN/CLASS/00042"``, ``label`` the class, the caption ``"a DOMAIN of a CLASS"``, and
    ``group`` ``"DOMAIN/CLASS"`` (every such caption is true of every image of the group)."""
    rng = random.Random(f"vlmkit-domains/{seed}/{domain}/{cls}/{i}")
    image = render(cls, domain, rng, image_size)
    return Example(
        id=f"{domain}/{cls}/{i:05d}",
        image=image,
        captions=(f"{_article(domain)} {domain} of {_article(cls)} {cls}",),
        label=cls,
        group=f"{domain}/{cls}",
    )


def _iter_split(domain: str, n_per_class: int, seed: int, image_size: int, classes: tuple[str, ...]) -> Iterator[Example]:
    for cls in classes:
        for i in range(n_per_class):
            yield make_domain_example(domain, cls, i, seed=seed, image_size=image_size)


def _checked(domain: str, n_per_class: int, image_size: int, classes: Sequence[str]) -> tuple[str, int, int, tuple[str, ...]]:
    return _check_domain(domain), _check_count(n_per_class), _check_size(image_size), _check_classes(classes)


def make_domain_split(
    domain: str, n_per_class: int, *, seed: int = 0, image_size: int = 64, classes: Sequence[str] = CLASSES
) -> list[Example]:
    """``n_per_class`` images of each class in ``domain``, class by class (all of ``classes[0]``,
    then ``classes[1]``, ...); see :func:`make_domain_example` for each record."""
    checked = _checked(domain, n_per_class, image_size, classes)
    return list(_iter_split(checked[0], checked[1], seed, checked[2], checked[3]))


def iter_domain_splits(
    domains: Sequence[str], n_per_class: int, *, seed: int = 0, image_size: int = 64, classes: Sequence[str] = CLASSES
) -> Iterator[Example]:
    """The splits of several domains one after another, built as they are read (arguments checked
    before the first is built)."""
    checked = [_checked(d, n_per_class, image_size, classes) for d in _distinct_domains(domains)]
    return (e for d, n, size, names in checked for e in _iter_split(d, n, seed, size, names))


# ---------------------------------------------------------------------------------------------------
# Local folders: ROOT/<domain>/<class>/<image files>


def _subfolders(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))


def read_domains(
    root: str | os.PathLike[str], domains: Sequence[str] | None = None
) -> tuple[list[str], dict[str, list[Example]]]:
    """The class names and each domain's labelled examples of a folder laid out as PACS, Office-Home,
    DomainNet and VLCS are: ``ROOT/<domain>/<class>/<image files>``.

    ``domains`` picks and orders the domains (default: every non-hidden subfolder, by name). Each
    domain folder is read by :func:`~vlmkit.data.read_image_classes`, with ``label`` the class folder's
    name as it is (WordNet ids are not renamed), ``id`` the path relative to ``root``
    (``"sketch/dog/pic_001.jpg"``) and ``group`` ``"DOMAIN/CLASS"``; images are paths, opened when
    used. Every domain must hold the same classes (a class folder with no image does not count).
    """
    directory = Path(root)
    if not directory.is_dir():
        raise InputError(f"domain folder root not found: {directory}")
    present = _subfolders(directory)
    if not present:
        raise InputError(f"{directory}: no domain folders (expected ROOT/<domain>/<class>/<image files>)")
    if domains is None:
        chosen = present
    else:
        if isinstance(domains, str):
            raise InputError(f"domains must be a sequence of domain names, not the string {domains!r}")
        chosen = list(domains)
        if not chosen:
            raise InputError(f"no domain given; {directory} has: {', '.join(present)}")
        missing = [d for d in chosen if d not in present]
        if missing:
            raise InputError(f"{directory}: no domain folder {missing[0]!r}; it has: {', '.join(present)}")
        repeated = sorted({d for d in chosen if chosen.count(d) > 1})
        if repeated:
            raise InputError(f"domains must be distinct; named more than once: {', '.join(repeated)}")
    names: dict[str, list[str]] = {}
    examples: dict[str, list[Example]] = {}
    for domain in chosen:
        folder = directory / domain
        classes = _subfolders(folder)
        if not classes:
            raise InputError(f"{folder}: domain folder has no class folders (expected ROOT/{domain}/<class>/<image files>)")
        names[domain], found = read_image_classes(folder, class_names={c: c for c in classes})
        examples[domain] = [
            dataclasses.replace(e, id=f"{domain}/{e.id}", group=f"{domain}/{e.label}") for e in found
        ]
    union = sorted({c for found in names.values() for c in found})
    gaps = [f"{d!r} has no {', '.join(repr(c) for c in union if c not in found)}"
            for d, found in names.items() if len(found) < len(union)]
    if gaps:
        raise InputError(f"{directory}: the domains must have the same classes (with images): {'; '.join(gaps)}")
    return union, examples


def write_domain_folder(
    root: str | os.PathLike[str],
    n_per_class: int,
    *,
    seed: int = 0,
    domains: Sequence[str] = DOMAINS,
    image_size: int = 64,
    classes: Sequence[str] = CLASSES,
) -> Path:
    """Write the generated domains as ``ROOT/<domain>/<class>/<i:05d>.png`` (the layout
    :func:`read_domains` reads) and return ``root``; images are those of :func:`make_domain_split`.

    A ``root`` that exists must be an empty folder: nothing of a user's is ever overwritten. The
    files are written to a hidden folder beside ``root`` and moved into place at the end, so a failed
    run leaves no half-written dataset."""
    checked = [_checked(d, n_per_class, image_size, classes) for d in _distinct_domains(domains)]
    target = Path(root)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise InputError(f"{target}: exists and is not an empty folder; refusing to write into it")
    with staged_folder(target) as staging:
        for domain, n, size, names in checked:
            for cls in names:
                (staging / domain / cls).mkdir(parents=True)
            for example in _iter_split(domain, n, seed, size, names):
                assert isinstance(example.image, Image.Image)
                example.image.save(staging / f"{example.id}.png")
    return target

