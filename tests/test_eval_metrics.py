"""Retrieval recall and VQA exact match on hand-worked cases."""

from __future__ import annotations

import numpy as np
import pytest

from vlmkit.eval import exact_match_accuracy, normalize_answer, retrieval_scores


def test_retrieval_recall_by_hand():
    # 2 images, 3 texts: texts 0 and 1 describe image 0, text 2 describes image 1.
    sim = np.array([[0.9, 0.1, 0.8],
                    [0.2, 0.3, 0.7]])
    scores = retrieval_scores(sim, [0, 0, 1], ks=(1, 2))
    # image 0: its best text (0, 0.9) ranks 1st; image 1: its text 2 (0.7) ranks 1st -> I2T R@1 = 100
    assert scores.image_to_text == {1: 100.0, 2: 100.0}
    # text 0: image 0 (0.9) > image 1 (0.2): rank 1; text 1: image 0 (0.1) < image 1 (0.3): rank 2;
    # text 2: image 1 (0.7) < image 0 (0.8): rank 2 -> T2I R@1 = 1/3, R@2 = 3/3
    assert scores.text_to_image[1] == pytest.approx(100 / 3)
    assert scores.text_to_image[2] == 100.0
    assert scores.text_to_image_mean_rank == pytest.approx(5 / 3)
    with pytest.raises(ValueError):
        retrieval_scores(sim, [0, 1])


def test_vqa_exact_match():
    assert normalize_answer("Two.") == normalize_answer("2") == "2"
    assert normalize_answer("The Red!") == "red"
    assert exact_match_accuracy(["red", "Two", "no"], ["red", "2", "yes"]) == pytest.approx(200 / 3)
    with pytest.raises(ValueError):
        exact_match_accuracy(["a"], [])
