"""A BERT-style WordPiece vocabulary counted from a corpus, for text towers trained from scratch.

A model trained on a small, templated corpus does not need BERT's 30,522 rows: the LM head and the
tied word embeddings over that vocabulary are most of a small text tower's cost on a CPU. This
vocabulary keeps BERT's layout ([PAD] = 0, [UNK], [CLS], [SEP], [MASK], then [DEC] as the decoder's
``bos_token``), so the same tokenizer classes and special-token rules apply.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from ..errors import InputError

__all__ = ["SPECIAL_TOKENS", "wordpiece_vocab"]

#: In id order: [PAD] is 0, as BERT's and the Q-Former's ``pad_token_id``.
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]")


def wordpiece_vocab(texts: Iterable[str], vocab_size: int = 1000) -> list[str]:
    """The tokens of an uncased WordPiece vocabulary for ``texts``, in id order: the special tokens,
    every character seen (alone and as a ``##`` continuation, so no word is unknown), then whole
    words by frequency until ``vocab_size``. Built by counting rather than by WordPiece merges, whose
    ties the ``tokenizers`` trainer breaks differently from run to run: the same texts give the same
    ids."""
    from tokenizers import normalizers, pre_tokenizers

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
    return vocab + frequent[: vocab_size - len(vocab)]
