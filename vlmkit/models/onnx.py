"""Dual-encoder towers exported to ONNX (``vlmkit export onnx``) and run on ONNX Runtime: fast CPU
embeddings without torch in the hot loop.

An export directory describes itself like every native checkpoint (``config.json`` with
``model_type: vlmkit-onnx``) and holds:

- ``image.onnx`` and ``text.onnx``: the image tower (pixels -> L2-normalised embeddings) and the text
  tower (token ids -> L2-normalised embeddings), each with a dynamic batch axis (and a dynamic text
  length), fp32 or, with ``--int8``, dynamically quantised (int8 weights of MatMul/Gemm);
- ``tokenizer/``: the text tower's tokenizer files; ``image_processor/``: the transformers image
  processor, where the source model used one (EfficientNet-Lite0 towers use vlmkit's own
  preprocessing, named in the config);
- in ``config.json``: the source model's name, family and kind, the precision, the logit scale and
  bias, the default prompt templates, and for each graph its file, sha256 and input and output names.

Loading checks every graph against its sha256 and its inputs and outputs against the config before
anything runs, so a tampered or swapped graph is an error, never a different model. Nothing is ever
unpickled (ONNX is protobuf; the tokenizer and processor are JSON and text).

Names: an fp32 export computes the same function as its source model (the parity tests hold it to a
cosine of 0.9999 per row), so it keeps the source model's name, and an image index built with one
can be searched with the other. An int8 export does not: it is named ``SOURCE+onnx-int8``, and an
index built with it must be searched with it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..errors import InputError, ModelNotFoundError
from .base import VisionLanguageModel, as_list, check_texts
from .checkpoint import load_tokenizer, read_config, write_config
from .kinds import KINDS

__all__ = [
    "MODEL_TYPE",
    "ARCHITECTURE",
    "PRECISIONS",
    "IMAGE_PREPROCESSING",
    "GraphSpec",
    "OnnxConfig",
    "OnnxEncoder",
    "load_native",
    "int8_name",
    "sha256_of",
    "write_onnx_config",
]

MODEL_TYPE = "vlmkit-onnx"
ARCHITECTURE = "VlmkitOnnxEncoder"
PRECISIONS = ("fp32", "int8")
#: How images become the image graph's input: a saved transformers image processor, or vlmkit's
#: EfficientNet-Lite0 preprocessing (:func:`vlmkit.layers.efficientnet_lite.preprocess`).
IMAGE_PREPROCESSING = ("transformers", "efficientnet-lite0")
TOKENIZER_DIR = "tokenizer"
IMAGE_PROCESSOR_DIR = "image_processor"
IMAGE_OUTPUT = "image_embeds"
TEXT_OUTPUT = "text_embeds"
_TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def int8_name(source: str) -> str:
    """The name an int8 export goes by: not the source's, since its embeddings differ."""
    return f"{source}+onnx-int8"


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class GraphSpec:
    """One tower's graph: its file in the directory, its sha256, and its input and output names."""

    file: str
    sha256: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "inputs", tuple(self.inputs))
        object.__setattr__(self, "outputs", tuple(self.outputs))
        if not self.file or Path(self.file).name != self.file:
            raise InputError(f"graph file must be a plain file name, got {self.file!r}")
        if len(self.sha256) != 64:
            raise InputError(f"{self.file}: sha256 must be 64 hex digits")
        if not self.inputs or len(self.outputs) != 1:
            raise InputError(f"{self.file}: a tower has inputs and exactly one output")


