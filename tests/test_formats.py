"""Dataset format readers: COCO / Karpathy / NoCaps captions, VQAv2 / OK-VQA, GQA, caption folders,
class folders, WebDataset shards and the one-string spec. Fixtures are built on the fly; every
format check's message is pinned."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import pytest
from PIL import Image

from vlmkit import resources
from vlmkit.data import (
    Example,
    VqaAnnotation,
    dataset_schemes,
    expand_braces,
    make_split,
    make_web_split,
    read_coco_captions,
    read_dataset,
    read_folder,
    read_gqa,
    read_gqa_annotations,
    read_image_classes,
    read_vqa,
    read_vqa_annotations,
    read_webdataset,
)
from vlmkit.errors import InputError

# ---------------------------------------------------------------------------------------------------
# Helpers


def _png(path: Path, colour: tuple[int, int, int] = (200, 10, 10), size: int = 4) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), colour).save(path)
    return path


def _image_bytes(kind: str = "PNG", colour: tuple[int, int, int] = (10, 200, 10)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (6, 5), colour).save(buffer, format=kind)
    return buffer.getvalue()


def _json(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data))
    return path


def _tar(path: Path, members: list[tuple[str, bytes]], mode: Literal["w", "w:gz"] = "w") -> Path:
    with tarfile.open(path, mode) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def no_image_opens(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if anything opens an image file (the readers must only yield paths)."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a reader opened an image")

    monkeypatch.setattr(Image, "open", refuse)


def _error(iterator_or_call: Any) -> str:
    """The InputError message raised by calling (or exhausting) a reader."""
    with pytest.raises(InputError) as info:
        result = iterator_or_call() if callable(iterator_or_call) else iterator_or_call
        for _ in result:
            pass
    return str(info.value)


# ---------------------------------------------------------------------------------------------------
# COCO captions


COCO: dict[str, Any] = {
    "images": [
        {"id": 9, "file_name": "a.png"},
        {"id": 25, "file_name": "sub/b.png"},
        {"id": 30, "file_name": "c.png"},
    ],
    "annotations": [
        {"image_id": 25, "caption": "a giraffe "},
        {"image_id": 9, "caption": "a cat on a mat"},
        {"image_id": 25, "caption": "  two giraffes\n"},
        {"image_id": 9, "caption": "   "},
    ],
}


@pytest.fixture
def coco(tmp_path: Path) -> tuple[Path, Path]:
    images = tmp_path / "images"
    for name in ("a.png", "sub/b.png", "c.png"):
        _png(images / name)
    return _json(tmp_path / "captions.json", COCO), images


def test_coco_groups_captions_per_image_in_file_order(coco: tuple[Path, Path], no_image_opens: None) -> None:
    annotations, images = coco
    examples = list(read_coco_captions(annotations, images))
    assert examples == [
        Example("9", images / "a.png", ("a cat on a mat",)),
        Example("25", images / "sub/b.png", ("a giraffe", "two giraffes")),
        Example("30", images / "c.png", ()),
    ]
    assert examples == list(read_coco_captions(str(annotations), str(images)))  # deterministic


KARPATHY: dict[str, Any] = {
    "images": [
        {
            "filepath": "val2014",
            "filename": "COCO_val2014_000000000042.jpg",
            "split": "test",
            "cocoid": 42,
            "sentences": [{"raw": "A dog.", "tokens": ["a", "dog"]}, {"raw": "A brown dog "}],
        },
        {
            "filepath": "train2014",
            "filename": "COCO_train2014_000000000007.jpg",
            "split": "train",
            "cocoid": 7,
            "sentences": [{"raw": "A bus."}],
        },
        {"filepath": "val2014", "filename": "x.jpg", "split": "restval", "cocoid": 8, "sentences": []},
        {"filename": "1000092795.jpg", "split": "val", "imgid": 0, "sentences": [{"raw": "Flickr."}]},
    ]
}


def test_karpathy_format_and_split_filter(tmp_path: Path, no_image_opens: None) -> None:
    annotations = _json(tmp_path / "dataset_coco.json", KARPATHY)
    root = tmp_path / "coco"
    everything = list(read_coco_captions(annotations, tmp_path, check_files=False))
    assert [e.id for e in everything] == ["42", "7", "8", "1000092795"]  # cocoid, else the Flickr id
    assert everything[0] == Example(
        "42", tmp_path / "val2014/COCO_val2014_000000000042.jpg", ("A dog.", "A brown dog")
    )
    assert everything[3].image == tmp_path / "1000092795.jpg"  # no filepath (Flickr30k)

    _png(root / "val2014/COCO_val2014_000000000042.jpg")
    test = list(read_coco_captions(annotations, root, split="test"))
    assert [e.id for e in test] == ["42"]
    train = read_coco_captions(annotations, tmp_path, split=("train", "restval"), check_files=False)
    assert [e.id for e in train] == ["7", "8"]
    assert list(read_coco_captions(annotations, root, split="nothing")) == []


def test_coco_reader_is_lazy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first example of a big file comes without opening (or even checking) the other images."""
    n = 20_000
    data = {
        "images": [{"id": i, "file_name": f"{i:06d}.png"} for i in range(n)],
        "annotations": [{"image_id": i, "caption": f"image {i}"} for i in range(n)],
    }
    annotations = _json(tmp_path / "big.json", data)
    _png(tmp_path / "images/000000.png")  # only the first image exists
    checked: list[Path] = []
    real_is_file = Path.is_file

    def counting_is_file(self: Path) -> bool:
        checked.append(self)
        return real_is_file(self)

    monkeypatch.setattr(Path, "is_file", counting_is_file)
    opened: list[object] = []
    monkeypatch.setattr(Image, "open", lambda *a, **k: opened.append(a))
    examples = read_coco_captions(annotations, tmp_path / "images")
    assert isinstance(examples, Iterator)
    first = next(examples)
    assert first == Example("0", tmp_path / "images/000000.png", ("image 0",))
    assert opened == [] and len(checked) <= 2  # the annotation file and image 0
    with pytest.raises(InputError, match=r"big.json: image file missing for image 1: .*000001.png"):
        next(examples)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([1, 2], r"captions.json: the top level must be an object, not list"),
        (
            {"annotations": []},
            r"captions.json: the top level has no 'images' key: not a COCO caption, COCO image-info or Karpathy",
        ),
        (
            {"images": [{"id": 1, "file_name": "a.png"}], "annotations": {}},
            r"captions.json: the top level\['annotations'\] must be a list, not object",
        ),
        ({"images": {}, "annotations": []}, r"the top level\['images'\] must be a list, not object"),
        ({"images": [{"id": 1}], "annotations": []}, r"captions.json: images\[0\] has no 'file_name' key"),
        (
            {"images": [{"id": 1.5, "file_name": "a.png"}], "annotations": []},
            r"images\[0\]\['id'\] must be an integer or a string, not number",
        ),
        (
            {"images": [{"id": True, "file_name": "a.png"}], "annotations": []},
            r"images\[0\]\['id'\] must be an integer or a string, not bool",
        ),
        (
            {"images": [{"id": 1, "file_name": "a"}, {"id": 1, "file_name": "b"}], "annotations": []},
            r"images\[1\]: image id 1 appears twice",
        ),
        ({"images": ["a.png"], "annotations": []}, r"images\[0\] must be an object, not string"),
        (
            {"images": [{"id": 1, "file_name": "a.png"}], "annotations": [{"image_id": 1, "caption": 3}]},
            r"captions.json: annotations\[0\]\['caption'\] must be a string, not integer",
        ),
        (
            {"images": [{"id": 1, "file_name": "a.png"}], "annotations": [{"caption": "x"}]},
            r"annotations\[0\] has no 'image_id' key",
        ),
        (
            {"images": [{"id": 1, "file_name": "a.png"}], "annotations": [{"image_id": 2, "caption": "x"}]},
            r"annotations\[0\]: image_id 2 is not in 'images'",
        ),
        (
            {"images": [{"id": 1, "filename": "a.png"}]},  # image-info file with a Karpathy-style key
            r"captions.json: images\[0\] has no 'file_name' key",
        ),
        (
            {"images": [{"filename": "a.jpg", "split": "test", "sentences": [{"text": "x"}]}]},
            r"images\[0\]\['sentences'\]\[0\] has no 'raw' key",
        ),
        (
            {"images": [{"filename": "a.jpg", "sentences": []}]},
            r"images\[0\] has no 'split' key",
        ),
    ],
)
def test_coco_format_errors(tmp_path: Path, data: Any, message: str) -> None:
    annotations = _json(tmp_path / "captions.json", data)
    with pytest.raises(InputError, match=message):
        read_coco_captions(annotations, tmp_path)  # raised on the call, before iterating


