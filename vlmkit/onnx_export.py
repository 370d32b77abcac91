"""Export the image and text towers of a dual encoder to ONNX, for :class:`vlmkit.models.onnx.OnnxEncoder`.

Each tower is wrapped as a module that returns exactly what the torch model's ``embed_images`` /
``embed_texts`` return, L2-normalised embeddings, and exported with ``torch.onnx.export`` (the
dynamo exporter) with a dynamic batch axis and, for texts, a dynamic length. With ``int8`` both
graphs are then dynamically quantised by ONNX Runtime (``quantize_dynamic``: int8 weights for
MatMul and Gemm, activations quantised on the fly; convolutions stay fp32).

What can be exported, by the class of the loaded model (never by its name):

- CLIP, SigLIP and transformers' VisionTextDualEncoder (:class:`~vlmkit.models.clip.DualEncoder`);
- the built-in ConSE (:class:`~vlmkit.models.conse.ConSE`): EfficientNet-Lite0's class probabilities
  -> the top-10 classes' MiniLM embeddings, convexly combined, all inside the image graph;
- vlmkit's own dual encoders (:class:`~vlmkit.models.dual_encoder.DualEncoderTasks`, LiT).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import InputError, VlmkitError
from .files import staged_folder
from .models.base import DEFAULT_TEMPLATES, VisionLanguageModel
from .models.onnx import (
    IMAGE_OUTPUT,
    IMAGE_PROCESSOR_DIR,
    TEXT_OUTPUT,
    TOKENIZER_DIR,
    GraphSpec,
    OnnxConfig,
    int8_name,
    sha256_of,
    write_onnx_config,
)

__all__ = ["export_onnx", "check_exportable", "ExportError", "EXPORTABLE", "OPSET"]

OPSET = 18
#: The kinds ``export_onnx`` takes, for error messages.
EXPORTABLE = ("clip (CLIPModel, VisionTextDualEncoderModel, VlmkitDualEncoder)", "siglip (SiglipModel)", "conse (ConSE, the built-in)")


def _normalise(x: torch.Tensor) -> torch.Tensor:
    x = x.float()
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


class ExportError(VlmkitError):
    """torch's ONNX exporter could not export a tower (its first line of explanation is kept)."""


class _Tower(nn.Module):
    """``fn(*inputs)`` -> normalised embeddings (B, D), as one exportable module."""

    def __init__(self, owner: nn.Module, fn: Callable[..., torch.Tensor]) -> None:
        super().__init__()
        self.owner = owner  # registers the weights
        self.fn = fn

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return _normalise(self.fn(*inputs))


class _ConSEImage(nn.Module):
    """ConSE's image embedding in one graph: softmax over ImageNet, top-T classes, their text
    embeddings weighted by the renormalised probabilities, L2-normalised."""

    def __init__(self, classifier: nn.Module, class_embeddings: torch.Tensor, top_t: int) -> None:
        super().__init__()
        self.classifier = classifier
        self.class_embeddings: torch.Tensor
        self.register_buffer("class_embeddings", class_embeddings)  # (1000, D)
        self.top_t = top_t

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:  # varargs, as every tower's, for one export path
        (pixel_values,) = inputs
        probs = self.classifier(pixel_values).float().softmax(dim=-1)  # (B, 1000)
        weights, top = probs.topk(self.top_t, dim=-1)  # (B, T)
        weights = weights / weights.sum(dim=-1, keepdim=True)
        combined = (weights.unsqueeze(-1) * self.class_embeddings[top]).sum(dim=1)  # (B, D)
        return _normalise(combined)


@dataclass
class _Plan:
    """What one model's export needs: its towers, their input names, sample inputs, and the config fields."""

    image: nn.Module
    text: nn.Module
    text_inputs: tuple[str, ...]
    image_size: int  # side of the sample pixels
    tokenizer: Any
    text_padding: str
    max_text_length: int | None
    image_preprocessing: str
    image_processor: Any
    draft_size: int | None
    logit_scale: float
    logit_bias: float | None
    templates: tuple[str, ...]


def _text_input_names(tokenizer: Any) -> tuple[str, ...]:
    keys = tokenizer(["a photo"], return_tensors="pt").keys()
    return tuple(k for k in ("input_ids", "attention_mask", "token_type_ids") if k in keys)