@dataclass(frozen=True)
class OnnxConfig:
    """What ``config.json`` of an export directory says, beside ``model_type`` and the version."""

    #: The name embeddings are recorded under (see the module docstring).
    name: str
    #: The source model's name, family and architecture (e.g. ``"clip"``, ``"CLIPModel"``).
    source: str
    source_family: str
    source_architecture: str
    precision: str
    embed_dim: int
    logit_scale: float
    logit_bias: float | None
    templates: tuple[str, ...]
    image_preprocessing: str
    #: The side JPEGs may be decoded down to (the model's ``image_size``), if any.
    image_size: int | None
    #: "longest" pads a batch to its longest text; "max_length" to ``max_text_length`` (SigLIP).
    text_padding: str
    max_text_length: int | None
    image_graph: GraphSpec
    text_graph: GraphSpec

    def __post_init__(self) -> None:
        for name in ("image_graph", "text_graph"):
            value = getattr(self, name)
            if isinstance(value, dict):
                object.__setattr__(self, name, GraphSpec(**value))
            elif not isinstance(value, GraphSpec):
                raise InputError(f"{name} must be an object")
        object.__setattr__(self, "templates", tuple(self.templates))
        if self.precision not in PRECISIONS:
            raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.image_preprocessing not in IMAGE_PREPROCESSING:
            raise InputError(f"image_preprocessing must be one of {', '.join(IMAGE_PREPROCESSING)}, got {self.image_preprocessing!r}")
        if self.text_padding not in ("longest", "max_length"):
            raise InputError(f"text_padding must be longest or max_length, got {self.text_padding!r}")
        if self.text_padding == "max_length" and not self.max_text_length:
            raise InputError("text_padding max_length needs max_text_length")
        if self.embed_dim < 1:
            raise InputError(f"embed_dim must be at least 1, got {self.embed_dim}")
        if not self.templates or any("{}" not in t for t in self.templates):
            raise InputError("templates must be a non-empty list of strings with {}")
        unknown = set(self.text_graph.inputs) - set(_TEXT_INPUTS)
        if unknown:
            raise InputError(f"text graph inputs must be among {', '.join(_TEXT_INPUTS)}, got {', '.join(sorted(unknown))}")


def write_onnx_config(directory: str | os.PathLike, config: OnnxConfig) -> Path:
    return write_config(directory, config, model_type=MODEL_TYPE, architecture=ARCHITECTURE)