def test_coco_file_errors(coco: tuple[Path, Path], tmp_path: Path) -> None:
    annotations, images = coco
    assert "caption annotation file not found: " in _error(
        lambda: read_coco_captions(tmp_path / "no.json", images)
    )
    assert "image directory not found: " in _error(lambda: read_coco_captions(annotations, tmp_path / "nope"))
    broken = tmp_path / "broken.json"
    broken.write_text('{"images": [')
    assert _error(lambda: read_coco_captions(broken, images)).startswith(f"{broken}: not valid JSON")
    message = _error(lambda: read_coco_captions(annotations, images, split="train"))
    assert message == f"{annotations}: split= applies to the Karpathy format; this is a COCO caption file"
    (images / "c.png").unlink()
    examples = read_coco_captions(annotations, images)
    assert [e.id for e in (next(examples), next(examples))] == ["9", "25"]
    assert _error(examples) == f"{annotations}: image file missing for image 30: {images / 'c.png'}"


NOCAPS_IMAGE = {
    "license": 2,
    "coco_url": "https://example.invalid/0013ea2087020901.jpg",
    "date_captured": "2018-11-06 11:04:33",
    "height": 1024,
    "width": 732,
}


def test_nocaps_captions_read_as_coco(tmp_path: Path, no_image_opens: None) -> None:
    """nocaps_val_4500_captions.json: COCO caption format with extra image and annotation keys."""
    data = {
        "licenses": [{"url": "x", "id": 2, "name": "CC BY 2.0"}],
        "info": {"url": "https://nocaps.org", "year": 2018, "version": "0.1"},
        "images": [
            {
                **NOCAPS_IMAGE,
                "id": 0,
                "file_name": "0013ea2087020901.jpg",
                "open_images_id": "0013ea2087020901",
                "domain": "in-domain",
            },
            {
                **NOCAPS_IMAGE,
                "id": 1,
                "file_name": "0028b5d5e7a6e2d6.jpg",
                "open_images_id": "0028b5d5e7a6e2d6",
            },
        ],
        "annotations": [
            {"image_id": 0, "id": 0, "caption": "A baby is standing in front of a house."},
            {"image_id": 1, "id": 1, "caption": "A group of people on a sidewalk."},
            {"image_id": 0, "id": 2, "caption": "A little girl in a white jacket."},
        ],
    }
    annotations = _json(tmp_path / "nocaps_val_4500_captions.json", data)
    _png(tmp_path / "val/0013ea2087020901.jpg")
    _png(tmp_path / "val/0028b5d5e7a6e2d6.jpg")
    examples = list(read_coco_captions(annotations, tmp_path / "val"))
    assert examples == [
        Example(
            "0",
            tmp_path / "val/0013ea2087020901.jpg",
            ("A baby is standing in front of a house.", "A little girl in a white jacket."),
        ),
        Example("1", tmp_path / "val/0028b5d5e7a6e2d6.jpg", ("A group of people on a sidewalk.",)),
    ]
    assert list(read_dataset(f"coco:{annotations}:{tmp_path / 'val'}")) == examples


def test_coco_image_info_file_gives_images_without_captions(tmp_path: Path, no_image_opens: None) -> None:
    """nocaps_test_image_info.json and COCO's image_info_test2014.json: images, no annotations."""
    data = {
        "info": {"description": "test"},
        "images": [
            {**NOCAPS_IMAGE, "id": 4500, "file_name": "a.jpg", "open_images_id": "a"},
            {"id": 4501, "file_name": "b.jpg"},
        ],
        "categories": [{"id": 1, "name": "person"}],
    }
    info = _json(tmp_path / "nocaps_test_image_info.json", data)
    _png(tmp_path / "test/a.jpg")
    _png(tmp_path / "test/b.jpg")
    examples = list(read_coco_captions(info, tmp_path / "test"))
    assert examples == [Example("4500", tmp_path / "test/a.jpg"), Example("4501", tmp_path / "test/b.jpg")]
    assert _error(lambda: read_coco_captions(info, tmp_path, split="test")) == (
        f"{info}: split= applies to the Karpathy format; this is a COCO image-info file"
    )
    (tmp_path / "test/b.jpg").unlink()
    reader = read_coco_captions(info, tmp_path / "test")
    assert next(reader).id == "4500"
    assert _error(reader) == f"{info}: image file missing for image 4501: {tmp_path / 'test/b.jpg'}"
    assert list(read_coco_captions(_json(tmp_path / "none.json", {"images": []}), tmp_path)) == []


