"""A tokenizer's identity: one SHA-256 over its vocabulary, equal on every machine.

Two tokenizers with the same fingerprint map every id to the same bytes and have the same
special tokens, so ids made by one decode with the other. lego-data writes it into a
prepared dataset's ``meta.json`` (``tokenizer.sha256``) to catch a dataset used with another
tokenizer; no file needs to be shared to compute it.

The digest covers, in this order: every ordinary token as ``id`` (4 bytes, little-endian),
``len(bytes)`` (2 bytes, little-endian) and its bytes, in id order; then every special token
as ``b"S"``, its id, the length of its UTF-8 string and the string, in id order. For a
tiktoken encoding it equals the digest lego-data 0.1 wrote for that encoding. The split
pattern is not part of it (the name in ``meta.json`` tells the pattern).

Example:
    >>> from lego.tokenize import RegexBPETokenizer
    >>> tok = RegexBPETokenizer("gpt2", special_tokens={"<|endoftext|>": 256})
    >>> len(tokenizer_fingerprint(tok))
    64
    >>> tokenizer_fingerprint(object()) is None
    True
"""

from __future__ import annotations

import hashlib
import itertools
import struct
from collections.abc import Mapping, Sequence

from lego.tokenize.bpe_base import ByteLevelBPETokenizer
from lego.tokenize.vocab_tokenizer import VocabularyTokenizer

__all__ = ["tokenizer_fingerprint", "vocabulary_sha256"]

_HEAD = struct.Struct("<IH")  # id, length of the bytes


def vocabulary_sha256(tokens: Sequence[bytes], special_tokens: Mapping[str, int]) -> str:
    """Hash ordinary tokens (id = position) and special tokens as the module describes.

    Args:
        tokens: The ordinary tokens' bytes, in id order (ids ``0 .. n-1``).
        special_tokens: Special-token strings to ids.

    Returns:
        64 lowercase hex digits.
    """
    heads = map(_HEAD.pack, range(len(tokens)), map(len, tokens))
    records = itertools.chain.from_iterable(zip(heads, tokens, strict=True))
    digest = hashlib.sha256(b"".join(records))
    for token, token_id in sorted(special_tokens.items(), key=lambda item: item[1]):
        raw = token.encode("utf-8")
        digest.update(b"S" + _HEAD.pack(token_id, len(raw)) + raw)
    return digest.hexdigest()


def tokenizer_fingerprint(tokenizer: object) -> str | None:
    """Return the vocabulary digest of a lego-tokenize tokenizer (None for other objects).

    Args:
        tokenizer: Any object; byte-level BPE tokenizers hash their tokens' bytes, the
            character and word tokenizers their tokens' UTF-8.

    Returns:
        64 lowercase hex digits, or None when ``tokenizer`` is not a lego-tokenize
        tokenizer (its vocabulary cannot be listed).
    """
    if isinstance(tokenizer, ByteLevelBPETokenizer):
        tokens: Sequence[bytes] = tokenizer._tokens
    elif isinstance(tokenizer, VocabularyTokenizer):
        tokens = [token.encode("utf-8") for token in tokenizer.vocabulary.tokens]
    else:
        return None
    return vocabulary_sha256(tokens, tokenizer.special_tokens)
