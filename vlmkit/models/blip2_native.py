"""vlmkit's own BLIP-2 (Li et al., 2023): a frozen image encoder, our Q-Former, a linear projection
and a frozen language model, as trained by ``vlmkit train blip2-stage1`` and ``blip2-stage2``.

Stage 2 (vision-to-language generative learning): the Q-Former's query outputs (B, Q, D) are
projected to the LM's embedding width and prepended to the text embeddings as soft visual prompts.
A decoder-only LM (GPT-2, OPT, Llama) learns with the language-modelling loss on the text after the
prompt; an encoder-decoder LM (T5) with the prefix-LM loss: visual prompts and prompt text go to the
encoder, the continuation is the decoder's target. Only the Q-Former and the projection learn.

A checkpoint is a directory: ``config.json`` (``model_type: vlmkit-blip2``, the encoder, the LM, the
prompts), ``qformer/`` (weights and its tokenizer), ``projection.safetensors``, when the LM is
local, ``lm/`` in transformers format, and, after a stage-2 run from a stage-1 run,
``retrieval_qformer/``: the stage-1 Q-Former, which embed / similarity / match use.
``vlmkit.load(dir)`` wraps it for caption / ask / embed / match.

InstructBLIP (Dai et al., 2023; ``vlmkit train instructblip``) is the same model with an
instruction-aware Q-Former (``Blip2Config.instruction_aware``): the prompt text, the instruction,
is tokenised with the Q-Former's tokenizer and read by the Q-Former beside the queries
(:meth:`QFormer.encode_instructed`), so the visual prompts depend on what is asked; the LM gets the
same instruction as its text prompt. Such a checkpoint says ``model_type: vlmkit-instructblip`` and
keeps the Q-Former's tokenizer in ``qformer/``; ``vlmkit.load`` wraps it for caption / ask / generate.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from ..errors import InputError, ModelNotFoundError
from .base import (
    GenerationOptions,
    MatchResult,
    PromptedTasks,
    VisionLanguageModel,
    as_list,
    check_texts,
    pair_up,
)
from .checkpoint import load_tokenizer, load_weights, read_config, read_meta, save_weights, write_config
from .image_encoders import FrozenImageEncoder, load_image_encoder
from .kinds import KINDS
from .qformer import QFormer

__all__ = [
    "Blip2Config", "NativeBlip2", "NativeBlip2Tasks", "NativeInstructBlipTasks", "load_native", "MODEL_TYPE",
    "INSTRUCT_MODEL_TYPE", "CAPTION_PROMPT", "VQA_PROMPT", "RETRIEVAL_QFORMER",
]

MODEL_TYPE = "vlmkit-blip2"
INSTRUCT_MODEL_TYPE = "vlmkit-instructblip"
#: A stage-1 export: the frozen encoder and the Q-Former with its ITC / ITM heads, no LM.
RETRIEVAL_MODEL_TYPE = "vlmkit-blip2-retrieval"
CAPTION_PROMPT = "a photo of"
VQA_PROMPT = "Question: {} Answer:"  # the paper's OPT prompt; FlanT5 uses "Question: {} Short answer:"
IGNORE_INDEX = -100


@dataclass(frozen=True)
class Blip2Config:
    image_encoder: str = "efficientnet-lite0"
    encoder_layer: int = -2
    #: A hub id or a directory; "lm" means the ``lm/`` folder inside the checkpoint.
    language_model: str = "lm"
    caption_prompt: str = CAPTION_PROMPT
    vqa_prompt: str = VQA_PROMPT
    #: InstructBLIP: the Q-Former reads the prompt (the instruction) beside its queries.
    instruction_aware: bool = False
    #: Instructions are cut to this many Q-Former tokens (instruction-aware models only).
    max_instruction_length: int = 48
    #: Where a decoder-only LM reads the visual prompts. "before_bos": ``[prompts][bos] text``, the
    #: layout of the released BLIP-2 checkpoints. "after_bos": ``[bos][prompts] text``, where an LM
    #: trained on ``[bos] description. text`` (``vlmkit train lm``) learned to read a description;
    #: the text after the prompts is then tokenised as it is after a description (leading space).
    #: Training and generation use the same layout.
    visual_position: Literal["before_bos", "after_bos"] = "before_bos"

    def __post_init__(self) -> None:
        if self.max_instruction_length < 1:
            raise InputError(f"max_instruction_length must be at least 1, got {self.max_instruction_length}")
        if self.visual_position not in ("before_bos", "after_bos"):
            raise InputError(f"visual_position must be 'before_bos' or 'after_bos', got {self.visual_position!r}")


#: Fields that only an instruction-aware checkpoint writes, so a BLIP-2 config.json stays as it was.
_INSTRUCTION_FIELDS = ("instruction_aware", "max_instruction_length")


#: Optional checkpoint subdirectory: the stage-1 Q-Former that ``embed`` / ``similarity`` / ``match`` use.
RETRIEVAL_QFORMER = "retrieval_qformer"


class NativeBlip2(nn.Module):
    """Frozen encoder + Q-Former + projection + frozen LM. ``forward`` is the stage-2 loss.

    An instruction-aware model (InstructBLIP) needs ``qformer_tokenizer`` to read its instructions."""

    def __init__(
        self, config: Blip2Config, encoder: FrozenImageEncoder, qformer: QFormer, lm: Any, lm_tokenizer: Any,
        *, qformer_tokenizer: Any = None,
    ) -> None:
        super().__init__()
        if config.instruction_aware and qformer_tokenizer is None:
            raise InputError("an instruction-aware model needs the Q-Former's tokenizer to read its instructions")
        if qformer_tokenizer is not None and len(qformer_tokenizer) > qformer.config.vocab_size:
            raise InputError(f"the Q-Former's tokenizer has {len(qformer_tokenizer)} tokens, its embeddings {qformer.config.vocab_size}")
        self.config = config
        self.encoder = encoder
        self.qformer = qformer
        self.lm = lm
        self.lm_tokenizer = lm_tokenizer
        self.qformer_tokenizer = qformer_tokenizer
        self.projection = nn.Linear(qformer.config.hidden_size, lm.config.hidden_size)  # D -> D_lm
        self._init_projection()
        for parameter in self.lm.parameters():
            parameter.requires_grad_(False)
        self.lm.eval()
        self.encoder_decoder = bool(getattr(lm.config, "is_encoder_decoder", False))

    def train(self, mode: bool = True) -> NativeBlip2:
        super().train(mode)
        self.lm.eval()  # frozen: no dropout in the LM, ever
        self.encoder.eval()
        return self

    @torch.no_grad()
    def _init_projection(self) -> None:
        """Start the visual prompts at the scale of the LM's own token embeddings. PyTorch's default
        initialisation maps the Q-Former's LayerNorm-ed outputs (norm about sqrt(D)) to vectors tens
        of times longer than a small LM's embeddings; such prompts are nearly the same for every
        image after the LM's first LayerNorm, and stage 2 then learns only the text prior."""
        embeddings = self.lm.get_input_embeddings().weight.float()  # (V, D_lm)
        target = float(embeddings.norm(dim=-1).mean())
        fan_in, fan_out = self.projection.in_features, self.projection.out_features
        nn.init.normal_(self.projection.weight, std=target / (fan_in * fan_out) ** 0.5)
        nn.init.zeros_(self.projection.bias)

    # -- pieces ---------------------------------------------------------------------------------

    def visual_prompts(self, image_embeds: torch.Tensor, instructions: list[str] | None = None) -> torch.Tensor:
        """Frozen image features (B, P, E) -> soft visual prompts (B, Q, D_lm). An instruction-aware
        model reads one instruction per image with its queries; a plain BLIP-2 ignores them."""
        if not self.config.instruction_aware:
            queries = self.qformer.encode_image(image_embeds).last_hidden_state  # (B, Q, D)
            return self.projection(queries).to(self.lm.dtype)
        if instructions is None or len(instructions) != image_embeds.shape[0]:
            raise InputError("an instruction-aware model needs one instruction per image")
        tokens = self.qformer_tokenizer(
            instructions, padding=True, truncation=True, max_length=self.config.max_instruction_length, return_tensors="pt"
        )
        ids = tokens["input_ids"].to(image_embeds.device)  # (B, T)
        mask = tokens["attention_mask"].to(image_embeds.device)  # (B, T)
        queries = self.qformer.encode_instructed(image_embeds, ids, mask).last_hidden_state  # (B, Q, D)
        return self.projection(queries).to(self.lm.dtype)

    def _after_bos(self) -> bool:
        return self.config.visual_position == "after_bos" and not self.encoder_decoder and self.lm_tokenizer.bos_token_id is not None

    def _ids(self, text: str, *, bos: bool) -> list[int]:
        tok = self.lm_tokenizer
        if bos and self._after_bos() and text:
            # After the visual prompts the text continues a description ("[bos] scene. Question: ..."),
            # so its first word is tokenised as a word inside a text: with its leading space.
            text = " " + text
        ids = list(tok(text, add_special_tokens=False)["input_ids"]) if text else []
        if bos and tok.bos_token_id is not None and not self.encoder_decoder:
            ids = [tok.bos_token_id] + ids
        return ids

    def _embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.lm.get_input_embeddings()(ids)

    def _with_visual(self, text: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
        """Insert ``visual`` (B, Q, ...) into ``text`` (B, T, ...) at the configured position: after
        the leading bos for ``after_bos`` (decoder-only LMs with a bos), else in front. One place for
        the layout, used for embeddings, masks and labels, in training and in generation alike."""
        k = 1 if self._after_bos() else 0
        return torch.cat([text[:, :k], visual, text[:, k:]], dim=1)

    # -- stage-2 loss ----------------------------------------------------------------------------

    def forward(self, image_embeds: torch.Tensor, prompts: list[str], targets: list[str]) -> torch.Tensor:
        """LM loss of ``targets`` given the image and ``prompts`` (prefix-LM loss for encoder-decoders)."""
        if len(prompts) != image_embeds.shape[0] or len(targets) != len(prompts):
            raise InputError("stage 2: one prompt and one target per image")
        visual = self.visual_prompts(image_embeds, prompts)  # (B, Q, D_lm)
        device, eos = visual.device, self.lm_tokenizer.eos_token_id
        pad = self.lm_tokenizer.pad_token_id if self.lm_tokenizer.pad_token_id is not None else eos
        prompt_ids = [self._ids(p, bos=True) for p in prompts]
        target_ids = [self._ids(" " + t.strip() if not self.encoder_decoder else t.strip(), bos=False) + [eos] for t in targets]
        if self.encoder_decoder:
            enc = _pad(prompt_ids, pad, device)
            inputs = self._with_visual(self._embed(enc.ids), visual)  # (B, Q+Tp, D)
            mask = self._with_visual(enc.mask, torch.ones(visual.shape[:2], dtype=torch.long, device=device))
            target = _pad(target_ids, pad, device)
            decoder_labels = target.ids.masked_fill(target.mask == 0, IGNORE_INDEX)
            return self.lm(inputs_embeds=inputs, attention_mask=mask, labels=decoder_labels).loss
        sequences = [p + t for p, t in zip(prompt_ids, target_ids, strict=True)]
        batch = _pad(sequences, pad, device)  # right padding: (B, T)
        labels = batch.ids.masked_fill(batch.mask == 0, IGNORE_INDEX)
        for row, prompt in enumerate(prompt_ids):
            labels[row, : len(prompt)] = IGNORE_INDEX  # the prompt is given, not predicted
        inputs = self._with_visual(self._embed(batch.ids), visual)  # (B, Q+T, D)
        mask = self._with_visual(batch.mask, torch.ones(visual.shape[:2], dtype=torch.long, device=device))
        full_labels = self._with_visual(labels, torch.full(visual.shape[:2], IGNORE_INDEX, device=device))
        return self.lm(inputs_embeds=inputs, attention_mask=mask, labels=full_labels).loss

    # -- generation ------------------------------------------------------------------------------

    @torch.no_grad()
    def generate(self, image_embeds: torch.Tensor, prompts: list[str], **generate_kwargs: Any) -> list[str]:
        """Continue each prompt after its image. Batches hold prompts of one token length, so no
        padding enters (results do not depend on the batch)."""
        visual = self.visual_prompts(image_embeds, prompts)  # (B, Q, D_lm)
        ids = [self._ids(p, bos=True) for p in prompts]
        out: list[str] = [""] * len(prompts)
        groups: dict[int, list[int]] = {}
        for index, seq in enumerate(ids):
            groups.setdefault(len(seq), []).append(index)
        tok = self.lm_tokenizer
        for rows in groups.values():
            prompt = torch.tensor([ids[i] for i in rows], dtype=torch.long, device=visual.device)  # (b, Tp)
            inputs = self._with_visual(self._embed(prompt), visual[rows])  # (b, Q+Tp, D)
            mask = torch.ones(inputs.shape[:2], dtype=torch.long, device=visual.device)
            kwargs = {"pad_token_id": tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id, **generate_kwargs}
            generated = self.lm.generate(inputs_embeds=inputs, attention_mask=mask, **kwargs)
            for i, text in zip(rows, tok.batch_decode(generated, skip_special_tokens=True), strict=True):
                out[i] = text.strip()
        return out

    # -- checkpoints -----------------------------------------------------------------------------

    def save_pretrained(self, directory: str | os.PathLike, *, copy_lm: bool = True) -> None:
        path = Path(directory)
        config = self.config
        if copy_lm:
            self.lm.save_pretrained(path / "lm")
            self.lm_tokenizer.save_pretrained(path / "lm")
            config = Blip2Config(**{**asdict(config), "language_model": "lm"})
        self.qformer.save_pretrained(path / "qformer")
        if self.qformer_tokenizer is not None:
            self.qformer_tokenizer.save_pretrained(path / "qformer")
        save_weights(self.projection.state_dict(), path / "projection.safetensors")
        if config.instruction_aware:
            write_config(path, config, model_type=INSTRUCT_MODEL_TYPE, architecture="VlmkitInstructBlip")
        else:
            write_config(path, config, model_type=MODEL_TYPE, architecture="VlmkitBlip2", drop=_INSTRUCTION_FIELDS)

    @classmethod
    def from_parts(
        cls,
        config: Blip2Config,
        qformer: QFormer,
        *,
        lm_path: str | os.PathLike,
        dtype: torch.dtype = torch.float32,
        qformer_tokenizer: Any = None,
    ) -> NativeBlip2:
        """Assemble a model for stage-2 training (or instruction tuning, with the Q-Former's
        tokenizer) from a (stage-1) Q-Former and a frozen LM."""
        import transformers

        lm_config = transformers.AutoConfig.from_pretrained(lm_path)
        lm_class = transformers.AutoModelForSeq2SeqLM if getattr(lm_config, "is_encoder_decoder", False) else transformers.AutoModelForCausalLM
        lm = lm_class.from_pretrained(lm_path, dtype=dtype, use_safetensors=True)
        tokenizer = transformers.AutoTokenizer.from_pretrained(lm_path)
        encoder = load_image_encoder(config.image_encoder, layer=config.encoder_layer)
        if encoder.hidden_size != qformer.config.encoder_hidden_size:
            raise InputError(
                f"the Q-Former cross-attends to {qformer.config.encoder_hidden_size}-wide features but "
                f"{config.image_encoder} gives {encoder.hidden_size}"
            )
        return cls(config, encoder, qformer, lm, tokenizer, qformer_tokenizer=qformer_tokenizer)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, *, dtype: torch.dtype = torch.float32) -> NativeBlip2:
        path = Path(directory)
        config, model_type = read_config(path, Blip2Config, model_types=(MODEL_TYPE, INSTRUCT_MODEL_TYPE))
        if config.instruction_aware != (model_type == INSTRUCT_MODEL_TYPE):
            raise ModelNotFoundError(f"{path}: model_type {model_type} disagrees with instruction_aware={config.instruction_aware}")
        lm_path = path / "lm" if config.language_model == "lm" else config.language_model
        qformer_tokenizer = None
        if config.instruction_aware:
            qformer_tokenizer = load_tokenizer(path / "qformer")
        model = cls.from_parts(
            config, QFormer.from_pretrained(path / "qformer"), lm_path=lm_path, dtype=dtype, qformer_tokenizer=qformer_tokenizer
        )
        load_weights(model.projection, path / "projection.safetensors")
        return model.eval()


