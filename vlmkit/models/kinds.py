"""The model kinds vlmkit knows, as a literal table: architecture -> family and supported tasks.

The loader picks a kind from a checkpoint's ``config.json`` (``model_type`` and ``architectures``),
never from its name. Error messages use the table to say which kinds can do a task.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["TASKS", "ModelKind", "KINDS", "DEFAULT_ARCHITECTURE", "supported_by"]

# embed covers embed_images and embed_texts; similarity and classify come with it.
TASKS = ("embed", "similarity", "classify", "match", "caption", "ask", "generate", "chat")

_RETRIEVAL = frozenset({"embed", "similarity", "classify", "match"})


@dataclass(frozen=True)
class ModelKind:
    family: str
    architecture: str
    tasks: frozenset[str]
    description: str

    @property
    def label(self) -> str:
        return f"{self.family} ({self.architecture})"


KINDS: dict[str, ModelKind] = {
    kind.architecture: kind
    for kind in (
        ModelKind("clip", "CLIPModel", _RETRIEVAL, "CLIP dual encoder (Radford et al., 2021)"),
        ModelKind("siglip", "SiglipModel", _RETRIEVAL, "SigLIP dual encoder, sigmoid loss (Zhai et al., 2023)"),
        ModelKind("blip", "BlipForConditionalGeneration", frozenset({"caption"}), "BLIP captioning head"),
        ModelKind("blip", "BlipForQuestionAnswering", frozenset({"ask"}), "BLIP VQA head"),
        ModelKind("blip", "BlipForImageTextRetrieval", _RETRIEVAL, "BLIP ITC/ITM retrieval head"),
        ModelKind(
            "blip2",
            "Blip2ForConditionalGeneration",
            frozenset({"caption", "ask", "generate"}),
            "BLIP-2: Q-Former + frozen LM (Li et al., 2023)",
        ),
        ModelKind("blip2", "Blip2ForImageTextRetrieval", _RETRIEVAL, "BLIP-2 stage-1 Q-Former (ITC/ITM)"),
        ModelKind(
            "instructblip",
            "InstructBlipForConditionalGeneration",
            frozenset({"caption", "ask", "generate"}),
            "InstructBLIP: instruction-aware Q-Former (Dai et al., 2023)",
        ),
        ModelKind(
            "llava",
            "LlavaForConditionalGeneration",
            frozenset({"caption", "ask", "generate", "chat"}),
            "LLaVA-1.5 visual chat (Liu et al., 2023)",
        ),
        ModelKind(
            "blip2",
            "VlmkitBlip2",
            frozenset({"caption", "ask", "generate", "embed", "similarity", "classify", "match"}),
            "vlmkit's own BLIP-2, trained with `vlmkit train blip2-stage1/-stage2`",
        ),
        ModelKind(
            "blip2",
            "VlmkitBlip2Retrieval",
            _RETRIEVAL,
            "vlmkit's BLIP-2 stage-1 Q-Former (ITC/ITM) on its frozen image encoder, from `vlmkit train blip2-stage1`",
        ),
        ModelKind(
            "clip",
            "VisionTextDualEncoderModel",
            _RETRIEVAL,
            "dual encoder from any vision and text towers (transformers' VisionTextDualEncoder), e.g. `vlmkit train clip`",
        ),
        ModelKind(
            "clip",
            "VlmkitDualEncoder",
            _RETRIEVAL,
            "vlmkit's dual encoder on a frozen non-transformers image tower (LiT), trained with `vlmkit train clip`",
        ),
        ModelKind(
            "instructblip",
            "VlmkitInstructBlip",
            frozenset({"caption", "ask", "generate"}),
            "vlmkit's InstructBLIP: instruction-aware Q-Former, trained with `vlmkit train instructblip`",
        ),
        ModelKind(
            "clipcap",
            "VlmkitClipCap",
            frozenset({"caption", "ask", "generate"}),
            "ClipCap: image embedding mapped to a frozen LM's prefix (Mokady et al., 2021)",
        ),
        ModelKind(
            "coca",
            "VlmkitCoCa",
            frozenset({"embed", "similarity", "classify", "match", "caption"}),
            "CoCa: contrastive captioner (Yu et al., 2022)",
        ),
        ModelKind(
            "simvlm",
            "VlmkitSimVLM",
            frozenset({"caption", "ask", "generate"}),
            "SimVLM: prefix-LM over image and text (Wang et al., 2022)",
        ),
        ModelKind(
            "conse",
            "ConSE",
            frozenset({"embed", "similarity", "classify", "match", "caption"}),
            "built-in offline default: EfficientNet-Lite0 + MiniLM by ConSE (Norouzi et al., 2014)",
        ),
    )
}

# When a checkpoint's config names no architecture we know, its model_type decides.
DEFAULT_ARCHITECTURE: dict[str, str] = {
    "clip": "CLIPModel",
    "siglip": "SiglipModel",
    "blip": "BlipForConditionalGeneration",
    "blip-2": "Blip2ForConditionalGeneration",
    "instructblip": "InstructBlipForConditionalGeneration",
    "llava": "LlavaForConditionalGeneration",
    "vision-text-dual-encoder": "VisionTextDualEncoderModel",
}


def supported_by(task: str) -> list[str]:
    """The families that can do ``task``, each once with its architectures, e.g.
    ``["blip2 (Blip2ForConditionalGeneration, VlmkitBlip2)", ...]``."""
    families: dict[str, list[str]] = {}
    for kind in KINDS.values():
        if task in kind.tasks:
            families.setdefault(kind.family, []).append(kind.architecture)
    return [f"{family} ({', '.join(architectures)})" for family, architectures in families.items()]
