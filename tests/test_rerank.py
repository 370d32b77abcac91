"""BLIP-2's ITC top-k then ITM re-ranking: hand-worked on a fake model, then on a real tiny checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
from numerics import DEEP, assert_close
from PIL import Image

import vlmkit
from vlmkit.eval import rerank_with_itm, retrieval_scores
from vlmkit.models.base import MatchResult


class FakeItmModel:
    """Images are solid colours; ITC is deliberately wrong for image 0, ITM knows the truth."""

    name = "fake"
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    texts = ["red", "green", "blue"]

    def similarity(self, images, texts):
        return np.array([[0.5, 0.6, 0.1],   # image 0 (red) prefers "green" by ITC
                         [0.2, 0.9, 0.1],
                         [0.1, 0.2, 0.8]])

    def _index(self, image):
        return self.colours.index(image.getpixel((0, 0)))

    def match(self, images, texts):
        images = images if isinstance(images, list) else [images]
        texts = texts if isinstance(texts, list) else [texts]
        scores = [1.0 if self.texts[self._index(im)] == t else 0.0 for im, t in zip(images, texts, strict=True)]
        return MatchResult(scores=np.array(scores, dtype=np.float32), kind="itm")


def test_itm_fixes_what_itc_ranked_wrong():
    model = FakeItmModel()
    images = [Image.new("RGB", (4, 4), c) for c in model.colours]
    before = retrieval_scores(model.similarity(images, model.texts), [0, 1, 2], ks=(1,))
    assert before.image_to_text[1] == pytest.approx(200 / 3)  # image 0 retrieves "green"
    ranked = rerank_with_itm(model, images, model.texts, k=2)
    # image 0's top 2 by ITC are "green" (0.6) and "red" (0.5); ITM adds 1 to "red": 1.5 > 0.6.
    np.testing.assert_allclose(ranked.image_to_text[0], [1.5, 0.6, -np.inf])
    assert retrieval_scores(ranked.image_to_text, [0, 1, 2], ks=(1,)).image_to_text[1] == 100.0
    assert retrieval_scores(ranked.text_to_image, [0, 1, 2], ks=(1,)).text_to_image[1] == 100.0
    # k=1 keeps ITC's wrong first choice as the only candidate: nothing to re-rank.
    assert retrieval_scores(rerank_with_itm(model, images, model.texts, k=1).image_to_text, [0, 1, 2], ks=(1,)).image_to_text[1] < 100
    with pytest.raises(vlmkit.InputError):
        rerank_with_itm(model, images, model.texts, k=0)


def test_real_checkpoint_scores_are_itc_plus_itm(tiny, photos):
    model = vlmkit.load(tiny["blip2_itm"])
    images = [str(photos["cat"]), str(photos["coffee"])]
    texts = ["a cat", "a cup of coffee", "a rocket"]
    ranked = rerank_with_itm(model, images, texts, k=2)
    itc = model.similarity(images, texts)
    np.testing.assert_allclose(ranked.itc, itc, atol=1e-6)
    assert np.isfinite(ranked.image_to_text).sum(axis=1).tolist() == [2, 2]
    assert np.isfinite(ranked.text_to_image).sum(axis=0).tolist() == [2, 2, 2]
    i, j = 1, int(np.argmax(itc[1]))
    expected = itc[i, j] + model.match(images[i], texts[j]).scores[0]
    # The re-ranker scores ITM on a batch of pairs, this on the pair alone: another batch size.
    assert_close(ranked.image_to_text[i, j], expected, rtol=DEEP, what="itc + itm")


def test_a_model_without_itm_is_refused(tiny, photos):
    model = vlmkit.load(tiny["clip"])
    with pytest.raises(vlmkit.UnsupportedTaskError, match="cannot 'rerank'.*Blip2ForImageTextRetrieval"):
        rerank_with_itm(model, [str(photos["cat"])], ["a cat"])