# ---------------------------------------------------------------------------------------------------
# VQAv2


QUESTIONS: dict[str, Any] = {
    "data_subtype": "val2014",
    "questions": [
        {"image_id": 42, "question": "What colour?", "question_id": 420},
        {"image_id": 7, "question": "How many?", "question_id": 70},
        {"image_id": 42, "question": "Is it a dog?", "question_id": 421},
    ],
}


def _vqa_annotation(question_id: int, image_id: int, answer: str, answer_type: str) -> dict[str, Any]:
    return {
        "question_id": question_id,
        "image_id": image_id,
        "multiple_choice_answer": answer,
        "answers": [{"answer": answer, "answer_confidence": "yes", "answer_id": i} for i in range(1, 10)]
        + [{"answer": "other", "answer_confidence": "maybe", "answer_id": 10}],
        "answer_type": answer_type,
        "question_type": "what",
    }


ANNOTATIONS: dict[str, Any] = {
    "annotations": [
        _vqa_annotation(70, 7, "2", "number"),
        _vqa_annotation(421, 42, "yes", "yes/no"),
        _vqa_annotation(420, 42, "brown", "other"),
    ]
}


@pytest.fixture
def vqa(tmp_path: Path) -> tuple[Path, Path, Path]:
    images = tmp_path / "val2014"
    _png(images / "COCO_val2014_000000000042.jpg")
    _png(images / "COCO_val2014_000000000007.jpg")
    return _json(tmp_path / "q.json", QUESTIONS), _json(tmp_path / "a.json", ANNOTATIONS), images


def test_vqa_groups_questions_per_image(vqa: tuple[Path, Path, Path], no_image_opens: None) -> None:
    questions, annotations, images = vqa
    examples = list(read_vqa(questions, annotations, images))
    assert examples == [
        Example(
            "42",
            images / "COCO_val2014_000000000042.jpg",
            qa=(("What colour?", "brown"), ("Is it a dog?", "yes")),
        ),
        Example("7", images / "COCO_val2014_000000000007.jpg", qa=(("How many?", "2"),)),
    ]
    truth = read_vqa_annotations(questions, annotations)
    assert list(truth) == ["42", "7"]
    for example in examples:  # aligned with Example.qa, index for index
        assert [(t.question, t.answer) for t in truth[example.id]] == list(example.qa)
    first = truth["42"][0]
    assert first == VqaAnnotation(
        420, 42, "What colour?", "brown", ("brown",) * 9 + ("other",), "other", "what"
    )


def test_vqa_without_annotations_and_custom_names(vqa: tuple[Path, Path, Path], tmp_path: Path) -> None:
    questions, _, images = vqa
    examples = list(read_vqa(questions, None, images))
    assert examples[0].qa == (("What colour?", ""), ("Is it a dog?", ""))
    assert read_vqa_annotations(questions)["7"] == (VqaAnnotation(70, 7, "How many?"),)

    _png(tmp_path / "flat/42.png")
    _png(tmp_path / "flat/7.png")
    by_function = read_vqa(questions, None, tmp_path / "flat", image_name=lambda image_id: f"{image_id}.png")
    assert [e.image for e in by_function] == [tmp_path / "flat/42.png", tmp_path / "flat/7.png"]
    by_template = read_vqa(questions, None, tmp_path, image_name="{subset}/COCO_{subset}_{image_id:012d}.jpg")
    assert [e.image for e in by_template] == [e.image for e in examples]
    with_subset = read_vqa(questions, None, tmp_path, image_name="{subset}/{image_id}.png", subset="flat")
    assert [e.image for e in with_subset] == [tmp_path / "flat/42.png", tmp_path / "flat/7.png"]


@pytest.mark.parametrize(
    ("questions", "annotations", "message"),
    [
        ({"qs": []}, ANNOTATIONS, r"q.json: the top level has no 'questions' key"),
        (
            {"questions": [{"image_id": 42, "question": "x"}]},
            None,
            r"q.json: questions\[0\] has no 'question_id' key",
        ),
        (
            {"questions": [{"image_id": 42, "question": ["x"], "question_id": 1}]},
            None,
            r"questions\[0\]\['question'\] must be a string, not list",
        ),
        (
            {"questions": [{"image_id": 1, "question": "x", "question_id": 1}] * 2},
            None,
            r"questions\[1\]: question_id 1 appears twice",
        ),
        (
            {"questions": QUESTIONS["questions"] + [{"image_id": 7, "question": "Why?", "question_id": 71}]},
            ANNOTATIONS,
            r"a.json: no annotation for question_id 71 of .*q.json",
        ),
        (
            {"questions": QUESTIONS["questions"][:2]},
            ANNOTATIONS,
            r"a.json: 1 annotations have no question in .*q.json \(first: question_id 421\); are the two files",
        ),
        (
            QUESTIONS,
            {"annotations": [{"question_id": 420}]},
            r"a.json: annotations\[0\] has no 'answers' key",
        ),
        (
            QUESTIONS,
            {"annotations": [{"question_id": 420, "answers": [], "answer_type": "other"}]},
            r"a.json: annotations\[0\] has no 'multiple_choice_answer' and no 'answers' to take one from",
        ),
        (
            QUESTIONS,
            {"annotations": [{**_vqa_annotation(420, 42, "x", "other"), "question_type": 4}]},
            r"annotations\[0\]\['question_type'\] must be a string, not integer",
        ),
        (
            QUESTIONS,
            {"annotations": [{**_vqa_annotation(420, 42, "x", "other"), "answers": [{"text": "x"}]}]},
            r"a.json: annotations\[0\]\['answers'\]\[0\] has no 'answer' key",
        ),
        (
            QUESTIONS,
            {"annotations": [{**_vqa_annotation(420, 42, "x", "other"), "answer_type": None}]},
            r"annotations\[0\]\['answer_type'\] must be a string, not null",
        ),
        (
            QUESTIONS,
            {"annotations": [_vqa_annotation(420, 42, "x", "other")] * 2},
            r"annotations\[1\]: question_id 420 appears twice",
        ),
        (
            {"questions": QUESTIONS["questions"]},  # no data_subtype for the default {subset}
            None,
            r"q.json: no 'data_subtype' string to fill \{subset\} in 'COCO_\{subset\}_\{image_id:012d\}.jpg'; pass subset=",
        ),
    ],
)
def test_vqa_format_errors(tmp_path: Path, questions: Any, annotations: Any, message: str) -> None:
    q = _json(tmp_path / "q.json", questions)
    a = None if annotations is None else _json(tmp_path / "a.json", annotations)
    with pytest.raises(InputError, match=message):
        read_vqa(q, a, tmp_path)