@dataclass(frozen=True)
class _Padded:
    ids: torch.Tensor  # (B, T)
    mask: torch.Tensor  # (B, T)


def _pad(rows: list[list[int]], pad: int, device: torch.device) -> _Padded:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long, device=device)
    mask = torch.zeros((len(rows), width), dtype=torch.long, device=device)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return _Padded(ids, mask)


class QFormerRetrieval(VisionLanguageModel):
    """A frozen image encoder and a Q-Former's stage-1 heads behind the vlmkit task interface:
    ``embed`` (mean of the normalised query features), ``similarity`` and ``classify`` (ITC, the
    maximum over queries) and ``match`` (ITM). What ``vlmkit train blip2-stage1`` exports."""

    #: The kind (in :data:`KINDS`) this wrapper reports.
    architecture = "VlmkitBlip2Retrieval"

    def __init__(
        self, name: str, encoder: FrozenImageEncoder, retrieval: QFormer, qformer_tokenizer: Any, device: torch.device, dtype: torch.dtype,
    ) -> None:
        super().__init__(name, KINDS[self.architecture], device, dtype)
        self.encoder = encoder.to(device, dtype).eval()
        self.retrieval = retrieval.to(device, dtype).eval()
        self.qformer_tokenizer = qformer_tokenizer

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.encoder.parameters()) + sum(p.numel() for p in self.retrieval.parameters())

    def _features(self, images: Any, batch_size: int) -> torch.Tensor:
        encoder = self.encoder
        chunks = [
            encoder(torch.stack(batch).to(self.device, self.dtype))
            for batch in self._load_batches(as_list(images, "images"), batch_size, transform=lambda im: encoder.preprocess([im])[0])
        ]
        return torch.cat(chunks)  # (N, P, E)

    # -- retrieval through the stage-1 heads ------------------------------------------------------

    def embed_image_queries(self, images: Any, *, batch_size: int = 32) -> np.ndarray:
        """Normalised ITC features of every query, (N, Q, D)."""
        with torch.inference_mode():
            return self.retrieval.image_features(self._features(images, batch_size)).float().cpu().numpy()

    def embed_images(self, images: Any, *, batch_size: int = 32) -> np.ndarray:
        queries = self.embed_image_queries(images, batch_size=batch_size)
        mean = queries.mean(axis=1)
        return (mean / np.linalg.norm(mean, axis=1, keepdims=True)).astype(np.float32)

    def _tokens(self, texts: list[str]) -> Any:
        return self.qformer_tokenizer(texts, padding=True, truncation=True, max_length=64, return_tensors="pt").to(self.device)

    def embed_texts(self, texts: Any, *, batch_size: int = 64) -> np.ndarray:
        text_list = check_texts(as_list(texts, "texts"), "texts")
        chunks = []
        with torch.inference_mode():
            for start in range(0, len(text_list), batch_size):
                batch = self._tokens(text_list[start : start + batch_size])
                chunks.append(self.retrieval.text_features(batch["input_ids"], batch["attention_mask"]).float().cpu().numpy())
        return np.concatenate(chunks).astype(np.float32)

    def similarity(self, images: Any, texts: Any) -> np.ndarray:
        return np.einsum("nqd,md->nqm", self.embed_image_queries(images), self.embed_texts(texts)).max(axis=1)

    def _class_similarity(self, images: Any, text_emb: np.ndarray) -> np.ndarray:
        return np.einsum("nqd,md->nqm", self.embed_image_queries(images), text_emb).max(axis=1)

    def logit_scale(self) -> float:
        return 1.0 / float(self.retrieval.temp.detach().clamp(0.001, 0.5))

    def match(self, images: Any, texts: Any, *, batch_size: int = 16) -> MatchResult:
        image_list, text_list = pair_up(as_list(images, "images"), check_texts(as_list(texts, "texts"), "texts"), "match")
        scores = []
        with torch.inference_mode():
            for start in range(0, len(image_list), batch_size):
                features = self._features(image_list[start : start + batch_size], batch_size)
                batch = self._tokens(text_list[start : start + batch_size])
                logits = self.retrieval.itm_logits(features, batch["input_ids"], batch["attention_mask"])  # (B, 2)
                scores.append(logits.float().softmax(dim=-1)[:, 1].cpu().numpy())
        return MatchResult(scores=np.concatenate(scores).astype(np.float32), kind="itm")



