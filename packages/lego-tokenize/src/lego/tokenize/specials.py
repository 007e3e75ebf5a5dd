"""Special tokens: validation and tiktoken's ``allowed_special`` / ``disallowed_special`` rules.

A special token (``<|endoftext|>``) is a string with its own id that ordinary text never
encodes to by accident. ``encode(text)`` follows tiktoken exactly:

- ``allowed_special`` (default: none) lists the specials that are encoded as their id where
  their string appears in the text; ``"all"`` allows every registered special.
- ``disallowed_special`` (default ``"all"``: every registered special that is not allowed)
  lists strings whose appearance in the text is an error
  ([`DisallowedSpecialError`][lego.tokenize.specials.DisallowedSpecialError]), so that user
  text cannot inject an end-of-text or a chat marker. Pass ``()`` to encode them as
  ordinary text instead.
- ``encode_ordinary(text)`` ignores specials altogether: their strings are ordinary text.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Collection, Iterator, Mapping
from typing import Literal

from lego.protocols import ConfigError, DataError, SpecialTokens

__all__ = [
    "AllowedSpecial",
    "DisallowedSpecial",
    "DisallowedSpecialError",
    "validate_special_tokens",
    "resolve_special_sets",
    "check_disallowed",
    "split_specials",
]

AllowedSpecial = Literal["all"] | Collection[str]
"""``"all"`` or a collection of special-token strings to encode as their ids."""

DisallowedSpecial = Literal["all"] | Collection[str]
"""``"all"`` or a collection of strings whose appearance in the text is an error."""


class DisallowedSpecialError(DataError, ValueError):
    """Ordinary text contains the string of a special token that was not allowed.

    It is a [`DataError`][lego.protocols.DataError] and also a ``ValueError``, the error
    tiktoken raises in the same case, so code written for either catches it.

    Attributes:
        token: The special token's string found in the text.
        position: Its character offset in the text.
    """

    def __init__(self, token: str, position: int) -> None:
        self.token = token
        self.position = position
        super().__init__(
            f"the text contains the special token {token!r} at character {position}, "
            "which is not allowed here",
            key=token,
            hint=f"to encode it as the special token pass allowed_special={{{token!r}}} "
            "(or 'all'); to encode it as ordinary text pass disallowed_special=() or use "
            "encode_ordinary()",
        )

    def __reduce__(self) -> tuple[object, ...]:
        return (DisallowedSpecialError, (self.token, self.position))


def validate_special_tokens(
    specials: Mapping[str, int] | None,
    *,
    n_ordinary: int | None = None,
    vocab_size: int | None = None,
) -> SpecialTokens:
    """Validate special tokens against an ordinary vocabulary.

    Args:
        specials: Token strings to ids (or None for none).
        n_ordinary: Ordinary tokens use ids ``0 .. n_ordinary - 1``; a special id below it
            collides with an ordinary token.
        vocab_size: When given, every special id must be below it.

    Returns:
        The validated, immutable map.

    Raises:
        ConfigError: On an empty or non-string token, a bad or shared id, an id that
            collides with an ordinary token or does not fit ``vocab_size``.
    """
    if specials is not None and not isinstance(specials, Mapping):
        raise ConfigError(
            f"special_tokens must be a mapping from token strings to ids, got "
            f"{type(specials).__name__}",
            key="special_tokens",
            hint='pass e.g. {"<|endoftext|>": 50256}',
        )
    tokens = SpecialTokens(specials or {})
    for token, token_id in tokens.items():
        if n_ordinary is not None and token_id < n_ordinary:
            raise ConfigError(
                f"special token {token!r} has id {token_id}, which an ordinary token already "
                f"uses (ordinary ids are 0..{n_ordinary - 1})",
                key=token,
                hint=f"give special tokens ids from {n_ordinary} on",
            )
        if vocab_size is not None and token_id >= vocab_size:
            raise ConfigError(
                f"special token {token!r} has id {token_id}, outside the vocabulary of "
                f"{vocab_size}",
                key=token,
                hint=f"give special tokens ids below {vocab_size}, or raise vocab_size",
            )
    return tokens


def resolve_special_sets(
    specials: Collection[str],
    allowed_special: AllowedSpecial,
    disallowed_special: DisallowedSpecial,
) -> tuple[frozenset[str], frozenset[str]]:
    """Turn tiktoken-style arguments into the sets of allowed and disallowed strings.

    Args:
        specials: The registered special-token strings.
        allowed_special: ``"all"`` or the strings to allow.
        disallowed_special: ``"all"`` (every registered special not allowed) or strings.

    Returns:
        ``(allowed, disallowed)``: the registered specials to encode as ids, and the
        strings whose appearance is an error.
    """
    registered = frozenset(specials)
    # As in tiktoken, allowing a string that is not a special token has no effect.
    allowed = registered if allowed_special == "all" else registered & frozenset(allowed_special)
    if disallowed_special == "all":
        disallowed = registered - allowed
    else:
        disallowed = frozenset(disallowed_special)
    return allowed, disallowed


@functools.lru_cache(maxsize=64)
def _alternation(tokens: frozenset[str]) -> re.Pattern[str]:
    # Longest first, so of two specials starting at the same place the longer one wins.
    ordered = sorted(tokens, key=lambda t: (-len(t), t))
    return re.compile("|".join(re.escape(t) for t in ordered))


def check_disallowed(text: str, disallowed: frozenset[str]) -> None:
    """Raise when ``text`` contains one of the ``disallowed`` strings.

    Args:
        text: The text about to be encoded.
        disallowed: Strings that must not appear.

    Raises:
        DisallowedSpecialError: At the first occurrence, naming the token and position.
    """
    if not disallowed or not text:
        return
    match = _alternation(disallowed).search(text)
    if match is not None:
        raise DisallowedSpecialError(match.group(), match.start())


def split_specials(text: str, allowed: frozenset[str]) -> Iterator[tuple[str, bool]]:
    """Split text at the allowed special tokens.

    Args:
        text: The text.
        allowed: The special-token strings to cut out.

    Yields:
        ``(piece, is_special)`` in order: ordinary text pieces (never empty) and the
        special tokens' strings.
    """
    if not allowed:
        if text:
            yield text, False
        return
    start = 0
    for match in _alternation(allowed).finditer(text):
        if match.start() > start:
            yield text[start : match.start()], False
        yield match.group(), True
        start = match.end()
    if start < len(text):
        yield text[start:], False