def test_vqa_image_errors(vqa: tuple[Path, Path, Path], tmp_path: Path) -> None:
    questions, annotations, images = vqa
    assert _error(lambda: read_vqa(tmp_path / "x.json", None, images)) == (
        f"VQA questions file not found: {tmp_path / 'x.json'}"
    )
    assert "VQA annotations file not found" in _error(
        lambda: read_vqa(questions, tmp_path / "x.json", images)
    )
    message = _error(read_vqa(questions, None, images, image_name="{imageid}.jpg"))
    assert "image_name '{imageid}.jpg' cannot name image 42 (KeyError" in message
    assert "the fields are {image_id} and {subset}" in message
    message = _error(read_vqa(questions, None, images, image_name=lambda image_id: 3))  # type: ignore[arg-type,return-value]
    assert message == "image_name returned int for image 42, not a string"
    (images / "COCO_val2014_000000000007.jpg").unlink()
    examples = read_vqa(questions, annotations, images)
    assert next(examples).id == "42"
    assert _error(examples) == (
        f"{questions}: image file missing for image 7: {images / 'COCO_val2014_000000000007.jpg'}"
    )


def _okvqa_annotation(question_id: int, image_id: int, answers: list[str]) -> dict[str, Any]:
    """An entry of OK-VQA's mscoco_val2014_annotations.json: no multiple_choice_answer, extra keys."""
    return {
        "image_id": image_id,
        "answer_type": "other",
        "question_type": "eight",
        "question_id": question_id,
        "answers": [
            {"answer_id": i + 1, "raw_answer": f"{a}s", "answer_confidence": "yes", "answer": a}
            for i, a in enumerate(answers)
        ],
        "confidence": 3,
    }


def test_okvqa_annotations_take_the_most_frequent_answer(tmp_path: Path) -> None:
    questions = _json(
        tmp_path / "OpenEnded_mscoco_val2014_questions.json",
        {
            "license": {},
            "data_subtype": "val2014",
            "task_type": "Open-Ended",
            "questions": [
                {"image_id": 297147, "question": "What sport can you use this for?", "question_id": 2971475},
                {"image_id": 297147, "question": "Name the type of plant?", "question_id": 2971476},
                {"image_id": 9, "question": "Who made this?", "question_id": 90},
            ],
        },
    )
    tie = ["fern", "ivy", "ivy", "fern", "moss", "fern", "ivy", "palm", "palm", "moss"]  # 3 fern, 3 ivy
    annotations = _json(
        tmp_path / "mscoco_val2014_annotations.json",
        {
            "info": {},
            "annotations": [
                _okvqa_annotation(
                    2971475, 297147, ["race"] * 2 + ["ride"] * 5 + ["race"] * 2 + ["motocross"]
                ),
                _okvqa_annotation(2971476, 297147, tie),
                {**_okvqa_annotation(90, 9, ["apple"] * 10), "multiple_choice_answer": "given"},
            ],
        },
    )
    images = tmp_path / "val2014"
    _png(images / "COCO_val2014_000000297147.jpg")
    _png(images / "COCO_val2014_000000000009.jpg")
    examples = list(read_vqa(questions, annotations, images))
    assert [e.qa for e in examples] == [
        (("What sport can you use this for?", "ride"), ("Name the type of plant?", "fern")),
        (("Who made this?", "given"),),  # an explicit multiple_choice_answer still wins
    ]
    truth = read_vqa_annotations(questions, annotations)
    assert truth["297147"][1] == VqaAnnotation(
        2971476, 297147, "Name the type of plant?", "fern", tuple(tie), "other", "eight"
    )
    minimal = {"question_id": 90, "answers": [{"answer": "apple"}]}  # no types: empty strings
    bare = _json(tmp_path / "bare.json", {"annotations": [minimal]})
    only_90 = _json(tmp_path / "q90.json", {"data_subtype": "val2014", "questions": [_read(questions)[2]]})
    assert read_vqa_annotations(only_90, bare)["9"] == (
        VqaAnnotation(90, 9, "Who made this?", "apple", ("apple",), "", ""),
    )


def _read(questions: Path) -> list[Any]:
    return json.loads(questions.read_text())["questions"]


# ---------------------------------------------------------------------------------------------------
# GQA


def _gqa_question(
    image_id: str, question: str, answer: str, structural: str, detailed: str
) -> dict[str, Any]:
    return {
        "semantic": [{"operation": "select", "dependencies": [], "argument": "x (1)"}],
        "entailed": [],
        "equivalent": [],
        "question": question,
        "imageId": image_id,
        "isBalanced": True,
        "groups": {"global": None, "local": "13-x"},
        "answer": answer,
        "semanticStr": "select: x",
        "annotations": {"answer": {}, "question": {}, "fullAnswer": {}},
        "types": {"detailed": detailed, "semantic": "attr", "structural": structural},
        "fullAnswer": f"The answer is {answer}.",
    }


GQA: dict[str, Any] = {
    "201307251": _gqa_question("n161313", "Is it overcast?", "no", "verify", "weatherVerify"),
    "201640614": _gqa_question("n235859", "Who is wearing the dress?", "woman", "query", "relS"),
    "202225914": _gqa_question("n161313", "Which color is the sky?", "blue", "query", "directOf"),
}


@pytest.fixture
def gqa(tmp_path: Path) -> tuple[Path, Path]:
    images = tmp_path / "images"
    _png(images / "n161313.jpg")
    _png(images / "n235859.jpg")
    return _json(tmp_path / "testdev_balanced_questions.json", GQA), images


def test_gqa_groups_questions_per_image(gqa: tuple[Path, Path], no_image_opens: None) -> None:
    questions, images = gqa
    examples = read_gqa(questions, images)
    assert isinstance(examples, Iterator)
    assert list(examples) == [
        Example(
            "n161313",
            images / "n161313.jpg",
            qa=(("Is it overcast?", "no"), ("Which color is the sky?", "blue")),
        ),
        Example("n235859", images / "n235859.jpg", qa=(("Who is wearing the dress?", "woman"),)),
    ]
    truth = read_gqa_annotations(questions)
    assert list(truth) == ["n161313", "n235859"]
    for example in read_gqa(str(questions), str(images)):  # aligned with Example.qa
        assert [(t.question, t.answer) for t in truth[example.id]] == list(example.qa)
    assert truth["n161313"][1] == VqaAnnotation(
        "202225914", "n161313", "Which color is the sky?", "blue", ("blue",), "query", "directOf"
    )


