"""A vocabulary of string tokens: ordinary tokens by frequency, then special tokens.

Used by [`CharTokenizer`][lego.tokenize.CharTokenizer] and
[`WordTokenizer`][lego.tokenize.WordTokenizer]: ordinary tokens take ids ``0 .. n-1``
(most frequent first, ties in string order) and special tokens (``<unk>``,
``<|endoftext|>``, ...) the ids after them. Unknown strings map to the ``<unk>`` id.

Example:
    >>> vocab = Vocabulary.build({"the": 5, "cat": 2, "sat": 1}, min_frequency=2)
    >>> vocab.tokens, dict(vocab.special_tokens)
    (('the', 'cat'), {'<unk>': 2, '<|endoftext|>': 3})
    >>> vocab.lookup("dog") == vocab.unk_id
    True
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

from lego.protocols import ConfigError, SpecialTokens, check_int
from lego.tokenize.base import SpecialTokensArg, place_special_tokens
from lego.tokenize.specials import validate_special_tokens

__all__ = ["DEFAULT_SPECIALS", "UNK", "Vocabulary"]

UNK = "<unk>"
"""The unknown-token string."""
DEFAULT_SPECIALS: tuple[str, ...] = (UNK, "<|endoftext|>")
"""The special tokens a new vocabulary gets unless told otherwise."""


class Vocabulary(Mapping[str, int]):
    """An immutable bijection between string tokens and ids.

    Args:
        tokens: The ordinary tokens; token ``i`` gets id ``i``.
        special_tokens: Special-token strings to ids (ids from ``len(tokens)`` on).
        unk_token: The special token unknown strings map to, or None (unknown strings are
            then an error for the tokenizer).

    Raises:
        ConfigError: On an empty or repeated token, a special id colliding with an ordinary
            one, or an ``unk_token`` that is not a special token.
    """

    __slots__ = ("_by_token", "_specials", "_tokens", "_unk_token")

    def __init__(
        self,
        *,
        tokens: Sequence[str],
        special_tokens: Mapping[str, int] | None = None,
        unk_token: str | None = UNK,
    ) -> None:
        by_token: dict[str, int] = {}
        items: Sequence[object] = tokens
        for i, token in enumerate(items):
            if not isinstance(token, str) or not token:
                raise ConfigError(
                    f"vocabulary token {i} must be a non-empty string, got {token!r}",
                    key=str(i),
                )
            if token in by_token:
                raise ConfigError(
                    f"token {token!r} appears twice in the vocabulary (ids {by_token[token]} "
                    f"and {i})",
                    key=token,
                )
            by_token[token] = i
        specials = validate_special_tokens(special_tokens, n_ordinary=len(by_token))
        for token in specials:
            if token in by_token:
                raise ConfigError(
                    f"{token!r} is both an ordinary and a special token",
                    key=token,
                    hint="keep special strings out of the ordinary tokens",
                )
        if unk_token is not None and unk_token not in specials:
            raise ConfigError(
                f"unk_token {unk_token!r} is not one of the special tokens",
                key="unk_token",
                hint=f"add {unk_token!r} to special_tokens, or pass unk_token=None",
            )
        self._tokens = tuple(tokens)
        self._by_token = by_token
        self._specials = specials
        self._unk_token = unk_token

    @classmethod
    def build(
        cls,
        counts: Mapping[str, int],
        *,
        max_size: int | None = None,
        min_frequency: int = 1,
        special_tokens: SpecialTokensArg | None = DEFAULT_SPECIALS,
        unk_token: str | None = UNK,
    ) -> Vocabulary:
        """Build a vocabulary from token counts.

        Args:
            counts: Token strings to their number of occurrences.
            max_size: The largest vocabulary, special tokens included (None: no limit).
            min_frequency: Tokens seen fewer times are left out (they become ``<unk>``).
            special_tokens: Strings (numbered after the ordinary tokens) or strings to
                explicit ids (the top ids of ``max_size``).
            unk_token: The special token for unknown strings, or None.

        Returns:
            The vocabulary: the most frequent tokens first, ties in string order.

        Raises:
            ConfigError: On a bad ``max_size``, ``min_frequency`` or special tokens.
        """
        check_int("min_frequency", min_frequency, minimum=1, owner="Vocabulary")
        specials_arg: SpecialTokensArg = special_tokens or ()
        n_specials = len(specials_arg)
        excluded = set(specials_arg)
        ranked = sorted(
            (
                item
                for item in counts.items()
                if item[1] >= min_frequency and item[0] not in excluded
            ),
            key=lambda item: (-item[1], item[0]),
        )
        if max_size is not None:
            place_special_tokens(specials_arg, max_size, minimum=1)  # checks max_size
            ranked = ranked[: max_size - n_specials]
        tokens = [token for token, _ in ranked]
        if max_size is None:
            specials = place_special_tokens(
                specials_arg, len(tokens) + n_specials, minimum=0, n_ordinary=len(tokens)
            )
        else:
            specials = place_special_tokens(
                specials_arg, max_size, minimum=1, n_ordinary=len(tokens)
            )
        return cls(tokens=tokens, special_tokens=specials, unk_token=unk_token)

    # -- mapping -----------------------------------------------------------------------------

    def __getitem__(self, token: str) -> int:
        index = self._by_token.get(token)
        if index is not None:
            return index
        return self._specials[token]

    def __iter__(self) -> Iterator[str]:
        yield from self._tokens
        yield from self._specials

    def __len__(self) -> int:
        return len(self._tokens) + len(self._specials)

    def __contains__(self, token: object) -> bool:
        return token in self._by_token or token in self._specials

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Vocabulary):
            return (
                self._tokens == other._tokens
                and self._specials == other._specials
                and self._unk_token == other._unk_token
            )
        return NotImplemented

    def __hash__(self) -> int:
        return hash((self._tokens, self._specials, self._unk_token))

    def __repr__(self) -> str:
        return (
            f"Vocabulary({len(self._tokens)} tokens, special_tokens={dict(self._specials)!r}, "
            f"unk_token={self._unk_token!r})"
        )

    # -- properties --------------------------------------------------------------------------

    @property
    def tokens(self) -> tuple[str, ...]:
        """The ordinary tokens, in id order."""
        return self._tokens

    @property
    def special_tokens(self) -> SpecialTokens:
        """Special-token strings to ids."""
        return self._specials

    @property
    def unk_token(self) -> str | None:
        """The special token unknown strings map to, or None."""
        return self._unk_token

    @property
    def unk_id(self) -> int | None:
        """The id of ``unk_token``, or None."""
        return None if self._unk_token is None else self._specials[self._unk_token]

    @property
    def size(self) -> int:
        """The id space: the largest id plus one (``len`` counts tokens; ids may have gaps)."""
        return max([len(self._tokens) - 1, *self._specials.values()]) + 1

    def lookup(self, token: str) -> int | None:
        """The id of an ordinary token, else the ``<unk>`` id (None without ``<unk>``).

        Args:
            token: A token string.

        Returns:
            The id.
        """
        index = self._by_token.get(token)
        return index if index is not None else self.unk_id

    def token_for(self, token_id: int) -> str | None:
        """The token (ordinary or special) with this id, or None.

        Args:
            token_id: An id.

        Returns:
            The token string, or None when no token has the id.
        """
        if 0 <= token_id < len(self._tokens):
            return self._tokens[token_id]
        return self._specials.token_for(token_id)
