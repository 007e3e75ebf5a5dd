"""Tokenizer contracts: what lego-data, lego-generate and the CLIs need from a tokenizer."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol, runtime_checkable

__all__ = ["Tokenizer", "TrainableTokenizer", "TrainingData"]

TrainingData = str | os.PathLike[str] | Iterable[str | os.PathLike[str]]
"""Text to train on: a string (always text, never a path), a path to a file, or an
iterable of strings and paths (streamed; of any size)."""


@runtime_checkable
class Tokenizer(Protocol):
    """Turns text into token ids and back.

    Implementations may take more keyword arguments with defaults (e.g. tiktoken-style
    ``allowed_special``); the contract is the one-argument form.

    Example:
        Anything with these four members is a tokenizer; no base class is needed:

        >>> class Bytes:
        ...     vocab_size = 256
        ...     special_tokens: dict[str, int] = {}
        ...     def encode(self, text: str) -> list[int]:
        ...         return list(text.encode("utf-8"))
        ...     def decode(self, ids: list[int]) -> str:
        ...         return bytes(ids).decode("utf-8")
        >>> tokenizer = Bytes()
        >>> isinstance(tokenizer, Tokenizer), tokenizer.decode(tokenizer.encode("hello world"))
        (True, 'hello world')
    """

    @property
    def vocab_size(self) -> int:
        """Size of the id space: every id ``encode`` returns is below it."""
        ...

    @property
    def special_tokens(self) -> Mapping[str, int]:
        """Special-token strings to ids (possibly empty)."""
        ...

    def encode(self, text: str) -> list[int]:
        """Encode text to ids.

        Args:
            text: Any Unicode string.

        Returns:
            The token ids, each in ``range(vocab_size)``.
        """
        ...

    def decode(self, ids: Sequence[int]) -> str:
        """Decode ids to text.

        Args:
            ids: Token ids in ``range(vocab_size)``.

        Returns:
            The text; byte sequences that are not valid UTF-8 are replaced with U+FFFD.
        """
        ...


@runtime_checkable
class TrainableTokenizer(Tokenizer, Protocol):
    """A tokenizer that learns its vocabulary from text and saves it to a file."""

    def train(
        self,
        data: TrainingData,
        vocab_size: int,
        *,
        special_tokens: Mapping[str, int] | None = None,
        verbose: bool = False,
    ) -> None:
        """Learn the vocabulary from ``data``, replacing any previous one.

        Args:
            data: The training text (see [`TrainingData`][lego.protocols.TrainingData]).
            vocab_size: The size of the final id space, special tokens included.
            special_tokens: Special-token strings to ids to register.
            verbose: Show progress.
        """
        ...

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the tokenizer to one versioned JSON file that the brick's loader reads.

        Args:
            path: The file to write.
        """
        ...