def test_gqa_test_set_without_answers_or_types(tmp_path: Path) -> None:
    data = {
        "20968379": {"imageId": "n15740", "question": "What is on the table?", "isBalanced": True},
        "20968380": {"imageId": "n15740", "question": "Is the cup white?", "types": {}},
    }
    questions = _json(tmp_path / "test_balanced_questions.json", data)
    examples = list(read_gqa(questions, tmp_path, check_files=False))
    assert examples == [
        Example(
            "n15740", tmp_path / "n15740.jpg", qa=(("What is on the table?", ""), ("Is the cup white?", ""))
        )
    ]
    assert read_gqa_annotations(questions)["n15740"][0] == VqaAnnotation(
        "20968379", "n15740", "What is on the table?"
    )


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([GQA["201307251"]], r"gqa.json: the top level must be an object, not list"),
        (
            {"questions": [{"image_id": 1, "question": "x", "question_id": 1}]},
            r"gqa.json: a 'questions' list is the VQAv2 layout; a GQA file maps question ids to questions",
        ),
        ({"1": "Is it overcast?"}, r"gqa.json: question '1' must be an object, not string"),
        ({"1": {"question": "x", "answer": "no"}}, r"gqa.json: question '1' has no 'imageId' key"),
        ({"1": {"imageId": "n1", "answer": "no"}}, r"gqa.json: question '1' has no 'question' key"),
        (
            {"1": {"imageId": None, "question": "x"}},
            r"question '1'\['imageId'\] must be a string or an integer, not null",
        ),
        (
            {"1": {"imageId": "n1", "question": 7}},
            r"question '1'\['question'\] must be a string, not integer",
        ),
        (
            {"1": {"imageId": "n1", "question": "x", "answer": ["no"]}},
            r"question '1'\['answer'\] must be a string",
        ),
        (
            {"1": {"imageId": "n1", "question": "x", "types": "query"}},
            r"question '1'\['types'\] must be an object",
        ),
        (
            {"1": {"imageId": "n1", "question": "x", "types": {"structural": 3}}},
            r"question '1'\['types'\]\['structural'\] must be a string, not integer",
        ),
        (
            {"1": {"imageId": "../n1", "question": "x"}},
            r"question '1'\['imageId'\] '../n1' is not a plain file name",
        ),
    ],
)
def test_gqa_format_errors(tmp_path: Path, data: Any, message: str) -> None:
    questions = _json(tmp_path / "gqa.json", data)
    with pytest.raises(InputError, match=message):
        read_gqa(questions, tmp_path)  # raised on the call, before iterating
    with pytest.raises(InputError, match=message):
        read_gqa_annotations(questions)


def test_gqa_file_errors(gqa: tuple[Path, Path], tmp_path: Path) -> None:
    questions, images = gqa
    assert _error(lambda: read_gqa(tmp_path / "no.json", images)) == (
        f"GQA questions file not found: {tmp_path / 'no.json'}"
    )
    assert (
        _error(lambda: read_gqa(questions, tmp_path / "nope"))
        == f"image directory not found: {tmp_path / 'nope'}"
    )
    (images / "n235859.jpg").unlink()
    examples = read_gqa(questions, images)
    assert next(examples).id == "n161313"
    assert (
        _error(examples) == f"{questions}: image file missing for image 'n235859': {images / 'n235859.jpg'}"
    )


# ---------------------------------------------------------------------------------------------------
# Folders


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    _png(root / "b.png")
    (root / "b.txt").write_text("a red square\n\n  a small red square  \n")
    _png(root / "a.JPG")  # no caption file; upper-case extension (PNG bytes: the reader never looks)
    _png(root / "cats/002.png")
    (root / "cats/002.txt").write_text("\ufeffa cat\n", encoding="utf-8")  # BOM is dropped
    _png(root / "cats/001.png")
    (root / "cats/001.txt").write_text("one cat")
    (root / "cats/orphan.txt").write_text("no image here")
    (root / "cats/notes.md").write_text("not an image")
    _png(root / ".hidden/x.png")
    _png(root / ".x.png")
    _png(root / "z/deep/er/last.webp")
    return root


def test_folder_reads_images_and_captions_in_order(folder: Path, no_image_opens: None) -> None:
    examples = list(read_folder(folder))
    assert examples == [
        Example("a.JPG", folder / "a.JPG", ()),
        Example("b.png", folder / "b.png", ("a red square", "a small red square")),
        Example("cats/001.png", folder / "cats/001.png", ("one cat",)),
        Example("cats/002.png", folder / "cats/002.png", ("a cat",)),
        Example("z/deep/er/last.webp", folder / "z/deep/er/last.webp", ()),
    ]
    assert list(read_folder(str(folder))) == examples
    assert isinstance(read_folder(folder), Iterator)


def test_folder_errors(folder: Path, tmp_path: Path) -> None:
    assert _error(lambda: read_folder(tmp_path / "nope")) == f"image folder not found: {tmp_path / 'nope'}"
    (tmp_path / "empty/sub").mkdir(parents=True)
    (tmp_path / "empty/sub/a.txt").write_text("caption without image")
    assert _error(read_folder(tmp_path / "empty")).startswith(f"{tmp_path / 'empty'}: no image files (.bmp, ")
    (folder / "cats/001.txt").write_bytes(b"caf\xe9\n")
    examples = read_folder(folder)
    assert [next(examples).id, next(examples).id] == ["a.JPG", "b.png"]
    assert _error(examples).startswith(f"{folder / 'cats/001.txt'}: caption file is not UTF-8 text")


# ---------------------------------------------------------------------------------------------------
# Class folders (ImageNet-style)


@pytest.fixture
def classes(tmp_path: Path) -> Path:
    root = tmp_path / "classes"
    _png(root / "dog/b.png")
    _png(root / "dog/a.JPEG")
    _png(root / "dog/more/c.webp")  # deeper in a class folder: still a dog
    (root / "dog/notes.txt").write_text("not an image")
    _png(root / "cat/1.jpg")
    (root / "empty/sub").mkdir(parents=True)  # no image: left out
    (root / "empty/sub/readme.txt").write_text("x")
    _png(root / ".cache/x.png")  # hidden: not a class
    _png(root / "stray.png")  # not in a class folder: ignored
    return root


