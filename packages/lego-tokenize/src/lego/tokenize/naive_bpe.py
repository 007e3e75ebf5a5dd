"""Byte-level BPE over raw text, with no pre-splitting: the textbook algorithm.

Each document is one byte sequence; training repeatedly joins the most frequent adjacent
pair of tokens anywhere in it (across spaces, words, punctuation), and encoding replays the
merges. It is the tokenizer of the classic worked example::

    >>> tok = NaiveBPETokenizer()
    >>> tok.train("aaabdaaabac", 256 + 3)
    >>> tok.merges
    [(97, 97), (256, 97), (257, 98)]
    >>> tok.encode("aaabdaaabac")
    [258, 100, 258, 97, 99]

Use [`RegexBPETokenizer`][lego.tokenize.RegexBPETokenizer] for real work: without
pre-tokens, tokens span word borders and training touches whole documents at every merge.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from lego.tokenize.bpe import bpe_merge, utf8_bytes
from lego.tokenize.bpe_base import ByteLevelBPETokenizer
from lego.tokenize.fileformat import FieldReader

__all__ = ["NaiveBPETokenizer"]


class NaiveBPETokenizer(ByteLevelBPETokenizer):
    """Byte-level BPE without pre-tokenization (each document is one sequence).

    Untrained, it is a byte tokenizer: ids 0..255 are the bytes. Encoding applies tiktoken's
    rule to the whole text: join the adjacent pair whose bytes form the lowest-ranked token,
    leftmost first, until none is left (``O(n log n)`` with a heap).

    Args:
        special_tokens: Special-token strings to ids (ids from 256 on).

    Raises:
        ConfigError: On invalid special tokens.
    """

    type_name: ClassVar[str] = "naive_bpe"

    def __init__(self, *, special_tokens: Mapping[str, int] | None = None) -> None:
        self._init_bytes(special_tokens)

    def encode_ordinary(self, text: str) -> list[int]:
        """Encode text, treating special tokens' strings as ordinary text.

        Args:
            text: Any Unicode string (unpaired surrogates become U+FFFD).

        Returns:
            The ids.
        """
        if not text:
            return []
        return bpe_merge(utf8_bytes(text), self._ranks)

    def _pretoken_pattern(self) -> None:
        return None  # each document is one sequence

    def _training_description(self) -> str:
        return "naive BPE"

    def _fields(self) -> dict[str, Any]:
        return self._bpe_fields()

    @classmethod
    def _from_fields(cls, reader: FieldReader) -> NaiveBPETokenizer:
        reader.check_keys({"merges", "special_tokens"}, {"byte_order"})
        ranks, merges, specials = cls._read_bpe_fields(reader)
        tokenizer = cls()
        tokenizer._set_vocab(ranks, merges=merges, specials=specials)
        return tokenizer