@dataclass(frozen=True)
class RetrievalConfig:
    """A stage-1 export: the frozen image encoder its Q-Former reads (the Q-Former keeps its own config)."""

    image_encoder: str = "efficientnet-lite0"
    encoder_layer: int = -2


def save_retrieval(directory: str | os.PathLike, qformer: QFormer, tokenizer: Any, *, image_encoder: str, encoder_layer: int) -> None:
    """Write a stage-1 Q-Former (with its tokenizer) and the name of its frozen image encoder as a
    ``vlmkit-blip2-retrieval`` checkpoint."""
    path = Path(directory)
    qformer.save_pretrained(path / "qformer")
    tokenizer.save_pretrained(path / "qformer")
    write_config(path, RetrievalConfig(image_encoder, encoder_layer), model_type=RETRIEVAL_MODEL_TYPE, architecture="VlmkitBlip2Retrieval")


def _load_retrieval(path: Path, *, name: str, device: torch.device, dtype: torch.dtype) -> QFormerRetrieval:

    config, _ = read_config(path, RetrievalConfig, model_types=RETRIEVAL_MODEL_TYPE)
    encoder = load_image_encoder(config.image_encoder, layer=config.encoder_layer, dtype=dtype)
    qformer = QFormer.from_pretrained(path / "qformer")
    if encoder.hidden_size != qformer.config.encoder_hidden_size:
        raise ModelNotFoundError(
            f"{path}: the Q-Former cross-attends to {qformer.config.encoder_hidden_size}-wide features but "
            f"{config.image_encoder} gives {encoder.hidden_size}"
        )
    tokenizer = load_tokenizer(path / "qformer")
    return QFormerRetrieval(name, encoder, qformer, tokenizer, device, dtype)