def test_image_classes_reads_class_folders(classes: Path, no_image_opens: None) -> None:
    names, examples = read_image_classes(classes)
    assert names == ["cat", "dog"]
    assert isinstance(examples, Iterator)
    assert list(examples) == [
        Example("cat/1.jpg", classes / "cat/1.jpg", label="cat"),
        Example("dog/a.JPEG", classes / "dog/a.JPEG", label="dog"),
        Example("dog/b.png", classes / "dog/b.png", label="dog"),
        Example("dog/more/c.webp", classes / "dog/more/c.webp", label="dog"),
    ]
    assert [e.label for e in read_dataset(f"imagenet:{classes}")] == ["cat", "dog", "dog", "dog"]


def test_example_label_is_backwards_compatible() -> None:
    example = Example("x", Path("x.png"), ("a caption",), (("q?", "a"),))  # positional, as before
    assert example.label == "" and example.qa == (("q?", "a"),)
    assert Example("x", Path("x.png"), label="cat") != Example("x", Path("x.png"), label="dog")


def test_image_classes_with_class_names_file_and_dict(classes: Path, tmp_path: Path) -> None:
    mapping = tmp_path / "names.txt"
    mapping.write_text("dog\tdomestic dog\n\ncat   house cat, Felis catus  \nunused whatever\n")
    names, examples = read_image_classes(classes, class_names=mapping)
    assert names == ["house cat, Felis catus", "domestic dog"]
    assert [e.label for e in examples][:2] == ["house cat, Felis catus", "domestic dog"]
    names, _ = read_image_classes(classes, class_names={"cat": "kitty", "dog": "puppy"})
    assert names == ["kitty", "puppy"]
    names, examples = read_image_classes(classes, class_names={"cat": "pet", "dog": "pet"})
    assert names == ["pet (cat)", "pet (dog)"]  # the same name twice: kept apart
    assert next(examples).label == "pet (cat)"


def _wordnet_folders(root: Path) -> Path:
    for synset in ("n02012849", "n01440764", "n03126707", "n99999999"):
        _png(root / synset / f"{synset}_1.JPEG")
    return root


def test_image_classes_names_wordnet_folders_from_timm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    info = tmp_path / "_info"
    info.mkdir()
    (info / "imagenet_synset_to_lemma.txt").write_text(
        "n01440764\ttench, Tinca tinca\nn02012849\tcrane\nn03126707\tcrane\n"
    )
    monkeypatch.setattr(resources, "imagenet_info_dir", lambda: info)
    root = _wordnet_folders(tmp_path / "val")
    names, examples = read_image_classes(root)
    assert names == ["tench, Tinca tinca", "crane (n02012849)", "crane (n03126707)", "n99999999"]
    assert next(examples) == Example(
        "n01440764/n01440764_1.JPEG", root / "n01440764/n01440764_1.JPEG", label="tench, Tinca tinca"
    )
    assert read_image_classes(root, class_names={s: s.upper() for s in _synsets(root)})[0] == [
        "N01440764",
        "N02012849",
        "N03126707",
        "N99999999",
    ]  # class_names wins over timm

    monkeypatch.setattr(resources, "imagenet_info_dir", lambda: tmp_path / "gone")
    message = _error(lambda: read_image_classes(root))
    assert message.startswith(f"{root}: the class folders are WordNet ids, and the ImageNet descriptions cannot be read (")
    assert message.endswith("; pass class_names=")


def _synsets(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir())


def test_image_classes_real_timm_descriptions(tmp_path: Path) -> None:
    """The class files vlmkit ships: 1,000 ids in classifier order, every one with a description."""
    synsets = (resources.imagenet_info_dir() / "imagenet_synsets.txt").read_text().split()
    assert len(synsets) == len(set(synsets)) == 1000 and synsets[0] == "n01440764"
    assert set(resources.imagenet_lemmas()) == set(synsets)
    assert resources.imagenet_class_names()[281] == ["tabby", "tabby cat"]
    names, _ = read_image_classes(_wordnet_folders(tmp_path))
    assert names == ["tench, Tinca tinca", "crane (n02012849)", "crane (n03126707)", "n99999999"]


def test_image_classes_errors(classes: Path, tmp_path: Path) -> None:
    assert (
        _error(lambda: read_image_classes(tmp_path / "nope"))
        == f"image folder not found: {tmp_path / 'nope'}"
    )
    _png(tmp_path / "flat/a.png")
    assert _error(lambda: read_image_classes(tmp_path / "flat")) == (
        f"{tmp_path / 'flat'}: no class folders (expected ROOT/<class name>/<image files>)"
    )
    (tmp_path / "hollow/a").mkdir(parents=True)
    (tmp_path / "hollow/b").mkdir()
    (tmp_path / "hollow/b/labels.txt").write_text("x")
    assert _error(lambda: read_image_classes(tmp_path / "hollow")).startswith(
        f"{tmp_path / 'hollow'}: no image files (.bmp, "
    )
    assert _error(lambda: read_image_classes(tmp_path / "hollow")).endswith(") in any of its class folders")
    assert _error(lambda: read_image_classes(classes, class_names={"cat": "kitty"})) == (
        f"class_names: no name for 1 of the 2 class folders of {classes} (first: 'dog')"
    )
    assert _error(lambda: read_image_classes(classes, class_names={"cat": "kitty", "dog": " "})) == (
        "class_names['dog'] must be a non-empty string, not ' '"
    )
    assert _error(lambda: read_image_classes(classes, class_names=["cat", "dog"])) == (  # type: ignore[arg-type]
        "class_names must be a file path or a dict of folder -> name, not list"
    )
    names = tmp_path / "names.txt"
    assert (
        _error(lambda: read_image_classes(classes, class_names=names))
        == f"class names file not found: {names}"
    )
    names.write_text("cat kitty\ndog\n")
    assert _error(lambda: read_image_classes(classes, class_names=names)) == (
        f"{names}:2: expected 'FOLDER NAME' (tab or spaces between), got 'dog'"
    )
    names.write_text("cat kitty\ncat tabby\n")
    assert _error(lambda: read_image_classes(classes, class_names=str(names))) == (
        f"{names}:2: folder 'cat' is named twice"
    )
    names.write_text("cat kitty\n")
    assert _error(lambda: read_image_classes(classes, class_names=names)).startswith(
        f"{names}: no name for 1 of the 2 class folders"
    )
    names.write_bytes(b"cat caf\xe9\n")
    assert _error(lambda: read_image_classes(classes, class_names=names)).startswith(
        f"{names}: class names file is not UTF-8 text"
    )


# ---------------------------------------------------------------------------------------------------
# WebDataset


