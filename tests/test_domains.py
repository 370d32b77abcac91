"""The cross-domain shapes (vlmkit.data.domains): determinism, the four styles told apart by image
statistics computed here, the records, bad input, the folder round trip and the two dataset specs."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlmkit.data import (
    DOMAIN_CLASSES,
    DOMAINS,
    make_domain_example,
    make_domain_split,
    read_dataset,
    read_domains,
    render_domain,
    write_domain_folder,
)
from vlmkit.errors import InputError


def _pixels(image: Image.Image | Path) -> np.ndarray:
    if isinstance(image, Path):
        with Image.open(image) as opened:
            return np.asarray(opened.convert("RGB"), dtype=np.int32)
    return np.asarray(image, dtype=np.int32)


def test_names_and_a_rendered_image() -> None:
    assert DOMAIN_CLASSES == ("circle", "square", "triangle", "star", "hexagon", "cross", "heart")
    assert DOMAINS == ("photo", "cartoon", "sketch", "painting")
    image = render_domain("star", "photo", random.Random(0), image_size=48)
    assert image.mode == "RGB" and image.size == (48, 48)


def test_same_seed_same_pixels_other_seed_other_pixels() -> None:
    for domain in DOMAINS:
        first = make_domain_split(domain, 2, seed=3, classes=("heart", "cross"))
        again = make_domain_split(domain, 2, seed=3, classes=("heart", "cross"))
        other = make_domain_split(domain, 2, seed=4, classes=("heart", "cross"))
        for a, b, c in zip(first, again, other, strict=True):
            assert np.array_equal(_pixels(a.image), _pixels(b.image))
            assert not np.array_equal(_pixels(a.image), _pixels(c.image))
        # Any image can be built alone, and the class list does not move it.
        alone = make_domain_example(domain, "cross", 1, seed=3)
        assert np.array_equal(_pixels(alone.image), _pixels(first[3].image))
        assert np.array_equal(_pixels(alone.image), _pixels(make_domain_split(domain, 2, seed=3)[11].image))


def _style(image: Image.Image) -> set[str]:
    """Which styles' defining statistics ``image`` has, worked out from its pixels alone."""
    p = _pixels(image)
    grey = (p.max(axis=2) - p.min(axis=2)) <= 10
    chromatic = (p.max(axis=2) - p.min(axis=2)) > 40
    luminance = p.mean(axis=2)
    colours = np.unique(p.reshape(-1, 3), axis=0)
    # High-frequency colour noise: neighbours whose hue-ish differences (R-G, B-G) jump.
    rg, bg = p[..., 0] - p[..., 1], p[..., 2] - p[..., 1]
    colour_jumps = (np.abs(np.diff(rg, axis=1)) + np.abs(np.diff(bg, axis=1)) > 12).mean()
    border = np.concatenate([luminance[:2].ravel(), luminance[-2:].ravel(),
                             luminance[:, :2].ravel(), luminance[:, -2:].ravel()])
    found = set()
    # Sketch: every pixel grey, mostly white paper, some dark line.
    if grey.all() and (p.min(axis=2) > 235).mean() > 0.8 and (luminance < 100).mean() > 0.005:
        found.add("sketch")
    # Cartoon: a handful of flat colours, one of them saturated, the darkest one dark (the outline).
    if len(colours) <= 4 and chromatic.mean() > 0.005 and colours.mean(axis=1).min() < 50:
        found.add("cartoon")
    # Painting: colour noise between neighbouring pixels nearly everywhere.
    if colour_jumps > 0.5:
        found.add("painting")
    # Photo: smooth shading (many colours, few colour jumps) and a background that is not uniform.
    if len(colours) > 200 and colour_jumps < 0.2 and border.std() > 8:
        found.add("photo")
    return found


def test_each_style_has_its_own_statistics_and_no_other_style_has_them() -> None:
    for domain in DOMAINS:
        for example in make_domain_split(domain, 3, seed=1):
            assert _style(example.image) == {domain}, example.id  # type: ignore[arg-type]


def test_records_ids_labels_captions_and_order() -> None:
    examples = make_domain_split("painting", 2, classes=("hexagon", "circle"), image_size=40)
    assert [e.id for e in examples] == [
        "painting/hexagon/00000", "painting/hexagon/00001", "painting/circle/00000", "painting/circle/00001"]
    assert [e.label for e in examples] == ["hexagon", "hexagon", "circle", "circle"]
    assert examples[0].captions == ("a painting of a hexagon",)
    assert examples[0].group == "painting/hexagon"
    assert isinstance(examples[0].image, Image.Image) and examples[0].image.size == (40, 40)
    assert make_domain_example("cartoon", "star", 7).captions == ("a cartoon of a star",)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"domain": "clipart"}, r"unknown domain 'clipart'; known domains: photo, cartoon, sketch, painting"),
        ({"classes": ("circle", "dog")}, r"unknown class 'dog'; known classes: circle, square"),
        ({"n_per_class": 0}, r"n_per_class must be an integer >= 1, got 0"),
        ({"image_size": 31}, r"image_size must be an integer >= 32, got 31"),
        ({"classes": ("circle",)}, r"at least 2 classes are needed for classification, got 1"),
        ({"classes": ("star", "circle", "star")}, r"classes must be distinct; named more than once: star"),
    ],
)
def test_make_domain_split_errors(kwargs: dict[str, object], message: str) -> None:
    arguments: dict[str, object] = {"domain": "photo", "n_per_class": 1, **kwargs}
    with pytest.raises(InputError, match=message) as raised:
        make_domain_split(**arguments)  # type: ignore[arg-type]
    assert "\n" not in str(raised.value)


