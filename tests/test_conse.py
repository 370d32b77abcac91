"""The built-in offline default on real photos: plain queries find the right photo first."""

from __future__ import annotations

import numpy as np
import pytest
from numerics import DEEP, REORDERED, assert_close

import vlmkit
from vlmkit.errors import UnsupportedTaskError


@pytest.fixture(scope="module")
def model():
    return vlmkit.load("default")


@pytest.fixture(scope="module")
def gallery(photos):
    keys = ["cat", "coffee", "astronaut", "rocket", "motorcycle"]
    return keys, [str(photos[k]) for k in keys]


@pytest.mark.parametrize(
    "query, expected",
    [("a cat", "cat"), ("coffee", "coffee"), ("a cup of coffee", "coffee"), ("a kitten", "cat"),
     ("a rocket", "rocket"), ("a motorcycle", "motorcycle"), ("a helmet", "astronaut")],
)
def test_plain_queries_find_the_right_photo(model, gallery, query, expected):
    keys, paths = gallery
    scores = model.similarity(paths, [query])[:, 0]
    assert keys[int(np.argmax(scores))] == expected


def test_classify_arbitrary_labels(model, gallery):
    keys, paths = gallery
    labels = ["cat", "coffee", "rocket", "motorcycle"]
    ranked = model.classify(paths, labels)
    top = {key: r[0].label for key, r in zip(keys, ranked, strict=True)}
    assert top["cat"] == "cat" and top["coffee"] == "coffee" and top["rocket"] == "rocket" and top["motorcycle"] == "motorcycle"


def test_captions_name_what_is_there(model, photos):
    cat, coffee = model.caption([photos["cat"], photos["coffee"]])
    assert cat.startswith("a photo of") and ("cat" in cat or "tabby" in cat)
    assert "espresso" in coffee or "cup" in coffee
    assert model.caption([photos["coffee"]], prompt="an image of")[0].startswith("an image of ")


def test_embeddings_and_batching(model, gallery):
    _, paths = gallery
    batched = model.embed_images(paths, batch_size=5)
    single = model.embed_images(paths, batch_size=1)
    assert_close(batched, single, rtol=DEEP, what="batch 5 against 1")
    assert batched.shape == (5, 384) and batched.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)
    texts = model.embed_texts(["a cat", "a cup of coffee on a wooden table"])
    # Alone, "a cat" is not padded to the other text's length: another shape, the whole pass reorders.
    assert_close(model.embed_texts(["a cat"]), texts[:1], rtol=DEEP, what="a text alone")


def test_match_is_cosine(model, photos):
    result = model.match(photos["coffee"], ["a cup of coffee", "a rocket"])
    assert result.kind == "cosine" and result.scores[0] > result.scores[1]


def test_convex_combination(model, photos):
    """An image embedding is the normalised, probability-weighted mix of its top-T class embeddings."""
    probs = model.class_probabilities([photos["cat"]])[0]
    top = np.argsort(-probs)[: model.top_t]
    mix = (probs[top, None] * model.class_embeddings[top]).sum(axis=0)
    # The same probabilities and class embeddings, mixed and normalised in another order.
    assert_close(model.embed_images([photos["cat"]])[0], mix / np.linalg.norm(mix), rtol=REORDERED, what="mix")


@pytest.mark.parametrize("task", ["ask", "chat", "generate"])
def test_generative_tasks_are_refused_with_alternatives(model, photos, task):
    with pytest.raises(UnsupportedTaskError, match="llava") as info:
        if task == "ask":
            model.ask(photos["cat"], "what is it?")
        elif task == "chat":
            model.chat([{"role": "user", "content": "hi"}])
        else:
            model.generate(photos["cat"], "describe")
    assert "conse" in str(info.value)


def test_embeddings_with_tags_come_from_one_pass(model, photos):
    images = [photos["cat"], photos["coffee"]]
    vectors, tags = model.embed_images_with_tags(images)
    np.testing.assert_allclose(vectors, model.embed_images(images), atol=1e-6)
    assert [f"a photo of {t}" for t in tags] == model.caption(images)