def _samples(start: int, n: int) -> list[tuple[str, bytes]]:
    members = []
    for i in range(start, start + n):
        members += [(f"{i:04d}.jpg", _image_bytes("JPEG")), (f"{i:04d}.txt", f"caption {i}\n".encode())]
    return members


def test_webdataset_reads_samples(tmp_path: Path) -> None:
    members = [
        ("./s/0001.jpg", _image_bytes("JPEG")),
        ("./s/0001.txt", b"a green block\n\nanother caption\n"),
        ("./s/0001.cls", b"3"),
        ("s/0002.png", _image_bytes("PNG", (1, 2, 3))),
        ("s/0002.json", json.dumps({"caption": "from json", "url": "x"}).encode()),
        ("README", b"no extension: not a sample"),
        ("s/0003.json", json.dumps({"captions": ["one", " two "]}).encode()),
        ("s/0003.seg.png", _image_bytes("PNG")),  # extension "seg.png": not the sample's image
        ("s/0003.WEBP", _image_bytes("WEBP")),
        ("s/0004.jpeg", _image_bytes("JPEG")),
        ("s/0004.json", json.dumps({"width": 6}).encode()),  # no caption: none
        ("s/0005.png", _image_bytes("PNG")),
        ("s/0005.jpg", _image_bytes("JPEG")),  # jpg preferred over png
    ]
    shard = _tar(tmp_path / "shard.tar", members)
    examples = list(read_webdataset(shard))
    assert [e.id for e in examples] == [f"shard.tar/s/000{i}" for i in range(1, 6)]
    assert [e.captions for e in examples] == [
        ("a green block", "another caption"),
        ("from json",),
        ("one", "two"),
        (),
        (),
    ]
    formats = []
    for example in examples:
        assert isinstance(example.image, Image.Image)
        formats.append(example.image.format)
        assert example.image.size == (6, 5)
    assert formats == ["JPEG", "PNG", "WEBP", "JPEG", "JPEG"]
    second = examples[1].image
    assert isinstance(second, Image.Image) and second.convert("RGB").getpixel((0, 0)) == (1, 2, 3)


def test_webdataset_patterns_lists_and_compression(tmp_path: Path) -> None:
    _tar(tmp_path / "data-000.tar", _samples(0, 2))
    _tar(tmp_path / "data-001.tar.gz", _samples(2, 2), mode="w:gz")
    _tar(tmp_path / "data-002.tar", _samples(4, 1))
    pattern = str(tmp_path / "data-{000..002}.tar")
    with pytest.raises(InputError, match=r"WebDataset shard not found: .*data-001.tar$"):
        read_webdataset(pattern)  # checked on the call
    (tmp_path / "data-001.tar.gz").rename(tmp_path / "data-001.tar")  # r|* reads any compression
    examples = list(read_webdataset(pattern))
    assert [e.id for e in examples] == [f"data-00{i // 2}.tar/{i:04d}" for i in range(4)] + [
        "data-002.tar/0004"
    ]
    assert [e.captions for e in examples] == [(f"caption {i}",) for i in range(5)]
    listed = read_webdataset([tmp_path / "data-002.tar", str(tmp_path / "data-{000,001}.tar")])
    assert [e.id for e in listed] == ["data-002.tar/0004"] + [e.id for e in examples[:4]]


def test_webdataset_is_streamed_and_truncation_is_an_error(tmp_path: Path) -> None:
    """Samples come out while the shard is read: the first arrives before a corrupt tail is met, and a
    shard cut anywhere before its end-of-archive marker is an error, never a silently shorter set."""
    shard = _tar(tmp_path / "big.tar", _samples(0, 20))
    data = shard.read_bytes()
    members_end = data.index(b"\0" * 1024, data.index(b"caption 19"))  # start of the end marker
    members_end += -members_end % 512
    for cut in [*range(3072, members_end + 1, 256), members_end]:  # sample 0 ends at 2560
        shard.write_bytes(data[:cut])
        examples = read_webdataset(shard)
        first = next(examples)
        assert first.id == "big.tar/0000" and first.captions == ("caption 0",)
        assert _error(examples).startswith(f"{shard}: not a readable tar archive"), cut
    shard.write_bytes(data[: members_end + 512])
    assert len(list(read_webdataset(shard))) == 20


def test_expand_braces() -> None:
    assert expand_braces("data-{000..003}.tar") == [f"data-00{i}.tar" for i in range(4)]
    assert expand_braces("d{8..11}") == ["d8", "d9", "d10", "d11"]
    assert expand_braces("{a,b}-{1..2}.tar") == ["a-1.tar", "a-2.tar", "b-1.tar", "b-2.tar"]
    assert expand_braces("plain.tar") == ["plain.tar"]
    for bad, why in [
        ("d-{1..3.tar", "unbalanced or nested braces"),
        ("d-1..3}.tar", "unbalanced or nested braces"),
        ("{a,{b,c}}", "unbalanced or nested braces"),
        ("d-{3..1}.tar", r"range 3..1 runs backwards"),
        ("d-{x}.tar", r"\{x\} is neither a range A..B nor a list x,y"),
    ]:
        with pytest.raises(InputError, match=why):
            expand_braces(bad)


def _link_shard(path: Path) -> Path:
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo("0001.jpg")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        tar.addfile(info)
    return path


@pytest.mark.parametrize(
    ("members", "message"),
    [
        (
            [("0001.txt", b"caption only"), ("0002.jpg", _image_bytes("JPEG"))],
            r"bad.tar: sample '0001' has no image \(expected one of jpg, jpeg, png, webp; found txt\)",
        ),
        ([("../evil.jpg", _image_bytes())], r"bad.tar: member '../evil.jpg' has an unsafe path"),
        ([("/abs/0001.jpg", _image_bytes())], r"bad.tar: member '/abs/0001.jpg' has an unsafe path"),
        ([("a/../../0001.jpg", _image_bytes())], r"member 'a/../../0001.jpg' has an unsafe path"),
        (
            [("0001.jpg", _image_bytes()), ("0002.jpg", _image_bytes()), ("0001.txt", b"late")],
            r"bad.tar: sample '0001': its files are not adjacent in the shard",
        ),
        ([("0001.jpg", _image_bytes()), ("0001.JPG", _image_bytes())], r"sample '0001' has two 'jpg' files"),
        ([("0001.jpg", b"not an image")], r"bad.tar: sample '0001': jpg file is not a readable image"),
        ([("0001.jpg", _image_bytes()), ("0001.json", b"{oops")], r"sample '0001': json is not valid JSON"),
        (
            [("0001.jpg", _image_bytes()), ("0001.json", b"[1]")],
            r"sample '0001': json must be an object, not list",
        ),
        (
            [("0001.jpg", _image_bytes()), ("0001.json", b'{"caption": 5}')],
            r"sample '0001': json\['caption'\] must be a string, not integer",
        ),
        (
            [("0001.jpg", _image_bytes()), ("0001.json", b'{"captions": ["a", null]}')],
            r"sample '0001': json\['captions'\]\[1\] must be a string, not null",
        ),
        (
            [("0001.jpg", _image_bytes()), ("0001.txt", b"\xff\xfe\xfa")],
            r"sample '0001': txt is not UTF-8 text",
        ),
    ],
)
def test_webdataset_format_errors(tmp_path: Path, members: list[tuple[str, bytes]], message: str) -> None:
    shard = _tar(tmp_path / "bad.tar", members)
    with pytest.raises(InputError, match=message):
        list(read_webdataset(shard))