def test_render_errors() -> None:
    with pytest.raises(InputError, match="unknown class 'oval'"):
        render_domain("oval", "photo", random.Random(0))
    with pytest.raises(InputError, match="unknown domain 'art'"):
        render_domain("star", "art", random.Random(0))


def test_folder_round_trip(tmp_path: Path) -> None:
    root = write_domain_folder(tmp_path / "pacs", 2, seed=5, domains=("sketch", "photo"), classes=("star", "cross"))
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png"))[:3] == [
        "photo/cross/00000.png", "photo/cross/00001.png", "photo/star/00000.png"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # the staging folder is gone
    classes, examples = read_domains(root)
    assert classes == ["cross", "star"] and list(examples) == ["photo", "sketch"]
    for domain, read in examples.items():
        made = {e.id: e for e in make_domain_split(domain, 2, seed=5, classes=("star", "cross"))}
        assert len(read) == len(made) == 4
        for example in read:
            twin = made[example.id.removesuffix(".png")]
            assert example.label == twin.label and example.group == twin.group
            assert np.array_equal(_pixels(example.image), _pixels(twin.image))
    assert list(read_domains(root, ["sketch"])[1]) == ["sketch"]


def test_write_domain_folder_never_overwrites(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(InputError, match="exists and is not an empty folder"):
        write_domain_folder(tmp_path / "mine", 1)
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]
    with pytest.raises(InputError, match="unknown domain 'x'"):
        write_domain_folder(tmp_path / "new", 1, domains=("photo", "x"))
    assert not (tmp_path / "new").exists()
    (tmp_path / "empty").mkdir()
    assert write_domain_folder(tmp_path / "empty", 1, domains=("cartoon",), classes=("circle", "heart")).is_dir()


def _image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (200, 10, 10)).save(path)


def test_read_domains_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="domain folder root not found"):
        read_domains(tmp_path / "missing")
    (tmp_path / "bare").mkdir()
    with pytest.raises(InputError, match="no domain folders"):
        read_domains(tmp_path / "bare")
    root = tmp_path / "office"
    for domain, classes in {"Art": ["mug", "pen"], "Product": ["mug", "pen"]}.items():
        for cls in classes:
            _image(root / domain / cls / "1.jpg")
    with pytest.raises(InputError, match=r"no domain folder 'Clipart'; it has: Art, Product"):
        read_domains(root, ["Art", "Clipart"])
    (root / "Clipart").mkdir()
    with pytest.raises(InputError, match=r"Clipart: domain folder has no class folders"):
        read_domains(root)
    (root / "Clipart" / "mug").mkdir()
    (root / "Clipart" / "mug" / "readme.txt").write_text("no image here")
    with pytest.raises(InputError, match=r"no image files"):
        read_domains(root)
    _image(root / "Clipart" / "mug" / "1.png")
    _image(root / "Clipart" / "lamp" / "1.png")
    with pytest.raises(InputError, match=r"same classes.*'Art' has no 'lamp'; 'Clipart' has no 'pen'; 'Product' has no 'lamp'") as raised:
        read_domains(root)
    assert "\n" not in str(raised.value)
    # Labels are the folder names, even when they look like WordNet ids.
    ids = tmp_path / "ids"
    for domain in ("a", "b"):
        for cls in ("n01440764", "n01443537"):
            _image(ids / domain / cls / "x.png")
    classes, examples = read_domains(ids)
    assert classes == ["n01440764", "n01443537"]
    assert [e.id for e in examples["b"]] == ["b/n01440764/x.png", "b/n01443537/x.png"]
    assert examples["b"][0].label == "n01440764" and examples["b"][0].group == "b/n01440764"


def test_dataset_specs(tmp_path: Path) -> None:
    generated = list(read_dataset("shapes-domains:sketch,photo:2:7"))
    assert len(generated) == 2 * 2 * len(DOMAIN_CLASSES)
    assert generated[0].id == "sketch/circle/00000" and generated[-1].id == "photo/heart/00001"
    assert np.array_equal(_pixels(generated[0].image), _pixels(make_domain_example("sketch", "circle", 0, seed=7).image))
    assert sum(1 for _ in read_dataset("shapes-domains:cartoon")) == 100 * len(DOMAIN_CLASSES)
    root = write_domain_folder(tmp_path / "dg", 1, domains=("photo", "painting"), classes=("star", "heart"))
    assert [e.id for e in read_dataset(f"domains:{root}")] == [
        "painting/heart/00000.png", "painting/star/00000.png", "photo/heart/00000.png", "photo/star/00000.png"]
    assert [e.label for e in read_dataset(f"domains:{root}:photo")] == ["heart", "star"]
    for spec, message in [
        ("shapes-domains:", r"expected 'shapes-domains:DOMAIN\[,DOMAIN...\]\[:N_PER_CLASS\[:SEED\]\]'"),
        ("shapes-domains:photo:x", r"not 'shapes-domains:photo:x'"),
        ("shapes-domains:photo,art:3", r"unknown domain 'art'"),
        ("shapes-domains:photo,photo", r"named more than once: photo"),
        ("shapes-domains:photo:0", r"n_per_class must be an integer >= 1"),
        ("domains:", r"expected 'domains:ROOT\[:DOMAIN\[,DOMAIN...\]\]'"),
        (f"domains:{root}:sketch", r"no domain folder 'sketch'; it has: painting, photo"),
    ]:
        with pytest.raises(InputError, match=message):
            list(read_dataset(spec))
