"""Image reading: every kind of bad input becomes an ImageError with a clear reason."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from vlmkit.errors import ImageError, ImageTooLargeError
from vlmkit.images import iter_loaded, load_image


def test_reads_real_photos(photos):
    image = load_image(photos["coffee"])
    assert image.mode == "RGB" and image.size == (600, 400)


@pytest.mark.parametrize(
    "name, reason",
    [
        ("missing", "no such file"),
        ("dir", "a directory, not an image file"),
        ("text", "not an image"),
        ("empty", "empty file"),
        ("truncated", "truncated"),
        ("bomb", "over the limit"),
    ],
)
def test_bad_files_raise_clear_errors(bad_images, name, reason):
    with pytest.raises(ImageError) as info:
        load_image(bad_images[name])
    assert reason in str(info.value)
    assert str(bad_images[name]) in str(info.value)


def test_corrupt_jpeg_is_an_image_error(bad_images):
    with pytest.raises(ImageError):
        load_image(bad_images["corrupt"])


def test_too_many_pixels_is_its_own_error(bad_images):
    """A decompression bomb, or an image over the limit, is an ImageTooLargeError (the server's
    413); any other unreadable image is not."""
    with pytest.raises(ImageTooLargeError, match="over the limit"):
        load_image(bad_images["bomb"])
    with pytest.raises(ImageError) as info:
        load_image(bad_images["truncated"])
    assert not isinstance(info.value, ImageTooLargeError)


def test_pixel_limit_is_configurable(bad_images, monkeypatch):
    with pytest.raises(ImageTooLargeError, match="over the limit"):
        load_image(bad_images["good"], max_pixels=1000)
    monkeypatch.setenv("VLMKIT_MAX_PIXELS", "1000")
    with pytest.raises(ImageError, match="over the limit"):
        load_image(bad_images["good"])
    monkeypatch.setenv("VLMKIT_MAX_PIXELS", "lots")
    with pytest.raises(ImageError, match="positive integer"):
        load_image(bad_images["good"])


def test_other_sources(photos):
    png = photos["cat"].read_bytes()
    from_bytes = load_image(png)
    from_url = load_image("data:image/png;base64," + base64.b64encode(png).decode())
    from_array = load_image(np.asarray(Image.open(photos["cat"])))
    assert from_bytes.size == from_url.size == from_array.size
    assert np.array_equal(np.asarray(from_bytes), np.asarray(from_array))
    grey = load_image(np.zeros((8, 9), dtype=np.uint8))
    assert grey.mode == "RGB" and grey.size == (9, 8)
    with pytest.raises(ImageError, match="base64"):
        load_image("data:image/png;base64,@@@")
    with pytest.raises(ImageError, match="remote"):
        load_image("https://example.com/cat.jpg")
    with pytest.raises(ImageError, match="expected a path"):
        load_image(42)  # type: ignore[arg-type]
    with pytest.raises(ImageError, match="shape"):
        load_image(np.zeros((2, 3, 4, 5)))


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (40, 20), "red")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif)
    assert load_image(path).size == (20, 40)


def test_draft_decoding_keeps_enough_pixels(tmp_path):
    path = tmp_path / "big.jpg"
    Image.new("RGB", (2000, 1000), "blue").save(path)
    small = load_image(path, draft_size=224)
    assert min(small.size) >= 224 and small.size[0] < 2000


def test_iter_loaded_keeps_order_and_reports_errors(bad_images, photos):
    sources = [photos["cat"], bad_images["missing"], photos["coffee"], bad_images["text"]]
    results = list(iter_loaded(sources, workers=2, prefetch=2))
    assert [src for src, _ in results] == sources
    assert [isinstance(item, ImageError) for _, item in results] == [False, True, False, True]
    assert results[0][1].size == Image.open(photos["cat"]).size


def test_truncated_png(tmp_path, photos):
    data = io.BytesIO()
    Image.open(photos["cat"]).save(data, format="PNG")
    path = tmp_path / "cut.png"
    path.write_bytes(data.getvalue()[:5000])
    with pytest.raises(ImageError):
        load_image(path)
