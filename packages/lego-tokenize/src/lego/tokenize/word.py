r"""Word-level tokenizer: words, punctuation marks and whitespace runs, with ``<unk>``.

Text is cut into runs of word characters (``\w+``), single punctuation marks and runs of
whitespace, so decoding joins the pieces back exactly; words outside the vocabulary
become ``<unk>``.

Example:
    >>> tok = WordTokenizer()
    >>> tok.train("the cat sat on the mat.", vocab_size=20)
    >>> tok.decode(tok.encode("the mat sat."))
    'the mat sat.'
    >>> tok.decode(tok.encode("the dog"))
    'the <unk>'
"""

from __future__ import annotations

from typing import ClassVar

from lego.tokenize.vocab_tokenizer import VocabularyTokenizer

__all__ = ["WORD_PATTERN", "WordTokenizer"]

WORD_PATTERN = r"\w+|[^\w\s]|\s+"
"""How text is cut: word-character runs, single punctuation marks, whitespace runs."""


class WordTokenizer(VocabularyTokenizer):
    """One token per word, punctuation mark or whitespace run.

    The ids come from a [`Vocabulary`][lego.tokenize.Vocabulary] (``<unk>``,
    ``<|endoftext|>``, min frequency, max size).

    Args:
        vocabulary: The vocabulary (default: only ``<unk>`` and ``<|endoftext|>``).
        min_frequency: What ``train`` keeps: pieces seen at least this often.
    """

    type_name: ClassVar[str] = "word"
    split_pattern: ClassVar[str] = WORD_PATTERN