def test_webdataset_file_errors(tmp_path: Path) -> None:
    assert "member '0001.jpg' is not a regular file (link or device)" in _error(
        read_webdataset(_link_shard(tmp_path / "link.tar"))
    )
    not_tar = tmp_path / "x.tar"
    not_tar.write_bytes(b"hello, not a tar archive at all" * 40)
    assert _error(read_webdataset(not_tar)).startswith(f"{not_tar}: not a readable tar archive")
    assert _error(lambda: read_webdataset([])) == "read_webdataset: no shards given"
    assert _error(lambda: read_webdataset(str(tmp_path / "d-{1..2}.tar"))) == (
        f"WebDataset shard not found: {tmp_path / 'd-1.tar'}"
    )


# ---------------------------------------------------------------------------------------------------
# One entry point


def test_read_dataset_routes_every_scheme(
    coco: tuple[Path, Path],
    vqa: tuple[Path, Path, Path],
    gqa: tuple[Path, Path],
    folder: Path,
    tmp_path: Path,
) -> None:
    annotations, images = coco
    assert list(read_dataset(f"coco:{annotations}:{images}")) == list(read_coco_captions(annotations, images))
    karpathy = _json(tmp_path / "k.json", KARPATHY)
    _png(tmp_path / "val2014/x.jpg")
    _png(tmp_path / "train2014/COCO_train2014_000000000007.jpg")
    assert [e.id for e in read_dataset(f"coco:{karpathy}:{tmp_path}:train,restval")] == ["7", "8"]
    questions, vqa_answers, vqa_images = vqa
    assert list(read_dataset(f"vqa:{questions}:{vqa_answers}:{vqa_images}")) == list(
        read_vqa(questions, vqa_answers, vqa_images)
    )
    assert next(read_dataset(f"vqa:{questions}::{vqa_images}")).answers == ("", "")
    assert list(read_dataset(f"folder:{folder}")) == list(read_folder(folder))
    gqa_questions, gqa_images = gqa
    gqa_examples = list(read_dataset(f"gqa:{gqa_questions}:{gqa_images}"))
    assert [e.id for e in gqa_examples] == ["n161313", "n235859"]
    assert gqa_examples == list(read_gqa(gqa_questions, gqa_images))
    _png(tmp_path / "classes/cat/1.png")
    assert list(read_dataset(f"imagenet:{tmp_path / 'classes'}")) == list(
        read_image_classes(tmp_path / "classes")[1]
    )
    _tar(tmp_path / "w-0.tar", _samples(0, 1))
    _tar(tmp_path / "w-1.tar", _samples(1, 1))
    assert [e.id for e in read_dataset(f"wds:{tmp_path}/w-{{0..1}}.tar")] == ["w-0.tar/0000", "w-1.tar/0001"]

    shapes = read_dataset("shapes:3")
    assert isinstance(shapes, Iterator)
    for got, want in zip(shapes, make_split(3), strict=True):
        assert (got.id, got.captions, got.qa) == (want.id, want.captions, want.qa)
        assert isinstance(got.image, Image.Image) and isinstance(want.image, Image.Image)
        assert got.image.tobytes() == want.image.tobytes()
    assert list(read_dataset("shapes:0")) == []
    web = list(read_dataset("shapes-web:4:2"))
    assert [(e.id, e.captions) for e in web] == [(e.id, e.captions) for e in make_web_split(4, 2)[0]]


def test_read_dataset_easy_vqa() -> None:
    first = next(read_dataset("easy-vqa:train"))
    assert first.id == "easy-vqa-train-0" and isinstance(first.image, Path) and first.qa


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("laion:/data", r"unknown dataset spec 'laion:/data'; expected one of: coco:ANNOTATIONS.json"),
        ("shapes", r"unknown dataset spec 'shapes'; expected one of: .*shapes:N\[:SPLIT\[:SEED\]\], shapes-web:N\[:SEED\], .*domains:ROOT.*, easy-vqa:train\|test"),
        ("coco:only.json", r"expected 'coco:ANNOTATIONS.json:IMAGE_DIR'"),
        ("vqa:q.json:dir", r"expected 'vqa:QUESTIONS.json:ANNOTATIONS.json:IMAGE_DIR'"),
        ("gqa:q.json", r"expected 'gqa:QUESTIONS.json:IMAGE_DIR'"),
        ("gqa:q.json:", r"expected 'gqa:QUESTIONS.json:IMAGE_DIR'"),
        ("imagenet:", r"expected 'imagenet:DIR'"),
        ("imagenet:/no/such/dir", r"image folder not found: /no/such/dir"),
        ("folder:", r"expected 'folder:DIR'"),
        ("wds:", r"expected 'wds:PATTERN'"),
        ("shapes:-1", r"expected 'shapes:N\[:SPLIT\[:SEED\]\]' with N a non-negative integer, not 'shapes:-1'"),
        ("shapes:3:dev", r"shapes split must be 'train' or 'test', not 'dev'"),
        ("shapes:ten", r"not 'shapes:ten'"),
        ("shapes-web:3:x", r"expected 'shapes-web:N\[:SEED\]' with N and SEED non-negative integers, not 'shapes-web:3:x'"),
        ("easy-vqa:val", r"expected 'easy-vqa:train' or 'easy-vqa:test', not 'easy-vqa:val'"),
    ],
)
def test_read_dataset_errors(spec: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        read_dataset(spec)


def test_dataset_schemes_cover_the_documented_forms() -> None:
    assert [form.split(":")[0] for form in dataset_schemes()] == [
        "coco",
        "vqa",
        "gqa",
        "imagenet",
        "folder",
        "wds",
        "shapes",
        "shapes-web",
        "shapes-domains",
        "domains",
        "easy-vqa",
    ]
