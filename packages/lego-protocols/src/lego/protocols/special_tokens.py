"""Special-token maps: validated, immutable ``{token string: id}`` mappings.

Tokenizers register special tokens with explicit ids; data preparation appends the
end-of-text id after each document; generation stops on the end-of-text or end-of-turn ids.
[`SpecialTokens`][lego.protocols.SpecialTokens] is the one value type all of them pass around.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from lego.protocols.errors import CompatibilityError, ConfigError

__all__ = [
    "SpecialTokens",
    "ENDOFTEXT",
    "FIM_PREFIX",
    "FIM_MIDDLE",
    "FIM_SUFFIX",
    "ENDOFPROMPT",
]

ENDOFTEXT = "<|endoftext|>"
"""GPT-2's and tiktoken's end-of-text token string."""
FIM_PREFIX = "<|fim_prefix|>"
"""cl100k_base's fill-in-the-middle prefix token string."""
FIM_MIDDLE = "<|fim_middle|>"
"""cl100k_base's fill-in-the-middle middle token string."""
FIM_SUFFIX = "<|fim_suffix|>"
"""cl100k_base's fill-in-the-middle suffix token string."""
ENDOFPROMPT = "<|endofprompt|>"
"""cl100k_base's end-of-prompt token string."""


class SpecialTokens(Mapping[str, int]):
    """An immutable, validated mapping from special-token strings to ids.

    Token strings are non-empty, ids are non-negative integers, and no two tokens share an
    id. Iteration follows ascending id.

    Args:
        tokens: Token strings to ids, e.g. ``{"<|endoftext|>": 50256}``. Another
            ``SpecialTokens`` is accepted too.

    Raises:
        ConfigError: On an empty or non-string token, a negative or non-integer id, or two
            tokens with the same id.

    Example:
        >>> specials = SpecialTokens({"<|endoftext|>": 50256})
        >>> specials["<|endoftext|>"], specials.token_for(50256)
        (50256, '<|endoftext|>')
    """

    __slots__ = ("_by_id", "_by_token")

    def __init__(self, tokens: Mapping[str, int] | None = None) -> None:
        by_token: dict[str, int] = {}
        by_id: dict[int, str] = {}
        items: Iterable[tuple[object, object]] = (tokens or {}).items()
        for token, token_id in items:
            if not isinstance(token, str) or not token:
                raise ConfigError(
                    f"a special token must be a non-empty string, got {token!r}",
                    key=repr(token),
                )
            if not isinstance(token_id, int) or isinstance(token_id, bool) or token_id < 0:
                raise ConfigError(
                    f"special token {token!r} needs a non-negative integer id, got {token_id!r}",
                    key=token,
                )
            if token_id in by_id:
                raise ConfigError(
                    f"special tokens {by_id[token_id]!r} and {token!r} share id {token_id}",
                    key=token,
                    hint="give every special token its own id",
                )
            by_token[token] = token_id
            by_id[token_id] = token
        order = sorted(by_id)
        self._by_id = {i: by_id[i] for i in order}
        self._by_token = {by_id[i]: i for i in order}

    def __getitem__(self, token: str) -> int:
        return self._by_token[token]

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_token)

    def __len__(self) -> int:
        return len(self._by_token)

    def __contains__(self, token: object) -> bool:
        return token in self._by_token

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Mapping):
            return dict(self._by_token) == dict(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(frozenset(self._by_token.items()))

    def __repr__(self) -> str:
        return f"SpecialTokens({self._by_token!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (SpecialTokens, (self._by_token,))

    @property
    def ids(self) -> frozenset[int]:
        """The set of special ids."""
        return frozenset(self._by_id)

    def token_for(self, token_id: int) -> str | None:
        """Return the token string with this id, or None when the id is not special.

        Args:
            token_id: An id.

        Returns:
            The token string, or None.
        """
        return self._by_id.get(token_id)

    def inverse(self) -> dict[int, str]:
        """Return a new ``{id: token string}`` dictionary, in ascending id."""
        return dict(self._by_id)

    def with_tokens(self, tokens: Mapping[str, int]) -> SpecialTokens:
        """Return a new map with more tokens added (validated like the constructor).

        Args:
            tokens: Token strings to ids to add; a token already present is an error.

        Returns:
            The combined map.

        Raises:
            ConfigError: When a token is already registered or an id collides.
        """
        for token in tokens:
            if token in self._by_token:
                raise ConfigError(
                    f"special token {token!r} is already registered with id {self[token]}",
                    key=token,
                )
        return SpecialTokens({**self._by_token, **tokens})

    def check_vocab_size(self, vocab_size: int) -> None:
        """Check that every special id is below ``vocab_size``.

        Args:
            vocab_size: The size of the id space (embedding rows).

        Raises:
            CompatibilityError: When an id is ``>= vocab_size``.
        """
        too_big = [(t, i) for t, i in self._by_token.items() if i >= vocab_size]
        if too_big:
            listed = ", ".join(f"{t!r}={i}" for t, i in too_big)
            raise CompatibilityError(
                f"special token id(s) {listed} do not fit a vocabulary of {vocab_size}",
                key=too_big[0][0],
                hint="grow the vocabulary or renumber the special tokens",
            )