def _plan(model: VisionLanguageModel) -> _Plan:
    from .models.clip import DualEncoder
    from .models.conse import ConSE
    from .models.dual_encoder import DualEncoderTasks
    from .models.image_encoders import EfficientNetEncoder, HFVisionEncoder

    if isinstance(model, DualEncoder):
        hf = model.model
        names = _text_input_names(model.tokenizer)
        siglip = model.kind.family == "siglip"
        processor = model.processor.image_processor
        size = int(hf.config.vision_config.image_size)

        def text(*inputs: torch.Tensor) -> torch.Tensor:
            from .models._hf import features

            return features(hf.get_text_features(**dict(zip(names, inputs, strict=True))))

        def image(pixel_values: torch.Tensor) -> torch.Tensor:
            from .models._hf import features

            return features(hf.get_image_features(pixel_values=pixel_values))

        bias = getattr(hf, "logit_bias", None)
        return _Plan(
            _Tower(hf, image), _Tower(hf, text), names, size, model.tokenizer,
            "max_length" if siglip else "longest",
            int(hf.config.text_config.max_position_embeddings) if siglip else None,
            "transformers", processor, model.image_size, model.logit_scale(),
            None if bias is None else float(bias.detach().float().reshape(-1)[0]), model.default_templates(),
        )
    if isinstance(model, ConSE):
        from .layers.efficientnet_lite import INPUT_SIZE

        text_model = model.text_model
        names = _text_input_names(model.tokenizer)

        def minilm(*inputs: torch.Tensor) -> torch.Tensor:
            batch = dict(zip(names, inputs, strict=True))
            hidden = text_model(**batch).last_hidden_state.float()  # (B, T, D)
            mask = batch["attention_mask"].unsqueeze(-1).float()  # (B, T, 1)
            return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1e-9)

        return _Plan(
            _ConSEImage(model.classifier, torch.from_numpy(model.class_embeddings).float(), model.top_t),
            _Tower(text_model, minilm), names, INPUT_SIZE, model.tokenizer, "longest", 256,
            "efficientnet-lite0", None, model.image_size, model.logit_scale(), None, model.default_templates(),
        )
    if isinstance(model, DualEncoderTasks):
        net = model.net
        encoder = net.encoder
        if isinstance(encoder, EfficientNetEncoder):
            from .layers.efficientnet_lite import INPUT_SIZE

            preprocessing, processor, size = "efficientnet-lite0", None, INPUT_SIZE
        elif isinstance(encoder, HFVisionEncoder):
            preprocessing, processor = "transformers", encoder.processor
            size = int(getattr(encoder.model.config, "image_size", 224))
        else:
            raise InputError(f"{model.name}: its image tower {type(encoder).__name__} cannot be exported")

        def dual_image(pixel_values: torch.Tensor) -> torch.Tensor:
            assert encoder is not None
            return net.image_features(encoder(pixel_values))

        def dual_text(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return net.text_features(input_ids, attention_mask)

        bias = net.logit_bias
        return _Plan(
            _Tower(net, dual_image), _Tower(net, dual_text), ("input_ids", "attention_mask"), size, net.tokenizer,
            "longest", net.config.max_text_length, preprocessing, processor, model.image_size, model.logit_scale(),
            None if bias is None else float(bias.detach().float()), model.default_templates(),
        )
    raise InputError(
        f"{model.name} is a {model.kind.label}: it has no image and text towers, so it cannot be exported to ONNX; "
        f"the kinds that can be exported: {'; '.join(EXPORTABLE)}"
    )


def _export(module: nn.Module, args: tuple[torch.Tensor, ...], names: tuple[str, ...], output: str, file: Path,
            dynamic: dict[int, Any]) -> None:
    """One tower to ``file``: every input gets the axes of ``dynamic``; weights inside the file."""
    module = module.eval()
    shapes = tuple(dict(dynamic) for _ in names)
    with _quiet(), torch.inference_mode(False), torch.no_grad():
        try:
            program = torch.onnx.export(
                module, args, input_names=list(names), output_names=[output], dynamic_shapes=(shapes,),  # forward(*inputs): one varargs tuple
                opset_version=OPSET, dynamo=True, external_data=False, verbose=False,
            )
        except Exception as exc:  # noqa: BLE001 - torch's exporter errors are many and pages long
            reason = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
            raise ExportError(f"torch.onnx could not export the {file.stem} tower: {reason[:300]}") from exc
        if program is None:  # pragma: no cover - the dynamo exporter always returns a program
            raise RuntimeError("torch.onnx.export returned nothing")
        program.save(os.fspath(file), external_data=False)


def _quantise(source: Path, target: Path) -> None:
    """Per-channel int8 weights: per-tensor scales cost MiniLM's text embeddings a cosine of 0.91 to
    0.97 against fp32, per-channel ones 0.98 to 0.995 (four test sentences)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet():
        quantize_dynamic(
            os.fspath(source), os.fspath(target), op_types_to_quantize=["MatMul", "Gemm"], weight_type=QuantType.QInt8,
            per_channel=True,
        )


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporter and the quantiser log and print their own notes (torchvision missing, constant
    folding skipped, "consider pre-processing"): keep them off the user's terminal."""
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(logging.NOTSET)


def _sample_texts(plan: _Plan) -> dict[str, torch.Tensor]:
    padding: Any = "max_length" if plan.text_padding == "max_length" else True
    texts = ["a photo of a cat sitting on a chair", "a dog", "three small red circles"]
    return dict(plan.tokenizer(texts, padding=padding, truncation=True, max_length=plan.max_text_length, return_tensors="pt"))


def export_onnx(
    model: VisionLanguageModel,
    out: str | os.PathLike,
    *,
    int8: bool = False,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Write ``model``'s towers, tokenizer, preprocessing and config to the new directory ``out``
    (it must not exist or be empty); returns it. ``vlmkit.load(out)`` then gives an
    :class:`~vlmkit.models.onnx.OnnxEncoder`. Written to a temporary sibling and renamed at the end,
    so a failed export leaves nothing behind."""
    say = progress or (lambda message: None)
    target = Path(out)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise InputError(f"{target}: already exists and is not an empty directory; choose another --out or remove it")
    if model.device.type != "cpu" or model.dtype != torch.float32:
        raise InputError(f"{model.name}: export from a float32 model on the CPU (loaded on {model.device} as {model.dtype})")
    plan = _plan(model)
    with staged_folder(target) as work:
        batch = torch.export.Dim("batch", min=1, max=4096)
        length = torch.export.Dim("length", min=1, max=4096)
        pixels = torch.zeros(2, 3, plan.image_size, plan.image_size)
        fp32 = work / "fp32"
        fp32.mkdir()
        say(f"exporting the image tower ({type(model).__name__}, {plan.image_size}x{plan.image_size} pixels)")
        _export(plan.image, (pixels,), ("pixel_values",), IMAGE_OUTPUT, fp32 / "image.onnx", {0: batch})
        sample = _sample_texts(plan)
        say(f"exporting the text tower (inputs {', '.join(plan.text_inputs)})")
        text_args = tuple(sample[name] for name in plan.text_inputs)
        _export(plan.text, text_args, plan.text_inputs, TEXT_OUTPUT, fp32 / "text.onnx", {0: batch, 1: length})
        for file in ("image.onnx", "text.onnx"):
            if int8:
                say(f"quantising {file} to int8 (dynamic, MatMul/Gemm weights)")
                _quantise(fp32 / file, work / file)
            else:
                shutil.move(fp32 / file, work / file)
        shutil.rmtree(fp32)
        plan.tokenizer.save_pretrained(work / TOKENIZER_DIR)
        if plan.image_processor is not None:
            plan.image_processor.save_pretrained(work / IMAGE_PROCESSOR_DIR)
        with torch.no_grad():
            dim = int(plan.image(pixels[:1]).shape[-1])
        config = OnnxConfig(
            name=int8_name(model.name) if int8 else model.name,
            source=model.name,
            source_family=model.kind.family,
            source_architecture=model.kind.architecture,
            precision="int8" if int8 else "fp32",
            embed_dim=dim,
            logit_scale=float(plan.logit_scale),
            logit_bias=plan.logit_bias,
            templates=tuple(plan.templates) or DEFAULT_TEMPLATES,
            image_preprocessing=plan.image_preprocessing,
            image_size=plan.draft_size,
            text_padding=plan.text_padding,
            max_text_length=plan.max_text_length,
            image_graph=GraphSpec("image.onnx", sha256_of(work / "image.onnx"), ("pixel_values",), (IMAGE_OUTPUT,)),
            text_graph=GraphSpec("text.onnx", sha256_of(work / "text.onnx"), plan.text_inputs, (TEXT_OUTPUT,)),
        )
        write_onnx_config(work, config)
    return target


def check_exportable(model: VisionLanguageModel) -> None:
    """Raise :class:`InputError` (naming the kinds that can be exported) unless ``model`` can be."""
    _plan(model)

