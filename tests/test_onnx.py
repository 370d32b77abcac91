"""ONNX Runtime encoders: ``vlmkit export onnx`` and the ONNX-backed model ``vlmkit.load`` gives for
an export directory. Parity with the torch model on every exportable family, batch invariance,
int8, the CLI, the image index and the server, and every way an export directory can be wrong."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from numerics import DEEP, assert_close

import vlmkit
from vlmkit.errors import InputError, ModelNotFoundError
from vlmkit.models.onnx import OnnxEncoder, sha256_of
from vlmkit.onnx_export import export_onnx
from vlmkit_cli.main import main

TEXTS = ["a photo of a cat", "coffee", "a red circle next to a blue square, drawn small", "x"]
PARITY = 0.9999  # cosine per row, ONNX fp32 against torch


def _images(photos: dict[str, Path]) -> list[Path]:
    return [photos["cat"], photos["coffee"], photos["astronaut"]]


def _build_dual_encoder(out: Path, vision: Path) -> Path:
    """A tiny vlmkit dual encoder (LiT): the tiny CLIP's vision tower locked, a 1-layer BERT text
    tower. (The EfficientNet-Lite0 image tower is exported, and its preprocessing checked, with the
    built-in; a second export of it here would double this file's time.)"""
    from transformers import BertConfig, BertModel

    from vlmkit.models.dual_encoder import DualEncoderConfig, NativeDualEncoder
    from vlmkit.testing import HIDDEN, make_bert_tokenizer

    torch.manual_seed(0)
    tokenizer = make_bert_tokenizer()
    text = BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=64, max_position_embeddings=64))
    config = DualEncoderConfig(image_encoder=str(vision), image_width=HIDDEN, text_width=32, embed_dim=16, max_text_length=32)
    NativeDualEncoder(config, text, tokenizer).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def sources(tiny: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return {
        "clip": str(tiny["clip"]),
        "siglip": str(tiny["siglip"]),
        "builtin": vlmkit.DEFAULT_MODEL,
        "dual": str(_build_dual_encoder(tmp_path_factory.mktemp("dual") / "model", tiny["clip"])),
    }


@pytest.fixture(scope="module")
def exports(sources: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Any, Path]]:
    """Each source model (torch) and its fp32 export directory, exported once for the module."""
    root = tmp_path_factory.mktemp("onnx")
    made = {}
    for key, source in sources.items():
        model = vlmkit.load(source)
        made[key] = (model, export_onnx(model, root / key))
    return made


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.mark.parametrize("key", ["clip", "siglip", "builtin", "dual"])
def test_fp32_parity_with_torch(key: str, exports: dict[str, tuple[Any, Path]], photos: dict[str, Path]) -> None:
    model, directory = exports[key]
    onnx = vlmkit.load(directory)
    assert isinstance(onnx, OnnxEncoder)
    assert onnx.name == model.name  # fp32: the same function, so the same name (an index serves both)
    assert (onnx.image_size, onnx.logit_scale()) == (model.image_size, pytest.approx(model.logit_scale(), rel=1e-6))
    assert onnx.default_templates() == model.default_templates()
    assert onnx.tasks >= {"embed", "similarity", "classify", "match"} and "caption" not in onnx.tasks
    images = _images(photos)
    for what, got, want in (
        ("images", onnx.embed_images(images, batch_size=2), model.embed_images(images)),
        ("texts", onnx.embed_texts(TEXTS, batch_size=3), model.embed_texts(TEXTS)),
    ):
        assert got.dtype == np.float32 and got.shape == want.shape
        cosines = _cosines(got, want)
        print(f"{key} {what}: ONNX fp32 vs torch cosine min {cosines.min():.7f}")
        assert cosines.min() >= PARITY, f"{key} {what}: {cosines}"
        assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    labels = ["cat", "coffee", "astronaut"]
    got_probs = [[s.score for s in row] for row in onnx.classify(images, labels, top_k=3)]
    want_probs = [[s.score for s in row] for row in model.classify(images, labels, top_k=3)]
    assert_close(np.sort(got_probs), np.sort(want_probs), rtol=1e-3, what="classify")  # logits scaled by up to 100
    assert onnx.similarity(images[:2], TEXTS).shape == (2, len(TEXTS))
    assert onnx.match(images[0], TEXTS[:2]).kind == "cosine"