class NativeBlip2Tasks(QFormerRetrieval, PromptedTasks):
    """A :class:`NativeBlip2` checkpoint behind the vlmkit task interface: generation through the
    frozen LM, retrieval through the Q-Former's stage-1 heads (ITC max over queries, ITM)."""

    #: The kind (in :data:`KINDS`) this wrapper reports.
    architecture = "VlmkitBlip2"
    vqa_length_penalty = -1.0  # the paper's short answers under beam search

    def __init__(
        self, name: str, net: NativeBlip2, qformer_tokenizer: Any, device: torch.device, dtype: torch.dtype,
        retrieval_qformer: QFormer | None = None,
    ) -> None:
        #: ITC / ITM come from the stage-1 Q-Former when the checkpoint keeps it: stage 2 trains the
        #: Q-Former for the LM only, which moves the queries away from the ITC space (BLIP-2 also
        #: retrieves with its stage-1 model).
        super().__init__(name, net.encoder, retrieval_qformer or net.qformer, qformer_tokenizer, device, dtype)
        self.net = net.to(device).eval()
        self.caption_prompt = net.config.caption_prompt
        self.vqa_prompt = net.config.vqa_prompt

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.net.parameters())

    def _generate(self, images: list[Any], prompts: list[str], options: GenerationOptions, batch_size: int) -> list[str]:
        texts: list[str] = []
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                features = self._features(images[start : start + batch_size], batch_size)
                texts += self.net.generate(features, prompts[start : start + batch_size], **options.to_hf())
        return texts


