"""Retrieval recall and VQA exact match on hand-worked cases."""

from __future__ import annotations

import numpy as np
import pytest

from vlmkit.eval import (
    exact_match_accuracy,
    normalize_answer,
    retrieval_scores,
    topk_accuracy,
    vqa_accuracy,
    vqa_question_accuracy,
)


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


def test_retrieval_with_interchangeable_images():
    # Images 0 and 1 are the same scene content (group "a"), image 2 another ("b"); text j describes image j.
    sim = np.array([[0.1, 0.9, 0.2],
                    [0.5, 0.3, 0.4],
                    [0.6, 0.2, 0.8]])
    strict = retrieval_scores(sim, [0, 1, 2], ks=(1,))
    # strict T2I: text 0 -> image 2 (0.6) beats image 0 (0.1): rank 3; text 1 -> image 0 (0.9): rank 2;
    # text 2 -> image 2 (0.8): rank 1
    assert strict.text_to_image_mean_rank == pytest.approx(2.0)
    grouped = retrieval_scores(sim, [0, 1, 2], ks=(1,), image_groups=["a", "a", "b"])
    # text 0: best of images 0/1 is 0.5 < image 2's 0.6 -> rank 2; text 1: image 0 (0.9) is right -> 1;
    # text 2 -> 1. So T2I R@1 = 2/3.
    assert grouped.text_to_image[1] == pytest.approx(200 / 3)
    assert grouped.text_to_image_mean_rank == pytest.approx(4 / 3)
    # I2T: image 0's right texts are 0 and 1 (0.9 best) -> 1; image 1's best right text is 0 (0.5),
    # text 2 (0.4) is lower -> 1; image 2: text 2 (0.8) -> 1.
    assert grouped.image_to_text[1] == 100.0
    # strict I2T: image 0's text 0 (0.1) is last -> 3; image 1's text 1 (0.3) is below 0.5 and 0.4 -> 3;
    # image 2 -> 1
    assert strict.image_to_text[1] == pytest.approx(100 / 3)
    with pytest.raises(ValueError, match="image groups"):
        retrieval_scores(sim, [0, 1, 2], image_groups=["a"])


def test_an_image_of_several_texts_ranks_by_its_best_text():
    # image 0 owns texts 0, 1, 2 (two tie at the top); image 1 owns text 3 which scores 0.9 on image 0.
    sim = np.array([[0.8, 0.8, 0.1, 0.9],
                    [0.0, 0.0, 0.0, 1.0]])
    scores = retrieval_scores(sim, [0, 0, 0, 1], ks=(1, 2))
    assert scores.image_to_text == {1: 50.0, 2: 100.0}  # image 0: text 3 beats its best (0.8) -> rank 2


# -- VQAv2 accuracy -----------------------------------------------------------------------------


def test_vqa_normalisation_follows_the_vqav2_rules():
    assert normalize_answer("Two.") == normalize_answer("2") == "2"
    assert normalize_answer("The Red!") == "red"
    assert normalize_answer("dont know") == "don't know"  # contraction restored
    assert normalize_answer("its red") == "its red"  # an ordinary word is not a contraction
    assert normalize_answer("2.5") == "2.5"  # a decimal point stays
    assert normalize_answer("1,000") == "1000"  # a thousands comma goes
    assert normalize_answer("t-shirt") == "t shirt"
    assert normalize_answer("10:30") == "10:30"
    assert normalize_answer("  A\tdog\n") == "dog"
    assert normalize_answer("none") == "0"


@pytest.mark.parametrize(("agreeing", "expected"), [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)])
def test_vqa_accuracy_of_one_question_by_hand(agreeing, expected):
    # With m of 10 annotators agreeing: leaving out one of the m leaves m-1, one of the others m;
    # e.g. m=3: (3 * min(1, 2/3) + 7 * min(1, 3/3)) / 10 = 0.9.
    answers = ["yes"] * agreeing + ["no"] * (10 - agreeing)
    assert vqa_question_accuracy("Yes.", answers) == pytest.approx(expected)


def test_vqa_accuracy_overall_and_per_answer_type():
    humans = [["2"] * 10, ["red"] * 2 + ["blue"] * 8, ["yes"] * 10]
    scores = vqa_accuracy(["two", "red", "no"], humans, ["number", "other", "yes/no"])
    assert scores.per_question == pytest.approx([1.0, 0.6, 0.0])
    assert scores.overall == pytest.approx(100 * 1.6 / 3)
    assert scores.per_answer_type == pytest.approx({"number": 100.0, "other": 60.0, "yes/no": 0.0})
    with pytest.raises(ValueError, match="human answers"):
        vqa_question_accuracy("yes", ["yes"])
    with pytest.raises(ValueError):
        vqa_accuracy(["a"], [])


# -- zero-shot top-k ----------------------------------------------------------------------------


def test_topk_accuracy_by_hand():
    scores = np.array([[0.1, 0.7, 0.2],   # true 1: rank 1
                       [0.5, 0.3, 0.2],   # true 2: rank 3
                       [0.4, 0.4, 0.2]])  # true 0: tied with class 1 -> rank 2 (ties count against)
    result = topk_accuracy(scores, [1, 2, 0], ks=(1, 2, 3))
    assert result.accuracy == pytest.approx({1: 100 / 3, 2: 200 / 3, 3: 100.0})
    assert result.per_class_top1 == {0: 0.0, 1: 100.0, 2: 0.0}
    with pytest.raises(ValueError, match="class indices"):
        topk_accuracy(scores, [0, 1, 3])