def test_dynamic_batch(exports: dict[str, tuple[Any, Path]], photos: dict[str, Path]) -> None:
    """One graph at batch 1 and 3 (and text lengths that differ per batch) gives the same rows. DEEP:
    ONNX Runtime picks other kernels (GEMM blocking) at another batch size, so a whole forward pass
    re-rounds in another order."""
    onnx = vlmkit.load(exports["clip"][1])
    images = _images(photos)
    assert_close(np.concatenate([onnx.embed_images([i], batch_size=1) for i in images]), onnx.embed_images(images, batch_size=3),
                 rtol=DEEP, what="images 1 vs 3")
    assert_close(np.concatenate([onnx.embed_texts([t], batch_size=1) for t in TEXTS[:3]]), onnx.embed_texts(TEXTS[:3], batch_size=3),
                 rtol=DEEP, what="texts 1 vs 3")


def test_int8_cli_end_to_end(exports: dict[str, tuple[Any, Path]], photos: dict[str, Path], tmp_path: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    """`vlmkit export onnx --int8` on the tiny CLIP, then `vlmkit embed` and `vlmkit classify` on it."""
    model, _ = exports["clip"]
    out = tmp_path / "clip-int8"
    assert main(["export", "onnx", model.name, "--out", str(out), "--int8"]) == 0
    captured = capsys.readouterr()
    assert "int8" in captured.out and "next: `vlmkit embed" in captured.err
    config = json.loads((out / "config.json").read_text())
    assert (config["precision"], config["name"], config["model_type"]) == ("int8", f"{model.name}+onnx-int8", "vlmkit-onnx")
    onnx = vlmkit.load(out)
    images = _images(photos)
    cosines = np.concatenate([_cosines(onnx.embed_images(images), model.embed_images(images)),
                              _cosines(onnx.embed_texts(TEXTS), model.embed_texts(TEXTS))])
    print(f"clip int8 vs torch fp32: cosine min {cosines.min():.5f} mean {cosines.mean():.5f}")
    assert cosines.min() >= 0.95  # a loose floor: int8 is another model (the bench measures its cost)
    capsys.readouterr()

    assert main(["embed", str(images[0]), "--text", "a cat", "--model", str(out), "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 2
    assert_close(rows[0]["embedding"], onnx.embed_images([images[0]])[0], rtol=DEEP, what="CLI embed")
    assert main(["classify", str(images[0]), "--labels", "cat,dog", "--model", str(out), "--json"]) == 0
    assert "cat" in capsys.readouterr().out


def test_index_and_server_use_it_unchanged(exports: dict[str, tuple[Any, Path]], photos: dict[str, Path], tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from vlmkit.index import ImageIndex
    from vlmkit.index.search import search
    from vlmkit_server.api import create_api_app

    model, directory = exports["clip"]
    onnx = vlmkit.load(directory)
    folder = tmp_path / "photos"
    folder.mkdir()
    for path in _images(photos):
        shutil.copy(path, folder / path.name)
    index = ImageIndex(tmp_path / "idx")
    report = index.update([folder], onnx)
    assert report.added == 3
    hits = search(index, onnx, "a photo of a cat", k=3, keyword=False)
    assert len(hits) == 3
    # Built with ONNX fp32, searched with the torch model: the same name, the same embeddings.
    by_torch = search(index, model, "a photo of a cat", k=3, keyword=False)
    assert [h.path for h in by_torch] == [h.path for h in hits]
    assert_close([h.score for h in by_torch], [h.score for h in hits], rtol=1e-4, what="scores")

    with TestClient(create_api_app({"m": onnx})) as client:
        response = client.post("/v1/embeddings", json={"model": "m", "input": ["a cat", "coffee"]})
    assert response.status_code == 200, response.text
    got = np.array([d["embedding"] for d in response.json()["data"]], dtype=np.float32)
    assert_close(got, onnx.embed_texts(["a cat", "coffee"]), rtol=DEEP, what="server embeddings")


# -- bad export directories ------------------------------------------------------------------------


@pytest.fixture()
def copy(exports: dict[str, tuple[Any, Path]], tmp_path: Path) -> Path:
    return Path(shutil.copytree(exports["clip"][1], tmp_path / "copy"))


def _rewrite_config(directory: Path, **changes: Any) -> None:
    meta = json.loads((directory / "config.json").read_text())
    for key, value in changes.items():
        if isinstance(value, dict):
            meta[key].update(value)
        else:
            meta[key] = value
    (directory / "config.json").write_text(json.dumps(meta))


def _load_error(directory: Path) -> str:
    with pytest.raises(ModelNotFoundError) as info:
        vlmkit.load(directory)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_missing_tower(copy: Path) -> None:
    (copy / "text.onnx").unlink()
    assert "text tower text.onnx is missing" in _load_error(copy)


def test_tampered_graph(copy: Path) -> None:
    with open(copy / "image.onnx", "ab") as handle:
        handle.write(b"\0")
    assert "does not match the sha256" in _load_error(copy)


def test_swapped_graph_with_a_matching_sha256(copy: Path) -> None:
    """Someone swapped the towers and fixed the hashes: the inputs and outputs give it away."""
    shutil.copy(copy / "image.onnx", copy / "text.onnx")
    _rewrite_config(copy, text_graph={"sha256": sha256_of(copy / "text.onnx")})
    assert "but config.json says" in _load_error(copy)


def test_bad_config(copy: Path) -> None:
    _rewrite_config(copy, precision="int4")
    assert "precision" in _load_error(copy)
    _rewrite_config(copy, precision="fp32", surprise=1)
    assert "unknown keys" in _load_error(copy)


def test_missing_tokenizer(copy: Path) -> None:
    shutil.rmtree(copy / "tokenizer")
    assert "tokenizer" in _load_error(copy)


def test_only_cpu_float32(exports: dict[str, tuple[Any, Path]]) -> None:
    with pytest.raises(InputError, match="float32"):
        vlmkit.load(exports["clip"][1], dtype="bfloat16")


def test_captioner_is_refused(tiny: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(InputError, match="the kinds that can be exported: clip") as info:
        export_onnx(vlmkit.load(tiny["blip_caption"]), tmp_path / "out")
    assert "\n" not in str(info.value) and not (tmp_path / "out").exists()


def test_cli_bad_arguments(exports: dict[str, tuple[Any, Path]], tiny: dict[str, Path], tmp_path: Path,
                           capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "onnx", str(tiny["clip"])])  # no --out
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "tflite", str(tiny["clip"]), "--out", str(tmp_path / "x")])
    assert exit_info.value.code == 2
    assert main(["export"]) == 2
    capsys.readouterr()
    # An --out that holds something already, a captioner, a model that does not exist: one line each.
    for argv, expected in (
        (["export", "onnx", str(tiny["clip"]), "--out", str(exports["clip"][1])], "not an empty directory"),
        (["export", "onnx", str(tiny["blip_caption"]), "--out", str(tmp_path / "blip")], "cannot be exported"),
        (["export", "onnx", str(tmp_path / "nothing-here"), "--out", str(tmp_path / "none")], "vlmkit: error:"),
    ):
        assert main(argv) == 1
        errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("vlmkit: error:")]
        assert len(errors) == 1 and expected in errors[0], errors
    assert not (tmp_path / "blip").exists() and not (tmp_path / "none").exists()


def test_an_export_torch_cannot_trace_is_one_line_and_leaves_nothing(tiny: dict[str, Path], tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    def fails(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("Failed to export the model with torch.export.\n\nA long explanation\nover many lines")

    monkeypatch.setattr(torch.onnx, "export", fails)
    out = tmp_path / "exports" / "clip-onnx"
    assert main(["export", "onnx", str(tiny["clip"]), "--out", str(out)]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("vlmkit: error:")]
    assert errors == ["vlmkit: error: torch.onnx could not export the image tower: Failed to export the model with torch.export."]
    assert list((tmp_path / "exports").iterdir()) == []  # no export, no staging folder