def _session(path: Path, spec: GraphSpec, what: str, threads: int) -> Any:
    """An ONNX Runtime session for ``spec``'s graph, after checking the file, its sha256 and its
    inputs and outputs; any mismatch is :class:`ModelNotFoundError` and nothing runs."""
    import onnxruntime as ort

    file = path / spec.file
    if not file.is_file():
        raise ModelNotFoundError(f"{path}: the {what} tower {spec.file} is missing; export the model again")
    if sha256_of(file) != spec.sha256:
        raise ModelNotFoundError(
            f"{path}: {spec.file} does not match the sha256 in config.json (changed since the export); "
            "refusing to run it, export the model again"
        )
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(os.fspath(file), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own untyped errors for a bad graph
        raise ModelNotFoundError(f"{path}: cannot load {spec.file} ({str(exc).splitlines()[0]})") from None
    inputs = tuple(i.name for i in session.get_inputs())
    outputs = tuple(o.name for o in session.get_outputs())
    if inputs != spec.inputs or outputs != spec.outputs:
        raise ModelNotFoundError(
            f"{path}: {spec.file} takes ({', '.join(inputs)}) and gives ({', '.join(outputs)}), but config.json says "
            f"({', '.join(spec.inputs)}) and ({', '.join(spec.outputs)}); export the model again"
        )
    for value in session.get_outputs():
        if value.type != "tensor(float)" or len(value.shape) != 2:
            raise ModelNotFoundError(f"{path}: {spec.file} gives {value.type} of rank {len(value.shape)}, not (batch, dim) floats")
    return session


class OnnxEncoder(VisionLanguageModel):
    """An export directory behind the task interface: embed, similarity, zero-shot classify and
    cosine match, on ONNX Runtime's CPU provider. Intra-op threads follow ``torch.get_num_threads()``
    (so ``OMP_NUM_THREADS`` and ``torch.set_num_threads`` set torch and ONNX Runtime alike) unless
    ``threads`` is given."""

    def __init__(self, path: str | os.PathLike, *, threads: int | None = None) -> None:
        directory = Path(path)
        config, _ = read_config(directory, OnnxConfig, model_types=MODEL_TYPE)
        super().__init__(config.name, KINDS[ARCHITECTURE], torch.device("cpu"), torch.float32)
        self.config = config
        self.path = directory
        self.image_size = config.image_size
        count = threads if threads is not None else torch.get_num_threads()
        self.image_session = _session(directory, config.image_graph, "image", count)
        self.text_session = _session(directory, config.text_graph, "text", count)
        if not (directory / TOKENIZER_DIR).is_dir():
            raise ModelNotFoundError(f"{directory}: the tokenizer ({TOKENIZER_DIR}/) is missing; export the model again")
        try:
            self.tokenizer = load_tokenizer(directory / TOKENIZER_DIR)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ModelNotFoundError(f"{directory}: cannot load the tokenizer ({exc})") from None
        self._transform = self._image_transform()

    def __repr__(self) -> str:
        return f"<OnnxEncoder {self.name!r} {self.config.source_family} {self.config.precision} from {self.path}>"

    @property
    def precision(self) -> str:
        return self.config.precision

    def _image_transform(self) -> Callable[[Image.Image], np.ndarray]:
        """Per-image preprocessing (run on the decode threads): PIL image -> (3, H, W) float32."""
        if self.config.image_preprocessing == "efficientnet-lite0":
            from ..layers.efficientnet_lite import preprocess

            return lambda image: preprocess([image])[0].numpy()
        import transformers

        where = self.path / IMAGE_PROCESSOR_DIR
        if not where.is_dir():
            raise ModelNotFoundError(f"{self.path}: the image processor ({IMAGE_PROCESSOR_DIR}/) is missing; export the model again")
        try:
            processor = transformers.AutoImageProcessor.from_pretrained(where)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ModelNotFoundError(f"{self.path}: cannot load the image processor ({exc})") from None
        return lambda image: processor(images=[image], return_tensors="pt")["pixel_values"][0].numpy()

    def embed_images(self, images: Any, *, batch_size: int = 32) -> np.ndarray:
        (name,) = self.config.image_graph.inputs
        chunks = []
        for batch in self._load_batches(as_list(images, "images"), batch_size, transform=self._transform):
            pixels = np.stack(batch).astype(np.float32, copy=False)  # (B, 3, H, W)
            chunks.append(self.image_session.run(None, {name: pixels})[0])  # (B, D), normalised in the graph
        return np.concatenate(chunks).astype(np.float32, copy=False)

    def embed_texts(self, texts: Any, *, batch_size: int = 64) -> np.ndarray:
        text_list = check_texts(as_list(texts, "texts"), "texts")
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        padding = "max_length" if self.config.text_padding == "max_length" else True
        chunks = []
        for start in range(0, len(text_list), batch_size):
            batch = self.tokenizer(
                text_list[start : start + batch_size], padding=padding, truncation=True,
                max_length=self.config.max_text_length, return_tensors="np",
            )
            feed = {}
            for name in self.config.text_graph.inputs:
                value = batch.get(name)
                if value is None and name == "attention_mask":
                    value = np.ones_like(batch["input_ids"])
                elif value is None and name == "token_type_ids":
                    value = np.zeros_like(batch["input_ids"])
                feed[name] = np.asarray(value, dtype=np.int64)  # (B, T)
            chunks.append(self.text_session.run(None, feed)[0])  # (B, D)
        return np.concatenate(chunks).astype(np.float32, copy=False)

    def logit_scale(self) -> float:
        return float(self.config.logit_scale)

    def default_templates(self) -> tuple[str, ...]:
        return self.config.templates


def load_native(path: str | os.PathLike, *, name: str, device: torch.device, dtype: torch.dtype, load: Any = None) -> OnnxEncoder:
    """Load an export directory. It runs on the CPU in float32 (int8 weights inside, for an int8
    export); the model keeps the name the export recorded, not the directory's (see the module docstring)."""
    if device.type != "cpu":
        raise InputError(f"{path}: an ONNX export runs on the CPU (onnxruntime); device {str(device)!r} is not supported")
    if dtype != torch.float32:
        raise InputError(f"{path}: an ONNX export runs in float32 (or int8, chosen at export); dtype {dtype} is not supported")
    return OnnxEncoder(path)
