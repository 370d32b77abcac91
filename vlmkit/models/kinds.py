"""The model kinds vlmkit knows, as a literal table: architecture -> family and supported tasks.

The loader picks a kind from a checkpoint's ``config.json`` (``model_type`` and ``architectures``),
never from its name. Error messages use the table to say which kinds can do a task.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["TASKS", "ModelKind", "KINDS", "DEFAULT_ARCHITECTURE", "NATIVE_KINDS", "supported_by"]

# embed covers embed_images and embed_texts; similarity and classify come with it.
TASKS = ("embed", "similarity", "classify", "match", "caption", "ask", "generate", "chat")

_RETRIEVAL = frozenset({"embed", "similarity", "classify", "match"})


@dataclass(frozen=True)
class ModelKind:
    """One kind of checkpoint: its family, the tasks it can do, and how the loader makes it."""

    family: str
    architecture: str
    tasks: frozenset[str]
    description: str
    #: ``model_type`` in the checkpoint's config.json: transformers' for the kinds it has classes
    #: for, vlmkit's own for native checkpoints.
    model_type: str | None = None
    #: "module:attribute" that makes the model: the vlmkit class wrapping the transformers model, or
    #: a native family's ``load_native(path, name=, device=, dtype=, load=)``.
    implementation: str | None = None
    native: bool = False
    #: Well-known hub checkpoints of this kind (listed by ``vlmkit models``).
    examples: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        return f"{self.family} ({self.architecture})"


def _hf(family: str, architecture: str, tasks: frozenset[str], description: str, model_type: str, implementation: str,
        *examples: str) -> ModelKind:
    return ModelKind(family, architecture, tasks, description, model_type, f"vlmkit.models.{implementation}", False, examples)


def _native(family: str, architecture: str, tasks: frozenset[str], description: str, model_type: str, module: str) -> ModelKind:
    return ModelKind(family, architecture, tasks, description, model_type, f"vlmkit.models.{module}:load_native", True)


_GENERATE = frozenset({"caption", "ask", "generate"})

# The one table of kinds; the loader's maps are derived from it. For a transformers model_type
# shared by several kinds, the first listed is the default when config.json names no architecture.
KINDS: dict[str, ModelKind] = {
    kind.architecture: kind
    for kind in (
        _hf("clip", "CLIPModel", _RETRIEVAL, "CLIP dual encoder (Radford et al., 2021)", "clip", "clip:DualEncoder",
            "openai/clip-vit-base-patch32"),
        _hf("siglip", "SiglipModel", _RETRIEVAL, "SigLIP dual encoder, sigmoid loss (Zhai et al., 2023)", "siglip", "clip:DualEncoder",
            "google/siglip-base-patch16-224"),
        _hf("blip", "BlipForConditionalGeneration", frozenset({"caption"}), "BLIP captioning head", "blip", "blip:Blip",
            "Salesforce/blip-image-captioning-base"),
        _hf("blip", "BlipForQuestionAnswering", frozenset({"ask"}), "BLIP VQA head", "blip", "blip:Blip", "Salesforce/blip-vqa-base"),
        _hf("blip", "BlipForImageTextRetrieval", _RETRIEVAL, "BLIP ITC/ITM retrieval head", "blip", "blip:Blip",
            "Salesforce/blip-itm-base-coco"),
        _hf("blip2", "Blip2ForConditionalGeneration", _GENERATE, "BLIP-2: Q-Former + frozen LM (Li et al., 2023)", "blip-2",
            "blip2:Blip2", "Salesforce/blip2-opt-2.7b", "Salesforce/blip2-flan-t5-xl"),
        _hf("blip2", "Blip2ForImageTextRetrieval", _RETRIEVAL, "BLIP-2 stage-1 Q-Former (ITC/ITM)", "blip-2", "blip2:Blip2",
            "Salesforce/blip2-itm-vit-g"),
        _hf("instructblip", "InstructBlipForConditionalGeneration", _GENERATE,
            "InstructBLIP: instruction-aware Q-Former (Dai et al., 2023)", "instructblip", "instructblip:InstructBlip",
            "Salesforce/instructblip-vicuna-7b"),
        _hf("llava", "LlavaForConditionalGeneration", _GENERATE | {"chat"}, "LLaVA-1.5 visual chat (Liu et al., 2023)", "llava",
            "llava:Llava", "llava-hf/llava-1.5-7b-hf"),
        _hf("clip", "VisionTextDualEncoderModel", _RETRIEVAL,
            "dual encoder from any vision and text towers (transformers' VisionTextDualEncoder), e.g. `vlmkit train clip`",
            "vision-text-dual-encoder", "clip:DualEncoder"),
        _native("blip2", "VlmkitBlip2", _GENERATE | _RETRIEVAL,
                "vlmkit's own BLIP-2, trained with `vlmkit train blip2-stage1/-stage2`", "vlmkit-blip2", "blip2_native"),
        _native("blip2", "VlmkitBlip2Retrieval", _RETRIEVAL,
                "vlmkit's BLIP-2 stage-1 Q-Former (ITC/ITM) on its frozen image encoder, from `vlmkit train blip2-stage1`",
                "vlmkit-blip2-retrieval", "blip2_native"),
        _native("clip", "VlmkitDualEncoder", _RETRIEVAL,
                "vlmkit's dual encoder on a frozen non-transformers image tower (LiT), trained with `vlmkit train clip`",
                "vlmkit-dual-encoder", "dual_encoder"),
        _native("instructblip", "VlmkitInstructBlip", _GENERATE,
                "vlmkit's InstructBLIP: instruction-aware Q-Former, trained with `vlmkit train instructblip`",
                "vlmkit-instructblip", "blip2_native"),
        _native("clipcap", "VlmkitClipCap", _GENERATE,
                "ClipCap: image embedding mapped to a frozen LM's prefix (Mokady et al., 2021)", "vlmkit-clipcap", "clipcap"),
        _native("coca", "VlmkitCoCa", _RETRIEVAL | {"caption"}, "CoCa: contrastive captioner (Yu et al., 2022)", "vlmkit-coca", "coca"),
        _native("simvlm", "VlmkitSimVLM", _GENERATE, "SimVLM: prefix-LM over image and text (Wang et al., 2022)", "vlmkit-simvlm",
                "simvlm"),
        _native("vllavo", "VlmkitVLLaVO", frozenset({"classify"}),
                "VLLaVO: describe the image in words, ask a LoRA-tuned LM (Chen et al., 2024), from `vlmkit train vllavo`",
                "vlmkit-vllavo", "vllavo"),
        _native("onnx", "VlmkitOnnxEncoder", _RETRIEVAL,
                "image and text towers of a dual encoder (CLIP, SigLIP, the built-in, vlmkit's own) exported by "
                "`vlmkit export onnx`, run on ONNX Runtime", "vlmkit-onnx", "onnx"),
        ModelKind(
            "conse",
            "ConSE",
            _RETRIEVAL | {"caption"},
            "built-in offline default: EfficientNet-Lite0 + MiniLM by ConSE (Norouzi et al., 2014)",
            implementation="vlmkit.models.conse:ConSE",
        ),
    )
}

# When a checkpoint's config names no architecture we know, its model_type decides.
DEFAULT_ARCHITECTURE: dict[str, str] = {}
for _kind in KINDS.values():
    if not _kind.native and _kind.model_type is not None:
        DEFAULT_ARCHITECTURE.setdefault(_kind.model_type, _kind.architecture)

#: vlmkit's own checkpoint formats: config.json's ``model_type`` -> the kind.
NATIVE_KINDS: dict[str, ModelKind] = {k.model_type: k for k in KINDS.values() if k.native and k.model_type is not None}


def supported_by(task: str) -> list[str]:
    """The families that can do ``task``, each once with its architectures, e.g.
    ``["blip2 (Blip2ForConditionalGeneration, VlmkitBlip2)", ...]``."""
    families: dict[str, list[str]] = {}
    for kind in KINDS.values():
        if task in kind.tasks:
            families.setdefault(kind.family, []).append(kind.architecture)
    return [f"{family} ({', '.join(architectures)})" for family, architectures in families.items()]
