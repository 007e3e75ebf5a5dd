"""GPT-2's byte-level alphabet: every byte value as one printable Unicode character.

GPT-2 stores its vocabulary (``encoder.json``, ``vocab.bpe``) and HuggingFace stores every
byte-level BPE (``tokenizer.json``) as *strings*, so each of the 256 byte values is mapped to
a printable character: the printable Latin-1 bytes map to themselves and the others
(control characters, space, soft hyphen, ...) to the characters from U+0100 on, in byte
order. A token's bytes become a string by mapping each byte; the mapping is a bijection,
so the string maps back to the same bytes.

Example:
    >>> token_to_str(b" hello")
    'Ġhello'
    >>> str_to_token("Ġhello")
    b' hello'
"""

from __future__ import annotations

import functools

from lego.protocols import FormatError

__all__ = ["bytes_to_unicode", "unicode_to_bytes", "token_to_str", "str_to_token"]


@functools.lru_cache(maxsize=1)
def _byte_table() -> tuple[str, ...]:
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table: dict[int, str] = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return tuple(table[b] for b in range(256))


@functools.lru_cache(maxsize=1)
def _char_table() -> dict[str, int]:
    return {char: b for b, char in enumerate(_byte_table())}


def bytes_to_unicode() -> dict[int, str]:
    """Return GPT-2's table from each byte value to its printable character.

    Returns:
        A new dictionary with the 256 byte values as keys, each mapped to a distinct
        one-character string.
    """
    return dict(enumerate(_byte_table()))


def unicode_to_bytes() -> dict[str, int]:
    """Return the inverse of [`bytes_to_unicode`][lego.tokenize.byte_level.bytes_to_unicode].

    Returns:
        A new dictionary from each of the 256 printable characters to its byte value.
    """
    return dict(_char_table())


def token_to_str(token: bytes) -> str:
    """Write a token's bytes as a byte-level string (one character per byte).

    Args:
        token: The token's bytes.

    Returns:
        The byte-level string, as in GPT-2's ``encoder.json``.
    """
    table = _byte_table()
    return "".join([table[b] for b in token])


def str_to_token(text: str, *, key: str | None = None) -> bytes:
    """Read a byte-level string back into the token's bytes.

    Args:
        text: A byte-level string (every character from GPT-2's alphabet).
        key: Where the string came from (a JSON key or token), for the error message.

    Returns:
        The token's bytes.

    Raises:
        FormatError: When a character is not in GPT-2's byte alphabet.
    """
    table = _char_table()
    try:
        return bytes([table[char] for char in text])
    except KeyError:
        bad = next(char for char in text if char not in table)
        raise FormatError(
            f"{text!r} is not a byte-level token string: {bad!r} (U+{ord(bad):04X}) is not "
            "one of GPT-2's 256 byte characters",
            key=key,
            hint="byte-level files write every byte as one character of GPT-2's alphabet; "
            "the file may be of another kind of tokenizer or corrupt",
        ) from None