class NativeInstructBlipTasks(NativeBlip2Tasks):
    """An instruction-aware checkpoint (InstructBLIP): caption, ask and generate, where the prompt
    (the default ``caption_prompt`` / ``vqa_prompt`` or the caller's) is also the Q-Former's
    instruction. No retrieval: its Q-Former was tuned to feed the LM, not for ITC / ITM."""

    architecture = "VlmkitInstructBlip"

    def embed_image_queries(self, images: Any, *, batch_size: int = 32) -> np.ndarray:
        raise self._unsupported("embed")

    def embed_images(self, images: Any, *, batch_size: int = 32) -> np.ndarray:
        raise self._unsupported("embed")

    def embed_texts(self, texts: Any, *, batch_size: int = 64) -> np.ndarray:
        raise self._unsupported("embed")

    def similarity(self, images: Any, texts: Any) -> np.ndarray:
        raise self._unsupported("similarity")

    def _class_similarity(self, images: Any, text_emb: np.ndarray) -> np.ndarray:
        raise self._unsupported("classify")

    def logit_scale(self) -> float:
        raise self._unsupported("similarity")

    def match(self, images: Any, texts: Any, *, batch_size: int = 16) -> MatchResult:
        raise self._unsupported("match")


def load_native(path: str | os.PathLike, *, name: str, device: torch.device, dtype: torch.dtype, load: Any = None) -> QFormerRetrieval:
    """Load a ``vlmkit-blip2``, ``vlmkit-instructblip`` or ``vlmkit-blip2-retrieval`` checkpoint
    directory for the task interface."""

    if read_meta(path).get("model_type") == RETRIEVAL_MODEL_TYPE:
        return _load_retrieval(Path(path), name=name, device=device, dtype=dtype)
    net = NativeBlip2.from_pretrained(path, dtype=dtype)
    if net.config.instruction_aware:
        return NativeInstructBlipTasks(name, net, net.qformer_tokenizer, device, dtype)
    tokenizer = load_tokenizer(Path(path) / "qformer")
    stage1 = Path(path) / RETRIEVAL_QFORMER
    retrieval = QFormer.from_pretrained(stage1) if (stage1 / "model.safetensors").is_file() else None
    return NativeBlip2Tasks(name, net, tokenizer, device, dtype, retrieval)
