"""Frozen image encoders and the float16 feature cache."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import transformers
from numerics import DEEP, assert_close
from PIL import Image

from vlmkit.errors import InputError
from vlmkit.feature_cache import FeatureCache
from vlmkit.models.image_encoders import EfficientNetEncoder, load_image_encoder


@pytest.fixture(scope="module")
def images(photos):
    return [Image.open(photos[k]).convert("RGB") for k in ("cat", "coffee", "astronaut", "rocket", "motorcycle")]


def test_efficientnet_tokens(images):
    encoder = load_image_encoder("efficientnet-lite0")
    assert isinstance(encoder, EfficientNetEncoder) and encoder.hidden_size == 1280
    features = encoder.encode(images[:2])
    assert features.shape == (2, 49, 1280)
    grid = encoder.net.forward_features(encoder.preprocess(images[:1]))  # (1, 1280, 7, 7)
    # Token 8 = row 1, column 1. The grid comes from a batch of one, the tokens from a batch of two:
    # the convolutions may round differently (4.6e-6 at 2 threads here, half the default atol).
    assert_close(features[0, 8], grid[0, :, 1, 1], rtol=DEEP, what="token 8")
    encoder.train()
    assert not encoder.training and not any(p.requires_grad for p in encoder.parameters())


def test_efficientnet_before_the_head(images):
    """``efficientnet-lite0-blocks``: the 320-channel map the head convolution reads; the head applied
    to it gives the default encoder's tokens (the same computation, so the same numbers)."""
    blocks, head = load_image_encoder("efficientnet-lite0-blocks"), load_image_encoder("efficientnet-lite0")
    assert blocks.hidden_size == 320 and blocks.identity != head.identity
    pixels = blocks.preprocess(images[:2])
    tokens = blocks(pixels)  # (2, 49, 320)
    assert tokens.shape == (2, 49, 320)
    net = head.net
    grid = tokens.transpose(1, 2).reshape(2, 320, 7, 7)
    assert torch.equal(net.act(net._bn1(net._conv_head(grid))).flatten(2).transpose(1, 2), head(pixels))


def test_hf_vision_tower_second_last_layer(tiny, images):
    encoder = load_image_encoder(tiny["clip"])
    reference = transformers.CLIPModel.from_pretrained(tiny["clip"]).vision_model.eval()
    pixels = encoder.preprocess(images[:2])
    with torch.no_grad():
        expected = reference(pixel_values=pixels, output_hidden_states=True).hidden_states[-2]
    torch.testing.assert_close(encoder.encode(images[:2]), expected)
    assert encoder.hidden_size == reference.config.hidden_size


def test_feature_cache_round_trip_and_resume(tmp_path, images):
    encoder = load_image_encoder("efficientnet-lite0")
    cache = FeatureCache.build(encoder, images, tmp_path / "cache", batch_size=2)
    fresh = encoder.encode(images)
    assert len(cache) == 5 and cache.batch([0, 4]).dtype == torch.float32
    torch.testing.assert_close(cache.batch(range(5)), fresh, atol=2e-2, rtol=1e-2)  # float16 storage
    torch.testing.assert_close(cache[3], cache.batch([3])[0])

    # An interrupted build (rows after 2 never written) resumes and fills in the rest.
    meta_path = tmp_path / "cache" / "meta.json"
    meta = json.loads(meta_path.read_text())
    data = np.load(tmp_path / "cache" / "features.npy", mmap_mode="r+")
    data[2:] = 0
    data.flush()
    del data
    meta_path.write_text(json.dumps({**meta, "done": 2}))
    with pytest.raises(InputError, match="incomplete"):
        FeatureCache.open(tmp_path / "cache")
    resumed = FeatureCache.build(encoder, images, tmp_path / "cache", batch_size=2)
    torch.testing.assert_close(resumed.batch(range(5)), cache.batch(range(5)))

    with pytest.raises(InputError, match="build a new cache"):
        FeatureCache.open(tmp_path / "cache", identity="something-else")
    with pytest.raises(InputError, match="not a feature cache"):
        FeatureCache.open(tmp_path / "nothing")


def test_feature_cache_is_shared_only_by_the_same_images(tmp_path, images, monkeypatch):
    encoder = load_image_encoder("efficientnet-lite0")
    first = FeatureCache.build(encoder, images, tmp_path / "cache", images_key="set-a").batch(range(5))
    calls = []
    original = type(encoder).encode
    monkeypatch.setattr(type(encoder), "encode", lambda self, batch: calls.append(len(batch)) or original(self, batch))
    # The same key: the complete cache is reused (only the one-image shape probe runs).
    FeatureCache.build(encoder, images, tmp_path / "cache", images_key="set-a")
    assert calls == [1]
    # Another key with as many images: rebuilt from those images, not mixed with the old rows.
    reversed_images = images[::-1]
    other = FeatureCache.build(encoder, reversed_images, tmp_path / "cache", images_key="set-b", batch_size=5)
    assert calls[1:] == [1, 5]
    torch.testing.assert_close(other.batch(range(5)), first[torch.arange(4, -1, -1)])


def test_hf_encoder_identity_follows_the_weights_not_the_folder_name(tmp_path):
    """Every training run exports to a folder named ``model``: a feature cache keyed by the folder
    name alone would hand one run's cached features to another checkpoint."""
    from vlmkit.testing import build_clip

    first = build_clip(tmp_path / "a" / "model", 0)
    second = build_clip(tmp_path / "b" / "model", 1)
    identity = load_image_encoder(first).identity
    assert identity == load_image_encoder(first).identity
    assert identity != load_image_encoder(second).identity
    assert identity.startswith("hf:model:clip:layer-2:")
